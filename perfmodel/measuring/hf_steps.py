"""The timed passes of the ``hf`` backend: the prefill (TTFT) and the decode steps (times in ms).

TTFT (:func:`measure_prefill`) is the median of eager prefill runs with CUDA events (wall clock on
CPU): a first run, an optional profiled run, then :func:`prefill_reps` timed runs.

One decode step is a forward of B tokens at cache position c, the argmax, and the argmax written
back as the next input (static input ids; the cache counter advances inside the step). The step
is timed at sampled steps j in {1, 1+O/4, 1+O/2, 1+3O/4, O-1} (:func:`sample_steps`; cache
position c = S + j - 1, context after the step c + 1), and the decode total over the O-1 steps
is the trapezoid integral through the samples (:func:`integrate_steps`). :func:`measure_decode`
chooses how a step is timed (``decode_method``), :func:`try_capture` captures it in a CUDA graph
and :func:`full_run` replays all O-1 steps. The whole protocol is in
:mod:`perfmodel.measuring.hf_runner`.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from perfmodel.measuring.hf_build import CaptureSpy
from perfmodel.measuring.hf_routing import RoutingRecorder
from perfmodel.measuring.points import SweepPoint
from perfmodel.measuring.profiler_split import ProfileSplit, profile_call
from perfmodel.measuring.timing import call_times, capture_step, summarize

if TYPE_CHECKING:
    from perfmodel.measuring.hf_runner import HFBackend

#: Prefills whose first run took longer than this (ms) are not profiled.
PREFILL_PROFILE_MAX_MS = 1500.0
#: Prefills whose first run took less than this (ms) get the most timed runs.
SHORT_PREFILL_MS = 200.0
#: Decode samples whose warm replay took longer than this (ms) get at most 3 timed replays.
LONG_STEP_MS = 30.0


def set_cache_position(cache: Any, position: int) -> None:
    """Make the next write of every cache layer land at ``position`` (0 = empty cache)."""
    for layer in cache.layers:
        if not hasattr(layer, "cumulative_length"):
            raise NotImplementedError(f"unsupported cache layer {type(layer).__name__}")
        limit = getattr(layer, "max_cache_len", None)
        if limit is not None and position >= limit:
            raise ValueError(f"cache position {position} outside the allocated {limit} tokens")
        if getattr(layer, "is_initialized", False):
            layer.cumulative_length.fill_(position)
        elif position != 0:
            raise RuntimeError("cache not initialised yet (run the prefill first)")


def cache_bytes(cache: Any) -> int:
    """Bytes held by an initialised StaticCache."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def sample_steps(output_len: int, n: int = 4) -> list[int]:
    """Decode steps to time: j in {1, 1+O/4, 1+O/2, 1+3O/4, O-1} (deduplicated, within 1..O-1)."""
    last = output_len - 1
    if last < 1:
        return []
    steps = {min(last, 1 + (output_len * i) // n) for i in range(n)} | {last}
    return sorted(s for s in steps if 1 <= s <= last)


def integrate_steps(samples: list[tuple[int, float]], n_steps: int) -> float:
    """Sum of step times over steps 1..n_steps from sampled (step, ms) points (ms).

    Trapezoid through the samples plus half of each end sample; a single sample is held flat.
    """
    if n_steps <= 0:
        return 0.0
    pts = sorted(samples)
    if not pts:
        raise ValueError("no decode samples")
    if len(pts) == 1:
        return pts[0][1] * n_steps
    total = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    total += (pts[0][1] + pts[-1][1]) / 2
    # steps outside the sampled range (only when the samples do not cover 1..n_steps)
    total += (pts[0][0] - 1) * pts[0][1] + (n_steps - pts[-1][0]) * pts[-1][1]
    return total


def safe_profile(fn: Callable[[], Any], dev: str, model: nn.Module, notes: list[str]) -> ProfileSplit | None:
    """Profile ``fn`` once (prefill or decode step); a profiler failure (no CUPTI...) is a note,
    not a failed point. Out-of-memory errors propagate (they are a result)."""
    try:
        return profile_call(fn, dev, model)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "out of memory" in str(exc).lower():
            raise
        note = "profiler failed: " + (str(exc).splitlines() or [""])[0][:200]
        if note not in notes:
            notes.append(note)
        return None


def prefill_reps(first_ms: float) -> int:
    """Timed prefill runs after a first run of ``first_ms``: 5 short, 3 medium, 2 long."""
    return 5 if first_ms < SHORT_PREFILL_MS else (3 if first_ms < PREFILL_PROFILE_MAX_MS else 2)


def measure_prefill(backend: "HFBackend", model: nn.Module, cache: Any, ids: torch.Tensor,
                    row: dict[str, Any], notes: list[str]) -> float:
    """TTFT (ms) of the B x S prefill of ``ids`` into ``cache``; records in ``row`` the routing of
    the first run, the prefill profile and the spread of the timed runs, and the first run's next
    tokens (``_next_tokens``, for the decode to start from)."""
    dev, gpu = backend.device, backend.gpu
    holder: dict[str, torch.Tensor] = {}

    def prefill() -> None:
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        holder["next"] = out.logits[:, -1, :].argmax(-1)

    def reset() -> None:
        set_cache_position(cache, 0)

    recorder = RoutingRecorder(model)
    with recorder:
        first = call_times(prefill, gpu, 1)[0]
    row["routing_layer"], row["prefill_tokens_per_expert"] = recorder.first_layer_histogram()
    row["prefill_experts_hit"] = recorder.experts_hit()
    if backend.profile and first <= PREFILL_PROFILE_MAX_MS:
        reset()
        split = safe_profile(prefill, dev, model, notes)
        row["prefill_profile"] = split.as_dict() if split is not None else None
    else:
        row["prefill_profile"] = None  # not profiled (--no-profile, or too long)
    reps = prefill_reps(first)
    if first < SHORT_PREFILL_MS and not backend.profile:
        reset()
        prefill()  # a second warm-up for short prefills
    times = call_times(prefill, gpu, reps, before=reset)
    stats = summarize(times, "cuda_events" if gpu else "wall")
    row["ttft_p10_ms"] = stats.p10_ms
    row["ttft_p90_ms"] = stats.p90_ms
    row["ttft_reps"] = stats.n_reps
    row["ttft_first_ms"] = first
    row["_next_tokens"] = holder["next"]
    return stats.median_ms


def measure_decode(backend: "HFBackend", point: SweepPoint, model: nn.Module, cache: Any,
                   step: Callable[[], None], steps: list[int], row: dict[str, Any],
                   notes: list[str]):
    """Time ``step`` at the sampled ``steps``; record the decode profile and routing in ``row``.

    Returns (decode_method, graph or None, samples): a captured graph is replayed (method
    ``cuda_graph``); without one, the profiler's kernel time of an eager step (``kernel_sum``),
    or, without a profiler or on CPU, timed eager steps (``eager``).
    """
    dev, gpu = backend.device, backend.gpu
    s = point.input_len
    if not steps:
        return ("cuda_graph" if backend.uses_graphs(point) else ("kernel_sum" if gpu else "eager")), None, []
    mid = steps[len(steps) // 2]
    method = "kernel_sum" if gpu else "eager"
    graph = None
    if backend.uses_graphs(point):
        graph = try_capture(model, cache, step, s, notes)
        if graph is not None:
            method = "cuda_graph"
    samples: list[dict[str, Any]] = []
    row["decode_profile"] = None

    def eager_samples(reps: int, label: str) -> list[dict[str, Any]]:
        """Eager decode steps timed with CUDA events at each sampled context."""
        out = []
        for j in steps:
            pos = s + j - 1
            times = call_times(step, gpu, reps, before=lambda p=pos: set_cache_position(cache, p))
            st = summarize(times, label)
            out.append(decode_sample(j, pos, st.median_ms, st.p10_ms, st.p90_ms, st.n_reps))
        return out

    if method == "cuda_graph":
        for j in steps:
            pos = s + j - 1

            def before(p=pos) -> None:
                set_cache_position(cache, p)

            warm = call_times(graph.replay, gpu, 1, before=before)[0]
            reps = backend.decode_reps if warm <= LONG_STEP_MS else min(3, backend.decode_reps)
            times = call_times(graph.replay, gpu, reps, before=before)
            st = summarize(times, "cuda_graph")
            samples.append(decode_sample(j, pos, st.median_ms, st.p10_ms, st.p90_ms, st.n_reps))
    elif method == "eager":
        samples = eager_samples(2, "wall")
    else:  # kernel_sum: summed GPU kernel time of one eager step per sample
        set_cache_position(cache, s)
        step()  # warm-up
        for j in steps:
            set_cache_position(cache, s + j - 1)
            split = safe_profile(step, dev, model, notes)
            if split is None:  # no profiler: CUDA events around eager steps (launch-bound)
                method, samples = "eager", []
                break
            samples.append(decode_sample(j, s + j - 1, split.kernel_ms, split.kernel_ms, split.kernel_ms, 1))
            if j == mid:
                row["decode_profile"] = dict(split.as_dict(), context_len=s + j, graph_ms=None)
        if method == "eager":
            samples = eager_samples(3, "cuda_events")
    if backend.profile and row["decode_profile"] is None:
        set_cache_position(cache, s + mid - 1)
        split = safe_profile(step, dev, model, notes)
        graph_ms = next((d["ms"] for d in samples if d["step"] == mid), None)
        if split is not None:
            row["decode_profile"] = dict(split.as_dict(), context_len=s + mid, graph_ms=graph_ms)
    # routing of one decode step (a separate eager step: the hooks add small kernels and syncs)
    set_cache_position(cache, s + mid - 1)
    recorder = RoutingRecorder(model)
    with recorder:
        step()
    if gpu:
        torch.cuda.synchronize()
    row["decode_experts_hit_mean"] = recorder.mean_experts_hit()
    return method, graph, samples


def decode_sample(j: int, pos: int, ms: float, p10: float, p90: float, reps: int) -> dict[str, Any]:
    """One entry of a row's ``decode_samples`` (step j at cache position ``pos``; ms)."""
    return {"step": j, "cache_position": pos, "context_len": pos + 1, "ms": ms,
            "p10_ms": p10, "p90_ms": p90, "reps": reps}


def try_capture(model: nn.Module, cache: Any, step: Callable[[], None], s: int,
                notes: list[str]):
    """A CUDA graph of one decode step (write position S when captured), or None (with a note)."""
    set_cache_position(cache, s)
    spy = CaptureSpy()
    with spy:
        step()
    torch.cuda.synchronize()
    if spy.issues:
        notes.append("decode step not capturable: " + ", ".join(spy.issues[:5]))
        return None
    try:
        return capture_step(step, lambda: set_cache_position(cache, s))
    except RuntimeError as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            raise
        notes.append("CUDA graph capture failed: " + (str(exc).splitlines() or [""])[0][:200])
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass
        return None


def full_run(gpu: bool, method: str, graph, step: Callable[[], None], cache: Any, s: int, o: int,
             row: dict[str, Any], notes: list[str]) -> None:
    """All O-1 decode steps back to back: graph replays on GPU (the graph advances the cache
    position and feeds its argmax back itself), eager steps on CPU."""
    if gpu and method != "cuda_graph":
        notes.append("full run skipped: no CUDA graph for this point")
        return
    set_cache_position(cache, s)
    run = graph.replay if method == "cuda_graph" else step
    if gpu:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(o - 1):
            run()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end)
    else:
        t = time.perf_counter()
        for _ in range(o - 1):
            run()
        ms = (time.perf_counter() - t) * 1e3
    row["full_decode_ms"] = ms if math.isfinite(ms) and ms > 0 else None
