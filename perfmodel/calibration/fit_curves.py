"""Fitting η curves to timed benchmark rows through the model's own roofline.

A row is one benchmarked call: the model's ops (:class:`perfmodel.calibration.bench_shapes.BenchCall`)
with its sizes as numbers. Its predicted time is the sum over its ops of
:func:`perfmodel.roofline.op_time`, lambdified once per op; the parameters fitted are the
profile's own symbols (:func:`perfmodel.symbols.efficiency_symbols` of the op's class, and
``t_kernel``), so the fit cannot count or time a kernel differently from the model.

Parameters minimize Σ (log t_pred − log t_meas)² (:func:`scipy.optimize.least_squares`,
bounded, fixed start points, no randomness): first with a smooth max of the compute and
memory times (a p-norm, p = :data:`SMOOTH_P`), then polished with the plain max that the
roofline evaluates. A parameter that ends within :data:`BOUND_SNAP` of a bound (as a fraction
of its bounded range, in the fit's log coordinates) is set to the bound exactly, so a weakly
identified parameter never carries the rounding noise of the machine that fitted it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

import numpy as np
import sympy as sp
from scipy.optimize import least_squares

from perfmodel.calibration.bench_shapes import BenchCall
from perfmodel.ops import Op
from perfmodel.roofline import op_time
from perfmodel.symbols import efficiency_symbols, t_kernel, t_kernel_small

#: Exponent of the smooth max of the first fit.
SMOOTH_P = 8.0
#: η_max ≤ 1: no row is faster than the datasheet (L2-resident rows are dropped).
ETA_BOUNDS = (1e-3, 1.0)
#: Bounds of the fixed cost per kernel, s.
T_KERNEL_BOUNDS = (1e-8, 1e-4)
#: The fixed costs per kernel a fit may free, by parameter name: a compute kernel's, a small one's.
KERNEL_COSTS = {"t_kernel": t_kernel, "t_kernel_small": t_kernel_small}
#: A fitted parameter within this fraction of its bounded range from a bound is on the bound.
BOUND_SNAP = 1e-6
_ETA_START = {"compute": 0.7, "memory": 0.8}
#: What each op yields, per row: its FLOPs, bytes and efficiency size (the curves'
#: variables), and the roofline's parts, s.
_AMOUNTS = ("flops", "bytes", "size")
_TIMES = ("compute", "memory", "link", "latency", "total")

@dataclass
class Rows:
    """Timed rows of one benchmarked call.

    ``values``: symbol → per-row number (sizes, bytes per element, peaks); ``present``: for
    each op of the call, the rows that ran it; ``t``: measured time, s; ``group``: a label
    per row (for the error breakdown); ``index``: the rows' numbers in their table.
    """

    call: BenchCall
    dtype: str
    values: dict[sp.Symbol, np.ndarray]
    present: np.ndarray
    t: np.ndarray
    group: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def subset(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` holds."""
        mask = np.asarray(mask, dtype=bool)
        return Rows(self.call, self.dtype, {s: v[mask] for s, v in self.values.items()},
                    self.present[:, mask], self.t[mask], self.group[mask], self.index[mask])


@cache
def _compiled(op: Op, subs: tuple[tuple[sp.Symbol, sp.Expr], ...], times: bool):
    """(symbols, numpy function) of an op's amounts (:data:`_AMOUNTS`) or roofline times
    (:data:`_TIMES`, with ``times``) after the substitutions ``subs``."""
    s = dict(subs)
    if times:
        t = op_time(op, s)
        exprs = [t.compute, t.memory, t.link, t.latency, t.total]
    else:
        exprs = [op.flops.subs(s), op.bytes.subs(s), op.efficiency_size.subs(s)]
    symbols = sorted(set().union(*(sp.sympify(e).free_symbols for e in exprs)), key=lambda x: x.name)
    return tuple(symbols), sp.lambdify(symbols, exprs, modules="numpy")


