"""The charts of the serving validation's page (Vega-Lite, through altair).

From the result of :func:`perfmodel.validate.serving.compare_serving`, one panel row per group
of runs that differ only in rate (model, S/O, max sequences, GPU, layout):

- ``chart-latency``: TTFT and ITL p50/p90 (ms, log scale) against the offered rate (req/s),
  measured as filled points, the replay as lines with hollow points;
- ``chart-served``: served output tok/s (every output token over the run's window), measured
  as filled points and the replay as a line with hollow points, against the offered rate.

Each point's shape says whether its side (measured or replay) was overloaded at that rate
(:func:`perfmodel.measuring.serving_replay.overload`). Nothing is computed here: values are shown as the
result holds them (seconds shown in ms).
"""

from __future__ import annotations

import math
from typing import Any

#: Shape of a point by its side's overload verdict.
VERDICT_SHAPES = {"kept up": "circle", "overloaded": "cross", "unknown": "square"}
#: Latency metrics as charted: metric -> (panel, percentile).
LATENCY_PANELS = {"ttft_p50": ("TTFT", "p50"), "ttft_p90": ("TTFT", "p90"),
                  "itl_p50": ("ITL", "p50"), "itl_p90": ("ITL", "p90"), "itl_mean": ("ITL", "mean")}
#: The served-throughput metric of the result's points.
SERVED = "served_tok_s"


def _verdict(flag: bool | None) -> str:
    return "unknown" if flag is None else ("overloaded" if flag else "kept up")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def lengths_text(item: dict[str, Any]) -> str:
    """S/O of a point, a run or a group: its ``lengths`` label
    (:func:`perfmodel.measuring.serving_replay.lengths_label`), else ``input_len/output_len``."""
    return item.get("lengths") or f"{item['input_len']}/{item['output_len']}"


def series_label(item: dict[str, Any]) -> str:
    """A group of runs differing only in rate: model, S/O, max sequences, GPU, layout."""
    return (f"{item['model']} S/O={lengths_text(item)} seqs≤{item['max_num_seqs']} "
            f"{item['gpu']} {item['layout']}")


def chart_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-form chart data: one row per point and side (measured, predicted) with a finite
    value (latencies > 0, for the log scale), at its run's offered rate (req/s); latencies in
    ms, served throughput in tok/s."""
    runs = {(r["point_id"], r["rate"]): r for r in result["rates"] if not r.get("error")}
    rows = []
    for p in result["points"]:
        run = runs.get((p["point_id"], p["rate"]))
        if run is None:
            continue
        latency = p["metric"] in LATENCY_PANELS
        panel, pct = LATENCY_PANELS.get(p["metric"], ("served", ""))
        for side in ("measured", "predicted"):
            value = p[side]
            if not _finite(value) or (latency and value <= 0):
                continue
            rows.append({
                "series": series_label(p), "metric": p["metric"], "panel": panel, "percentile": pct,
                "side": side, "value": value * 1e3 if latency else value, "rate": p["rate"],
                "offered_rate": run["offered_rate"], "verdict": _verdict(run[f"{side}_overloaded"]),
                "why": run[f"{side}_why"], "error_pct": None if p["rel_error"] is None else p["rel_error"] * 100.0})
    return rows


def _shape():
    import altair as alt

    return alt.Shape("verdict:N", title="overload (that side)",
                     scale=alt.Scale(domain=list(VERDICT_SHAPES), range=list(VERDICT_SHAPES.values())))


def _tooltip(unit: str) -> list:
    import altair as alt

    return [alt.Tooltip("series:N", title="runs"), alt.Tooltip("metric:N"), alt.Tooltip("side:N"),
            alt.Tooltip("rate:Q", title="nominal req/s"),
            alt.Tooltip("offered_rate:Q", title="offered req/s", format=".3g"),
            alt.Tooltip("value:Q", title=unit, format=".4g"),
            alt.Tooltip("error_pct:Q", title="error %", format="+.1f"), alt.Tooltip("why:N", title="overload")]


def latency_chart(rows: list[dict[str, Any]]):
    """TTFT p50/p90 and ITL p50/p90/mean (ms, log y) against the offered rate; measured points, replay
    lines; a row of panels per group of runs, TTFT beside ITL. None without data."""
    import altair as alt
    import pandas as pd

    data = pd.DataFrame([r for r in rows if r["metric"] in LATENCY_PANELS])
    if data.empty:
        return None
    base = alt.Chart().encode(
        x=alt.X("offered_rate:Q", title="offered rate (req/s)", scale=alt.Scale(zero=False)),
        y=alt.Y("value:Q", title="latency (ms)", scale=alt.Scale(type="log"), axis=alt.Axis(format="~g")),
        color=alt.Color("percentile:N", title="percentile",
                        scale=alt.Scale(domain=["p50", "p90", "mean"], range=["#4c78a8", "#e45756", "#54a24b"])),
        tooltip=_tooltip("ms"))
    predicted = base.transform_filter(alt.datum.side == "predicted")
    layers = [predicted.mark_line(strokeWidth=2, opacity=0.8).encode(detail="metric:N"),
              predicted.mark_point(size=40, filled=False).encode(shape=_shape()),
              base.transform_filter(alt.datum.side == "measured")
                  .mark_point(size=90, filled=True, opacity=0.9).encode(shape=_shape())]
    return (alt.layer(*layers, data=data).properties(width=320, height=220)
            .facet(row=alt.Row("series:N", title=None), column=alt.Column("panel:N", title=None, sort=["TTFT", "ITL"]))
            .resolve_scale(x="independent", y="independent")
            .properties(title="TTFT and ITL vs offered rate: measured (filled points), replay (lines)"))


def served_chart(rows: list[dict[str, Any]]):
    """Served output tok/s against the offered rate: measured points, replay line; a panel per
    group of runs. None without data."""
    import altair as alt
    import pandas as pd

    data = pd.DataFrame([r for r in rows if r["metric"] == SERVED])
    if data.empty:
        return None
    base = alt.Chart().encode(
        x=alt.X("offered_rate:Q", title="offered rate (req/s)"),
        y=alt.Y("value:Q", title="served output tok/s"),
        color=alt.Color("side:N", title=None,
                        scale=alt.Scale(domain=["measured", "predicted"], range=["#e45756", "#4c78a8"])),
        tooltip=_tooltip("tok/s"))
    predicted = base.transform_filter(alt.datum.side == "predicted")
    layers = [predicted.mark_line(strokeWidth=2), predicted.mark_point(size=40, filled=False).encode(shape=_shape()),
              base.transform_filter(alt.datum.side == "measured")
                  .mark_point(size=90, filled=True, opacity=0.85).encode(shape=_shape())]
    return (alt.layer(*layers, data=data).properties(width=320, height=220)
            .facet(facet=alt.Facet("series:N", title=None), columns=2)
            .resolve_scale(x="independent", y="independent")
            .properties(title="Served output tok/s vs offered rate: measured (points), replay (line)"))


def chart_specs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The page's Vega-Lite specs by element id (``chart-latency``, ``chart-served``); a chart
    without data is left out."""
    rows = chart_rows(result)
    charts = {"chart-latency": latency_chart(rows), "chart-served": served_chart(rows)}
    return {chart_id: chart.to_dict() for chart_id, chart in charts.items() if chart is not None}
