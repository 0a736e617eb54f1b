"""Repeated measurements: how far one point moves between measurements of it.

A results file may hold several rows of one ``point_id`` (the same model, variant, B, S, O and
engine settings, measured at other engine starts, on other machines or from other commits). The
validation compares the model with one of them (:func:`perfmodel.measuring.results.dedupe`: the
last ok row); this module gathers every point measured ok at least twice, with the spread of each
metric over its measurements, max/min − 1 in %: the measurement's own noise, to be read beside the
model's error.

``repeated_points(paths)`` is the table (one row per repeated point; ``repeat_table`` builds it
from ``ok_measurements(paths)``, every ok row of each point), ``repeat_summary(table)``
the median and largest spread per metric, ``summary_line(summary)`` that as a sentence, and
``repeat_section(table, points, calibrated, every)`` what the validation report shows (the table
with the calibrated engine's error on the kept row of each point), and ``every_measurement(points,
every, calibrated)`` the held-out MAPE over the kept rows beside the MAPE over every measurement.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from perfmodel.measuring.compare import METRIC_FIELDS, layout_label, variant_label
from perfmodel.measuring.results import read_rows
from perfmodel.validate.report_metrics import METRIC_UNIT, num, short_commit, signed

#: Metrics whose spread is shown, in this order (keys of METRIC_FIELDS).
REPEAT_METRICS = ("decode_step", "ttft", "throughput")
#: How the section names each metric.
REPEAT_LABEL = {"ttft": "TTFT", "decode_step": "ITL", "throughput": "throughput"}

_KEY_COLUMNS = ["point_id", "model", "variant", "layout", "batch", "input_len", "output_len", "n",
                "dates", "git_commits"]


def _when(row: dict[str, Any]) -> str:
    """A row's measurement time as ``YYYY-MM-DD HH:MM`` (as the row stores it, UTC)."""
    date = str(row.get("date") or "")
    return f"{date[:10]} {date[11:16]}".strip() if date else "?"


def repeat_columns() -> list[str]:
    """The columns of :func:`repeated_points`, in order."""
    return _KEY_COLUMNS + [f"{m}_{s}" for m in REPEAT_METRICS for s in ("min", "max", "spread_pct")]


def repeated_points(paths: Iterable[Path], models: Iterable[str] | None = None):
    """Every point id measured ok at least twice in the results files ``paths`` (taken together),
    optionally of some models only.

    Returns a pandas DataFrame, one row per such point, by model, variant, B, S and O:
    ``point_id``, ``model``, ``variant`` (:func:`perfmodel.measuring.compare.variant_label`),
    ``layout``, ``batch``, ``input_len``, ``output_len``, ``n`` (ok measurements), ``dates``
    (each measurement's ``YYYY-MM-DD HH:MM``, UTC) and ``git_commits`` (each one's commit), both
    lists in file order; then per metric of :data:`REPEAT_METRICS` ``<metric>_min`` and
    ``<metric>_max`` (s for ttft and decode_step, tok/s for throughput, as
    :func:`perfmodel.measuring.compare.compare` has them) and ``<metric>_spread_pct`` = max/min − 1
    in % (NaN where fewer than two measurements have the metric).
    """
    return repeat_table(ok_measurements(paths, models))


