"""max() and min() of the cost model's formulas, built as written.

sympy's :class:`~sympy.Max` and :class:`~sympy.Min` compare every pair of their arguments
symbolically when they are built (``Max._find_localzeros``: a ``factor_terms`` of each
difference) to drop the arguments that can never be the largest. On the roofline's sums of
tens of ops that took most of the 1–5 s of building a model's formulas, and it is paid again
whenever an expression holding one is rebuilt (``subs``, common-subexpression elimination).
The classes here skip that comparison: nested ones are flattened, equal arguments merged and
numeric ones reduced to their largest (smallest); nothing else is simplified, so every value is
the one sympy's class gives. They are subclasses named ``Max`` and ``Min``: printers, :func:`sympy.lambdify` and the
expression cache (:mod:`perfmodel.codecache`) treat them as sympy's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import sympy as sp


def _flat(args: Iterable, nested: type) -> Iterable[sp.Expr]:
    """The arguments, sympified, those of class ``nested`` replaced by their own arguments."""
    for arg in map(sp.sympify, args):
        if isinstance(arg, nested):
            yield from _flat(arg.args, nested)
        else:
            yield arg


def _reduced(args: Iterable, pick: Callable, nested: type) -> list[sp.Expr]:
    """The arguments, sympified, nested ``nested`` flattened (max(a, max(b, c)) = max(a, b, c)),
    duplicates merged (first one kept), numbers reduced by ``pick`` to one, placed where the
    first number was."""
    out: list[sp.Expr] = []
    numbers: list[sp.Expr] = []
    slot = None
    for arg in _flat(args, nested):
        if arg.is_Number:
            if slot is None:
                slot = len(out)
                out.append(arg)
            numbers.append(arg)
        elif arg not in out:
            out.append(arg)
    if numbers:
        out[slot] = pick(numbers)
    return out


class _AsWritten:
    """``__new__`` of :class:`Max` and :class:`Min`: their arguments :func:`_reduced` by
    ``_pick``, then sympy's class built unevaluated (or the one argument left)."""

    _pick: Callable
    _sympy: type

    def __new__(cls, *args, **assumptions):
        assumptions.pop("evaluate", None)
        kept = _reduced(args, cls._pick, cls._sympy)
        if len(kept) == 1:
            return kept[0]
        return cls._sympy.__new__(cls, *kept, evaluate=False, **assumptions)


class Max(_AsWritten, sp.Max):
    """The largest of its arguments (:mod:`perfmodel.minmax`: built without sympy's pairwise
    comparison of the arguments)."""

    _pick, _sympy = max, sp.Max


class Min(_AsWritten, sp.Min):
    """The smallest of its arguments (:mod:`perfmodel.minmax`: built without sympy's pairwise
    comparison of the arguments)."""

    _pick, _sympy = min, sp.Min
