"""How long one point of the ``hf`` backend will take (wall seconds), for the sweep's time budget.

The GPU time of the B x S prefill and of a mean decode step come from the model itself:
:func:`perfmodel.prediction.predict` with the uncalibrated ``roofline`` engine, on the point's
model, ``--set`` overrides and ``--layers``, B, S, O and dtype, on the GPU this process runs on
(its spec by name, else :data:`DEFAULT_GPU`) — :func:`roofline_times`. Around them
:func:`estimate_point_s` counts what the runner's protocol (:mod:`perfmodel.measuring.hf_steps`)
runs: the prefill runs, the capture check, warm-ups and capture, the timed replays at each
sampled step, the profiled passes, the full decode if asked, and the model build. The roofline
is optimistic (it has no host launch time, and reaches datasheet peaks under fixed derates):
the estimate plans a budget, it does not predict a measurement.

The model needs pydantic, which a measuring machine may lack (the GPU image has none unless the
vLLM bundle brings it). Only when it cannot be imported does :func:`coarse_times` stand in: a
COARSE estimate from the built model's parameter counts at fixed planning rates
(:data:`COARSE_FLOP_S`, :data:`COARSE_BYTES_S`), labelled ``source="coarse"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from perfmodel.measuring.hf_steps import (
    LONG_STEP_MS, PREFILL_PROFILE_MAX_MS, SHORT_PREFILL_MS, prefill_reps, sample_steps,
)
from perfmodel.measuring.points import SweepPoint

#: The GPU assumed when this one has no spec (``specs/hardware``), e.g. on a CPU test run.
DEFAULT_GPU = "h200-sxm"

# What the runner's protocol costs beyond its timed passes (the passes themselves, their counts
# and thresholds are read from perfmodel.measuring.hf_steps).
#: Host launch time of one layer of an eager pass (s): the floor of eager prefills and steps.
EAGER_LAYER_S = 1.5e-3
#: Eager decode steps of a graph-captured point: capture check, 2 warm-ups, capture, routing.
EAGER_STEPS = 5
#: Profiler start-up and trace processing (s) of a profiled point.
PROFILER_S = 1.0
#: Fixed cost of a point (s), and of a model build: fixed (s) plus weights written at a rate (B/s).
POINT_S = 0.5
BUILD_S = 3.0
BUILD_BYTES_S = 50e9

# Coarse planning rates, used only without the model (see the module docstring).
#: Matmul rate of a coarse prefill (FLOP/s), and its extra time per 1024 tokens (s).
COARSE_FLOP_S = 300e12
COARSE_PREFILL_S_PER_1K_TOKENS = 2e-3
#: Bytes a coarse decode step reads per second (B/s), and its floor per 4 layers (s).
COARSE_BYTES_S = 2.0e12
COARSE_STEP_S_PER_4_LAYERS = 0.3e-3


@dataclass(frozen=True)
class PassTimes:
    """GPU time of one point's passes (s), what they come from, and the model's size."""

    prefill_s: float  # the B x S prefill
    step_s: float  # a mean decode step
    layers: int
    weight_bytes: float
    source: str  # "roofline" (perfmodel.prediction) or "coarse" (no model available)


def prediction_overrides(point: SweepPoint) -> list[str]:
    """The point's ``--set`` overrides for a prediction, ``--layers`` included."""
    overrides = list(point.overrides)
    if point.layers is not None:
        overrides.append(f"num_layers={point.layers}")
    return overrides


def roofline_times(point: SweepPoint, gpu: str | None) -> PassTimes:
    """Prefill and mean decode step of ``point`` predicted by the roofline engine on ``gpu``
    (a spec name; None or an unknown name: :data:`DEFAULT_GPU`). Raises ImportError when the
    model (pydantic) cannot be imported."""
    from perfmodel.errors import PerfModelError
    from perfmodel.prediction import TORCH_DTYPES, predict
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    try:
        gpu_name = load_gpu(gpu).name if gpu else DEFAULT_GPU
    except PerfModelError:  # not in specs/hardware
        gpu_name = DEFAULT_GPU
    spec = load_model(point.model, prediction_overrides(point))
    p = predict(spec, gpu=gpu_name, engine="roofline", batch=point.batch, input_len=point.input_len,
                output_len=point.output_len, dtype=TORCH_DTYPES.get(point.dtype, point.dtype))
    return PassTimes(prefill_s=p.metrics["ttft_s"], step_s=p.metrics["itl_s"], layers=spec.n_layers,
                     weight_bytes=p.metrics["weights_bytes"], source="roofline")


