"""A sweep as a report (``perfmodel sweep ... --out DIR``): ``report.html``, curves of each metric
against the first swept key (one line per value of the second, one panel per value of the third;
with a baseline, the throughput's and ITL's changes against it too, each with the band measured
pairs give it where they do), with the points drawn in a sortable table, and ``summary.md``, the
table alone.

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


def band_limits(part, column: str, header: dict[str, Any]):
    """Where a change column has a measured band (``sweep --baseline``: the header's
    ``baseline.change_band``, per GPU, :func:`perfmodel.sweep_change.change_band`): the lowest and
    highest change (%) the measured pairs put each row's change at, (1 + c)·(1 ± band) − 1, as
    two arrays (NaN on the baseline's own rows and on rows of a GPU without a band); None for a
    column without one."""
    import numpy as np

    from perfmodel.sweep_change import SUFFIX, baseline_rows

    metric = column.removesuffix(SUFFIX)
    bands = {b["gpu"]: b["metrics"][metric]["band_pct"]
             for b in ((header.get("baseline") or {}).get("change_band") or [])
             if metric in b.get("metrics", {}) and b["metrics"][metric]["band_pct"] is not None}
    if not bands or not column.endswith(SUFFIX):
        return None
    if "gpu" in part.columns:  # a swept GPU, as the grid names it (h100): its band by the GPU's name
        from perfmodel.specs.hardware import load_gpu

        names = {g: load_gpu(g).name for g in part["gpu"].astype(str).unique()}
        gpus = [names[g] for g in part["gpu"].astype(str)]
    else:
        gpus = [header["gpu"]] * len(part)
    width = np.array([bands.get(g, np.nan) for g in gpus], dtype=float) / 100
    width[baseline_rows(part, header["baseline"]["key"], header["baseline"]["value"])] = np.nan
    ratio = 1 + part[column].to_numpy(dtype=float) / 100
    return 100 * (ratio * (1 - width) - 1), 100 * (ratio * (1 + width) - 1)


def metric_chart(part, keys: list[str], column: str, title: str, scale: float, band=None):
    """One metric against the first key: a line per value of the second, a panel per value of
    the third; points that do not fit in memory drawn as crosses; ``band``, a change's measured
    band (:func:`band_limits`), as a bar through each point. None when the metric is empty."""
    import altair as alt

    data = part.assign(value=part[column] * scale, fits=part["fits_in_memory"].map({True: "yes", False: "no"}))
    if band is not None:
        data = data.assign(band_low=band[0], band_high=band[1])
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
    extra = ["band_low", "band_high"] if band is not None else []
    base = alt.Chart(data[[*keys[:3], "value", "fits", *extra]]).encode(**encoding)
    chart = base.mark_line() + base.mark_point(size=50, filled=True).encode(
        shape=alt.Shape("fits:N", title="fits in memory", scale=alt.Scale(domain=["yes", "no"], range=["circle", "cross"])))
    if band is not None:  # the measured pairs' band around each change
        chart = base.mark_rule(opacity=0.5, strokeWidth=3).encode(
            y=alt.Y("band_low:Q", title=title), y2="band_high:Q",
            tooltip=[*keys[:3], alt.Tooltip("band_low:Q", format=".1f", title="measured pairs: from %"),
                     alt.Tooltip("band_high:Q", format=".1f", title="to %")]) + chart
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
        if column not in part.columns:
            continue
        chart = metric_chart(part, keys, column, title, scale, band_limits(part, column, header))
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
