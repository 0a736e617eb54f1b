"""A serving run's TTFT error read as a rate: where the replay reaches the measured TTFT.

Near saturation a run's TTFT percentiles follow the queue without bound: a model whose capacity
is 3% short puts the 90th percentile of a run at 97% of saturation several times too long, and
one 3% long puts it at the prompt's own time. The error in time then says little of what a
capacity plan asks, the highest rate at which the TTFT stays within a target. This module reads
the error along the rate instead: the same requests, in the same order and with the same lengths,
offered f times faster (each submission time divided by f, :func:`perfmodel.measuring.serving_replay.predict_row`'s
``rate_factor``), and f found where the replay's TTFT percentile equals the measured one:

    TTFT_replay(f · rate) = TTFT_measured,     rate error = f − 1

A rate error of −5% means the model reaches the measured TTFT at 5% less traffic than the engine
(it is pessimistic on capacity); +5% means it reaches it at 5% more. f is searched between
:data:`FACTORS` (Brent's method on log f, scipy); outside them the run is marked ``below`` or
``above``. Only runs that kept up are read so (an overloaded run's TTFT grows with its duration,
not with the rate alone). Every run is held out as in :mod:`perfmodel.validate.serving`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from perfmodel.errors import PerfModelError

#: The TTFT percentiles read as a rate.
RATE_METRICS = ("ttft_p50", "ttft_p90")
#: The rate factors f searched: the replay's TTFT is found between these multiples of the run's rate.
FACTORS = (0.5, 2.0)
#: The rate error counted as close: within this fraction of the run's rate.
RATE_TARGET = 0.10
#: Precision of the search, in log f.
_XTOL = 2e-3
#: A replay's TTFT where no request got its first token (s): longer than any measured.
_UNBOUNDED_S = 1e6


def rate_error(row: dict[str, Any], gpu: str, metric: str,
               replays: dict[float, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The rate factor at which the replay of ``row`` gives its measured ``metric`` (see the
    module): ``factor`` (f; None outside :data:`FACTORS`), ``error`` (f − 1), ``bound``
    (``below`` when even f = 0.5 gives a longer TTFT than measured, ``above`` when even f = 2
    gives a shorter one, else None). A replay that overloads (the rule of
    :func:`perfmodel.measuring.serving_replay.overload`: requests left at the drain limit, or a
    queue that grows), or in which no request got its first token, counts as longer than any
    measured TTFT: the run read kept up, and the percentiles of an overloaded replay's completed
    requests leave out the queue. ``replays``: the row's replays by log f, kept between the
    metrics of one run (each metric's search starts at the same two ends)."""
    from scipy.optimize import brentq

    from perfmodel.measuring.serving_replay import LATENCY, predict_row, predicted_overload

    field, predicted, pct = LATENCY[metric]
    measured = row[field] * 1e-3
    replays = {} if replays is None else replays

    def gap(log_f: float) -> float:
        if log_f not in replays:
            replays[log_f] = predict_row(row, gpu, rate_factor=math.exp(log_f))
        replay = replays[log_f]
        value = (replay.get(predicted) or {}).get(pct)
        bounded = value is not None and math.isfinite(value) and not predicted_overload(replay)["overloaded"]
        return (value if bounded else _UNBOUNDED_S) - measured

    lo, hi = math.log(FACTORS[0]), math.log(FACTORS[1])
    if gap(lo) > 0:
        return {"factor": None, "error": None, "bound": "below"}
    if gap(hi) < 0:
        return {"factor": None, "error": None, "bound": "above"}
    factor = math.exp(brentq(gap, lo, hi, xtol=_XTOL))
    return {"factor": factor, "error": factor - 1.0, "bound": None}


