"""On-disk cache of compiled cost expressions, kept as data.

Building a model's expressions and eliminating their common subexpressions takes about a
second; a cold ``perfmodel predict`` reuses the result of an earlier run instead. An entry
holds the expressions after common-subexpression elimination as a JSON tree of a few
whitelisted node types (:data:`NODE_TYPES`: sums, products, powers, max/min, sign, abs,
ceiling/floor/Heaviside, and Piecewise over conditions of the four order relations joined by
and/or/not, a condition common to several pieces kept as a temporary of its own; symbols and
numbers); loading rebuilds the sympy expressions and prints
them as Python source in this process (:func:`numpy_source`: identifiers checked, numbers printed
from their values, a fixed text for each node type), so nothing read from the cache is ever
executed as code. An entry with
an unknown node type, a symbol that is neither an argument nor an earlier subexpression, a
bad checksum or any other damage is ignored (the expressions are rebuilt), never fatal.

The key covers the graph structure, phase, engine options, the entry format and a hash of the
formula modules' source, so a change to any formula makes a new entry; a fixed set of named
expressions (the waves' plan) is kept the same way under its name (:func:`lambdify_named`). Location:
``$PERFMODEL_CACHE_DIR``, else ``~/.cache/perfmodel`` (created 0700; entries are written 0600,
atomically). An unwritable cache is ignored too.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import keyword
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sympy as sp

from perfmodel.minmax import Max, Min

_FORMULA_FILES = ("symbols.py", "op_classes.py", "minmax.py", "graph.py", "phases.py", "roofline.py", "memory.py",
                  "prediction.py", "waves.py", "ops/base.py", "ops/attention.py", "ops/moe.py", "ops/elementwise.py",
                  "ops/embedding.py", "ops/comm.py", "ops/quant.py")
_PACKAGE_DIR = Path(__file__).resolve().parent

#: Version of the entry layout; part of every key.
FORMAT = 3
_MAGIC = b"perfmodel-expressions"
#: Entries larger than this (bytes) are not read.
MAX_ENTRY_BYTES = 32 * 2**20
#: Deepest expression tree stored or loaded (after common-subexpression elimination the
#: formulas are less than 10 deep).
MAX_DEPTH = 64
#: sympy classes an entry may contain, by the name they are stored under, with their
#: (minimum, maximum) number of arguments. Symbols, integers, rationals and floats are leaves.
NODE_TYPES: dict[str, tuple[type, int, int | None]] = {
    "Add": (sp.Add, 2, None),
    "Mul": (sp.Mul, 2, None),
    "Pow": (sp.Pow, 2, 2),
    "Max": (Max, 2, None),  # built as written (perfmodel.minmax): loading does not simplify
    "Min": (Min, 2, None),
    "sign": (sp.sign, 1, 1),
    "Abs": (sp.Abs, 1, 1),
    "ceiling": (sp.ceiling, 1, 1),
    "floor": (sp.floor, 1, 1),
    "Heaviside": (sp.Heaviside, 1, 2),
}
_NODE_NAMES = {cls: name for name, (cls, _, _) in NODE_TYPES.items()} | {sp.Max: "Max", sp.Min: "Min"}
#: Largest |integer exponent| of a power (exact integer powers of large exponents do not end).
MAX_INTEGER_EXPONENT = 1024
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TEMPORARY = re.compile(r"x[0-9]+\Z")


class _Invalid(ValueError):
    """An entry (or an expression to store) outside what the cache format allows."""


@dataclass(frozen=True)
class CachedExpressions:
    """Expressions after common-subexpression elimination, and what their outputs mean.

    ``replacements`` are (temporary symbol, expression) pairs in evaluation order; ``exprs``
    are the outputs (the named totals, then ``op_fields`` values per op of each pass) in the
    argument symbols and the temporaries.
    """

    symbols: tuple[sp.Symbol, ...]
    replacements: tuple[tuple[sp.Symbol, sp.Expr], ...]
    exprs: tuple[sp.Expr, ...]
    passes: tuple[tuple[str, tuple[str, ...]], ...]
    outputs: tuple[str, ...]

    @property
    def args(self) -> tuple[str, ...]:
        """Argument names, in the compiled function's order."""
        return tuple(x.name for x in self.symbols)


