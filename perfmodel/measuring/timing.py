"""Timing primitives for microbenchmarks and the runner (all results in milliseconds).

- :func:`time_cudagraph` is ``triton.testing.do_bench_cudagraph``: it captures as many calls of
  ``fn`` as fill a replay of ``rep_ms`` in one CUDA graph, replays it 10 times with CUDA events
  around each replay and divides by the calls: for ops small enough to capture, when Triton and
  a CUDA GPU are there (:func:`cudagraph_bench_available`).
- :func:`time_graph` does the same with ``inner`` calls and ``reps`` replays chosen by the
  caller: without Triton, and where the number of captured calls is itself what is measured
  (the cost of a kernel inside a graph, ``calibration/bench_mem.py``), which
  ``do_bench_cudagraph`` chooses on its own.
- :func:`time_events` puts CUDA events around each of ``reps`` eager calls: for larger ops, and
  for code that cannot be captured (it then includes the CPU launch gaps, as a real run would).
- :func:`time_wall` uses ``perf_counter`` with a device sync (CPU runs, or host-driven engines).
- :func:`auto_time` picks among them from a first estimate of the op's duration.
- :func:`call_times` and :func:`capture_step` serve the ``hf`` runner, whose decode step changes
  state (the cache write position advances by one per call): its graph holds exactly one step,
  is kept and replayed at chosen cache positions with an untimed reset before each replay, which
  ``do_bench_cudagraph`` (many steps unrolled into one graph, no reset between replays, the graph
  dropped at the end) cannot do.

``fn`` takes the call index ``i`` so that it can rotate through several input buffers
(``inputs[i % n]``) when the working set would otherwise stay in the L2 cache.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: L2 cache of the H200 (bytes); overridden by the device's own value when known.
DEFAULT_L2_BYTES = 60 * 2**20


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings of one op (ms per call)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    n_reps: int
    method: str  # "cuda_graph" | "cuda_events" | "wall"
    inner: int = 1  # calls per timed sample (graph replays divide by this)

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "n_reps": self.n_reps,
            "method": self.method,
            "inner": self.inner,
        }


def summarize(samples_ms: list[float], method: str, inner: int = 1) -> Stats:
    """Median and 10th/90th percentiles of per-call times (ms)."""
    if not samples_ms:
        raise ValueError("no timing samples")
    arr = np.asarray(samples_ms, dtype=float)
    return Stats(
        median_ms=float(np.median(arr)),
        p10_ms=float(np.percentile(arr, 10)),
        p90_ms=float(np.percentile(arr, 90)),
        n_reps=len(samples_ms),
        method=method,
        inner=inner,
    )


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device | str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def l2_bytes() -> int:
    """L2 size of the current GPU (bytes), or the H200's when unknown."""
    if torch.cuda.is_available():
        size = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)
        if size:
            return int(size)
    return DEFAULT_L2_BYTES


def rotation_count(working_set_bytes: float, max_copies: int = 32) -> int:
    """How many input copies to cycle through so the cycle does not fit in twice the L2 cache."""
    if working_set_bytes <= 0:
        return max_copies
    return int(min(max_copies, max(1, math.ceil(2 * l2_bytes() / working_set_bytes))))


def time_wall(fn: Callable[[int], object], reps: int, device: torch.device | str = "cpu",
              warmup: int = 1) -> Stats:
    """Host wall-clock per call (``perf_counter``, synchronising the device around each call)."""
    for i in range(warmup):
        fn(i)
    synchronize(device)
    samples = []
    for i in range(reps):
        t = time.perf_counter()
        fn(warmup + i)
        synchronize(device)
        samples.append((time.perf_counter() - t) * 1e3)
    return summarize(samples, "wall")


def time_events(fn: Callable[[int], object], reps: int, warmup: int = 1) -> Stats:
    """CUDA events around each eager call (ms per call)."""
    for i in range(warmup):
        fn(i)
    pairs = []
    for i in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(warmup + i)
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in pairs], "cuda_events")


