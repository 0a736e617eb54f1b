"""Fit per-op-class kernel efficiencies η to the microbenchmark tables of one GPU.

Each benchmarked call is the model's own ops (:mod:`perfmodel.calibration.bench_shapes`) and
its predicted time the model's own roofline (:func:`perfmodel.roofline.op_time`):

    t = max(FLOPs / (F_peak · η_c(x)),  bytes / (BW · η_m(bytes))) + kernels · t_kernel,
    η(u) = η_max · u / (u + u_half)                      (u_half = 0: constant η_max)

with F_peak (FLOP/s) and BW (B/s) the GPU's *datasheet* peaks, so every fitted η is a fraction
of the datasheet and transfers to another GPU as a fraction of its peaks; the parameters
fitted are the profile's η symbols of each class. The memory curve saturates in the bytes
moved (its half, ``memory_half``, in bytes: the memory time is (bytes + memory_half)/(BW·η_m),
never falling as the bytes grow); the compute curve in the op's efficiency size x
(``compute_half`` in the unit of x):

- ``gemm`` (gemm.csv): M, the GEMM rows (tokens);
- ``grouped_gemm`` (grouped_gemm.csv): tokens per touched expert (routed rows / experts hit);
- ``attention`` (attention.csv, ``sdpa_prefill`` rows): B·C keys read, C = S in a prefill, with
  the model's S(S+1)/2 causal pairs per sequence;
- ``elementwise`` (memory.csv: rmsnorm, residual_add, silu_and_mul, copy): elements; costed by
  bytes only (perfmodel counts no FLOPs for elementwise ops), so its compute η is 1, not fitted.

How the curves are fitted (least squares on log time, smooth then plain max, bounds snapped)
is :mod:`perfmodel.calibration.fit_curves`; how rows are read and dropped,
:mod:`perfmodel.calibration.fit_tables`.

The fixed cost per kernel is not fitted per class. By default it is one constant, the cost of
a kernel node inside a CUDA graph (the slope of replay time against node count of the
``graph_tiny_kernel`` rows of memory.csv), for every kernel. With ``per_kernel="gemm_intercept"``
(or without those rows) there are two: ``t_kernel``, a free parameter of the gemm fit (the
fixed cost of a real GEMM launch), which the compute classes pay, and ``t_kernel_small``, a
free parameter of the elementwise fit (the floor of a small memory-bound kernel), which the
memory-bound classes pay (:attr:`perfmodel.ops.OpClass.small_kernels`); the elementwise rows
tell it from their memory curve's half because their ops launch different numbers of kernels.
Kernels per row: the model op's, except the elementwise ops' eager implementations
(:data:`~perfmodel.calibration.bench_shapes.ELEMENTWISE_KERNELS`). Rows faster than a datasheet
peak (working set in L2) are dropped, and η_max ≤ 1.

Decode attention. Every ``sdpa_decode`` row is transformers' StaticCache path: a boolean mask
over the A allocated slots, so SDPA scores all A slots, and, when heads are grouped
(n_kv < n_h), ``repeat_kv`` first copies K/V to every query head: the model's decode with
``decode_kv_expand`` at L = A. These rows do not inform the base ``attention`` curve; they
are fitted jointly as ``attention_masked`` (the masked kernel, keeping the base attention's
compute curve) and ``copy`` (the K/V expansion). The ``attn_module`` rows time a whole
attention module (projections, RoPE, cache update, attention) and are not used.

Held-out models: a row whose shapes come *only* from models in ``exclude_models`` is dropped;
rows from the sweep grid (``seed_grid``), shared with a training model, or without a model
column (memory.csv) stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from perfmodel.calibration.bench_shapes import ELEMENTWISE_KERNELS
from perfmodel.calibration.fit_curves import (
    BOUND_SNAP, Rows, class_variables, fit_rows, parameter_symbols, predict,
)
from perfmodel.calibration.fit_tables import (
    TABLES, attention_rows, gemm_rows, graph_kernel_cost, grouped_rows, memory_rows, models_in,
    read_table, residual_norm_rows,
)
from perfmodel.errors import SpecError
from perfmodel.ops import OpClass, Peak
from perfmodel.symbols import bw as BW, efficiency_symbols, mu_kv, peak as F_PEAK, peak_attn as F_PEAK_ATTN
from perfmodel.symbols import t_kernel as T_KERNEL
from perfmodel.symbols import t_kernel_small as T_KERNEL_SMALL

if TYPE_CHECKING:
    from perfmodel.specs.hardware import GPUSpec

__all__ = ["BOUND_SNAP", "ELEMENTWISE_KERNELS", "EXTRA_CLASSES", "PARAM_KEYS", "PROFILE_CLASSES",
           "TABLES", "ClassStats", "KernelFit", "fit_kernel_efficiencies",
           "kernel_fit_to_profile_dict", "models_in"]

#: Classes written to a profile's ``efficiency:`` mapping, in order: those every profile
#: needs and the microbenchmarks time (not the link).
PROFILE_CLASSES = tuple(c.value for c in OpClass.required() if not c.over_link)
#: Extra classes fitted from the masked decode rows (perfmodel's optional op classes).
EXTRA_CLASSES = tuple(c.value for c in OpClass.optional())
PARAM_KEYS = ("compute", "memory", "compute_half", "memory_half")
_PEAK_KEY = {"bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}
#: The parameters of a class that runs at no compute peak (FLOPs-free): η_c = 1, x_c = 0.
_NO_COMPUTE = {"compute": 1.0, "compute_half": 0.0}


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
    residual_add + rmsnorm), when present. ``per_kernel_s``: fixed cost of one kernel of a
    compute class, s; ``per_small_kernel_s``: of one kernel of a memory-bound class, s.
    ``stats``: per class (and ``attention_masked``), see :class:`ClassStats`.
    """

    gpu: str
    dtype: str
    per_kernel_s: float
    per_kernel_source: str
    efficiency: dict[str, dict[str, float]]
    extra: dict[str, dict[str, float]]
    stats: dict[str, ClassStats]
    per_small_kernel_s: float | None = None
    per_small_kernel_source: str = ""

    def summary(self) -> dict:
        """YAML-ready record of the fit (plain types, 4 significant digits, stable order):
        kernel cost, extra classes, and per class rows used, errors and exclusions by reason."""
        return {
            "dtype": self.dtype,
            "per_kernel_s": _sig4(self.per_kernel_s),
            "per_kernel_source": self.per_kernel_source,
            "per_small_kernel_s": None if self.per_small_kernel_s is None else _sig4(self.per_small_kernel_s),
            "per_small_kernel_source": self.per_small_kernel_source,
            "extra_efficiency": {c: {k: _sig4(p[k]) for k in PARAM_KEYS}
                                 for c, p in self.extra.items()},
            "classes": {c: {"table": s.table, "rows": s.n_rows,
                            "median_abs_rel_err": _sig4(s.median_abs_rel_err),
                            "p90_abs_rel_err": _sig4(s.p90_abs_rel_err),
                            "excluded": {r: len(ix) for r, ix in s.excluded.items()},
                            "at_bound": list(s.at_bound)}
                        for c, s in self.stats.items()},
        }