def cache_dir() -> Path:
    """Where compiled expressions are kept."""
    return Path(os.environ.get("PERFMODEL_CACHE_DIR", Path.home() / ".cache" / "perfmodel"))


@functools.cache
def _source_hash() -> str:
    digest = hashlib.sha256()
    for name in _FORMULA_FILES:
        digest.update((_PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_key(structure: str) -> str:
    """A file-safe key for a structure description, the entry format and the current formulas."""
    return hashlib.sha256(f"{FORMAT}|{_source_hash()}|{structure}".encode()).hexdigest()[:24]


def lambdify(symbols: Sequence[sp.Symbol], replacements: Sequence[tuple[sp.Symbol, sp.Expr]],
             exprs: Sequence[sp.Expr]) -> Callable[..., list]:
    """A numpy function of ``symbols`` returning ``exprs``, evaluating ``replacements`` first.

    Expressions of the cache's node types (:data:`NODE_TYPES`, which every stored entry holds)
    are printed by :func:`numpy_source`, a printer of those nodes alone, tens of times faster than
    sympy's; any other expression goes through :func:`sympy.lambdify`. Both give the same numbers
    to rounding (the order of a sum's terms, x·y⁻¹ for x/y)."""
    replacements, exprs = list(replacements), list(exprs)
    try:
        source = numpy_source(symbols, replacements, exprs)
    except _Invalid:
        return sp.lambdify(list(symbols), exprs, modules="numpy", cse=lambda _: (replacements, exprs))
    namespace: dict[str, Any] = {}
    exec(compile(source, "<perfmodel expressions>", "exec"), {"numpy": np, "__builtins__": {}}, namespace)
    return namespace["_expressions"]


def lambdify_exprs(symbols: Sequence[sp.Symbol], exprs: Sequence[sp.Expr], *, cse: bool = False) -> Callable[..., list]:
    """:func:`lambdify` of ``exprs`` in ``symbols``, after common-subexpression elimination where
    ``cse`` (each shared part computed once)."""
    replacements, reduced = sp.cse(list(exprs), list=False) if cse else ([], list(exprs))
    return lambdify(symbols, replacements, reduced)


def lambdify_named(name: str, build: Callable[[], Mapping[str, sp.Expr]], args: Sequence[str], *,
                   cse: bool = False) -> tuple[tuple[str, ...], tuple[str, ...], Callable[..., list]]:
    """A fixed set of named expressions in the symbols named ``args``, compiled once and kept on
    disk under ``name`` (the key holds the formula modules' source hash too): (output names,
    argument names in the function's order, the function). ``build`` returns the expressions by
    output name; it runs only when no valid entry exists (an entry in other arguments is not
    one). The function's arguments are the expressions' free symbols, sorted by name."""
    key = cache_key(f"named|{name}|cse={cse}")
    hit = load(key, op_fields=0)
    if hit is not None and set(hit.args) <= set(args):
        return hit.outputs, hit.args, lambdify(hit.symbols, hit.replacements, hit.exprs)
    exprs = dict(build())
    symbols = sorted({x for e in exprs.values() for x in e.free_symbols}, key=lambda x: x.name)
    replacements, reduced = sp.cse(list(exprs.values()), list=False) if cse else ([], list(exprs.values()))
    store(key, symbols=symbols, replacements=replacements, exprs=reduced, passes=(), outputs=tuple(exprs))
    return tuple(exprs), tuple(x.name for x in symbols), lambdify(symbols, replacements, reduced)


# --- printing -------------------------------------------------------------------------------

def _float(expr: sp.Float) -> float:
    """A Float's value as sympy prints it: a Float of fewer digits than a double's (``sp.Float(x,
    6)``) is the decimal number of those digits, not the binary fraction of about 3.3 bits a digit
    it is held in; a double's, its value exactly."""
    return float(expr) if expr._prec >= 53 else float(str(expr))


def _number(value: float | int) -> str:
    text = repr(value)
    return f"({text})" if text.startswith("-") else text


def _code(expr: Any, depth: int = 0) -> str:
    """Python source of one expression of :data:`NODE_TYPES` (symbols, integers, rationals and
    floats its leaves), numpy functions as ``numpy.<name>``, every compound node in parentheses.
    _Invalid for anything else, or a symbol whose name is not an identifier."""
    if depth > MAX_DEPTH:
        raise _Invalid("expression too deep")
    if isinstance(expr, (int, float)) and not isinstance(expr, bool):
        expr = sp.sympify(expr)
    if not isinstance(expr, sp.Basic):
        raise _Invalid(f"not an expression: {type(expr).__name__}")
    if type(expr) is sp.Symbol:
        if not _IDENTIFIER.match(expr.name) or keyword.iskeyword(expr.name):
            raise _Invalid(f"symbol name {expr.name!r}")
        return expr.name
    if expr.is_Integer:
        return _number(int(expr))
    if expr.is_Rational:
        return f"({int(expr.p)}/{int(expr.q)})"
    if expr.is_Float:
        value = _float(expr)
        if not math.isfinite(value):
            raise _Invalid("non-finite float")
        return _number(value)
    if isinstance(expr, sp.Piecewise):  # printed as sympy's numpy printer does
        pairs = [(_code(value, depth + 1), _condition(cond, depth + 1)) for value, cond in expr.args]
        return (f"numpy.select([{', '.join(c for _, c in pairs)}], [{', '.join(v for v, _ in pairs)}], "
                "default=numpy.nan)")
    name = _NODE_NAMES.get(type(expr))
    if name is None:
        raise _Invalid(f"node type {type(expr).__name__}")
    args = [_code(a, depth + 1) for a in expr.args]
    if name == "Add":
        return "(" + " + ".join(args) + ")"
    if name == "Mul":
        return "(" + "*".join(args) + ")"
    if name == "Pow":
        base, exp = expr.args
        if exp == sp.Rational(1, 2):
            return f"numpy.sqrt({args[0]})"
        if exp.is_Integer and int(exp) < 0:  # a float power: numpy refuses integers to negative powers
            return f"({args[0]}**{_number(float(exp))})"
        return f"({args[0]}**{args[1]})"
    if name in ("Max", "Min"):
        call = "numpy.maximum" if name == "Max" else "numpy.minimum"
        out = args[0]
        for arg in args[1:]:
            out = f"{call}({out}, {arg})"
        return out
    if name == "Heaviside":
        if len(expr.args) != 2 or expr.args[1] != 0:
            raise _Invalid("Heaviside without θ(0) = 0")  # sympy's printer has the other cases
        return f"numpy.where(numpy.less_equal({args[0]}, 0), 0.0, 1.0)"  # a 2-way select, 5× faster
    return {"sign": "numpy.sign", "Abs": "numpy.abs", "ceiling": "numpy.ceil",
            "floor": "numpy.floor"}[name] + f"({args[0]})"


#: The relations a Piecewise's conditions may hold, as numpy functions, and by the names an
#: entry stores them under.
_RELATIONS = {sp.StrictLessThan: "numpy.less", sp.LessThan: "numpy.less_equal",
              sp.StrictGreaterThan: "numpy.greater", sp.GreaterThan: "numpy.greater_equal"}
_RELATION_NAMES = {sp.StrictLessThan: "Lt", sp.LessThan: "Le", sp.StrictGreaterThan: "Gt", sp.GreaterThan: "Ge"}
_RELATION_CLASSES = {name: cls for cls, name in _RELATION_NAMES.items()}


#: The connectives a condition may join relations with, as numpy functions, and by the names an
#: entry stores them under.
_CONNECTIVES = {sp.And: "numpy.logical_and", sp.Or: "numpy.logical_or", sp.Not: "numpy.logical_not"}
_CONNECTIVE_NAMES = {sp.And: "And", sp.Or: "Or", sp.Not: "Not"}
_CONNECTIVE_CLASSES = {name: cls for cls, name in _CONNECTIVE_NAMES.items()}
#: The node kinds an entry stores a condition under (:func:`_encode_condition`).
_CONDITION_KINDS = frozenset({"true", *_RELATION_CLASSES, *_CONNECTIVE_CLASSES})


def _is_condition(expr: Any) -> bool:
    """Whether ``expr`` is a condition (true, a relation of :data:`_RELATIONS` or a connective of
    :data:`_CONNECTIVES`) rather than a number: what a temporary of common-subexpression
    elimination may hold too."""
    return expr is sp.true or type(expr) in _RELATIONS or type(expr) in _CONNECTIVES


def _condition(cond: Any, depth: int) -> str:
    """Python source of one condition: true, a relation of :data:`_RELATIONS`, a connective of
    :data:`_CONNECTIVES` over conditions, or a temporary holding one."""
    if depth > MAX_DEPTH:
        raise _Invalid("expression too deep")
    if cond is sp.true:
        return "True"
    if type(cond) is sp.Symbol:
        return _code(cond, depth)
    call = _RELATIONS.get(type(cond))
    if call is not None:
        return f"{call}({_code(cond.lhs, depth + 1)}, {_code(cond.rhs, depth + 1)})"
    call = _CONNECTIVES.get(type(cond))
    if call is None:
        raise _Invalid(f"condition {type(cond).__name__}")
    args = [_condition(a, depth + 1) for a in cond.args]
    if type(cond) is sp.Not:
        return f"{call}({args[0]})"
    out = args[0]
    for arg in args[1:]:
        out = f"{call}({out}, {arg})"
    return out


def numpy_source(symbols: Sequence[sp.Symbol], replacements: Sequence[tuple[sp.Symbol, sp.Expr]],
                 exprs: Sequence[sp.Expr]) -> str:
    """The source of ``def _expressions(<symbols>)``: each replacement assigned in order, then
    the list of ``exprs``, printed by :func:`_code`. _Invalid where an expression holds another
    node type, or a name would shadow one the code refers to (``numpy``)."""
    args, temporaries = [_code(x) for x in symbols], [_code(t) for t, _ in replacements]
    if "numpy" in args + temporaries or len(set(args + temporaries)) != len(args + temporaries):
        raise _Invalid("argument names")
    lines = [f"def _expressions({', '.join(args)}):"]
    lines += [f"    {name} = {_condition(e, 0) if _is_condition(e) else _code(e)}"
              for name, (_, e) in zip(temporaries, replacements)]
    lines.append("    return [" + ", ".join(_code(e) for e in exprs) + "]")
    return "\n".join(lines) + "\n"


# --- writing --------------------------------------------------------------------------------

def _encode(expr: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise _Invalid("expression too deep")
    if isinstance(expr, bool) or not isinstance(expr, (sp.Basic, int, float)):
        raise _Invalid(f"not an expression: {type(expr).__name__}")
    if isinstance(expr, int):
        return expr
    if isinstance(expr, float):
        expr = sp.Float(expr)
    if type(expr) is sp.Symbol:
        if not _IDENTIFIER.match(expr.name):
            raise _Invalid(f"symbol name {expr.name!r}")
        return expr.name
    if expr.is_Integer:
        return int(expr)
    if expr.is_Rational:
        return ["Rational", int(expr.p), int(expr.q)]
    if expr.is_Float:
        value = _float(expr)
        if not math.isfinite(value):
            raise _Invalid("non-finite float")
        return ["Float", value]
    if isinstance(expr, sp.Piecewise):
        return ["Piecewise", *([_encode(value, depth + 1), _encode_condition(cond, depth + 1)]
                               for value, cond in expr.args)]
    name = _NODE_NAMES.get(type(expr))
    if name is None:
        raise _Invalid(f"node type {type(expr).__name__}")
    if name == "Pow" and expr.exp.is_Integer and abs(int(expr.exp)) > MAX_INTEGER_EXPONENT:
        raise _Invalid("integer exponent too large")
    return [name, *(_encode(a, depth + 1) for a in expr.args)]


def _encode_condition(cond: Any, depth: int) -> Any:
    """A condition: ["true"], a relation of :data:`_RELATION_NAMES` and its sides, a connective of
    :data:`_CONNECTIVE_NAMES` and its conditions, or the name of a temporary holding one."""
    if depth > MAX_DEPTH:
        raise _Invalid("expression too deep")
    if cond is sp.true:
        return ["true"]
    if type(cond) is sp.Symbol:
        return _encode(cond, depth)
    name = _RELATION_NAMES.get(type(cond))
    if name is not None:
        return [name, _encode(cond.lhs, depth + 1), _encode(cond.rhs, depth + 1)]
    name = _CONNECTIVE_NAMES.get(type(cond))
    if name is None:
        raise _Invalid(f"condition {type(cond).__name__}")
    return [name, *(_encode_condition(a, depth + 1) for a in cond.args)]


def store(key: str, *, symbols: Sequence[sp.Symbol], replacements: Sequence[tuple[sp.Symbol, sp.Expr]],
          exprs: Sequence[sp.Expr], passes: Sequence[tuple[str, Sequence[str]]], outputs: Sequence[str]) -> None:
    """Write an entry: the expressions as a JSON tree, behind a checksummed header.

    Expressions the format cannot hold are not cached; I/O failures are silent (the cache is
    optional). The file appears atomically (written to a temporary file, then renamed).
    """
    try:
        body = json.dumps({
            "args": [x.name for x in symbols],
            "replacements": [[_encode(x), _encode_condition(e, 0) if _is_condition(e) else _encode(e)]
                             for x, e in replacements],
            "exprs": [_encode(e) for e in exprs],
            "passes": [[name, list(ops)] for name, ops in passes],
            "outputs": list(outputs),
        }, separators=(",", ":")).encode()
    except (_Invalid, RecursionError, TypeError):
        return
    header = b"%s %d %s\n" % (_MAGIC, FORMAT, hashlib.sha256(body).hexdigest().encode())
    tmp = None
    try:
        directory = cache_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=directory)  # mode 0600
        with os.fdopen(fd, "wb") as f:
            f.write(header + body)
        os.replace(tmp, directory / f"{key}.json")
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# --- reading --------------------------------------------------------------------------------

@functools.cache
def _reserved_names() -> frozenset[str]:
    """Names the generated code refers to: an argument must not shadow them."""
    return frozenset(dir(builtins)) | frozenset(dir(np)) | {"reduce", "builtins", "range", "numpy"}


class _Decoder:
    """Rebuilds sympy expressions from an entry's tree, accepting only known names and nodes."""

    def __init__(self, args: list[str]):
        self.symbols: dict[str, sp.Symbol] = {}
        self.args = set(args)
        self.used: set[str] = set()
        self.conditions: set[str] = set()  # the temporaries that hold a condition, not a number

    def define(self, name: Any, *, condition: bool = False) -> sp.Symbol:
        if not isinstance(name, str) or not _TEMPORARY.match(name) or name in self.symbols or name in self.args:
            raise _Invalid("bad temporary name")
        symbol = self.symbols[name] = sp.Symbol(name)
        if condition:
            self.conditions.add(name)
        return symbol

    def replacement(self, name: Any, node: Any) -> tuple[sp.Symbol, Any]:
        """A temporary and its value: a condition where the node is one, else a number."""
        is_condition = isinstance(node, list) and bool(node) and isinstance(node[0], str) and node[0] in _CONDITION_KINDS
        value = self.condition(node, 0) if is_condition else self.expr(node)  # before its name: no self-reference
        return self.define(name, condition=is_condition), value

    def expr(self, node: Any, depth: int = 0) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise _Invalid("expression too deep")
        if isinstance(node, str):
            if node in self.conditions:
                raise _Invalid("a condition where a number belongs")
            if node in self.symbols:
                return self.symbols[node]
            if node not in self.args:
                raise _Invalid(f"unknown symbol {node[:40]!r}")
            self.used.add(node)
            symbol = self.symbols[node] = sp.Symbol(node)
            return symbol
        if isinstance(node, bool):
            raise _Invalid("boolean")
        if isinstance(node, int):
            return sp.Integer(node)
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise _Invalid("bad node")
        kind, rest = node[0], node[1:]
        if kind == "Rational":
            if len(rest) != 2 or not all(type(v) is int for v in rest) or rest[1] <= 0:
                raise _Invalid("bad Rational")
            return sp.Rational(rest[0], rest[1])
        if kind == "Float":
            if len(rest) != 1 or type(rest[0]) is not float or not math.isfinite(rest[0]):
                raise _Invalid("bad Float")
            return sp.Float(rest[0])
        if kind == "Piecewise":
            return self.piecewise(rest, depth)
        if kind not in NODE_TYPES:
            raise _Invalid(f"unknown node type {kind[:40]!r}")
        cls, least, most = NODE_TYPES[kind]
        if len(rest) < least or (most is not None and len(rest) > most):
            raise _Invalid(f"{kind} with {len(rest)} arguments")
        args = [self.expr(a, depth + 1) for a in rest]
        if kind == "Pow" and args[1].is_Integer and abs(int(args[1])) > MAX_INTEGER_EXPONENT:
            raise _Invalid("integer exponent too large")
        return cls(*args, evaluate=False)


    def piecewise(self, pairs: list, depth: int) -> sp.Expr:
        """A Piecewise of (value, condition) pairs, the last condition true."""
        if not pairs or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise _Invalid("bad Piecewise")
        args = [(self.expr(value, depth + 1), self.condition(cond, depth + 1)) for value, cond in pairs]
        if args[-1][1] is not sp.true:
            raise _Invalid("Piecewise without a last true condition")
        return sp.Piecewise(*args, evaluate=False)

    def condition(self, node: Any, depth: int) -> Any:
        """A condition: true, a relation of two numbers, a connective of conditions, or a temporary
        holding a condition."""
        if depth > MAX_DEPTH:
            raise _Invalid("expression too deep")
        if node == ["true"]:
            return sp.true
        if isinstance(node, str):
            if node not in self.conditions:
                raise _Invalid("a number where a condition belongs")
            return self.symbols[node]
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise _Invalid("bad condition")
        kind, rest = node[0], node[1:]
        if kind in _RELATION_CLASSES and len(rest) == 2:
            return _RELATION_CLASSES[kind](self.expr(rest[0], depth + 1), self.expr(rest[1], depth + 1),
                                           evaluate=False)
        if kind == "Not" and len(rest) == 1:
            return sp.Not(self.condition(rest[0], depth + 1), evaluate=False)
        if kind in ("And", "Or") and len(rest) >= 2:
            return _CONNECTIVE_CLASSES[kind](*(self.condition(a, depth + 1) for a in rest), evaluate=False)
        raise _Invalid("bad condition")


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid("expected a list of strings")
    return value


def _read(path: Path) -> bytes | None:
    """The bytes of a regular file of at most MAX_ENTRY_BYTES, else None (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            return None
        chunks, size = [], 0
        while size <= MAX_ENTRY_BYTES:
            chunk = os.read(fd, MAX_ENTRY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks) if size <= MAX_ENTRY_BYTES else None


def _parse(data: bytes, op_fields: int) -> CachedExpressions:
    header, newline, body = data.partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 3 or parts[0] != _MAGIC or parts[1] != str(FORMAT).encode():
        raise _Invalid("not a cache entry of this format")
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        raise _Invalid("checksum mismatch")
    entry = json.loads(body)
    if not isinstance(entry, dict):
        raise _Invalid("entry is not an object")
    args = _strings(entry.get("args"))
    reserved = _reserved_names()
    if any(not _IDENTIFIER.match(a) or keyword.iskeyword(a) or a in reserved or _TEMPORARY.match(a)
           for a in args) or args != sorted(set(args)):
        raise _Invalid("bad argument names")
    outputs = _strings(entry.get("outputs"))
    if len(set(outputs)) != len(outputs):
        raise _Invalid("repeated output name")
    raw_passes = entry.get("passes")
    if not isinstance(raw_passes, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                   for p in raw_passes):
        raise _Invalid("bad passes")
    passes = tuple((name, tuple(_strings(ops))) for name, ops in raw_passes)
    raw_replacements, raw_exprs = entry.get("replacements"), entry.get("exprs")
    if not isinstance(raw_replacements, list) or not isinstance(raw_exprs, list):
        raise _Invalid("bad expressions")
    if len(raw_exprs) != len(outputs) + op_fields * sum(len(ops) for _, ops in passes):
        raise _Invalid("expression count does not match the outputs and passes")
    decoder = _Decoder(args)
    replacements = []
    for item in raw_replacements:
        if not isinstance(item, list) or len(item) != 2:
            raise _Invalid("bad replacement")
        replacements.append(decoder.replacement(item[0], item[1]))
    exprs = tuple(decoder.expr(e) for e in raw_exprs)
    if decoder.used != set(args):
        raise _Invalid("arguments do not match the expressions")
    symbols = tuple(decoder.symbols[a] for a in args)
    return CachedExpressions(symbols, tuple(replacements), exprs, passes, tuple(outputs))


def load(key: str, *, op_fields: int) -> CachedExpressions | None:
    """The cached expressions for ``key``, or None (missing, unreadable, damaged or not
    conforming to the format). ``op_fields``: values per op in each pass's rows."""
    try:
        data = _read(cache_dir() / f"{key}.json")
        return None if data is None else _parse(data, op_fields)
    except (OSError, ValueError, RecursionError):  # _Invalid, JSON and UTF-8 errors are ValueErrors
        return None
