"""The backend-agnostic sweep driver: resume, one row per point, OOM as a result, a time budget.

For each group of points sharing a model build, the driver asks the backend to build once, then
measures each point, appending one row per point to the JSONL file as soon as it is known:

- a point whose id already has a row in the file is skipped (resume after a kill); the file is
  read again before each group and each point, so a point another run has recorded meanwhile
  is skipped too;
- ``torch.OutOfMemoryError`` (or a backend-recognised OOM) gives a row with ``status="oom"``,
  memory is freed and the sweep goes on; other exceptions give ``status="error"`` with a
  one-line message; an error the backend calls fatal (a dead CUDA context) ends the sweep
  after its row is written, so a fresh process can resume;
- with a budget (seconds), a point whose estimated cost does not fit in what is left is not
  started (no row: a later run measures it); the sweep ends cleanly. The budget must be a
  finite number of seconds > 0;
- with ``passes`` > 1, each group's points are measured that many times over on the one build,
  in turn (point 1, 2, …, then 1, 2, … again), each row carrying its ``pass`` (1-based): a
  point's repeated rows show its spread within one engine, and the host's speed drifting under
  it. Resume counts a point done at its first row, as for one pass.
"""

from __future__ import annotations

import datetime as _dt
import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from perfmodel.errors import InputError
from perfmodel.measuring import results
from perfmodel.measuring.preflight import check_budget
from perfmodel.measuring.points import SweepPoint, group_points


class Backend(Protocol):
    """What the driver needs from a backend (``hf``, ``vllm``, or a test stub)."""

    name: str

    def prepare(self, points: list[SweepPoint]) -> Any:
        """Build what the group's points share (the model); may raise (OOM, error)."""

    def measure(self, handle: Any, point: SweepPoint) -> dict[str, Any]:
        """Measure one point; returns the row's metric fields (status ok)."""

    def release(self, handle: Any) -> None:
        """Free what :meth:`prepare` built."""

    def describe(self, point: SweepPoint) -> dict[str, Any]:
        """Static row fields of a point (engine settings, model type) without building anything."""

    def estimate_s(self, handle: Any, point: SweepPoint) -> float:
        """Predicted wall seconds of measuring ``point`` (0 when unknown); handle may be None."""

    def is_oom(self, exc: BaseException) -> bool:
        """Whether an exception means out of memory."""

    def is_fatal(self, exc: BaseException) -> bool:
        """Whether an exception leaves the device unusable for the rest of this process."""

    def recover(self) -> None:
        """Free memory after a failed point."""

    def provenance(self) -> dict[str, Any]:
        """GPU, driver, library versions, date, git commit."""


class Reporter:
    """Plain-text progress: one flushed line per event (a log file friendly default)."""

    def start(self, total: int, todo: int) -> None:
        self.log(f"sweep: {total} points, {total - todo} already done, {todo} to measure")

    def point_done(self, point: SweepPoint, row: dict[str, Any]) -> None:
        status = row["status"]
        if status == "ok" and "ttft_ms" in row:
            extra = (f"ttft {row['ttft_ms']:.1f} ms, itl {row['itl_ms']:.2f} ms, "
                     f"{row['throughput_tok_s']:.0f} tok/s [{row['decode_method']}]")
        elif status == "ok":  # a row without times (the routing probe)
            extra = f"[{row.get('decode_method', '')}]"
        else:
            extra = row.get("error") or ""
        self.log(f"{status:5s} {point.point_id} ({row.get('wall_s', 0):.1f} s) {extra}")

    def skipped(self, point: SweepPoint, reason: str) -> None:
        self.log(f"skip  {point.point_id}: {reason}")

    def log(self, message: str) -> None:
        print(message, flush=True)


@dataclass
class SweepSummary:
    """What a sweep did."""

    total: int = 0
    already_done: int = 0
    measured: dict[str, int] = field(default_factory=lambda: {s: 0 for s in results.STATUSES})
    deferred: list[str] = field(default_factory=list)  # point ids not started (budget)
    stopped: str | None = None  # why the sweep ended early, if it did
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.deferred and self.stopped is None


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0] if text else ''}".strip()
    return msg[:300]


def _drop_traceback(exc: BaseException) -> None:
    """Release the frames (and the tensors they hold) that an exception keeps alive."""
    tb = exc.__traceback__
    if tb is not None:
        traceback.clear_frames(tb)
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None


def _failed(backend: Backend, exc: BaseException) -> tuple[str, str, bool]:
    """A failure as its rows record it: (status, one line, whether the device is unusable). An
    error that is neither out of memory nor fatal also writes its traceback to stderr (the row
    keeps one line, the log where it failed). The frames it holds are then released and the
    backend recovers."""
    status = "oom" if backend.is_oom(exc) else "error"
    msg, fatal = one_line(exc), backend.is_fatal(exc)
    if status == "error" and not fatal:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    _drop_traceback(exc)
    gc.collect()
    backend.recover()
    return status, msg, fatal


