"""Fit per-op-class kernel efficiencies η to the microbenchmark tables of one GPU.

The roofline time of one op (:mod:`perfmodel.roofline`) is

    t = max(FLOPs / (F_peak · η_c(x)),  bytes / (BW · η_m(bytes))) + kernels · t_kernel,
    η(u) = η_max · u / (u + u_half)                      (u_half = 0: constant η_max)

with F_peak (FLOP/s) and BW (B/s) the GPU's *datasheet* peaks, so every fitted η is a fraction
of the datasheet and transfers to another GPU as a fraction of its peaks. The memory curve
saturates in the bytes moved (its half, ``memory_half``, in bytes: the memory time is
(bytes + memory_half)/(BW·η_m), never falling as the bytes grow); the compute curve in the
op's size x (``compute_half`` in the unit of x):

- ``gemm`` (gemm.csv): M, the GEMM rows (tokens);
- ``grouped_gemm`` (grouped_gemm.csv): mean tokens per touched expert (routed rows / experts hit);
- ``attention`` (attention.csv, ``sdpa_prefill`` rows): B·K keys read, K = S in a prefill;
- ``elementwise`` (memory.csv: rmsnorm, residual_add, silu_and_mul, copy): elements; costed by
  bytes only (perfmodel counts no FLOPs for elementwise ops), so its compute η is 1, not fitted.

For each class the four parameters (η_c, x_c, η_m, b_m) minimize Σ (log t_pred − log t_meas)²
(:func:`scipy.optimize.least_squares`, bounded, fixed start points, no randomness): first with
a smooth max (a p-norm, p = 8), then polished with the plain max that perfmodel evaluates.
A parameter that ends within :data:`BOUND_SNAP` of a bound (as a fraction of its bounded
range, in the fit's log coordinates) is set to the bound exactly, so a weakly identified
parameter never carries the rounding noise of the machine that fitted it.

``t_kernel`` (s per kernel) is one constant, not fitted per class: by default the cost of a
kernel node inside a CUDA graph, the slope of replay time against node count of the
``graph_tiny_kernel`` rows of memory.csv; with ``per_kernel="gemm_intercept"`` (or without those
rows) a fifth free parameter of the gemm fit, the fixed cost of a real GEMM launch. Kernels per
row: 1, except the elementwise ops' eager implementations (:data:`ELEMENTWISE_KERNELS`).
Rows faster than a datasheet peak (working set in L2) are dropped, and η_max ≤ 1.

Decode attention. Every ``sdpa_decode`` row is transformers' StaticCache path: a boolean mask
over the A allocated slots, so SDPA scores all A slots (FLOPs and bytes are counted over A; the
size is x = B·A) and, when heads are grouped (n_kv < n_h), ``repeat_kv`` first copies K/V to
every query head (the masked kernel cannot group heads). These rows do not inform the base
``attention`` curve; they are fitted jointly as two extra classes matching perfmodel's
``attention_masked`` (the masked kernel reading per-head K/V) and ``copy`` (the K/V expansion:
read the cache, write n_h heads; 2 kernels; its memory curve in the bytes copied). The
``attn_module`` rows time a whole attention module (projections, RoPE, cache update,
attention) and are not used.

Causal prefill FLOPs: the bench counts 2·B·h·S²·d (S²/2 pairs at 4·d FLOPs); perfmodel counts
the S(S+1)/2 causal pairs, so prefill FLOPs are rescaled by (S+1)/S.

Held-out models: a row whose shapes come *only* from models in ``exclude_models`` is dropped;
rows from the sweep grid (``seed_grid``), shared with a training model, or without a model
column (memory.csv) stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from perfmodel.errors import SpecError

if TYPE_CHECKING:
    from perfmodel.specs.hardware import GPUSpec

#: Tables the fit reads, by op class (moe_block.csv is not used).
TABLES = {"gemm": "gemm.csv", "grouped_gemm": "grouped_gemm.csv",
          "attention": "attention.csv", "elementwise": "memory.csv"}
#: Classes written to a profile's ``efficiency:`` mapping, in order.
PROFILE_CLASSES = ("gemm", "grouped_gemm", "attention", "elementwise")
#: Extra classes fitted from the masked decode rows (perfmodel's optional op classes).
EXTRA_CLASSES = ("attention_masked", "copy")
PARAM_KEYS = ("compute", "memory", "compute_half", "memory_half")
#: Kernels launched per call by the benchmarked (transformers eager) implementations.
#: MixtralRMSNorm: to(fp32), pow, mean, +eps, rsqrt, mul, to(bf16), mul weight.
ELEMENTWISE_KERNELS = {"rmsnorm": 8, "residual_add": 1, "silu_and_mul": 2, "copy": 1}
_PEAK_KEY = {"bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}
_SMOOTH_P = 8.0
_ETA_BOUNDS = (1e-3, 1.0)  # η_max ≤ 1: no row is faster than the datasheet (L2 rows dropped)
_ETA_START = {"compute": 0.7, "memory": 0.8}
#: A fitted parameter within this fraction of its bounded range from a bound is on the bound.
BOUND_SNAP = 1e-6


@dataclass(frozen=True)
class ClassStats:
    """How one class's fit matches its rows.

    ``median_abs_rel_err``/``p90_abs_rel_err``: of |t_pred / t_meas − 1| over the rows used.
    ``excluded``: reason → row numbers (0-based data rows of the CSV) left out.
    ``groups``: label → (rows, median signed relative error, median |relative error|).
    ``at_bound``: parameters that ended on a bound (weakly identified by these rows).
    """

    table: str
    n_rows: int
    median_abs_rel_err: float
    p90_abs_rel_err: float
    excluded: dict[str, tuple[int, ...]] = field(default_factory=dict)
    groups: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    at_bound: tuple[str, ...] = ()

    @property
    def n_excluded(self) -> int:
        return sum(len(v) for v in self.excluded.values())


@dataclass(frozen=True)
class KernelFit:
    """Fitted efficiencies of one GPU (fractions of its datasheet peaks).

    ``efficiency``: class → {compute, memory, compute_half, memory_half} for gemm, grouped_gemm,
    attention, elementwise. ``extra``: the same for ``attention_masked`` and ``copy`` (from the
    masked decode rows), ``elementwise.<op>`` per elementwise op, and
    ``elementwise.residual_norm`` (perfmodel's fused norm op, 5 passes and 2 kernels, timed as
    residual_add + rmsnorm), when present. ``per_kernel_s``: fixed cost of one kernel, s.
    ``stats``: per class (and ``attention_masked``), see :class:`ClassStats`.
    """

    gpu: str
    dtype: str
    per_kernel_s: float
    per_kernel_source: str
    efficiency: dict[str, dict[str, float]]
    extra: dict[str, dict[str, float]]
    stats: dict[str, ClassStats]

    def summary(self) -> dict:
        """YAML-ready record of the fit (plain types, 4 significant digits, stable order):
        kernel cost, extra classes, and per class rows used, errors and exclusions by reason."""
        return {
            "dtype": self.dtype,
            "per_kernel_s": _sig4(self.per_kernel_s),
            "per_kernel_source": self.per_kernel_source,
            "extra_efficiency": {c: {k: _sig4(p[k]) for k in PARAM_KEYS}
                                 for c, p in self.extra.items()},
            "classes": {c: {"table": s.table, "rows": s.n_rows,
                            "median_abs_rel_err": _sig4(s.median_abs_rel_err),
                            "p90_abs_rel_err": _sig4(s.p90_abs_rel_err),
                            "excluded": {r: len(ix) for r, ix in s.excluded.items()},
                            "at_bound": list(s.at_bound)}
                        for c, s in self.stats.items()},
        }


# --------------------------------------------------------------------------- rows

@dataclass
class _Rows:
    """Rows of one class, arrays in SI units: t (s), flops, bytes (B), x (size), kernels."""

    t: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    x: np.ndarray
    kernels: np.ndarray
    group: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


def _rows(df: pd.DataFrame, flops, x, kernels, group) -> _Rows:
    n = len(df)
    bcast = lambda v: np.broadcast_to(np.asarray(v, dtype=float), (n,)).copy()  # noqa: E731
    return _Rows(t=df["median_ms"].to_numpy(float) / 1e3, flops=bcast(flops),
                 bytes=df["bytes"].to_numpy(float), x=bcast(x), kernels=bcast(kernels),
                 group=np.broadcast_to(np.asarray(group, dtype=object), (n,)).copy(),
                 index=df.index.to_numpy())


def _read(data_dir: Path, name: str) -> pd.DataFrame:
    path = Path(data_dir) / name
    if not path.is_file():
        raise SpecError(f"calibration data {data_dir} has no {name} (microbenchmark table missing)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None


def _models(cell: object) -> set[str]:
    """Model names in a cell like 'a:k_proj;b:o_proj' or 'a;b' (empty for NaN/blank)."""
    if not isinstance(cell, str):
        return set()
    parts = (p.strip() for p in cell.replace(",", ";").split(";"))
    return {p.split(":", 1)[0].strip() for p in parts if p}


class _Filter:
    """Drops rows with a reason, recording their row numbers per reason."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self.excluded: dict[str, list[int]] = {}

    def drop(self, mask, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.excluded.setdefault(reason, []).extend(int(i) for i in self.df.index[mask])
            self.df = self.df[~mask]

    def common(self) -> None:
        """Rows not measured: status not ok, or no positive time."""
        self.drop(self.df["status"].astype(str) != "ok", "status not ok")
        self.drop(~(self.df["median_ms"].astype(float) > 0), "no positive median time")

    def held_out(self, exclude_models: set[str], model_cols: tuple[str, ...]) -> None:
        """Rows whose shapes come only from held-out models (applied last, so this list is
        exactly the rows the held-out models took out of the fit)."""
        if exclude_models:
            sets = [set().union(*(_models(r[c]) for c in model_cols if c in self.df.columns))
                    for _, r in self.df.iterrows()]
            self.drop([bool(s) and s <= exclude_models for s in sets], "held-out model(s) only")

    def too_fast(self, f_peak: float, bw: float) -> None:
        """Rows beating a datasheet peak (working set resident in L2): not an HBM roofline."""
        for col, peak, reason in (("bytes", bw, "above datasheet HBM bandwidth (L2-resident)"),
                                  ("flops", f_peak, "above datasheet FLOP/s")):
            sec = self.df["median_ms"].to_numpy(float) / 1e3
            self.drop(self.df[col].to_numpy(float) / sec > peak, reason)

    def result(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(sorted(v)) for k, v in sorted(self.excluded.items())}


def _gemm_rows(df: pd.DataFrame, excl: set[str], dtype: str, f_peak: float, bw: float):
    """x = M. One kernel per row."""
    f = _Filter(df)
    f.common()
    f.drop(f.df["dtype"] != dtype, f"dtype not {dtype}")
    f.too_fast(f_peak, bw)
    f.held_out(excl, ("roles",))
    d = f.df
    m = d["m"].to_numpy(float)
    group = np.where(m <= 16, "M<=16", np.where(m <= 256, "16<M<=256", "M>256"))
    return _rows(d, d["flops"], m, 1.0, group), f.result()


def _grouped_rows(df: pd.DataFrame, excl: set[str], dtype: str, f_peak: float, bw: float):
    """x = routed rows / experts hit. One kernel per row unless a ``kernels`` column says."""
    f = _Filter(df)
    f.common()
    f.drop(f.df["dtype"] != dtype, f"dtype not {dtype}")
    f.too_fast(f_peak, bw)
    f.held_out(excl, ("source",))
    d = f.df
    x = d["routed_rows"].to_numpy(float) / d["experts_hit"].to_numpy(float)
    kernels = d["kernels"].fillna(1).to_numpy(float) if "kernels" in d else 1.0
    src = np.where(d["source"] == "seed_grid", "grid:", "model:")
    return _rows(d, d["flops"], x, kernels, src + d["routing"].astype(str)), f.result()


def _attention_rows(df: pd.DataFrame, excl: set[str], f_peak: float, bw: float):
    """Prefill rows (base curve: x = B·S, causal FLOPs) and the masked decode rows."""
    f = _Filter(df)
    f.common()
    f.drop(f.df["op"] == "attn_module", "attn_module: whole attention module, not one kernel")
    f.drop(f.df["dtype"] != "bfloat16", "dtype not bfloat16")
    f.drop(~f.df["op"].isin(["sdpa_prefill", "sdpa_decode"]), "unknown attention op")
    f.too_fast(f_peak, bw)
    f.held_out(excl, ("models", "model"))
    decode = f.df[f.df["op"] == "sdpa_decode"]
    f.drop(f.df["op"] == "sdpa_decode", "masked decode: fitted as attention_masked + copy")
    pre = f.df
    s = pre["seq"].to_numpy(float)
    label = np.where(pre["kv_heads"] < pre["heads"], "prefill:gqa", "prefill:mha")
    prefill = _rows(pre, pre["flops"].to_numpy(float) * (s + 1) / s,
                    pre["batch"].to_numpy(float) * s, 1.0, label)
    return prefill, decode, f.result()


def _memory_rows(df: pd.DataFrame, bw: float):
    """Elementwise rows (x = elements, no FLOPs), the launch-cost rows, and the kept frame."""
    f = _Filter(df)
    f.common()
    graph = f.df[f.df["op"] == "graph_tiny_kernel"]
    f.drop(f.df["op"].isin(["graph_tiny_kernel", "eager_tiny_kernel"]), "launch-cost row")
    f.drop(~f.df["op"].isin(list(ELEMENTWISE_KERNELS)), "not an elementwise op")
    f.too_fast(np.inf, bw)
    d = f.df
    elems = np.where(d["op"] == "copy", d["size_bytes"].to_numpy(float) / 2.0,
                     np.where(d["op"] == "silu_and_mul",
                              d["rows"].to_numpy(float) * d["ffn"].to_numpy(float),
                              d["tokens"].to_numpy(float) * d["hidden"].to_numpy(float)))
    kernels = d["op"].map(ELEMENTWISE_KERNELS).to_numpy(float)
    return _rows(d, 0.0, elems, kernels, d["op"].to_numpy(object)), graph, d, f.result()


def _residual_norm_rows(d: pd.DataFrame) -> _Rows | None:
    """perfmodel's fused ``norm`` op (residual add + RMSNorm: 5 passes over T·H bf16 plus the
    weight, 2 kernels, x = T·H) timed as the residual_add + rmsnorm rows of the same shape."""
    add = d[d["op"] == "residual_add"].set_index(["tokens", "hidden"])["median_ms"]
    nrm = d[d["op"] == "rmsnorm"].set_index(["tokens", "hidden"])["median_ms"]
    both = add.index.intersection(nrm.index).sort_values()
    if len(both) == 0:
        return None
    t_h = np.array([[float(t), float(h)] for t, h in both])
    t, h = t_h[:, 0], t_h[:, 1]
    n = len(both)
    return _Rows(t=(add.loc[both].to_numpy(float) + nrm.loc[both].to_numpy(float)) / 1e3,
                 flops=np.zeros(n), bytes=5 * t * h * 2 + 2 * h, x=t * h, kernels=np.full(n, 2.0),
                 group=np.full(n, "residual_norm", dtype=object), index=np.arange(n))


# --------------------------------------------------------------------------- model and fit

def _inv_eta(eta: float, half: float, x: np.ndarray) -> np.ndarray:
    """1/η(x) = (1 + x_half/x) / η_max."""
    return (1.0 + half / x) / eta


def _memory_time(nbytes: np.ndarray, eta: float, half: float, bw: float) -> np.ndarray:
    """bytes/(BW·η_m(bytes)) = (bytes + half)/(BW·η_m), s, as
    :func:`perfmodel.roofline.transfer_time`: 0 for rows that move nothing."""
    return (nbytes + half * (nbytes > 0)) / (bw * eta)


def _predict(r: _Rows, p: dict[str, float], f_peak: float, bw: float, t_kernel: float,
             smooth: float | None = None) -> np.ndarray:
    """Roofline time per row, s (plain max, or a p-norm when ``smooth`` is p)."""
    tm = _memory_time(r.bytes, p["memory"], p["memory_half"], bw)
    tc = r.flops / f_peak * _inv_eta(p["compute"], p["compute_half"], r.x)
    if smooth is None:
        roof = np.maximum(tc, tm)
    else:
        hi = np.maximum(tc, tm)
        safe = np.where(hi > 0, hi, 1.0)
        roof = hi * ((tc / safe) ** smooth + (tm / safe) ** smooth) ** (1.0 / smooth)
    return roof + r.kernels * t_kernel


class _Params:
    """Maps named parameters to a bounded vector: log η, and w = log1p(half / ref).

    ``halves``: half name → (ref, largest value of its curve's variable over the rows).
    """

    def __init__(self, names: list[str], halves: dict[str, tuple[float, float]]) -> None:
        self.names, self.ref = names, {n: ref for n, (ref, _) in halves.items()}
        lo, hi = [], []
        for n in names:
            if n == "t_kernel":
                lo.append(np.log(1e-8)), hi.append(np.log(1e-4))
            elif n.endswith("_half"):
                ref, top = halves[n]
                lo.append(0.0), hi.append(float(np.log1p(100.0 * top / ref)))
            else:
                lo.append(np.log(_ETA_BOUNDS[0])), hi.append(np.log(_ETA_BOUNDS[1]))
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


def _geo(x: np.ndarray) -> tuple[float, float]:
    """(geometric mean, max) of the positive values of a curve's variable."""
    pos = x[x > 0]
    return float(np.exp(np.mean(np.log(pos)))), float(pos.max())


def _least_squares(resid: Callable[[dict[str, float], float | None], np.ndarray], prm: _Params,
                   starts: list[dict[str, float]]) -> tuple[dict[str, float], tuple[str, ...]]:
    """Best of the fixed starts: a smooth-max fit, then a plain-max polish; the lower cost wins.
    Returns the parameters and the names of those that ended on a bound (weakly identified:
    η at its limit, or a half size at its upper limit)."""
    best, best_cost = None, np.inf
    for start in starts:
        sol = least_squares(lambda u: resid(prm.decode(u), _SMOOTH_P), prm.encode(start),
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


def _starts(names: list[str], medians: dict[str, float]) -> list[dict[str, float]]:
    """Deterministic start points: η at typical values, each half at 0 or the median of its
    curve's variable (``medians``: half name → median)."""
    grid: list[dict[str, float]] = [{}]
    for h in (n for n in names if n.endswith("_half")):
        grid = [{**g, h: v} for g in grid for v in (0.0, medians[h])]
    base = {n: _ETA_START.get(n, 3e-6 if n == "t_kernel" else 0.5) for n in names}
    return [{**base, **g} for g in grid]


def _fit_class(r: _Rows, f_peak: float, bw: float, t_kernel: float | None,
               compute: bool = True) -> tuple[dict[str, float], float, tuple[str, ...]]:
    """Fit one class's η curves (and t_kernel, s, when None): (params, t_kernel, at_bound)."""
    names = (["compute", "compute_half"] if compute else []) + ["memory", "memory_half"]
    if t_kernel is None:
        names.append("t_kernel")
    fixed = {} if compute else {"compute": 1.0, "compute_half": 0.0}
    var = {"compute_half": r.x, "memory_half": r.bytes}
    prm = _Params(names, {h: _geo(var[h]) for h in names if h.endswith("_half")})
    log_t = np.log(r.t)

    def resid(p: dict[str, float], smooth: float | None) -> np.ndarray:
        full = {**fixed, **p}
        return np.log(_predict(r, full, f_peak, bw, full.get("t_kernel", t_kernel), smooth)) - log_t

    medians = {h: float(np.median(var[h])) for h in names if h.endswith("_half")}
    p, at = _least_squares(resid, prm, _starts(names, medians))
    tk = p.pop("t_kernel", t_kernel)
    return {k: {**fixed, **p}[k] for k in PARAM_KEYS}, float(tk), at


def _fit_masked_decode(decode: pd.DataFrame, attn: dict[str, float], f_peak: float, bw: float,
                       t_kernel: float):
    """Joint fit of the masked kernel (reads per-head K/V over all A slots, x = B·A) and, on
    rows with grouped heads, the K/V expansion before it (``copy``: read the n_kv-head cache,
    write n_h heads, 2 kernels, x = elements written). The masked kernel keeps the base
    attention's compute curve. Returns ({class: params}, predicted s, kernel rows, at_bound)."""
    b, a, h, kv, d = (decode[c].to_numpy(float)
                      for c in ("batch", "alloc_len", "heads", "kv_heads", "head_dim"))
    cache, per_head = 2 * b * kv * a * d * 2.0, 2 * b * h * a * d * 2.0  # K and V, bf16
    kern = _rows(decode, decode["flops"], b * a, 1.0, np.where(kv < h, "decode:gqa", "decode:mha"))
    kern.bytes = kern.bytes - cache + per_head  # q, o and the per-head K/V the kernel reads
    expand = (kv < h).astype(float)
    copy = _Rows(t=kern.t, flops=np.zeros(len(kern)), bytes=(cache + per_head) * expand,
                 x=b * a * 2 * h * d, kernels=2.0 * expand, group=kern.group, index=kern.index)
    names = ["memory", "memory_half"] + (["copy", "copy_half"] if expand.any() else [])
    var = {"memory_half": kern.bytes, "copy_half": copy.bytes[expand > 0]}
    prm = _Params(names, {n: _geo(var[n]) for n in names if n.endswith("_half")})

    def split(p: dict[str, float]) -> dict[str, dict[str, float]]:
        return {"attention_masked": {"compute": attn["compute"], "memory": p["memory"],
                                     "compute_half": attn["compute_half"],
                                     "memory_half": p["memory_half"]},
                "copy": {"compute": 1.0, "memory": p.get("copy", 1.0), "compute_half": 0.0,
                         "memory_half": p.get("copy_half", 0.0)}}

    def predict(p: dict[str, float], smooth: float | None) -> np.ndarray:
        c = split(p)
        return (_predict(kern, c["attention_masked"], f_peak, bw, t_kernel, smooth)
                + _predict(copy, c["copy"], f_peak, bw, t_kernel, smooth) * expand)

    p, at = _least_squares(lambda q, sm: np.log(predict(q, sm)) - np.log(kern.t), prm,
                           _starts(names, {n: float(np.median(var[n])) for n in prm.ref}))
    out = split(p)
    if not expand.any():
        del out["copy"]
    return out, predict(p, None), kern, at


def _stats(table: str, r: _Rows, pred: np.ndarray, excluded, at_bound) -> ClassStats:
    rel = pred / r.t - 1.0
    groups = {}
    for g in sorted(set(r.group.tolist())):
        m = r.group == g
        groups[str(g)] = (int(m.sum()), float(np.median(rel[m])), float(np.median(np.abs(rel[m]))))
    return ClassStats(table=table, n_rows=len(r), median_abs_rel_err=float(np.median(np.abs(rel))),
                      p90_abs_rel_err=float(np.percentile(np.abs(rel), 90)), excluded=excluded,
                      groups=groups, at_bound=tuple(at_bound))


def _graph_kernel_cost(graph: pd.DataFrame) -> tuple[float, str] | None:
    """Cost of one kernel node in a CUDA graph, s: slope of replay time against node count N
    (replay time = per-kernel median × N), or the per-kernel median at the largest N."""
    if graph.empty:
        return None
    n = graph["kernels"].to_numpy(float)
    replay = graph["median_ms"].to_numpy(float) / 1e3 * n
    distinct = sorted(set(n.astype(int).tolist()))
    if len(distinct) >= 2:
        slope = float(np.polyfit(n, replay, 1)[0])
        if slope > 0:
            return slope, f"graph_tiny_kernel rows: slope of replay time over N = {distinct}"
    i = int(np.argmax(n))
    return float(replay[i] / n[i]), f"graph_tiny_kernel row at N = {int(n[i])}"


# --------------------------------------------------------------------------- public API

def fit_kernel_efficiencies(data_dir: Path, gpu: GPUSpec, exclude_models: set[str] = frozenset(),
                            dtype: str = "bfloat16",
                            per_kernel: Literal["graph", "gemm_intercept"] = "graph") -> KernelFit:
    """Fit η per op class to the tables in ``data_dir`` against ``gpu``'s datasheet peaks.

    ``dtype`` selects the gemm and grouped_gemm rows and their peak (fp8 rows against the fp8
    peak); attention and elementwise rows are bf16 whatever ``dtype``. ``per_kernel``: the fixed
    cost per kernel, s, is the CUDA-graph kernel-node cost of memory.csv (``"graph"``; the gemm
    intercept when those rows are absent) or the intercept of the gemm fit (``"gemm_intercept"``:
    the fixed cost of a real GEMM launch, larger than a tiny kernel's). Raises
    :class:`SpecError` when a table is missing or a class has no usable row.
    """
    data_dir = Path(data_dir)
    if dtype not in _PEAK_KEY:
        raise SpecError(f"unsupported dtype '{dtype}' (known: {', '.join(_PEAK_KEY)})")
    if per_kernel not in ("graph", "gemm_intercept"):
        raise SpecError(f"unknown per_kernel '{per_kernel}' (known: graph, gemm_intercept)")
    tables = {cls: _read(data_dir, name) for cls, name in TABLES.items()}
    excl = set(exclude_models)
    f_gemm, f_bf16, bw = gpu.peak(_PEAK_KEY[dtype]), gpu.peak("bf16"), gpu.hbm_bandwidth

    gemm, gemm_ex = _gemm_rows(tables["gemm"], excl, dtype, f_gemm, bw)
    grouped, grouped_ex = _grouped_rows(tables["grouped_gemm"], excl, dtype, f_gemm, bw)
    prefill, decode, attn_ex = _attention_rows(tables["attention"], excl, f_bf16, bw)
    elem, graph, elem_df, elem_ex = _memory_rows(tables["elementwise"], bw)
    for r, what in ((gemm, f"gemm.csv ({dtype} rows)"),
                    (grouped, f"grouped_gemm.csv ({dtype} rows)"),
                    (prefill, "attention.csv (sdpa_prefill rows)"),
                    (elem, "memory.csv (elementwise rows)")):
        if len(r) == 0:
            raise SpecError(f"no usable rows in {data_dir}/{what}")

    eff, extra, stats, at = {}, {}, {}, {}
    graph_cost = _graph_kernel_cost(graph) if per_kernel == "graph" else None
    if graph_cost is None:
        eff["gemm"], t_kernel, at["gemm"] = _fit_class(gemm, f_gemm, bw, None)
        source = "intercept of the gemm fit (fixed cost per GEMM launch)"
    else:
        t_kernel, source = graph_cost
        eff["gemm"], _, at["gemm"] = _fit_class(gemm, f_gemm, bw, t_kernel)
    eff["grouped_gemm"], _, at["grouped_gemm"] = _fit_class(grouped, f_gemm, bw, t_kernel)
    eff["attention"], _, at["attention"] = _fit_class(prefill, f_bf16, bw, t_kernel)
    eff["elementwise"], _, at["elementwise"] = _fit_class(elem, f_bf16, bw, t_kernel, compute=False)
    for cls, r, ex, f_peak in (("gemm", gemm, gemm_ex, f_gemm),
                               ("grouped_gemm", grouped, grouped_ex, f_gemm),
                               ("attention", prefill, attn_ex, f_bf16),
                               ("elementwise", elem, elem_ex, f_bf16)):
        pred = _predict(r, eff[cls], f_peak, bw, t_kernel)
        stats[cls] = _stats(TABLES[cls], r, pred, ex, at[cls])

    if len(decode):
        fitted, pred, kern, at_m = _fit_masked_decode(decode, eff["attention"], f_bf16, bw,
                                                      t_kernel)
        extra.update(fitted)
        stats["attention_masked"] = _stats(TABLES["attention"], kern, pred, {}, at_m)
    for op in sorted(set(elem.group.tolist())):
        m = elem.group == op
        sub = _Rows(elem.t[m], elem.flops[m], elem.bytes[m], elem.x[m], elem.kernels[m],
                    elem.group[m], elem.index[m])
        extra[f"elementwise.{op}"], _, _ = _fit_class(sub, f_bf16, bw, t_kernel, compute=False)
    fused = _residual_norm_rows(elem_df)
    if fused is not None:
        extra["elementwise.residual_norm"], _, _ = _fit_class(fused, f_bf16, bw, t_kernel,
                                                              compute=False)
    return KernelFit(gpu=gpu.name, dtype=dtype, per_kernel_s=float(t_kernel),
                     per_kernel_source=source, efficiency=eff, extra=extra, stats=stats)


def _sig4(v: float) -> float:
    return float(f"{v:.4g}")


def kernel_fit_to_profile_dict(fit: KernelFit, include_extra: bool = False) -> dict:
    """The profile YAML ``efficiency:`` mapping: class → {compute, memory, compute_half,
    memory_half} (η as fractions of datasheet peaks, compute_half in the class's size unit,
    memory_half in bytes), to 4
    significant digits. ``include_extra`` adds ``attention_masked`` and ``copy`` when fitted
    (perfmodel's optional op classes)."""
    classes = list(PROFILE_CLASSES)
    if include_extra:
        classes += [c for c in EXTRA_CLASSES if c in fit.extra]
    both = {**fit.efficiency, **fit.extra}
    return {c: {k: _sig4(both[c][k]) for k in PARAM_KEYS} for c in classes}