def coarse_times(info: Any, point: SweepPoint) -> PassTimes:
    """A COARSE prefill and decode step from a built model's facts (``ModelInfo``), at the fixed
    planning rates: prefill = 2·active params·B·S FLOPs at :data:`COARSE_FLOP_S` (plus
    :data:`COARSE_PREFILL_S_PER_1K_TOKENS`); a step reads the dense weights, the expected share
    of expert weights hit by B tokens under uniform routing and the whole KV cache (bf16) at
    :data:`COARSE_BYTES_S`."""
    b, s = point.batch, point.input_len
    layers = max(1, info.num_hidden_layers)
    prefill = 2.0 * info.params_active * b * s / COARSE_FLOP_S + COARSE_PREFILL_S_PER_1K_TOKENS * b * s / 1024
    e, k = info.num_experts, info.top_k
    hit = 1.0 - (1.0 - k / e) ** b if e and k else 1.0
    dense_bytes = 2 * (info.params_total - info.params_routed)
    bytes_step = dense_bytes + 2 * info.params_routed * hit + b * point.max_cache_len * info.kv_bytes_per_token
    step = max(bytes_step / COARSE_BYTES_S, COARSE_STEP_S_PER_4_LAYERS * layers / 4)
    return PassTimes(prefill_s=prefill, step_s=step, layers=layers, weight_bytes=info.weight_bytes,
                     source="coarse")


def pass_times(point: SweepPoint, gpu: str | None, info: Callable[[], Any]) -> PassTimes:
    """:func:`roofline_times`, or :func:`coarse_times` of ``info()`` if the model cannot be imported."""
    try:
        return roofline_times(point, gpu)
    except ImportError:
        return coarse_times(info(), point)


def estimate_point_s(times: PassTimes, point: SweepPoint, *, profile: bool = True,
                     build: bool = False, decode_reps: int = 5) -> float:
    """Planned wall time (s) of one point from its pass times, following the runner's protocol
    (:mod:`perfmodel.measuring.hf_steps`) on its CUDA-graph path.

    Prefill: a first run, a profiled run (``profile``, short enough) or a second warm-up (short,
    not profiled), then :func:`~perfmodel.measuring.hf_steps.prefill_reps` timed runs; eager
    passes take at least the host's launch time (:data:`EAGER_LAYER_S` per layer). Decode: the
    eager steps around the capture, then one warm and ``decode_reps`` timed replays (at most 3
    for long steps) per sampled step, a profiled step, the full decode if asked; then the point's
    fixed cost and, with ``build``, the model build.
    """
    floor = EAGER_LAYER_S * max(1, times.layers)
    prefill, step = max(floor, times.prefill_s), times.step_s
    first_ms = prefill * 1e3
    runs = 1 + prefill_reps(first_ms)
    if profile and first_ms <= PREFILL_PROFILE_MAX_MS:
        runs += 1
    elif not profile and first_ms < SHORT_PREFILL_MS:
        runs += 1
    reps = decode_reps if step * 1e3 <= LONG_STEP_MS else min(3, decode_reps)
    t = runs * prefill
    t += EAGER_STEPS * max(floor, step) + len(sample_steps(point.output_len)) * (1 + reps) * step
    if profile:
        t += max(floor, step) + PROFILER_S
    if point.full_run:
        t += (point.output_len - 1) * step
    t += POINT_S + (BUILD_S + times.weight_bytes / BUILD_BYTES_S if build else 0.0)
    return t
