"""The host's speed over time: the probe loop timed back to back, on one or more cores at once.

One probe (:func:`perfmodel.host_speed.probe_ms`) says how fast the host is now; a host whose
speed switches within seconds (the lent H200 machines do: 32–37 ms, then 64–77 ms) is better
described by how its probe times spread, how long each state lasts, and whether every core
switches together. :func:`trace` times a tenth of the probe's loop back to back for a while in
``workers`` processes started together, each sample scaled to the full probe (ms);
:func:`summarize` reads the trace. :class:`RunSampler` samples the host in a process of its own
while something else runs (a serving rate), a sample every :data:`RUN_SAMPLE_EVERY_S`, and
:func:`run_summary` reads it. Units: seconds for times, ms (probe-equivalent) for samples.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from perfmodel.errors import InputError
from perfmodel.host_speed import HOST_PROBE_LOOPS, probe_ms

#: Loop iterations of one sample (a tenth of the probe's: about 3–8 ms on the lent hosts).
SAMPLE_LOOPS = HOST_PROBE_LOOPS // 10
#: A sample counts as the slow state when it takes this many times the trace's 10th percentile.
SLOW_RATIO = 1.5
#: Width (s) of the time bins in which the workers' states are compared.
BIN_S = 0.5
#: How often :class:`RunSampler` starts a sample (s): one of 3–8 ms every 25 ms keeps the core
#: it runs on about a quarter busy, beside the engine it measures.
RUN_SAMPLE_EVERY_S = 0.025


def _sample_ms(loops: int) -> float:
    """One sample: the probe loop of ``loops`` iterations timed once, scaled to the full probe (ms)."""
    return probe_ms(loops, repeats=1) * HOST_PROBE_LOOPS / loops


def _worker(seconds: float, start_at: float, loops: int) -> list[tuple[float, float]]:
    """Samples (s since the common start, probe-equivalent ms) for ``seconds``."""
    while time.time() < start_at:
        time.sleep(0.001)
    out: list[tuple[float, float]] = []
    end = start_at + seconds
    while (now := time.time()) < end:
        out.append((now - start_at, _sample_ms(loops)))
    return out


def trace(seconds: float, workers: int = 1, loops: int = SAMPLE_LOOPS) -> list[list[tuple[float, float]]]:
    """Each worker's samples, (s since the common start, probe-equivalent ms), over ``seconds``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600:
        raise InputError(f"seconds must be a number in (0, 3600], got {seconds!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise InputError(f"workers must be an integer from 1 to 256, got {workers!r}")
    if workers == 1:
        return [_worker(float(seconds), time.time(), loops)]
    start_at = time.time() + 2.0  # every worker started and waiting
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, float(seconds), start_at, loops) for _ in range(workers)]
        return [f.result() for f in futures]


def _sample_until_stopped(conn: Connection, every_s: float, loops: int) -> None:
    """The sampler process: a sample every ``every_s`` until the parent sends anything, then
    send back the samples (s since the start, probe-equivalent ms). The first sample is taken
    before the stop is looked for, so a run shorter than a sample still has one."""
    start = time.time()
    out: list[tuple[float, float]] = []
    conn.send("ready")
    while True:
        t0 = time.time()
        out.append((t0 - start, _sample_ms(loops)))
        if conn.poll(max(0.0, every_s - (time.time() - t0))):
            break
    conn.recv()
    conn.send(out)
    conn.close()


class RunSampler:
    """Samples the host's speed in a process of its own while the ``with`` block runs;
    ``samples`` holds them afterwards ([] when the sampler could not start or answer)."""

    def __init__(self, every_s: float = RUN_SAMPLE_EVERY_S, loops: int = SAMPLE_LOOPS,
                 start_timeout_s: float = 30.0):
        self.every_s, self.loops, self.start_timeout_s = every_s, loops, start_timeout_s
        self.samples: list[tuple[float, float]] = []
        self._conn: Connection | None = None
        self._proc = None

    def __enter__(self) -> "RunSampler":
        ctx = get_context("spawn")
        self._conn, child = ctx.Pipe()
        try:  # a sampler that cannot start leaves the run alone, with no samples
            self._proc = ctx.Process(target=_sample_until_stopped, args=(child, self.every_s, self.loops),
                                     daemon=True)
            self._proc.start()
            ready = self._conn.poll(self.start_timeout_s) and self._conn.recv() == "ready"
        except (OSError, EOFError, RuntimeError):
            ready = False
        finally:
            child.close()
        if not ready:
            self._stop()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:
                self._conn.send("stop")
                if self._conn.poll(10.0):
                    self.samples = list(self._conn.recv())
            except (OSError, EOFError):
                self.samples = []
        self._stop()

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None and self._proc.pid is not None:  # started
            self._proc.join(timeout=5.0)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = None


