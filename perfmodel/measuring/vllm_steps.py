"""The engine's own steps during a serving run: what each step scheduled and when it finished.

vLLM's engine core can describe every iteration it runs (``enable_logging_iteration_details``):
how many requests and tokens of prompt ("context") and of generation it scheduled. It sends
those details with the step's outputs, stamped with its own clock when the step's outputs were
made (``EngineCoreOutputs.timestamp``, ``time.monotonic``: on Linux the clock request times are
read from, ``time.perf_counter``). :func:`observe` wraps the engine client's
``get_output_async`` so that :class:`StepLog` keeps one record per step (seconds).

Under asynchronous scheduling the engine runs one step ahead of the outputs it makes, so when it
is busy the gap between two consecutive steps' outputs is the later step's duration on the GPU
and the host, except around a step the host launches piece by piece (a prompt beyond the
largest CUDA graph): the host hands over the previous step's outputs only once it has launched
that step, so the long gap ends at the previous step's record and the launched step's own record
follows a few ms later (on the lent H200, Qwen3-30B-A3B at 4 req/s with 10 decodes: 81 ms,
then 3.4 ms, where a step of the decodes alone takes 13 ms: the launch overlapped the step
before it). :func:`step_summary` reports those gaps (milliseconds) apart for steps that carried
prompt tokens ("mixed": a prefill chunk, with or without decodes beside it) and steps that
carried decodes only; a gap after which the engine had nothing left to run (no request running
nor waiting) is idle time, not a step, and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: Columns of one step record (and of the per-rate step traces written beside the rows).
STEP_COLUMNS = ("t_s", "ctx_reqs", "ctx_tokens", "gen_reqs", "gen_tokens", "running", "waiting",
                "kv_usage", "preempted")


@dataclass
class StepLog:
    """Every step the engine reported, in order (appended by the event loop's output handler)."""

    clock: Callable[[], float]
    steps: list[tuple] = field(default_factory=list)

    def record(self, t: float, details: Any, scheduler_stats: Any, preempted: int = 0) -> None:
        """One step that ended at ``t`` (s): ``details`` is vLLM's ``SchedulerIterationDetails``,
        ``preempted`` the requests it preempted."""
        if details is None or getattr(details, "is_dummy", False):
            return
        row = (float(t), int(details.num_ctx_requests), int(details.num_ctx_tokens),
               int(details.num_generation_requests), int(details.num_generation_tokens),
               int(getattr(scheduler_stats, "num_running_reqs", 0)),
               int(getattr(scheduler_stats, "num_waiting_reqs", 0)),
               float(getattr(scheduler_stats, "kv_cache_usage", 0.0)), int(preempted))
        self.steps.append(row)

    def mark(self) -> int:
        """Index of the next step to be recorded (the start of a rate's slice)."""
        return len(self.steps)

    def since(self, start: int) -> list[tuple]:
        return self.steps[start:]


def observe(llm: Any, log: StepLog) -> bool:
    """Make ``llm`` (an ``AsyncLLM``) record each step's details in ``log`` as its outputs arrive;
    whether this vLLM allows it (an engine client with ``get_output_async``)."""
    client = getattr(llm, "engine_core", None)
    fetch = getattr(client, "get_output_async", None)
    if fetch is None:
        return False

    async def get_output_async():
        outputs = await fetch()
        stats = getattr(outputs, "scheduler_stats", None)
        if stats is not None:
            preempted = sum(getattr(getattr(e, "type", None), "name", "") == "PREEMPTED"
                            for out in getattr(outputs, "outputs", None) or () for e in getattr(out, "events", None) or ())
            log.record(getattr(outputs, "timestamp", None) or log.clock(),
                       getattr(stats, "iteration_details", None), stats, preempted)
        return outputs

    client.get_output_async = get_output_async
    return True


@dataclass(frozen=True)
class BusySteps:
    """Every step of a trace but the first, with the gap (s) since the step before it and
    whether the engine had work through that gap (a request running or waiting after the step
    before): where it had, the gap is the step's duration."""

    columns: dict[str, np.ndarray]
    gap_s: np.ndarray
    busy: np.ndarray


def busy_steps(steps: list, columns: list[str] | tuple[str, ...] = STEP_COLUMNS) -> BusySteps:
    """:class:`BusySteps` of step records (rows of ``columns``, as :class:`StepLog` keeps them
    and :func:`step_trace` writes them)."""
    a = np.asarray(steps, dtype=float)
    col = {name: a[:, i] for i, name in enumerate(columns)}
    return BusySteps({name: value[1:] for name, value in col.items()}, np.diff(col["t_s"]),
                     (col["running"][:-1] + col["waiting"][:-1]) > 0)


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50_ms": None, "p90_ms": None, "mean_ms": None}
    return {"p50_ms": round(float(np.percentile(values, 50)), 3),
            "p90_ms": round(float(np.percentile(values, 90)), 3),
            "mean_ms": round(float(values.mean()), 3)}


def step_summary(steps: list[tuple]) -> dict[str, Any] | None:
    """What the engine's steps of one rate did (``None`` without steps): counts, the busy steps'
    durations (ms) for mixed and decode-only steps, their mean tokens, the running and waiting
    requests, the peak KV-cache use (fraction) and the preemptions."""
    if not steps:
        return None
    a = np.asarray(steps, dtype=float)
    col = {name: a[:, i] for i, name in enumerate(STEP_COLUMNS)}
    b = busy_steps(steps)
    gaps, later = b.gap_s * 1e3, b.columns
    mixed = (later["ctx_tokens"] > 0) & b.busy
    decode = (later["ctx_tokens"] == 0) & (later["gen_tokens"] > 0) & b.busy

    def kind(mask: np.ndarray) -> dict[str, Any]:
        return {"steps": int(mask.sum()), **_stats(gaps[mask]),
                "mean_ctx_tokens": round(float(later["ctx_tokens"][mask].mean()), 1) if mask.any() else None,
                "mean_gen_reqs": round(float(later["gen_reqs"][mask].mean()), 1) if mask.any() else None}

    return {"steps": int(len(a)), "busy_s": round(float(gaps[b.busy].sum()) / 1e3, 3),
            "mixed": kind(mixed), "decode": kind(decode),
            "mean_running": round(float(col["running"].mean()), 1), "max_running": int(col["running"].max()),
            "mean_waiting": round(float(col["waiting"].mean()), 1), "max_waiting": int(col["waiting"].max()),
            "max_kv_usage": round(float(col["kv_usage"].max()), 4), "preempted": int(col["preempted"].sum())}


def step_trace(steps: list[tuple], t0: float) -> dict[str, Any]:
    """The steps as columns, times in seconds from ``t0`` (the rate's start), for the trace file."""
    rows = [[round(s[0] - t0, 4), *s[1:7], round(s[7], 4), s[8]] for s in steps]
    return {"columns": list(STEP_COLUMNS), "steps": rows}