# --------------------------------------------------------------------------- fits

def _eta_values(op_class: str, params: dict[str, float]) -> dict:
    """Symbol → number of one class's η parameters."""
    eta = efficiency_symbols(op_class)
    return {eta[k]: v for k, v in params.items() if k in eta}


def _fit_class(r: Rows, op_class: OpClass, hardware: dict, costs: dict, free: str | None = None
               ) -> tuple[dict[str, float], float | None, tuple[str, ...]]:
    """Fit one class's η curves, with the kernel costs ``costs`` (symbol → s) fixed, and the one
    named ``free`` (``t_kernel`` or ``t_kernel_small``) fitted with them when given:
    (params, the fitted cost or None, at_bound)."""
    compute = op_class.peak is not Peak.NONE
    names = (["compute", "compute_half"] if compute else []) + ["memory", "memory_half"]
    if free is not None:
        names.append(free)
    p, at = fit_rows(r, parameter_symbols(op_class, names), {**hardware, **costs},
                     class_variables(r, op_class))
    cost = p.pop(free) if free is not None else None
    full = {**({} if compute else _NO_COMPUTE), **p}
    return {k: full[k] for k in PARAM_KEYS}, cost, at


def _fit_masked_decode(decode: Rows, attn: dict[str, float], hardware: dict, costs: dict):
    """Joint fit of the masked kernel (``attention_masked``: reads per-head K/V over all A
    slots, x = B·A, keeping the base attention's compute curve) and, on rows with grouped
    heads, the K/V expansion before it (``copy``: read the n_kv-head cache, write n_h heads).
    Returns ({class: params}, predicted s, at_bound)."""
    masked, copy = OpClass.ATTENTION_MASKED, OpClass.COPY
    expand = decode.present[[op.op_class == copy for op in decode.call.ops]].any()
    free = parameter_symbols(masked, ["memory", "memory_half"])
    variables = {"memory_half": class_variables(decode, masked)["memory_half"]}
    if expand:
        eta_copy = parameter_symbols(copy, ["memory", "memory_half"])
        free.update(copy=eta_copy["memory"], copy_half=eta_copy["memory_half"])
        variables["copy_half"] = class_variables(decode, copy)["memory_half"]
    fixed = {**hardware, **costs,
             **_eta_values(masked, {"compute": attn["compute"], "compute_half": attn["compute_half"]}),
             **_eta_values(copy, {"memory": 1.0, "memory_half": 0.0})}
    p, at = fit_rows(decode, free, fixed, variables)
    out = {masked.value: {"compute": attn["compute"], "memory": p["memory"],
                          "compute_half": attn["compute_half"], "memory_half": p["memory_half"]},
           copy.value: {**_NO_COMPUTE, "memory": p.get("copy", 1.0),
                        "memory_half": p.get("copy_half", 0.0)}}
    values = {**fixed, **_eta_values(masked, out[masked.value]), **_eta_values(copy, out[copy.value])}
    if not expand:
        del out[copy.value]
    return out, predict(decode, values), at


