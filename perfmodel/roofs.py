"""The GPU's datasheet roofs under a prediction's ops: which compute peaks its GEMMs run at, and
each op's speed-of-light time, the least time the datasheet allows it.

An op's speed-of-light time is max(FLOPs / peak, bytes / HBM bandwidth) (s), the peak the highest
of the workload's compute dtypes (:func:`compute_dtypes`); its predicted time over that, the
``of roof`` share of ``perfmodel predict``, says how close the model puts it to the datasheet.
Collectives (bytes over a link) have none here.
"""

from __future__ import annotations

from typing import Any, Mapping

from perfmodel.specs.hardware import GPUSpec


def compute_dtypes(workload, gpu: GPUSpec) -> list[str]:
    """The compute dtypes of a workload's GEMMs that ``gpu`` lists a peak for: the unquantized
    layers' (fp16 as bf16, which share a peak) and, under a W8A8/W4A4 scheme, its low-precision
    one."""
    base = "bf16" if workload.base_dtype == "fp16" else workload.base_dtype
    dtypes = dict.fromkeys([base, workload.scheme.compute_dtype(base)])
    return [d for d in dtypes if d in gpu.peak_tflops]


def light_time_s(op: Mapping[str, Any], gpu: GPUSpec, peak: float) -> float | None:
    """max(FLOPs / ``peak``, bytes / HBM bandwidth), s, of one op row; None for a collective or
    an op that moves nothing."""
    if op.get("comm_bytes", 0) > 0 or op["bytes"] <= 0:
        return None
    return max(op["flops"] / peak if peak > 0 else 0.0, op["bytes"] / gpu.hbm_bandwidth)


def roof_shares(p, gpu: GPUSpec) -> list[float | None]:
    """Per op of prediction ``p``: its speed-of-light time over its predicted time (None where
    :func:`light_time_s` has none, or the op takes no time)."""
    peak = max((gpu.peak(d) for d in compute_dtypes(p.workload, gpu)), default=0.0)
    out = []
    for op in p.ops:
        light = light_time_s(op, gpu, peak)
        out.append(None if light is None or op["time_s"] <= 0 else light / op["time_s"])
    return out