def _evaluate(rows: Rows, fixed: dict[sp.Symbol, float], times: bool) -> list[dict[str, np.ndarray]]:
    subs = tuple(sorted(rows.call.substitutions(rows.dtype).items(), key=lambda kv: kv[0].name))
    n = len(rows)
    out = []
    for i, op in enumerate(rows.call.ops):
        symbols, fn = _compiled(op, subs, times)
        args = [rows.values[x] if x in rows.values else np.full(n, float(fixed[x])) for x in symbols]
        ran = rows.present[i]
        out.append({name: np.where(ran, np.broadcast_to(np.asarray(v, dtype=float), (n,)), 0.0)
                    for name, v in zip(_TIMES if times else _AMOUNTS, fn(*args))})
    return out


def op_amounts(rows: Rows) -> list[dict[str, np.ndarray]]:
    """Per op of the call, its FLOPs, bytes and efficiency size per row (0 where the op did
    not run), as the model counts them."""
    return _evaluate(rows, {}, times=False)


def op_parts(rows: Rows, fixed: dict[sp.Symbol, float]) -> list[dict[str, np.ndarray]]:
    """Per op of the call, its roofline times per row, s (0 where the op did not run), with
    ``fixed`` giving the numbers of the symbols the rows do not (peaks, η, t_kernel)."""
    return _evaluate(rows, fixed, times=True)


def predict(rows: Rows, fixed: dict[sp.Symbol, float], smooth: float | None = None) -> np.ndarray:
    """Predicted time per row, s: the sum of its ops' roofline times (the plain max, or the
    p-norm of compute and memory when ``smooth`` is p)."""
    total = np.zeros(len(rows))
    for part in op_parts(rows, fixed):
        if smooth is None:
            total += part["total"]
            continue
        hi = np.maximum(np.maximum(part["compute"], part["memory"]), part["link"])
        safe = np.where(hi > 0, hi, 1.0)
        roof = hi * sum((part[p] / safe) ** smooth for p in ("compute", "memory", "link")) ** (1 / smooth)
        total += roof + part["latency"]
    return total


def class_variables(rows: Rows, op_class: str) -> dict[str, np.ndarray]:
    """The curve variables of one class over the rows that ran an op of it: efficiency size
    (``compute_half``) and bytes (``memory_half``)."""
    size, nbytes = [], []
    for op, part, ran in zip(rows.call.ops, op_amounts(rows), rows.present):
        if op.op_class == op_class:
            size.append(part["size"][ran])
            nbytes.append(part["bytes"][ran])
    return {"compute_half": np.concatenate(size), "memory_half": np.concatenate(nbytes)}


def parameter_symbols(op_class: str, names: list[str]) -> dict[str, sp.Symbol]:
    """Parameter name (compute, memory, compute_half, memory_half, t_kernel, t_kernel_small) →
    the profile's symbol of ``op_class``."""
    eta = efficiency_symbols(op_class)
    return {n: KERNEL_COSTS[n] if n in KERNEL_COSTS else eta[n] for n in names}


class Params:
    """Maps named parameters to a bounded vector: log η, log kernel cost, and w = log1p(half / ref).

    ``halves``: half name → (ref, largest value of its curve's variable over the rows). A
    name ending in ``_half`` is a half size, one of :data:`KERNEL_COSTS` a kernel cost, any
    other an η.
    """

    def __init__(self, names: list[str], halves: dict[str, tuple[float, float]]) -> None:
        self.names, self.ref = names, {n: ref for n, (ref, _) in halves.items()}
        lo, hi = [], []
        for n in names:
            if n in KERNEL_COSTS:
                lo.append(np.log(T_KERNEL_BOUNDS[0])), hi.append(np.log(T_KERNEL_BOUNDS[1]))
            elif n.endswith("_half"):
                ref, top = halves[n]
                lo.append(0.0), hi.append(float(np.log1p(100.0 * top / ref)))
            else:
                lo.append(np.log(ETA_BOUNDS[0])), hi.append(np.log(ETA_BOUNDS[1]))
        self.bounds = (np.array(lo), np.array(hi))

    def encode(self, values: dict[str, float]) -> np.ndarray:
        out = [np.log1p(values[n] / self.ref[n]) if n.endswith("_half") else np.log(values[n])
               for n in self.names]
        return np.clip(out, self.bounds[0], self.bounds[1])

    def snap(self, v: np.ndarray) -> np.ndarray:
        """``v`` with every coordinate within :data:`BOUND_SNAP` of a bound set to it."""
        lo, hi = self.bounds
        tol = BOUND_SNAP * (hi - lo)
        return np.where(v <= lo + tol, lo, np.where(v >= hi - tol, hi, v))

    def decode(self, v: np.ndarray) -> dict[str, float]:
        out = {}
        for i, n in enumerate(self.names):
            if n.endswith("_half"):  # below 1e-6 of a unit is 0 (a constant η)
                h = float(self.ref[n] * np.expm1(v[i]))
                out[n] = h if h >= 1e-6 else 0.0
            else:
                out[n] = float(np.exp(v[i]))
        return out