def rate_errors(rows: list[dict[str, Any]], runs: list[dict[str, Any]], gpu: str) -> list[dict[str, Any]]:
    """:func:`rate_error` of each of :data:`RATE_METRICS` for every run that kept up (``runs``:
    :func:`perfmodel.validate.serving.compare_serving`'s ``rates``, matched to ``rows`` by point
    id), with the run's model, scheme, lengths, rate and measured value; a run the replay cannot
    take carries ``error_text``."""
    from perfmodel.measuring.serving_replay import LATENCY

    by_id = {r["point_id"]: r for r in rows if r.get("status") == "ok"}
    out = []
    for run in runs:
        row = by_id.get(run.get("point_id"))
        if row is None or run.get("error") or run.get("measured_overloaded") is not False:
            continue
        replays: dict[float, dict[str, Any]] = {}
        for metric in RATE_METRICS:
            entry = {key: run.get(key) for key in ("model", "scheme", "burstiness", "input_len", "output_len", "lengths",
                                                    "rate", "offered_rate", "gpu", "point_id")}
            entry.update(metric=metric, measured=row[LATENCY[metric][0]] * 1e-3)
            try:
                entry.update(rate_error(row, run["gpu"], metric, replays))
            except PerfModelError as exc:
                entry.update(factor=None, error=None, bound=None, error_text=str(exc))
            out.append(entry)
    return out


def rate_summary(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric of :data:`RATE_METRICS`: runs read, runs within :data:`RATE_TARGET` of their
    rate, the median and largest |rate error| of those found, and how many lay outside
    :data:`FACTORS`."""
    out = []
    for metric in RATE_METRICS:
        part = [e for e in entries if e["metric"] == metric]
        found = [abs(e["error"]) for e in part if e.get("error") is not None]
        out.append({"metric": metric, "runs": len(part), "within": sum(x <= RATE_TARGET for x in found),
                    "median_abs": statistics.median(found) if found else None,
                    "max_abs": max(found) if found else None,
                    "outside": sum(1 for e in part if e.get("bound"))})
    return out


#: What the report says of the reading, before its tables.
RATE_NOTE = ("Each run that kept up, replayed with the same requests offered f times faster: the rate at which the "
             "replay's TTFT percentile equals the measured one, and its error f − 1 (negative: the model reaches "
             "that TTFT at less traffic than the engine did; a capacity plan whose TTFT target is the measured "
             f"value would allow that much less). Searched between {FACTORS[0]:g}x and {FACTORS[1]:g}x the run's "
             "rate. Where TTFT hardly follows the rate (far below saturation) a small error in time is a large one "
             "in rate; near saturation the reverse.")
#: The columns of the two tables.
SUMMARY_COLUMNS = ("metric", "runs", f"within ±{RATE_TARGET:.0%} of the rate", "median |error|", "largest",
                   "outside the search")
ENTRY_COLUMNS = ("model", "rate req/s", "metric", "measured", "replay reaches it at", "rate error")


def rate_tables(entries: list[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    """The rows (text) of the summary table (:data:`SUMMARY_COLUMNS`) and of the runs' table
    (:data:`ENTRY_COLUMNS`)."""
    from perfmodel.measuring.serving_replay import model_label
    from perfmodel.report_terminal import format_time

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    summary = [[s["metric"], str(s["runs"]), str(s["within"]), pct(s["median_abs"]), pct(s["max_abs"]),
                str(s["outside"])] for s in rate_summary(entries)]
    runs = []
    for e in entries:
        if e.get("factor") is not None:
            at = f"{e['factor'] * e['offered_rate']:.3g} req/s"
        elif e.get("bound") in ("below", "above"):
            f = FACTORS[0] if e["bound"] == "below" else FACTORS[1]
            at = f"{e['bound']} {f * e['offered_rate']:.3g} req/s"
        else:
            at = e.get("error_text", "–")
        runs.append([model_label(e["model"], e.get("scheme"), e.get("burstiness")), f"{e['rate']:g}", e["metric"],
                     format_time(e["measured"]), at, "–" if e.get("error") is None else f"{100 * e['error']:+.1f}%"])
    return summary, runs


def rate_markdown(entries: list[dict[str, Any]]) -> str:
    """The section of the serving report that reads each kept-up run's TTFT error as a rate."""
    if not entries:
        return ""
    summary, runs = rate_tables(entries)
    lines = ["", "## TTFT's error as a rate", "", RATE_NOTE, ""]
    for columns, rows in ((SUMMARY_COLUMNS, summary), (ENTRY_COLUMNS, runs)):
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(lines)
