"""One roofline: FLOP, byte and time formulas live in the model core only.

The measuring, calibration and validation layers time kernels and fit and report the model;
they count an op's FLOPs and bytes and time it only through :mod:`perfmodel.ops` and
:mod:`perfmodel.roofline` (the benchmark calls are model ops:
:mod:`perfmodel.calibration.bench_shapes`). This test reads their sources (``ast``) and flags
what a hand-written copy of a cost formula looks like:

- a rate constant: a number of at least 1e11 that is not a power of ten (a FLOP/s or B/s
  peak such as ``300e12``; unit scales such as ``1e12`` pass);
- a division by a peak or a bandwidth: a denominator naming ``peak``, ``tflops``,
  ``bandwidth``, ``hbm`` or ``bw``;
- a count over a shape: a product of three or more sizes and a constant of at least 2
  (``2.0 * m * n * k``, ``2 * b * kv * alloc * d * 2``).

It is a pattern check, not a proof: :data:`ALLOWED` lists the functions whose arithmetic of
that shape is not an op's cost, each with what it computes instead.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "perfmodel"
LAYERS = ("calibration", "measuring", "validate")

#: (file under perfmodel/, function) → what its shape-like arithmetic computes.
ALLOWED = {
    ("calibration/bench_attn.py", "bench_sdpa"):
        "the bytes of the K/V tensors a case allocates, to size the copies it rotates through",
    ("calibration/bench_gemm.py", "_grouped_case"):
        "an upper bound of the bytes a case touches, to size the copies it rotates through",
    ("calibration/bench_layers.py", "bench_moe_block"):
        "a whole MoE module: the gathered weights' size (batched_mm's memory limit) and the "
        "nominal FLOPs and bytes of the row, which no fit reads",
    ("calibration/bench_layers.py", "_module_case"):
        "a whole attention module: the nominal FLOPs of the row, which no fit reads",
    ("measuring/routing_floor.py", "floor_ratios"):
        "a lower bound of measured decode steps: the model's own bytes of the step "
        "(perfmodel.prediction) at the datasheet bandwidth, to flag impossible measurements",
    ("measuring/hf_build.py", "kv_bytes_per_token"):
        "the bytes per token of the StaticCache transformers allocates for a built config",
    ("measuring/hf_estimate.py", "<module>"):
        "the coarse planning rates of a run's time budget where the model cannot be imported",
    ("measuring/hf_estimate.py", "coarse_times"):
        "a run's time budget where the model cannot be imported (labelled coarse)",
}

_RATE_NAME = re.compile(r"peak|tflops|bandwidth|hbm|(^|_)bw($|_)", re.I)


def _sources() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def _names(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
    return out


def _factors(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _factors(node.left) + _factors(node.right)
    return [node]


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    return None


def _is_power_of_ten(x: float) -> bool:
    return x > 0 and math.isclose(10 ** round(math.log10(x)), x, rel_tol=1e-12)


def findings(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, what) for each formula-like expression of ``source``."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def function(node: ast.AST) -> str:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return "<module>"

    out = []
    for node in ast.walk(tree):
        value = _number(node)
        if value is not None and value >= 1e11 and not _is_power_of_ten(value):
            out.append((node.lineno, function(node), f"rate constant {ast.unparse(node)}"))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) \
                and any(_RATE_NAME.search(n) for n in _names(node.right)):
            out.append((node.lineno, function(node), f"division by a rate: {ast.unparse(node)}"))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) \
                and not (isinstance(parents.get(node), ast.BinOp) and isinstance(parents[node].op, ast.Mult)):
            factors = _factors(node)
            numbers = [v for v in map(_number, factors) if v is not None]
            sizes = [f for f in factors if _number(f) is None]
            if len(sizes) >= 3 and any(v >= 2 for v in numbers):
                out.append((node.lineno, function(node), f"count over a shape: {ast.unparse(node)}"))
    return out


@pytest.mark.parametrize("snippet, flagged", [
    ("def f(m, n, k):\n    return 2.0 * m * n * k", True),
    ("def f(b, kv, a, d):\n    return 2 * b * kv * a * d * 2", True),
    ("def f(p, b, s):\n    return 2.0 * p * b * s / 300e12", True),
    ("def f(x, gpu):\n    return x / (gpu.peak('bf16') * 0.7)", True),
    ("def f(nbytes, hbm_bw):\n    return nbytes / hbm_bw", True),
    ("def f(flops, sec):\n    return flops / sec / 1e12", False),
    ("def f(t, h):\n    return 5.0 * t * h", False),
    ("def f(b, s, o, e2e):\n    return b * (s + o) / (e2e / 1e3)", False),
])
def test_the_guard_flags_cost_formulas(snippet, flagged):
    """The patterns catch hand-written counts and rooflines, and leave unit conversions and
    metric definitions alone."""
    assert bool(findings(snippet)) is flagged


def test_no_cost_formula_outside_the_core():
    """No FLOP, byte or roofline formula in the measuring, calibration or validation layers
    (outside the functions of :data:`ALLOWED`)."""
    found = []
    for path in _sources():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, func, what in findings(path.read_text()):
            if (rel, func) not in ALLOWED:
                found.append(f"perfmodel/{rel}:{line} ({func}): {what}")
    assert not found, "cost formulas outside perfmodel's core:\n" + "\n".join(found)


def test_allowed_functions_exist():
    """Every allowed function is still defined where it is listed."""
    for rel, func in ALLOWED:
        tree = ast.parse((PACKAGE / rel).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} | {"<module>"}
        assert func in defined, (rel, func)


def test_benchmark_calls_count_what_the_model_counts():
    """A benchmarked SDPA call costs what the model's attention core costs in the same pass,
    less the cache write the bare kernel does not do (the T new tokens' keys and values and
    their kernel): the fit and the model cannot count attention differently."""
    from perfmodel.calibration.bench_shapes import call_cost, sdpa_decode_call, sdpa_prefill_call
    from perfmodel.prediction import predict
    from perfmodel.specs.model import load_model
    from perfmodel.symbols import B, L, S, d_h, n_h, n_kv

    model = load_model("mixtral-8x7b")
    a = model.attention
    heads = {n_h: a.n_heads, n_kv: a.n_kv_heads, d_h: a.head_dim}
    cache_per_token = 2 * a.n_kv_heads * a.head_dim * 2  # K and V, bf16
    for phase, call, sizes, new_tokens in (
            ("prefill", sdpa_prefill_call(), {B: 4, S: 512}, 4 * 512),
            ("decode", sdpa_decode_call(), {B: 4, L: 1024}, 4)):
        engine = "roofline" if phase == "prefill" else "hf"  # hf: the masked decode with copies
        kw = dict(batch=4, input_len=512) if phase == "prefill" else dict(batch=4, context=1024)
        ops = predict(model, engine=engine, phase=phase, kv_dtype="bf16", **kw).ops
        per_layer = lambda name, field: next(o[field] for o in ops if o["name"] == name) / model.n_layers  # noqa: E731
        flops, nbytes = call_cost(call, {**sizes, **heads})
        model_bytes = per_layer("attn.core", "bytes") + (per_layer("attn.kv_expand", "bytes")
                                                         if phase == "decode" else 0.0)
        assert flops == pytest.approx(per_layer("attn.core", "flops"), rel=1e-12)
        assert nbytes + new_tokens * cache_per_token == pytest.approx(model_bytes, rel=1e-12)


def test_benchmark_costs_need_no_pydantic():
    """The GPU image has no pydantic: the benchmark counts its calls' FLOPs and bytes without it."""
    import os
    import subprocess
    import sys

    from perfmodel.paths import ROOT

    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "from perfmodel.calibration import bench_shapes as b\n"
        "from perfmodel.symbols import B, L, S, T, d_h, n_h, n_kv\n"
        "heads = {n_h: 32, n_kv: 8, d_h: 128}\n"
        "print(b.call_cost(b.sdpa_prefill_call(), {B: 1, S: 128, **heads})[0] > 0,\n"
        "      b.call_cost(b.sdpa_decode_call(), {B: 1, L: 256, **heads})[1] > 0,\n"
        "      b.call_cost(b.gemm_call(), {T: 1, b.D_IN: 64, b.D_OUT: 64})[0] > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True"] * 3, out.stderr[-2000:]