def geo(x: np.ndarray) -> tuple[float, float]:
    """(geometric mean, max) of the positive values of a curve's variable."""
    pos = x[x > 0]
    return float(np.exp(np.mean(np.log(pos)))), float(pos.max())


def starts(names: list[str], medians: dict[str, float]) -> list[dict[str, float]]:
    """Deterministic start points: η at typical values, each half at 0 or the median of its
    curve's variable (``medians``: half name → median)."""
    grid: list[dict[str, float]] = [{}]
    for h in (n for n in names if n.endswith("_half")):
        grid = [{**g, h: v} for g in grid for v in (0.0, medians[h])]
    base = {n: _ETA_START.get(n, 3e-6 if n in KERNEL_COSTS else 0.5) for n in names}
    return [{**base, **g} for g in grid]


def solve(resid: Callable[[dict[str, float], float | None], np.ndarray], prm: Params,
          start_points: list[dict[str, float]]) -> tuple[dict[str, float], tuple[str, ...]]:
    """Best of the fixed starts: a smooth-max fit, then a plain-max polish; the lower cost wins.
    Returns the parameters and the names of those that ended on a bound (weakly identified:
    η at its limit, or a half size at its upper limit)."""
    best, best_cost = None, np.inf
    for start in start_points:
        sol = least_squares(lambda u: resid(prm.decode(u), SMOOTH_P), prm.encode(start),
                            bounds=prm.bounds, method="trf", max_nfev=2000)
        polish = least_squares(lambda u: resid(prm.decode(u), None), sol.x, bounds=prm.bounds,
                               method="trf", max_nfev=2000)
        for cand in (sol.x, polish.x):
            cost = float(np.sum(resid(prm.decode(cand), None) ** 2))
            if cost < best_cost * (1 - 1e-9):
                best, best_cost = cand, cost
    best = prm.snap(best)
    lo, hi = prm.bounds
    at = tuple(n for i, n in enumerate(prm.names) if best[i] == hi[i]
               or (best[i] == lo[i] and not n.endswith("_half")))
    return prm.decode(best), at


def fit_rows(rows: Rows, free: dict[str, sp.Symbol], fixed: dict[sp.Symbol, float],
             variables: dict[str, np.ndarray]) -> tuple[dict[str, float], tuple[str, ...]]:
    """Fit the parameters ``free`` (name → symbol) to the rows' times, the other symbols at
    ``fixed``. ``variables``: each half's curve variable (its reference scale and start).
    Returns (name → value, names that ended on a bound)."""
    names = list(free)
    prm = Params(names, {n: geo(variables[n]) for n in names if n.endswith("_half")})
    log_t = np.log(rows.t)

    def resid(p: dict[str, float], smooth: float | None) -> np.ndarray:
        values = {**fixed, **{free[n]: v for n, v in p.items()}}
        return np.log(predict(rows, values, smooth)) - log_t

    medians = {n: float(np.median(variables[n])) for n in names if n.endswith("_half")}
    return solve(resid, prm, starts(names, medians))