def _levels(ms: np.ndarray) -> tuple[float, float, float, float]:
    """p10, p50 and p90 of probe-equivalent times (ms), and the slow state's threshold
    (:data:`SLOW_RATIO` × p10)."""
    p10, p50, p90 = (float(np.percentile(ms, q)) for q in (10, 50, 90))
    return p10, p50, p90, SLOW_RATIO * p10


def run_summary(samples: list[tuple[float, float]]) -> dict[str, Any] | None:
    """The host's speed over a run from :class:`RunSampler`'s samples: ``mean_ms`` (the probe
    time averaged over the work done: each sample is the same work), p10/p50/p90 (ms), the slow
    state's share of the samples (≥ :data:`SLOW_RATIO` × p10), their count and span (s); None
    without samples.

    A serving replay runs at ``mean_ms`` (:func:`perfmodel.host_speed.row_host_ms`). It is not
    always the engine's host: in call s14e the mean read 38–48 ms over three rates whose probes
    before and after read 30–32 ms, and those three replay closer to the measurement at their
    probes (a sampler that sleeps between samples may time its own core waking up); over the 60
    other runs sampled (docs/serving.md) it tracks the engine's launched steps better than the
    probes do."""
    if not samples:
        return None
    ms = np.array([m for _, m in samples], dtype=float)
    p10, p50, p90, threshold = _levels(ms)
    return {"mean_ms": round(float(ms.mean()), 3), "p10_ms": round(p10, 3), "p50_ms": round(p50, 3),
            "p90_ms": round(p90, 3), "slow_share": round(float((ms >= threshold).mean()), 3),
            "samples": int(len(ms)), "seconds": round(float(samples[-1][0]), 1)}


def _runs(flags: np.ndarray, times: np.ndarray) -> list[float]:
    """Durations (s) of the maximal runs of True in ``flags`` (sample times ``times``)."""
    out, start = [], None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = i
        if not flag and start is not None:
            out.append(float(times[i] - times[start]))
            start = None
    if start is not None and len(times):
        out.append(float(times[-1] - times[start]))
    return out


def summarize(samples: list[list[tuple[float, float]]]) -> dict[str, Any]:
    """Percentiles and mean of the probe-equivalent times (the mean is the host's speed over the
    trace, as a serving run's ``host_run`` is replayed at), the slow state (samples ≥ :data:`SLOW_RATIO` ×
    the pooled 10th percentile): its share of the samples, of each worker's and of the time,
    how long it lasts (median and longest run, s) and how often the host switches; and how often
    the workers are in one state together (share of :data:`BIN_S` bins whose majority states
    agree across workers)."""
    pooled = np.array([ms for worker in samples for _, ms in worker])
    if not len(pooled):
        raise InputError("the trace holds no sample")
    p10, p50, p90, threshold = _levels(pooled)
    per_worker, runs, switches, span = [], [], 0, 0.0
    bins: dict[int, list[bool]] = {}
    for worker in samples:
        t = np.array([s for s, _ in worker])
        ms = np.array([m for _, m in worker])
        slow = ms >= threshold
        per_worker.append(round(float(slow.mean()), 3) if len(slow) else None)
        runs += _runs(slow, t)
        switches += int(np.count_nonzero(np.diff(slow.astype(int)))) if len(slow) > 1 else 0
        span = max(span, float(t[-1]) if len(t) else 0.0)
        which = (t // BIN_S).astype(int)  # each sample's time bin
        for b in np.unique(which):
            bins.setdefault(int(b), []).append(bool(slow[which == b].mean() >= 0.5))
    shared = [states for states in bins.values() if len(states) == len(samples)]
    agree = (sum(len(set(s)) == 1 for s in shared) / len(shared)) if shared and len(samples) > 1 else None
    return {
        "workers": len(samples), "samples": int(len(pooled)), "seconds": round(span, 1),
        "probe_ms": {"p10": round(p10, 2), "p50": round(p50, 2), "p90": round(p90, 2),
                     "min": round(float(pooled.min()), 2), "max": round(float(pooled.max()), 2),
                     "mean": round(float(pooled.mean()), 2)},
        "slow_threshold_ms": round(threshold, 2),
        "slow_share": round(float((pooled >= threshold).mean()), 3),
        "slow_share_by_worker": per_worker,
        "slow_runs_s": {"count": len(runs), "median": round(float(np.median(runs)), 2) if runs else None,
                        "longest": round(max(runs), 2) if runs else None},
        "switches_per_minute": round(60.0 * switches / max(span * len(samples), 1e-9), 2) if span else None,
        "workers_agree": None if agree is None else round(float(agree), 3),
    }


def as_rows(samples: list[list[tuple[float, float]]]) -> list[dict[str, Any]]:
    """The trace as JSON-ready rows: worker, t_s, probe_ms."""
    return [{"worker": w, "t_s": round(t, 4), "probe_ms": round(ms, 3)}
            for w, worker in enumerate(samples) for t, ms in worker if math.isfinite(ms)]
