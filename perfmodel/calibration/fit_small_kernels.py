"""The duration of a small kernel in a graph-replayed decode step, from profiled steps.

A decode step of a few sequences runs, per layer, a dozen kernels that move a few kilobytes:
norms, the rotary embedding, the KV-cache write, the router's top-k, the experts' token
alignment, the activation, the sum of the experts' outputs. Each is timed by its own work only
in part: a kernel that reads from HBM, reduces and writes back takes about 2 µs however few
bytes it moves (the read's latency, the reduction's passes, the write), against the 1 µs a
graph node costs between empty kernels (``per_kernel_s``, the ``graph_tiny_kernel`` rows of
the GPU's microbenchmark). The model prices each kernel of a memory-bound op class at
``per_small_kernel_s`` (:attr:`perfmodel.ops.OpClass.small_kernels`; ``t_kernel_small`` in
:func:`perfmodel.roofline.op_time`), so this floor is what a deeper model pays per layer.

Measured, not fitted: the launches-weighted median duration of the kernels of
:data:`SMALL_CATEGORIES` (by name, :func:`perfmodel.measuring.vllm_kernels.kernel_category`)
in the profiled decode steps of the training models as built, unquantized, at B ≤
:data:`MAX_BATCH` (where those kernels move a few rows; at hundreds of sequences they grow with
their bytes, which the op's memory term prices). The median, not the mean: a few longer kernels
(a top-k over many experts, a fill) are their op's bytes and launches, not the floor. Every
other model's profiled steps are held out. Units: seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Kernel categories whose kernels are small in a decode step of a few sequences.
SMALL_CATEGORIES = ("norm_elementwise", "copy", "router_topk")
#: The largest batch whose profiled decode step is read.
MAX_BATCH = 64


def small_kernel_rows(rows: list[dict[str, Any]], train: tuple[str, ...]) -> list[dict[str, Any]]:
    """The one-GPU rows of the ``train`` models as built, unquantized
    (:func:`perfmodel.calibration.fit_vllm.plain_bf16_row`), at B ≤ :data:`MAX_BATCH` whose
    decode step was profiled kernel by kernel: the latest of each point id."""
    from perfmodel.calibration.fit import one_gpu_rows
    from perfmodel.calibration.fit_vllm import plain_bf16_row

    latest = {r["point_id"]: r for r in one_gpu_rows(rows)
              if plain_bf16_row(r, train) and int(r.get("batch") or 0) <= MAX_BATCH
              and (r.get("decode_profile") or {}).get("top_kernels")}
    return list(latest.values())


def small_kernel_durations(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Each small kernel's mean duration per launch (s) in a row's profiled decode step, and its
    launches per step (the profile's ``top_kernels``: [name, ms per step, launches per step])."""
    from perfmodel.measuring.vllm_kernels import kernel_category

    kernels = [(ms, n) for name, ms, n in row["decode_profile"]["top_kernels"]
               if kernel_category(name) in SMALL_CATEGORIES and n > 0]
    return (np.array([ms * 1e-3 / n for ms, n in kernels]), np.array([float(n) for _, n in kernels]))


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` with each counted ``weights`` times."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def fit_small_kernel(rows: list[dict[str, Any]], train: tuple[str, ...]) -> tuple[float | None, dict[str, Any]]:
    """``per_small_kernel_s`` (s), the launches-weighted median duration of the small kernels of
    the training models' profiled decode steps (:func:`small_kernel_rows`), and its record: the
    point ids, the kernels counted per step, the median per row. None (and an empty record)
    where no such step was profiled: the graph node's cost then stands for it."""
    chosen = small_kernel_rows(rows, train)
    if not chosen:
        return None, {}
    parts = [small_kernel_durations(r) for r in chosen]
    durations = np.concatenate([d for d, _ in parts])
    launches = np.concatenate([n for _, n in parts])
    if not launches.size:
        return None, {}
    value = float(f"{weighted_median(durations, launches):.4g}")
    return value, {
        "categories": list(SMALL_CATEGORIES), "max_batch": MAX_BATCH,
        "points": sorted(r["point_id"] for r in chosen),
        "kernels_per_step": [int(n.sum()) for _, n in parts],
        "median_per_step_us": [round(weighted_median(d, n) * 1e6, 2) if n.size else None for d, n in parts],
    }
