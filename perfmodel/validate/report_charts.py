"""The charts of the validation report (Vega-Lite, through altair).

Each chart function returns an altair chart (``None`` when there is nothing to draw); the page
embeds their Vega-Lite specs, drawn by the Vega JavaScript of :func:`perfmodel.vega.vega_scripts`.
Chart values are shown in each metric's display unit (ms or tok/s); errors in %.
"""

from __future__ import annotations

import math

from perfmodel.validate.report_metrics import (
    METRIC_LABEL, METRIC_UNIT, N_OPS_POINTS, SPLITS, point_label, with_variant,
)


def display_values(points):
    """Points with display values: measured/predicted in the metric's display unit, error %."""
    unit = points["metric"].map(lambda m: METRIC_UNIT.get(m, ("", 1.0))[0])
    scale = points["metric"].map(lambda m: METRIC_UNIT.get(m, ("", 1.0))[1]).astype(float)
    points = with_variant(points)
    return points.assign(unit=unit,
                         measured_d=points["measured"].astype(float) * scale,
                         predicted_d=points["predicted"].astype(float) * scale,
                         error_pct=points["rel_error"].astype(float) * 100.0,
                         point=points.apply(point_label, axis=1) if not points.empty else [])


def scales(points):
    """The colour (model) and shape (split) encodings every chart shares."""
    import altair as alt

    models = sorted(set(points["model"]))
    color = alt.Color("model:N", scale=alt.Scale(domain=models, scheme="tableau10"), title="model")
    shape = alt.Shape("split:N", title="split",
                      scale=alt.Scale(domain=list(SPLITS), range=["triangle-up", "circle", "cross"]))
    return color, shape


def scatter_chart(points, metric: str, engines: list[str], engine_titles: dict[str, str]):
    """Predicted vs measured (log-log) for one metric, one panel per engine, y = x and ±10 %."""
    import altair as alt
    import pandas as pd

    data = display_values(points[points["metric"] == metric])
    unit = METRIC_UNIT.get(metric, ("", 1.0))[0]
    values = pd.concat([data["measured_d"], data["predicted_d"]])
    values = values[values > 0]
    lo, hi = float(values.min()) / 1.3, float(values.max()) * 1.3
    n = 40
    xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    band = pd.DataFrame({"x": xs, "lo": [0.9 * x for x in xs], "hi": [1.1 * x for x in xs]})
    domain = [lo, hi]
    ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
    color, shape = scales(points)
    panels = []
    for engine in engines:
        sub = data[data["engine"] == engine]
        axis = alt.Axis(values=ticks, format="~g", grid=True)
        x_axis = alt.X("x:Q", scale=alt.Scale(type="log", domain=domain, nice=False),
                       title=f"measured ({unit})", axis=axis)
        y_axis = alt.Y("lo:Q", scale=alt.Scale(type="log", domain=domain, nice=False),
                       title=f"predicted ({unit})", axis=axis)
        area = alt.Chart(band).mark_area(opacity=0.35, color="#9e9e9e").encode(x=x_axis, y=y_axis, y2="hi:Q")
        line = alt.Chart(band).mark_line(color="#444", strokeDash=[4, 3]).encode(x="x:Q", y="x:Q")
        dots = alt.Chart(sub).mark_point(filled=True, size=60, opacity=0.85).encode(
            x=alt.X("measured_d:Q", scale=alt.Scale(type="log", domain=domain, nice=False),
                    title=f"measured ({unit})", axis=axis),
            y=alt.Y("predicted_d:Q", scale=alt.Scale(type="log", domain=domain, nice=False),
                    title=f"predicted ({unit})", axis=axis),
            color=color, shape=shape,
            tooltip=[alt.Tooltip("variant:N", title="model"), "batch:Q", "input_len:Q", "output_len:Q",
                     "split:N",
                     alt.Tooltip("measured_d:Q", format=".4g", title=f"measured ({unit})"),
                     alt.Tooltip("predicted_d:Q", format=".4g", title=f"predicted ({unit})"),
                     alt.Tooltip("error_pct:Q", format="+.1f", title="error %")])
        panels.append(alt.layer(area, line, dots).properties(
            width=300, height=300, title=engine_titles.get(engine, engine)))
    return alt.hconcat(*panels).properties(
        title=f"{METRIC_LABEL.get(metric, metric)}: predicted vs measured (log-log; dashed y = x, "
              f"grey band ±10 %)")