def ok_measurements(paths: Iterable[Path], models: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Point id → every ok row of it in the results files ``paths`` (taken together, in file
    order), optionally of some models only."""
    wanted = None if models is None else {m.lower() for m in models}
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for row in read_rows(Path(path), unique=False, warn=False).rows:
            pid = row.get("point_id")
            if row.get("status") != "ok" or not isinstance(pid, str):
                continue
            if wanted is not None and str(row.get("model", "")).lower() not in wanted:
                continue
            groups.setdefault(pid, []).append(row)
    return groups


def repeat_table(groups: dict[str, list[dict[str, Any]]]):
    """:func:`repeated_points`'s table from :func:`ok_measurements`' rows."""
    import pandas as pd

    records = []
    for pid, rows in groups.items():
        if len(rows) < 2:
            continue
        last = rows[-1]
        record: dict[str, Any] = {
            "point_id": pid, "model": last["model"], "variant": variant_label(last),
            "layout": layout_label(last), "batch": last["batch"], "input_len": last["input_len"],
            "output_len": last["output_len"], "n": len(rows), "dates": [_when(r) for r in rows],
            "git_commits": [short_commit(r.get("git_commit") or "?") for r in rows]}
        for metric in REPEAT_METRICS:
            field, scale, _ = METRIC_FIELDS[metric]
            values = [float(r[field]) * scale for r in rows
                      if isinstance(r.get(field), (int, float)) and not isinstance(r.get(field), bool)]
            low = min(values) if values else math.nan
            high = max(values) if values else math.nan
            spread = (high / low - 1.0) * 100.0 if len(values) >= 2 and low > 0 else math.nan
            record.update({f"{metric}_min": low, f"{metric}_max": high, f"{metric}_spread_pct": spread})
        records.append(record)
    table = pd.DataFrame(records, columns=repeat_columns())
    return table.sort_values(["model", "variant", "batch", "input_len", "output_len"], kind="stable",
                             ignore_index=True)


def repeat_summary(table) -> dict[str, dict[str, float | int | None]]:
    """Metric → ``median_pct`` and ``max_pct`` of the spread (%) over the repeated points of
    :func:`repeated_points`, and ``points`` (how many have a spread); None where none has."""
    summary: dict[str, dict[str, float | int | None]] = {}
    for metric in REPEAT_METRICS:
        spreads = table[f"{metric}_spread_pct"].dropna() if not table.empty else []
        have = len(spreads) > 0
        summary[metric] = {"median_pct": float(spreads.median()) if have else None,
                           "max_pct": float(spreads.max()) if have else None,
                           "points": int(len(spreads))}
    return summary


def summary_line(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as one sentence: "A repeated point moved by a median of X% (largest Y%) in
    ITL, ...". Empty when no metric has a spread."""
    parts = [f"{s['median_pct']:.1f}% (largest {s['max_pct']:.1f}%) in {REPEAT_LABEL[m]}"
             for m, s in summary.items() if s.get("median_pct") is not None]
    if not parts:
        return ""
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"A repeated point moved by a median of {text}."


def every_measurement(points, every, calibrated: str) -> dict[str, dict[str, float | int]]:
    """Metric (of :data:`REPEAT_METRICS`) → the held-out MAPE (%) of ``calibrated`` over the
    report's ``points`` (each point's kept row: ``mape_latest``, ``points``) and over ``every``
    (the same comparison of every ok measurement of each point: ``mape_every``, ``rows``)."""
    from perfmodel.measuring.compare import mape

    if points is None or every is None or points.empty or every.empty:
        return {}

    def held_out(table) -> dict[str, tuple[float, int]]:
        mine = mape(table[table["engine"] == calibrated], by=("split", "metric"))
        mine = mine[mine["split"] == "held-out"]
        return {m: (float(v), int(n)) for m, v, n in zip(mine["metric"], mine["mean"], mine["count"])}

    latest, each = held_out(points), held_out(every)
    return {metric: {"mape_latest": latest[metric][0], "points": latest[metric][1],
                     "mape_every": each[metric][0], "rows": each[metric][1]}
            for metric in REPEAT_METRICS if metric in latest and metric in each}


def every_sentence(summary: dict[str, dict[str, Any]], calibrated: str) -> str:
    """:func:`every_measurement` as one sentence; empty without it."""
    if not summary:
        return ""
    first = next(iter(summary.values()))
    parts = [f"{REPEAT_LABEL[m]} {s['mape_every']:.1f}% (latest {s['mape_latest']:.1f}%)" for m, s in summary.items()]
    text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return (f"Read over every measurement of each point ({first['rows']} held-out rows) instead of the "
            f"latest ({first['points']} points), `{calibrated}`'s held-out MAPE is {text}.")


def _range(low: float, high: float, scale: float) -> str:
    if math.isnan(low):
        return "–"
    return f"{num(low * scale)}–{num(high * scale)}"


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def repeat_section(table, points=None, calibrated: str | None = None, every=None) -> dict[str, Any] | None:
    """What the validation report shows of the repeated points (None when there are none):
    ``sentence``, ``summary`` (:func:`summary_line`), ``header`` and ``rows`` (text, for the
    Markdown), ``cells`` (value, text, cls: the HTML's sortable table). With the report's
    ``points`` (:func:`perfmodel.measuring.compare.compare`, stacked by engine) and its
    ``calibrated`` engine, each metric also gets that engine's error (%) on the point's kept row;
    with ``every`` (the same comparison of every measurement), ``every`` is
    :func:`every_sentence`."""
    if table is None or table.empty:
        return None
    errors: dict[tuple[str, str], float] = {}
    if points is not None and calibrated and not points.empty:
        mine = points[points["engine"] == calibrated]
        errors = {(str(p), str(m)): float(e) * 100.0
                  for p, m, e in zip(mine["point_id"], mine["metric"], mine["rel_error"])}
    header = [("model", "l"), ("B", ""), ("S", ""), ("O", ""), ("n", ""), ("measured (UTC, commit)", "l")]
    for metric in REPEAT_METRICS:
        unit = METRIC_UNIT.get(metric, ("", 1.0))[0]
        label = REPEAT_LABEL[metric]
        header += [(f"{label} {unit} (min–max)", ""), (f"{label} spread %", "")]
        if errors:
            header.append((f"{label} err %", ""))
    rows, cells = [], []
    for _, r in table.iterrows():
        when = "; ".join(f"{d} ({c})" for d, c in zip(r["dates"], r["git_commits"]))
        line = [(r["variant"], str(r["variant"]), "l"), (r["batch"], str(r["batch"]), ""),
                (r["input_len"], str(r["input_len"]), ""), (r["output_len"], str(r["output_len"]), ""),
                (r["n"], str(r["n"]), ""), (when, when, "l")]
        for metric in REPEAT_METRICS:
            scale = METRIC_UNIT.get(metric, ("", 1.0))[1]
            low, high, spread = r[f"{metric}_min"], r[f"{metric}_max"], r[f"{metric}_spread_pct"]
            line += [("" if math.isnan(low) else low * scale, _range(low, high, scale), ""),
                     ("" if math.isnan(spread) else spread, _pct(spread), "")]
            if errors:
                error = errors.get((str(r["point_id"]), metric))
                line.append(("", "–", "") if error is None else (error, signed(error), ""))
        rows.append([text for _, text, _ in line])
        cells.append([{"value": value, "text": text, "cls": cls} for value, text, cls in line])
    n = len(table)
    sentence = (f"{'This point was' if n == 1 else f'These {n} points were'} measured more than once "
                "(other engine starts, machines or commits); the report's numbers use the latest "
                "measurement of each point. Min–max over the measurements, spread = max/min − 1 in %"
                + (f", and `{calibrated}`'s error on the latest one" if errors else "")
                + ": the measurement's own noise, to read the model's error against.")
    every_text = every_sentence(every_measurement(points, every, calibrated), calibrated) if calibrated else ""
    return {"sentence": sentence, "summary": summary_line(repeat_summary(table)), "every": every_text,
            "header": [h for h, _ in header], "rows": rows,
            "html_header": [{"text": h, "cls": c} for h, c in header], "cells": cells}