def run_sweep(
    points: list[SweepPoint],
    backend: Backend,
    out_path: Path,
    *,
    budget_s: float | None = None,
    reporter: Reporter | None = None,
    clock: Callable[[], float] = time.monotonic,
    passes: int = 1,
) -> SweepSummary:
    """Measure ``points`` with ``backend``, appending rows to ``out_path`` (see module docstring)."""
    budget_s = check_budget(budget_s, "budget_s")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise InputError(f"passes must be an integer >= 1, got {passes!r}")
    reporter = reporter or Reporter()
    t0 = clock()
    out_path = Path(out_path)
    repaired = results.repair_tail(out_path)
    if repaired == "cut":
        reporter.log(f"{out_path}: removed a partial last line (an interrupted write)")
    elif repaired == "newline":
        reporter.log(f"{out_path}: ended a complete last row that lacked its newline")
    existing = results.read_rows(out_path, warn=False)
    if existing.bad_lines:
        reporter.log(f"{out_path}: ignoring {len(existing.bad_lines)} unparsable line(s) {existing.bad_lines[:10]}")
    if existing.duplicates:
        reporter.log(f"{out_path}: {existing.duplicates} duplicate row(s) of one point (readers keep one per point)")
    done = results.completed_ids(existing.rows)
    summary = SweepSummary(total=len(points))
    todo = [p for p in points if p.point_id not in done]
    summary.already_done = len(points) - len(todo)
    reporter.start(len(points), len(todo))
    prov = backend.provenance()

    def elapsed() -> float:
        return clock() - t0

    def recorded_meanwhile(point: SweepPoint) -> bool:
        """Whether another run has written a row for ``point`` since this sweep started."""
        if point.point_id not in results.completed_ids(results.read_rows(out_path, warn=False).rows):
            return False
        summary.already_done += 1
        reporter.skipped(point, "recorded by another run meanwhile")
        return True

    def write(point: SweepPoint, status: str, fields: dict[str, Any], error: str | None,
              started: float, pass_: int = 1) -> dict[str, Any]:
        row = _base_row(point, backend, prov)
        if passes > 1:
            row["pass"] = pass_
        row.update(fields)
        row["status"] = status
        row["error"] = error
        row["wall_s"] = round(clock() - started, 3)
        row["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        results.append_row(out_path, row)
        summary.measured[status] += 1
        reporter.point_done(point, row)
        return row

    for group in group_points(todo):
        if summary.stopped:
            summary.deferred += [p.point_id for p in group]
            continue
        group = [p for p in group if not recorded_meanwhile(p)]
        if not group:
            continue
        if budget_s is not None:
            now = elapsed()
            fits = [p for p in group if now + _estimate(backend, None, p) <= budget_s]
            if not fits:
                for p in group:
                    summary.deferred.append(p.point_id)
                    reporter.skipped(p, "does not fit in the time budget")
                continue
        started = clock()
        try:
            handle = backend.prepare(group)
        except Exception as exc:  # noqa: BLE001 - every failure becomes rows
            status, msg, fatal = _failed(backend, exc)
            for p in group:
                write(p, status, {}, "model build: " + msg, started)
            if fatal:
                summary.stopped = "fatal device error"
            continue
        try:
            failed: set[str] = set()  # points not measured in a pass are not repeated
            for pass_, point in ((k, p) for k in range(1, passes + 1) for p in group):
                if point.point_id in failed:
                    continue
                if summary.stopped:
                    if pass_ == 1:
                        summary.deferred.append(point.point_id)
                    continue
                if budget_s is not None:
                    est = _estimate(backend, handle, point)
                    if elapsed() + est > budget_s:
                        if pass_ == 1:
                            summary.deferred.append(point.point_id)
                            reporter.skipped(point, f"estimated {est:.0f} s does not fit in the time budget")
                        failed.add(point.point_id)
                        continue
                if pass_ == 1 and recorded_meanwhile(point):
                    failed.add(point.point_id)
                    continue
                started = clock()
                try:
                    fields = backend.measure(handle, point)
                except Exception as exc:  # noqa: BLE001
                    status, msg, fatal = _failed(backend, exc)
                    write(point, status, {}, msg, started, pass_)
                    failed.add(point.point_id)
                    if fatal:
                        summary.stopped = "fatal device error"
                    continue
                write(point, "ok", fields, None, started, pass_)
        finally:
            backend.release(handle)
            del handle
            gc.collect()
            backend.recover()
    summary.elapsed_s = elapsed()
    if summary.deferred and summary.stopped is None:
        summary.stopped = "time budget"
    return summary


def _estimate(backend: Backend, handle: Any, point: SweepPoint) -> float:
    """The backend's estimate, 0 when it cannot make one (the point is then simply tried)."""
    try:
        return float(backend.estimate_s(handle, point))
    except Exception:  # noqa: BLE001 - planning must never stop a sweep
        return 0.0


def _base_row(point: SweepPoint, backend: Backend, prov: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "schema_version": results.SCHEMA_VERSION,
        "point_id": point.point_id,
        "status": "ok",
        "error": None,
        "backend": point.backend,
        "model": point.model,
        "model_type": None,
        "overrides": list(point.overrides),
        "layers": point.layers,
        "batch": point.batch,
        "input_len": point.input_len,
        "output_len": point.output_len,
        "full_run": point.full_run,
    }
    row.update(prov)
    row.update(backend.describe(point))
    return row