def error_chart(points, metric: str, engine: str, engine_title: str):
    """Relative error (%) against batch and against input length, one metric, one engine."""
    import altair as alt
    import pandas as pd

    data = display_values(points[(points["metric"] == metric) & (points["engine"] == engine)])
    color, shape = scales(points)
    same_len = bool((data["input_len"] == data["output_len"]).all()) if not data.empty else False
    s_title = "input length S (= O)" if same_len else "input length S"
    band = pd.DataFrame({"lo": [-10.0], "hi": [10.0]})
    panels = []
    for field, title in (("batch", "batch B"), ("input_len", s_title)):
        base = alt.Chart(data).encode(
            x=alt.X(f"{field}:O", title=title, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("model:N"),
            y=alt.Y("error_pct:Q", title="error % (predicted/measured − 1)"),
            color=color, shape=shape,
            tooltip=[alt.Tooltip("variant:N", title="model"), "batch:Q", "input_len:Q", "output_len:Q",
                     "split:N", alt.Tooltip("error_pct:Q", format="+.1f", title="error %")])
        rect = alt.Chart(band).mark_rect(opacity=0.15, color="#888").encode(y="lo:Q", y2="hi:Q")
        zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#444").encode(y="y:Q")
        dots = base.mark_point(filled=True, size=55, opacity=0.85)
        panels.append(alt.layer(rect, zero, dots).properties(width=330, height=230,
                                                               title=f"error vs {title}"))
    return alt.hconcat(*panels).properties(
        title=f"{METRIC_LABEL.get(metric, metric)}: relative error of {engine_title} (grey band ±10 %)")


def ops_points(points, engine: str, n: int = N_OPS_POINTS, ops=None):
    """The n held-out points of ``engine`` with the largest |decode-step error| (point_id list);
    with ``ops``, of the points whose decode step has a measured kernel split alone."""
    sel = points[(points["engine"] == engine) & (points["split"] == "held-out")
                 & (points["metric"] == "decode_step")]
    if ops is not None:
        profiled = set() if ops.empty else set(ops.loc[(ops["engine"] == engine) & ops["measured_s"].notna(),
                                                       "point_id"])
        sel = sel[sel["point_id"].isin(profiled)]
    sel = sel.assign(abs_err=sel["rel_error"].abs()).sort_values("abs_err", ascending=False)
    return list(sel["point_id"].head(n))


def ops_chart(points, ops, engine: str):
    """Grouped bars: predicted vs measured decode-step kernel time by op category, worst points."""
    import altair as alt
    import pandas as pd

    if ops is None or ops.empty:
        return None
    ids = ops_points(points, engine, ops=ops)
    if not ids:
        return None
    sel = with_variant(ops[(ops["engine"] == engine) & (ops["point_id"].isin(ids))].copy())
    if sel.empty:
        return None
    err = points[(points["engine"] == engine) & (points["metric"] == "decode_step")]
    err = dict(zip(err["point_id"], err["rel_error"]))
    rank = {pid: i for i, pid in enumerate(ids)}
    sel["panel"] = sel.apply(lambda r: f"#{rank[r['point_id']] + 1} {point_label(r)} "
                                       f"(step error {err.get(r['point_id'], float('nan')) * 100:+.1f} %)",
                             axis=1)
    long = pd.concat([
        sel.assign(source="predicted", ms=pd.to_numeric(sel["predicted_s"], errors="coerce") * 1e3),
        sel.assign(source="measured (profiler)", ms=pd.to_numeric(sel["measured_s"], errors="coerce") * 1e3),
    ])[["panel", "point_id", "category", "source", "ms"]]
    long = long.dropna(subset=["ms"])
    order = [p for p in sorted(set(long["panel"]), key=lambda s: int(s.split(" ", 1)[0][1:]))]
    chart = alt.Chart(long).mark_bar().encode(
        x=alt.X("category:N", title=None, axis=alt.Axis(labelAngle=-35)),
        xOffset=alt.XOffset("source:N"),
        y=alt.Y("ms:Q", title="decode-step kernel time (ms)"),
        color=alt.Color("source:N", scale=alt.Scale(domain=["predicted", "measured (profiler)"],
                                                    range=["#4c78a8", "#f58518"]), title=None),
        tooltip=["category:N", "source:N", alt.Tooltip("ms:Q", format=".4f")],
    ).properties(width=330, height=200).facet(
        facet=alt.Facet("panel:N", sort=order, title=None, header=alt.Header(labelFontSize=11)),
        columns=3,
    ).resolve_scale(y="independent").properties(
        title=f"Per-op breakdown of one decode step: the {len(ids)} held-out points of {engine} "
              f"with the largest decode-step error")
    return chart


def category_ratio_chart(table, title: str):
    """Measured kernel time over the model's, one point per profiled point and category (log
    scale, 1 marked), held-out and training points apart: the spread behind the summary's
    medians. ``table``: measured_s and predicted_s per point_id, category and split (the
    prefill kernels' table, or the profiled decode steps of ``compare``'s op table); None when
    no category has model time."""
    import altair as alt
    import pandas as pd

    if table is None or table.empty or "split" not in table.columns:
        return None
    data = table[(table["predicted_s"] > 0) & table["split"].isin(["held-out", "train"])]
    data = data.assign(ratio=data["measured_s"].astype(float) / data["predicted_s"])
    data = data[data["ratio"] > 0]
    if data.empty:
        return None
    data = with_variant(data)[["variant", "batch", "input_len", "category", "split", "ratio"]]
    order = sorted(set(data["category"]))
    x = alt.X("ratio:Q", scale=alt.Scale(type="log"), title="measured / model")
    points = alt.Chart(data).mark_tick(thickness=2, opacity=0.6).encode(
        x=x, y=alt.Y("category:N", sort=order, title=None),
        color=alt.Color("split:N", title="split", scale=alt.Scale(domain=["held-out", "train"])),
        yOffset="split:N",
        tooltip=["variant:N", "batch:Q", "input_len:Q", "category:N", "split:N",
                 alt.Tooltip("ratio:Q", format=".2f")])
    one = alt.Chart(pd.DataFrame({"ratio": [1.0]})).mark_rule(color="#444", strokeDash=[4, 3]).encode(x=x)
    return (points + one).properties(width=520, title=title)

