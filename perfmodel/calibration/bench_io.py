"""Tidy CSV tables written row by row (a killed bench keeps what it measured) and the time budget."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfmodel.measuring.timing import Stats

#: Columns shared by every table (timings in ms, throughputs in TFLOP/s and TB/s, sizes in bytes).
COMMON = ["family", "op", "dtype", "median_ms", "p10_ms", "p90_ms", "n_reps", "method", "inner",
          "flops", "bytes", "tflops", "tbs", "rotate", "status", "error"]


class CsvTable:
    """One CSV table with a fixed header, built beside its final path and put in place when done.

    Rows go to ``<name>.partial`` in the same folder (each :meth:`add` writes and flushes one
    line, so a killed bench keeps what it measured there); :meth:`commit` atomically replaces
    ``path`` with it (``os.replace``). A table already at ``path`` is never touched before then.
    ``common``: the columns appended after ``columns`` (default :data:`COMMON`).
    """

    def __init__(self, path: Path, columns: list[str], common: list[str] | None = None) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.columns = list(dict.fromkeys(columns + (COMMON if common is None else common)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.partial_path, "w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._fh.flush()
        self.rows = 0
        self.errors = 0

    def add(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._fh.flush()
        self.rows += 1
        if row.get("status", "ok") != "ok":
            self.errors += 1

    def commit(self) -> None:
        """Close the table and move it into place (flushed and fsync-ed first)."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        os.replace(self.partial_path, self.path)
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)  # the rename itself survives a crash
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close without committing: the rows stay in ``<name>.partial``, ``path`` is untouched."""
        if not self._fh.closed:
            self._fh.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def timing_fields(stats: Stats, flops: float, nbytes: float) -> dict[str, Any]:
    """The timing columns of a row: stats plus achieved TFLOP/s and TB/s (minimal bytes)."""
    sec = stats.median_ms / 1e3
    return {
        **stats.as_dict(),
        "flops": flops,
        "bytes": nbytes,
        "tflops": flops / sec / 1e12 if sec > 0 else None,
        "tbs": nbytes / sec / 1e12 if sec > 0 else None,
        "status": "ok",
        "error": "",
    }


def error_fields(exc: BaseException) -> dict[str, Any]:
    text = str(exc).strip().splitlines()
    return {"status": "oom" if "out of memory" in str(exc).lower() else "error",
            "error": f"{type(exc).__name__}: {text[0] if text else ''}"[:200]}


@dataclass
class Budget:
    """A wall-time budget split among stages by share; unused time rolls over to later stages."""

    total_s: float
    shares: dict[str, float]
    t0: float = field(default_factory=time.monotonic)
    spent: dict[str, float] = field(default_factory=dict)
    truncated: dict[str, bool] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def deadline(self, stage: str) -> float:
        """Monotonic time by which ``stage`` should stop starting new measurements."""
        left = [s for s in self.shares if s not in self.spent]
        weight = sum(self.shares[s] for s in left) or 1.0
        return time.monotonic() + max(0.0, self.remaining()) * self.shares.get(stage, 0.0) / weight

    def done(self, stage: str, started: float, truncated: bool) -> None:
        self.spent[stage] = time.monotonic() - started
        self.truncated[stage] = truncated


class Stage:
    """Deadline bookkeeping of one stage: ``ok()`` is False once the deadline has passed."""

    def __init__(self, budget: Budget, name: str) -> None:
        self.budget = budget
        self.name = name
        self.start = time.monotonic()
        self.deadline = budget.deadline(name)
        self.truncated = False
        self._asked = 0

    def ok(self) -> bool:
        """Whether to start another measurement (the first one of a stage always starts)."""
        self._asked += 1
        if self._asked > 1 and time.monotonic() >= self.deadline:
            self.truncated = True
            return False
        return True

    def finish(self) -> None:
        self.budget.done(self.name, self.start, self.truncated)


class FatalDeviceError(RuntimeError):
    """The CUDA context is no longer usable (illegal access, device assert): stop the bench."""


_FATAL = ("illegal memory access", "device-side assert", "unspecified launch failure",
          "misaligned address", "illegal instruction")


def run_case(table: CsvTable, row: dict[str, Any], fn, flops: float, nbytes: float, device,
             **timing_kwargs: Any) -> dict[str, Any]:
    """Time ``fn`` (see :func:`perfmodel.measuring.timing.auto_time`) and add one row to ``table``.

    Failures become rows with status ``oom``/``error``; a fatal device error is re-raised as
    :class:`FatalDeviceError` after its row is written.
    """
    import gc

    import torch

    from perfmodel.measuring.timing import auto_time

    try:
        stats = auto_time(fn, device, **timing_kwargs)
        out = {**row, **timing_fields(stats, flops, nbytes)}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        out = {**row, **error_fields(exc), "flops": flops, "bytes": nbytes}
        fatal = any(m in str(exc).lower() for m in _FATAL)
        del exc
        gc.collect()
        if torch.cuda.is_available() and not fatal:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        table.add(out)
        if fatal:
            raise FatalDeviceError(out["error"])
        return out
    table.add(out)
    return out