def _stats(table: str, r: Rows, pred: np.ndarray, excluded, at_bound) -> ClassStats:
    rel = pred / r.t - 1.0
    groups = {}
    for g in sorted(set(r.group.tolist())):
        m = r.group == g
        groups[str(g)] = (int(m.sum()), float(np.median(rel[m])), float(np.median(np.abs(rel[m]))))
    return ClassStats(table=table, n_rows=len(r), median_abs_rel_err=float(np.median(np.abs(rel))),
                      p90_abs_rel_err=float(np.percentile(np.abs(rel), 90)), excluded=excluded,
                      groups=groups, at_bound=tuple(at_bound))


# --------------------------------------------------------------------------- public API

def _hardware(gpu: GPUSpec, dtype: str) -> dict:
    """The numbers every class's rows are predicted with: the datasheet peaks (the GEMMs' at
    ``dtype``) and the benchmarks' bf16 caches. The microbenchmarks' kernels cost their bytes
    alone: no class pays a per-sequence context half or an exposed overlap here (a vllm profile
    fits those, ``fit_vllm.PARAMETERS``)."""
    return {F_PEAK: gpu.peak(_PEAK_KEY[dtype]), F_PEAK_ATTN: gpu.peak("bf16"), BW: gpu.hbm_bandwidth, mu_kv: 1.0,
            **{efficiency_symbols(c)[k]: 0.0 for c in (*PROFILE_CLASSES, *EXTRA_CLASSES)
               for k in ("context_half", "exposed")}}


def fit_gemm_class(data_dir: Path, gpu: GPUSpec, per_kernel_s: float, exclude_models: set[str] = frozenset(),
                   dtype: str = "bfloat16") -> tuple[dict[str, float], ClassStats]:
    """The dense GEMM class alone: its η curves (:data:`PARAM_KEYS`) fitted to the ``dtype``
    rows of ``gemm.csv`` in ``data_dir`` (rows only of ``exclude_models`` left out), each kernel
    costing ``per_kernel_s`` (s), and how they match those rows. Raises :class:`SpecError` when
    the table is missing or has no usable row."""
    if dtype not in _PEAK_KEY:
        raise SpecError(f"unsupported dtype '{dtype}' (known: {', '.join(_PEAK_KEY)})")
    hardware = _hardware(gpu, dtype)
    rows, excluded = gemm_rows(read_table(Path(data_dir), TABLES["gemm"]), set(exclude_models), dtype,
                               hardware[F_PEAK], hardware[BW])
    if len(rows) == 0:
        raise SpecError(f"no usable rows in {data_dir}/{TABLES['gemm']} ({dtype} rows)")
    costs = {T_KERNEL: per_kernel_s, T_KERNEL_SMALL: per_kernel_s}
    params, _, at = _fit_class(rows, OpClass.GEMM, hardware, costs)
    values = {**hardware, **costs, **_eta_values(OpClass.GEMM.value, params)}
    return params, _stats(TABLES["gemm"], rows, predict(rows, values), excluded, at)


def fit_kernel_efficiencies(data_dir: Path, gpu: GPUSpec, exclude_models: set[str] = frozenset(),
                            dtype: str = "bfloat16",
                            per_kernel: Literal["graph", "gemm_intercept"] = "graph") -> KernelFit:
    """Fit η per op class to the tables in ``data_dir`` against ``gpu``'s datasheet peaks.

    ``dtype`` selects the gemm and grouped_gemm rows and their peak (fp8 rows against the fp8
    peak); attention and elementwise rows are bf16 whatever ``dtype``. ``per_kernel``: the fixed
    cost per kernel, s, is the CUDA-graph kernel-node cost of memory.csv (``"graph"``; the gemm
    intercept when those rows are absent) or the intercept of the gemm fit (``"gemm_intercept"``:
    the fixed cost of a real GEMM launch, larger than a tiny kernel's; the memory-bound classes
    then pay the intercept of the elementwise fit, a small kernel's floor). Raises
    :class:`SpecError` when a table is missing or a class has no usable row.
    """
    data_dir = Path(data_dir)
    if dtype not in _PEAK_KEY:
        raise SpecError(f"unsupported dtype '{dtype}' (known: {', '.join(_PEAK_KEY)})")
    if per_kernel not in ("graph", "gemm_intercept"):
        raise SpecError(f"unknown per_kernel '{per_kernel}' (known: graph, gemm_intercept)")
    tables = {cls: read_table(data_dir, name) for cls, name in TABLES.items()}
    excl = set(exclude_models)
    f_gemm, f_bf16, bw = gpu.peak(_PEAK_KEY[dtype]), gpu.peak("bf16"), gpu.hbm_bandwidth
    hardware = _hardware(gpu, dtype)

    gemm, gemm_ex = gemm_rows(tables["gemm"], excl, dtype, f_gemm, bw)
    grouped, grouped_ex = grouped_rows(tables["grouped_gemm"], excl, dtype, f_gemm, bw)
    prefill, decode, attn_ex = attention_rows(tables["attention"], excl, f_bf16, bw)
    elem, graph, elem_df, elem_ex = memory_rows(tables["elementwise"], bw)
    for r, what in ((gemm, f"gemm.csv ({dtype} rows)"),
                    (grouped, f"grouped_gemm.csv ({dtype} rows)"),
                    (prefill, "attention.csv (sdpa_prefill rows)"),
                    (elem, "memory.csv (elementwise rows)")):
        if len(r) == 0:
            raise SpecError(f"no usable rows in {data_dir}/{what}")

    eff, extra, stats, at = {}, {}, {}, {}
    graph_cost = graph_kernel_cost(graph) if per_kernel == "graph" else None
    if graph_cost is None:
        eff["gemm"], t_kernel, at["gemm"] = _fit_class(gemm, OpClass.GEMM, hardware, {}, "t_kernel")
        source = "intercept of the gemm fit (fixed cost per GEMM launch)"
        eff["elementwise"], t_small, at["elementwise"] = _fit_class(
            elem, OpClass.ELEMENTWISE, hardware, {T_KERNEL: t_kernel}, "t_kernel_small")
        small_source = "intercept of the elementwise fit (fixed cost per small kernel)"
    else:
        (t_kernel, source), t_small, small_source = graph_cost, None, ""
        eff["gemm"], _, at["gemm"] = _fit_class(gemm, OpClass.GEMM, hardware, {T_KERNEL: t_kernel})
    costs = {T_KERNEL: t_kernel, T_KERNEL_SMALL: t_kernel if t_small is None else t_small}
    rows = {OpClass.GEMM: (gemm, gemm_ex), OpClass.GROUPED_GEMM: (grouped, grouped_ex),
            OpClass.ATTENTION: (prefill, attn_ex), OpClass.ELEMENTWISE: (elem, elem_ex)}
    for cls, (r, _) in rows.items():
        if cls.value not in eff:
            eff[cls.value], _, at[cls.value] = _fit_class(r, cls, hardware, costs)
    for cls, (r, ex) in rows.items():
        values = {**hardware, **costs, **_eta_values(cls, eff[cls.value])}
        stats[cls.value] = _stats(TABLES[cls.value], r, predict(r, values), ex, at[cls.value])

    if len(decode):
        fitted, pred, at_m = _fit_masked_decode(decode, eff["attention"], hardware, costs)
        extra.update(fitted)
        stats["attention_masked"] = _stats(TABLES["attention"], decode, pred, {}, at_m)
    for op in sorted(set(elem.group.tolist())):
        extra[f"elementwise.{op}"], _, _ = _fit_class(elem.subset(elem.group == op),
                                                      OpClass.ELEMENTWISE, hardware, costs)
    fused = residual_norm_rows(elem_df)
    if fused is not None:
        extra["elementwise.residual_norm"], _, _ = _fit_class(fused, OpClass.ELEMENTWISE, hardware, costs)
    return KernelFit(gpu=gpu.name, dtype=dtype, per_kernel_s=float(t_kernel),
                     per_kernel_source=source, efficiency=eff, extra=extra, stats=stats,
                     per_small_kernel_s=None if t_small is None else float(t_small),
                     per_small_kernel_source=small_source)


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
