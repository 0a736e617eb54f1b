"""Fitting a quantization scheme's tiled MoE kernel: its fixed time per kernel and per K-loop step,
and the host time its launches from Python add to a launched prefill.

A scheme whose routed experts run in a tiled kernel (``moe_tile`` in ``specs/quantization.yaml``:
gpt-oss's MXFP4 experts, vLLM's TRITON MXFP4 MoE kernel on Hopper, triton_kernels'
``matmul_ogs``) has a floor under the kernel's time: its waves of K loops
(:func:`perfmodel.ops.moe.tile_floor`). Its two times, ``tile_s`` (t_tile: prologue and epilogue
of one kernel) and ``k_step_s`` (t_kstep: one step of a tile's K loop), are fitted by least
squares on log(model/measured) of the expert-GEMM kernels of profiled decode steps, through the
model's own op time (the larger of the roofline and the floor), every other parameter held at
the bf16 fit's value.

The rows: ok, one GPU, at the scheme, with a decode profile, on a backend that runs the kernel
(:data:`TILE_BACKENDS`), at a routing the model knows (vLLM's routing simulator, or B = 1: one
token touches its k experts however its router picks them), whose prefill fits one engine step
(a decode profile of a chunked prefill also holds the decodes that ride along its later chunks,
as :func:`perfmodel.calibration.fit_vllm.kernel_profile_rows` says). Those of the models of
:data:`TILE_TRAIN` are training points; every other model's, what-if shapes included, are held
out, and their kernel residuals are reported beside the fit.

The kernel's library launches it from Python (triton_kernels' ``matmul_ogs`` builds each launch
on the host), inside vLLM's fused-MoE op, which a launched prefill runs eagerly: ``host_layer_s``
(t_moe_host, per MoE layer, at the reference host) is fitted on the TTFT of the same training
models' rows whose prefill the profile without it puts at the host's launch floor
(:func:`fit_tile_host`), every other model's such rows held out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.calibration.fit import _profile, _sig, on_bounds, one_gpu_rows

#: Per scheme with a tiled MoE kernel: the models whose profiled kernels fit its times.
TILE_TRAIN: dict[str, tuple[str, ...]] = {"mxfp4-moe": ("gpt-oss-120b",)}

#: Per scheme: the ``--moe-backend`` values whose rows ran its tiled kernel (vLLM 0.26: TRITON
#: runs ``matmul_ogs`` with the routing inside, TRITON_UNFUSED the same kernel with the routing
#: outside; Marlin's MoE kernel is another kernel, with tiles of its own).
TILE_BACKENDS: dict[str, tuple[str, ...]] = {"mxfp4-moe": ("triton", "triton_unfused")}

#: (start, lower, upper) of t_tile and t_kstep, s.
TILE_BOUNDS = ((5e-6, 0.0, 1e-4), (1e-6, 0.0, 1e-5))


def tile_rows(rows: list[dict[str, Any]], scheme: str) -> list[dict[str, Any]]:
    """The rows whose profiled expert kernels show a scheme's tiled kernel (see the module
    docstring): the latest row of each point id."""
    from perfmodel.calibration.fit_vllm import VLLM_OPTIONS
    from perfmodel.measuring.compare import profiled_context, row_quant, row_routing, row_speculative

    backends, chunk = TILE_BACKENDS.get(scheme, ()), VLLM_OPTIONS["prefill_chunk_tokens"]
    latest = {r["point_id"]: r for r in one_gpu_rows(rows)
              if r.get("status") == "ok" and row_quant(r) == scheme and not row_speculative(r)
              and r.get("moe_backend", "triton") in backends
              and (row_routing(r) == "uniform_random" or int(r["batch"]) == 1)
              and profiled_context(r) is not None and r["batch"] * r["input_len"] <= chunk
              and ((r.get("decode_profile") or {}).get("split_ms") or {}).get("expert_gemm")}
    return list(latest.values())


def kernel_residuals(rows: list[dict[str, Any]], profile, gpu: str) -> np.ndarray:
    """log(model/measured) of each row's expert-GEMM kernel time in one decode step under a
    profile object."""
    from perfmodel.calibration.fit_vllm import category_op_names, profiled_kernels_s
    from perfmodel.specs.hardware import load_gpu

    names = category_op_names(rows, profile, "expert_gemm")
    measured = np.array([r["decode_profile"]["split_ms"]["expert_gemm"] * 1e-3 for r in rows])
    return np.log(profiled_kernels_s(rows, names, profile, load_gpu(gpu)) / measured)


def fit_tile_times(every_row: list[dict[str, Any]], base: dict[str, Any], gpu: str,
                   scheme: str) -> tuple[dict[str, float] | None, list[str], dict[str, Any]]:
    """``tile_s`` and ``k_step_s`` of a scheme's tiled MoE kernel (s), the point ids they come
    from, and the record of the fit (its training and held-out rows, the held-out kernel
    residuals). (None, [], {}) when no training model has such rows."""
    from scipy.optimize import least_squares

    rows = tile_rows(every_row, scheme)
    train_models = TILE_TRAIN.get(scheme, ())
    train = [r for r in rows if r["model"] in train_models]
    held = [r for r in rows if r["model"] not in train_models]
    if not train:
        return None, [], {}
    scale = np.array([b[0] for b in TILE_BOUNDS])
    lower = np.array([b[1] for b in TILE_BOUNDS]) / scale
    upper = np.array([b[2] for b in TILE_BOUNDS]) / scale

    def with_times(x: np.ndarray) -> dict[str, Any]:
        entry = {**base.get("quantization", {}).get(scheme, {}), "tile_s": float(x[0]), "k_step_s": float(x[1])}
        return {**base, "quantization": {**base.get("quantization", {}), scheme: entry}}

    result = least_squares(lambda x: kernel_residuals(train, _profile(with_times(x * scale)), gpu),
                           np.ones(len(TILE_BOUNDS)), bounds=(lower, upper), method="trf")
    x = on_bounds(result.x, lower, upper)
    times = {"tile_s": _sig(float(x[0] * scale[0])), "k_step_s": _sig(float(x[1] * scale[1]))}
    fitted = _profile(with_times(np.array([times["tile_s"], times["k_step_s"]])))
    record: dict[str, Any] = {
        "models": list(train_models), "backends": list(TILE_BACKENDS[scheme]),
        "points": sorted(r["point_id"] for r in train),
        "train_mape_pct": _sig(float(100 * np.mean(np.abs(np.expm1(kernel_residuals(train, fitted, gpu))))), 3),
    }
    if held:
        errors = np.expm1(kernel_residuals(held, fitted, gpu))
        record["held_out"] = {
            "mape_pct": _sig(float(100 * np.mean(np.abs(errors))), 3),
            "errors_pct": {r["point_id"]: _sig(float(100 * e), 3) for r, e in zip(held, errors)},
        }
    return times, [r["point_id"] for r in train], record


#: The staged MoE block's bitmatrix pack, as its kernel's name reads in a profile.
BITMATRIX_KERNEL = "pack_bitmatrix"


def bitmatrix_rows(rows: list[dict[str, Any]], scheme: str) -> list[dict[str, Any]]:
    """The rows of :func:`tile_rows` whose profiled decode step lists the bitmatrix pack (a staged
    MoE block's, :func:`perfmodel.ops.moe.routing_bitmatrix`)."""
    return [r for r in tile_rows(rows, scheme) if pack_kernel_s(r) is not None]


def pack_kernel_s(row: dict[str, Any]) -> float | None:
    """The profiled time of one bitmatrix pack in a row's decode step (s per launch); None where
    its profile lists none."""
    for name, ms, calls in (row.get("decode_profile") or {}).get("top_kernels") or []:
        if name == BITMATRIX_KERNEL and calls:
            return ms * 1e-3 / calls
    return None


def bitmatrix_columns(row: dict[str, Any]) -> int:
    """The 32-bit columns of a row's routing bitmatrix: ⌈E/32⌉ of its model's routed experts."""
    from perfmodel.measuring.compare import row_overrides
    from perfmodel.ops.moe import BITMATRIX_WORD
    from perfmodel.specs.model import load_model

    return math.ceil(load_model(row["model"], row_overrides(row)).moe.n_experts / BITMATRIX_WORD)


#: The bench rows of the bitmatrix pack (``perfmodel.calibration.bench_vllm_routing``), per GPU.
BITMATRIX_BENCH = "vllm_routing.csv"
#: The most tokens of a bench row the fit reads: a decode's passes, one program of 512 tokens.
BITMATRIX_MAX_TOKENS = 512


def bitmatrix_bench(gpu: str) -> Path | None:
    """The pack's bench rows for ``gpu``: its own (``calibration/data/<gpu>/``), else another
    GPU's (the first by name: the kernel is one program on one SM, whose clock the H100 and
    H200 share); None where no GPU has them."""
    from perfmodel.paths import CALIBRATION_DATA_DIR

    own = CALIBRATION_DATA_DIR / gpu / BITMATRIX_BENCH
    if own.exists():
        return own
    return next(iter(sorted(CALIBRATION_DATA_DIR.glob(f"*/{BITMATRIX_BENCH}"))), None)


def fit_bitmatrix(every_row: list[dict[str, Any]], gpu: str,
                  scheme: str) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """The bitmatrix pack's times (s; :func:`perfmodel.ops.moe.routing_bitmatrix`):
    ``bitmatrix_one_s`` the median of the bench's one-column passes, and ``bitmatrix_loop_s``
    and ``bitmatrix_column_s`` a least-squares line through its passes of two or more columns,
    over its rows of at most :data:`BITMATRIX_MAX_TOKENS` tokens (:func:`bitmatrix_bench`). No
    measured row of a model is read: every profiled pack (:func:`bitmatrix_rows`) is held out,
    and the record gives their errors. (None, {}) without a bench, or for a scheme whose tiled
    kernel has no fit (:data:`TILE_TRAIN`)."""
    import pandas as pd
    import sympy as sp

    from perfmodel import symbols as s
    from perfmodel.ops.moe import BITMATRIX_WORD, routing_bitmatrix

    bench = bitmatrix_bench(gpu)
    if bench is None or scheme not in TILE_TRAIN:
        return None, {}
    table = pd.read_csv(bench)
    table = table[(table["kernel"] == BITMATRIX_KERNEL) & (table["tokens"] <= BITMATRIX_MAX_TOKENS)]
    columns = np.ceil(table["experts"].to_numpy() / BITMATRIX_WORD)
    seconds = table["median_ms"].to_numpy() * 1e-3
    one = float(np.median(seconds[columns == 1]))
    looped = columns >= 2
    design = np.column_stack([np.ones(looped.sum()), columns[looped]])
    (loop, per_column), *_ = np.linalg.lstsq(design, seconds[looped], rcond=None)
    times = {"bitmatrix_one_s": _sig(one), "bitmatrix_loop_s": _sig(float(loop)),
             "bitmatrix_column_s": _sig(float(per_column))}

    floor = routing_bitmatrix().tile_floor.subs({s.ep: 1, s.x_ep: 0})  # the op's own law, of E and its three times
    at = sp.lambdify((s.E, s.t_bitpack_one, s.t_bitpack_loop, s.t_bitpack), floor, "numpy")

    def law(n: np.ndarray) -> np.ndarray:  # the floor at n columns
        return at(BITMATRIX_WORD * n, times["bitmatrix_one_s"], times["bitmatrix_loop_s"],
                  times["bitmatrix_column_s"])

    from perfmodel.paths import ROOT

    record: dict[str, Any] = {
        "bench": str(bench.relative_to(ROOT)) if bench.is_relative_to(ROOT) else bench.name,
        "bench_rows": int(len(table)),
        "bench_mape_pct": _sig(float(100 * np.mean(np.abs(law(columns) / seconds - 1))), 3),
    }
    rows = bitmatrix_rows(every_row, scheme)
    if rows:
        err = law(np.array([bitmatrix_columns(r) for r in rows])) / np.array([pack_kernel_s(r) for r in rows]) - 1
        record["held_out"] = {"mape_pct": _sig(float(100 * np.mean(np.abs(err))), 3),
                              "errors_pct": {r["point_id"]: _sig(float(100 * e), 3) for r, e in zip(rows, err)}}
    return times, record


#: (lower, upper) of t_moe_host, s per layer.
HOST_BOUNDS = (0.0, 5e-3)


def launched_rows(rows: list[dict[str, Any]], scheme: str, profile, gpu: str,
                  backends: tuple[str, ...]) -> list[dict[str, Any]]:
    """The scheme's rows as built whose prefill ``profile`` puts launch-bound (the host's launch
    of the prefill sets TTFT, :func:`perfmodel.prediction.prefill_regime`), on one of ``backends``
    (the MoE backends that run the kernel whose launches are fitted), at a routing the model knows
    (the routing simulator, or B = 1): the latest row of each point id."""
    from perfmodel.measuring.compare import model_workload, row_quant, row_routing, row_speculative
    from perfmodel.prediction import LAUNCH_BOUND, Workload, evaluate, prefill_regime
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    gpu_spec = load_gpu(gpu)
    latest = {r["point_id"]: r for r in one_gpu_rows(rows)
              if r.get("status") == "ok" and row_quant(r) == scheme and not row_speculative(r)
              and not r.get("overrides") and not r.get("layers") and r.get("ttft_ms")
              and r.get("moe_backend", "triton") in backends
              and (row_routing(r) == "uniform_random" or int(r["batch"]) == 1)}
    out = []
    for row in latest.values():
        w = Workload(input_len=row["input_len"], output_len=row["output_len"], quant=scheme,
                     **model_workload(row, profile))
        metrics = evaluate(load_model(row["model"]), gpu_spec, profile, w, "request").metrics
        if prefill_regime(metrics, bool(profile.options.prefill_eager)) == LAUNCH_BOUND:
            out.append(row)
    return out


def fit_tile_host(every_row: list[dict[str, Any]], base: dict[str, Any], gpu: str, scheme: str,
                  train_models: tuple[str, ...] | None = None,
                  backends: tuple[str, ...] | None = None) -> tuple[float | None, list[str], dict[str, Any]]:
    """``host_layer_s`` of a scheme's MoE kernel (s at the reference host, t_moe_host): the host
    time per layer that its launches from Python add to a launched prefill (a tiled kernel's, or
    the routed experts' activation quantization inside the fused-MoE op). Least squares on
    log(model/measured) TTFT of the training models' rows (``train_models``, default
    :data:`TILE_TRAIN`'s of the scheme) whose prefill the profile without it puts launch-bound
    (:func:`launched_rows`, on ``backends``), each at its host's probe, every other parameter
    held. Returns the time, the point ids it comes from, and the record (training points,
    held-out TTFT errors of every other model's such rows); (None, [], {}) without training rows."""
    from scipy.optimize import least_squares

    from perfmodel.calibration.fit import _predict_many
    from perfmodel.specs.hardware import load_gpu

    def with_host(t: float) -> dict[str, Any]:
        entry = {**base.get("quantization", {}).get(scheme, {}), "host_layer_s": float(t)}
        return {**base, "quantization": {**base.get("quantization", {}), scheme: entry}}

    backends = TILE_BACKENDS.get(scheme, ()) if backends is None else backends
    rows = launched_rows(every_row, scheme, _profile(with_host(0.0)), gpu, backends)
    train_models = TILE_TRAIN.get(scheme, ()) if train_models is None else train_models
    train = [r for r in rows if r["model"] in train_models]
    held = [r for r in rows if r["model"] not in train_models]
    if not train:
        return None, [], {}
    gpu_spec = load_gpu(gpu)
    measured = np.array([r["ttft_ms"] * 1e-3 for r in train])
    scale = 1e-3

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(_predict_many(train, _profile(with_host(x[0] * scale)), gpu_spec)[:, 0] / measured)

    lower, upper = HOST_BOUNDS[0] / scale, HOST_BOUNDS[1] / scale
    result = least_squares(residuals, np.array([1.0]), bounds=([lower], [upper]), method="trf")
    host = _sig(float(on_bounds(result.x[0], lower, upper)) * scale)
    fitted = _profile(with_host(host))

    def errors(part: list[dict[str, Any]]) -> np.ndarray:
        truth = np.array([r["ttft_ms"] * 1e-3 for r in part])
        return _predict_many(part, fitted, gpu_spec)[:, 0] / truth - 1

    record: dict[str, Any] = {
        "models": list(train_models), "backends": list(backends),
        "points": sorted(r["point_id"] for r in train),
        "train_mape_pct": _sig(float(100 * np.mean(np.abs(errors(train)))), 3),
    }
    if held:
        err = errors(held)
        record["held_out"] = {"mape_pct": _sig(float(100 * np.mean(np.abs(err))), 3),
                              "errors_pct": {r["point_id"]: _sig(float(100 * e), 3) for r, e in zip(held, err)}}
    return host, [r["point_id"] for r in train], record