def call_times(fn: Callable[[], object], gpu: bool, reps: int,
               before: Callable[[], None] | None = None) -> list[float]:
    """Per-call times (ms) of ``reps`` calls of ``fn``: CUDA events on GPU, wall clock on CPU.

    ``before`` runs before each call, untimed (e.g. resetting a cache position). Unlike
    :func:`time_events` the samples are returned as they are, and there is no warm-up: the
    runner decides what is a warm-up and what is timed.
    """
    out = []
    if gpu:
        pairs = []
        for _ in range(reps):
            if before:
                before()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in pairs]
    for _ in range(reps):
        if before:
            before()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def capture_graph(fn: Callable[[int], object], inner: int, warmup: int = 2) -> torch.cuda.CUDAGraph:
    """Warm ``fn`` up on a side stream, then capture ``inner`` calls (indices 0..inner-1)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(warmup):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(inner):
            fn(i)
    torch.cuda.synchronize()
    return graph


def time_graph(fn: Callable[[int], object], inner: int, reps: int, warmup: int = 2) -> Stats:
    """Capture ``inner`` calls in a CUDA graph; replay ``reps`` times; ms per call."""
    graph = capture_graph(fn, inner, warmup)
    try:
        graph.replay()
        pairs = []
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        return summarize([s.elapsed_time(e) / inner for s, e in pairs], "cuda_graph", inner)
    finally:
        graph.reset()
        del graph


#: Replays ``do_bench_cudagraph`` times (each one a sample).
CUDAGRAPH_REPLAYS = 10


def cudagraph_bench_available() -> bool:
    """Whether :func:`time_cudagraph` can run here: a CUDA GPU and Triton's ``do_bench_cudagraph``."""
    if not torch.cuda.is_available():
        return False
    try:
        from triton.testing import do_bench_cudagraph  # noqa: F401
    except Exception:  # noqa: BLE001 - Triton missing or broken: the torch-only path is used
        return False
    return True


def time_cudagraph(fn: Callable[[int], object], rep_ms: float) -> Stats:
    """``triton.testing.do_bench_cudagraph`` on ``fn``: per-call ms of each of its replays.

    Triton warms ``fn`` up, estimates a call with CUDA events, captures as many calls as last
    ``rep_ms`` in one graph and replays it :data:`CUDAGRAPH_REPLAYS` times. ``fn`` still gets a
    running call index (for input rotation); ``inner`` counts the calls that were captured.
    """
    from triton.testing import do_bench_cudagraph

    index, captured = itertools.count(), [0]

    def call() -> None:
        if torch.cuda.is_current_stream_capturing():
            captured[0] += 1
        fn(next(index))

    samples = do_bench_cudagraph(call, rep=rep_ms, return_mode="all")
    return summarize([float(x) for x in samples], "cuda_graph", max(1, captured[0]))


def plan_reps(est_ms: float, target_ms: float, min_reps: int = 5, max_reps: int = 50) -> int:
    """Repetitions so that the timed loop lasts about ``target_ms``."""
    if est_ms <= 0:
        return max_reps
    return int(min(max_reps, max(min_reps, round(target_ms / est_ms))))


def auto_time(
    fn: Callable[[int], object],
    device: torch.device | str,
    *,
    graph: bool = True,
    target_ms: float = 20.0,
    min_reps: int = 5,
    max_reps: int = 50,
    graph_call_ms: float = 0.5,
    max_inner: int = 64,
    cpu_reps: int = 3,
) -> Stats:
    """Time ``fn`` sensibly for its size.

    On CPU: wall clock, ``cpu_reps`` repetitions. On CUDA: a warm-up call, an events estimate,
    then, when ``graph`` is true and capture succeeds, CUDA-graph replay: Triton's
    ``do_bench_cudagraph`` where available (:func:`time_cudagraph`, replays of
    ``target_ms / CUDAGRAPH_REPLAYS`` each), else :func:`time_graph` (``inner`` calls per replay
    so that a replay lasts ~``graph_call_ms``, at most ``max_inner``); else CUDA events. About
    ``target_ms`` of GPU time is spent in the timed loop.
    """
    if not is_cuda(device):
        return time_wall(fn, reps=cpu_reps, device=device, warmup=1)
    first = time_events(fn, reps=2, warmup=1)
    est = max(first.median_ms, 1e-4)
    if graph:
        try:
            if cudagraph_bench_available():
                return time_cudagraph(fn, rep_ms=max(est, target_ms / CUDAGRAPH_REPLAYS))
            inner = int(min(max_inner, max(1, round(graph_call_ms / est))))
            reps = plan_reps(est * inner, target_ms, min_reps, max_reps)
            return time_graph(fn, inner=inner, reps=reps)
        except RuntimeError:
            torch.cuda.synchronize()
    return time_events(fn, reps=plan_reps(est, target_ms, min_reps, max_reps), warmup=0)


def capture_step(step: Callable[[], None], reset: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Warm ``step`` up twice on a side stream, then capture it in a CUDA graph (``reset`` before
    each warm-up and before the capture; it is not part of the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            reset()
            step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph
