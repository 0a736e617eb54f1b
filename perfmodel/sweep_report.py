"""A sweep as a report (``perfmodel sweep ... --out DIR``): ``report.html``, curves of each metric
against the first swept key (one line per value of the second, one panel per value of the third;
with a baseline, the throughput's and ITL's changes against it too), with the points drawn in a
sortable table, and ``summary.md``, the table alone.

Keys swept beyond the third are held at their first value in the charts (the page says so); the
table holds the points drawn, at most :data:`MAX_ROWS`. Times in ms, throughput in tokens/s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: The metrics drawn: column, title, scale to the shown unit.
METRICS = (("throughput_tok_s", "throughput B·(S+O)/E2E, tok/s", 1.0),
           ("output_throughput_tok_s", "output tokens/s", 1.0),
           ("itl_s", "ITL (decode step), ms", 1e3),
           ("ttft_s", "TTFT, ms", 1e3))
#: The changes drawn where the sweep has a baseline (``sweep --baseline``): column, title, scale.
CHANGE_METRICS = (("throughput_tok_s_vs_base_pct", "throughput against the baseline, % change", 1.0),
                  ("itl_s_vs_base_pct", "ITL against the baseline, % change", 1.0))
#: Most points the page draws and lists.
MAX_ROWS = 5000
#: A numeric key whose values span at least this factor is drawn on a log scale.
LOG_SPAN = 8.0


def shown(table, keys: list[str]) -> tuple[Any, dict[str, Any]]:
    """The points the charts draw: keys beyond the third held at their first value (returned
    as ``held``: key → value), then at most :data:`MAX_ROWS` of them."""
    held = {key: table[key].iloc[0] for key in keys[3:]}
    part = table
    for key, value in held.items():
        part = part[part[key] == value]
    return part.head(MAX_ROWS), held


def _numeric(values) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def metric_chart(part, keys: list[str], column: str, title: str, scale: float):
    """One metric against the first key: a line per value of the second, a panel per value of
    the third; points that do not fit in memory drawn as crosses. None when the metric is empty."""
    import altair as alt

    data = part.assign(value=part[column] * scale, fits=part["fits_in_memory"].map({True: "yes", False: "no"}))
    data = data[data["value"].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
    if data.empty:
        return None
    x_key = keys[0]
    x_numeric = _numeric(data[x_key])
    span = data[x_key].max() / data[x_key].min() if x_numeric and data[x_key].min() > 0 else 1.0
    x = alt.X(f"{x_key}:{'Q' if x_numeric else 'N'}", title=x_key,
              scale=alt.Scale(type="log") if span >= LOG_SPAN else alt.Undefined)
    encoding: dict[str, Any] = dict(x=x, y=alt.Y("value:Q", title=title),
                                    tooltip=[*keys[:3], alt.Tooltip("value:Q", format=",.4g", title=title), "fits:N"])
    if len(keys) > 1:
        encoding["color"] = alt.Color(f"{keys[1]}:N", title=keys[1])
    base = alt.Chart(data[[*keys[:3], "value", "fits"]]).encode(**encoding)
    chart = base.mark_line() + base.mark_point(size=50, filled=True).encode(
        shape=alt.Shape("fits:N", title="fits in memory", scale=alt.Scale(domain=["yes", "no"], range=["circle", "cross"])))
    chart = chart.properties(width=300, height=220)
    if len(keys) > 2:
        chart = chart.facet(column=alt.Column(f"{keys[2]}:N", title=keys[2]))
    return chart.properties(title=title)


def context(table, keys: list[str], header: dict[str, Any]) -> dict[str, Any]:
    """What both templates show: the sweep's header line, the held keys, the columns and rows
    of the points drawn (each metric's change against a baseline too, where the sweep has one)."""
    from perfmodel.report_terminal import sweep_header

    from perfmodel.sweep_change import SUFFIX

    part, held = shown(table, keys)
    changes = [c for c in part.columns if c.endswith(SUFFIX)]  # with a baseline (sweep --baseline)
    columns = [*keys, *(c for c, *_ in METRICS if c in part.columns), *changes, "fits_in_memory"]
    rows = [[_cell(v) for v in row] for row in part[columns].itertuples(index=False)]
    return {"title": f"Sweep: {header['model']}", "header": sweep_header(header), "keys": keys, "held": held,
            "columns": columns, "rows": rows, "points": len(table), "drawn": len(part), "max_rows": MAX_ROWS}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _environments():
    from perfmodel.templating import environments

    return environments("perfmodel", strict=True)


def report_html(table, keys: list[str], header: dict[str, Any]) -> str:
    from perfmodel.templating import script_json

    from perfmodel.vega import vega_scripts

    part, _ = shown(table, keys)
    specs = {}
    for column, title, scale in (*METRICS, *CHANGE_METRICS):
        chart = metric_chart(part, keys, column, title, scale) if column in part.columns else None
        if chart is not None:
            specs[f"chart-{column}"] = chart.to_dict(validate=False)
    page = _environments()[0].get_template("sweep.html.j2").render(
        **context(table, keys, header), specs=specs, vega=vega_scripts(),
        specs_json=script_json(specs))
    return page.rstrip("\n") + "\n"


def summary_markdown(table, keys: list[str], header: dict[str, Any]) -> str:
    return _environments()[1].get_template("sweep.md.j2").render(**context(table, keys, header)).rstrip("\n") + "\n"


def write_report(table, keys: list[str], header: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.md``; returns their paths."""
    from perfmodel.templating import write_pages

    html, md = write_pages(out_dir, {"report.html": lambda: report_html(table, keys, header),
                                     "summary.md": lambda: summary_markdown(table, keys, header)})
    return html, md
