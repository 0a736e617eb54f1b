"""The charts of the paper report (altair, Vega-Lite specs embedded in the page).

Predicted curves are the paper's setup (its GPU, its GPU count); our measurements are on one
H200 or H100 (each series names its GPU) and often at 8 layers, so where they are overlaid the
chart shows throughput *relative* to
a baseline point of the same series (filled: measured; hollow: the model at exactly those
measured points), and the paper's claimed range as a grey band. Each function returns a chart,
or None when there is nothing to draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perfmodel.validate.paper.compute import THROUGHPUT, EffectResult
from perfmodel.validate.paper.measured import gpu_label

BAND = "#9e9e9e"


def _band(low: float | None, high: float | None):
    """A grey band over the claimed range (%), or None for a claim without numbers."""
    import altair as alt

    if low is None or high is None:
        return None
    return alt.Chart(pd.DataFrame({"lo": [low], "hi": [high]})).mark_rect(opacity=0.2, color=BAND).encode(
        y="lo:Q", y2="hi:Q")


def _relative(frame: pd.DataFrame, group: str, knob: str, baseline: Any, columns: tuple[str, ...]) -> pd.DataFrame:
    """``columns`` divided by their value at ``knob == baseline`` within each ``group``."""
    out = []
    for _, sub in frame.groupby(group):
        base = sub[sub[knob] == baseline]
        if base.empty:
            continue
        out.append(sub.assign(**{c: sub[c] / float(base[c].iloc[0]) for c in columns}))
    return pd.concat(out, ignore_index=True) if out else frame.iloc[0:0]


#: The legend's name for the model's values at the measured points (hollow diamonds).
MODEL_SOURCE = "model at the measured points"
#: The marker of the measured points of each GPU (filled); a GPU not listed gets a triangle.
GPU_SHAPES = {"H200": "circle", "H100": "square"}


def _marked(frame: pd.DataFrame, measured: str, model: str, value: str):
    """A frame of points on their GPUs (a ``gpu`` column) as two, each with ``value`` the number
    drawn and ``source`` its legend's name: the measured points (column ``measured``; ``measured
    (H100)``) and the model's at them (column ``model``); and the marker encoding of both."""
    import altair as alt

    labels = sorted({gpu_label(gpu) for gpu in frame["gpu"]})
    shape = alt.Shape("source:N", title=None, scale=alt.Scale(
        domain=[f"measured ({label})" for label in labels] + [MODEL_SOURCE],
        range=[GPU_SHAPES.get(label, "triangle") for label in labels] + ["diamond"]))
    sources = frame["gpu"].map(lambda gpu: f"measured ({gpu_label(gpu)})")
    return (frame.assign(source=sources, **{value: frame[measured]}),
            frame.assign(source=MODEL_SOURCE, **{value: frame[model]}), shape)


def _measured_layer(points: pd.DataFrame, x: str, y_title: str, color):
    """Filled markers (measured: a circle on the H200, a square on the H100) and hollow diamonds
    (the model at the measured points) of relative throughput, coloured by ``color`` (an altair
    Color)."""
    import altair as alt

    seen, model_at, shape = _marked(points, "measured", "predicted", "rel")
    tooltip = ["group:N", "sampling:N", "source:N", alt.Tooltip("rel:Q", format=".3f")]
    measured = alt.Chart(seen).mark_point(
        size=80, filled=True, opacity=0.9).encode(x=f"{x}:Q", y=alt.Y("rel:Q", title=y_title), color=color,
                                                  shape=shape, tooltip=tooltip)
    model = alt.Chart(model_at).mark_point(
        size=90, filled=False, strokeWidth=2).encode(x=f"{x}:Q", y="rel:Q", color=color, shape=shape,
                                                     tooltip=tooltip)
    return alt.layer(measured, model)


def _claim_marks(result: EffectResult, x: str, at: float, color_field: str):
    """The paper's claimed ratios (1 + range/100) as vertical bars at ``x = at``, one per claim
    that names a ``color_field`` value."""
    import altair as alt

    rows = [{x: at, color_field: c.claim.where[color_field], "lo": 1 + c.claim.low / 100,
             "hi": 1 + c.claim.high / 100, "claim": c.claim.text}
            for c in result.claims if color_field in c.claim.where and c.claim.low is not None
            and c.claim.high is not None]
    if not rows:
        return None
    return alt.Chart(pd.DataFrame(rows)).mark_bar(width=10, opacity=0.35).encode(
        x=f"{x}:Q", y="lo:Q", y2="hi:Q", color=alt.Color(f"{color_field}:N"), tooltip=["claim:N"])


def _ffn_color(table: pd.DataFrame):
    import altair as alt

    return alt.Color("ffn:N", title="FFN width", scale=alt.Scale(domain=sorted(set(table["ffn"])), scheme="tableau10"))


def _knob_chart(result: EffectResult, points: pd.DataFrame | None, *, knob: str, title: str, axis: list[int],
                fixed: tuple[str, int], baseline: int, claim_at: int, absolute_title: str, y_title: str,
                relative_title: str, chart_title: str):
    """Predicted throughput vs one MoE knob (log2 axis at ``axis``) per FFN width at ``fixed``
    (column, value), beside the same relative to ``baseline`` with the paper's claimed range at
    ``claim_at`` (bars) and our measurements overlaid."""
    import altair as alt

    table = result.computed.series
    pred = table[table[fixed[0]] == fixed[1]]
    color = _ffn_color(table)
    x = alt.X(f"{knob}:Q", scale=alt.Scale(type="log", base=2), axis=alt.Axis(values=axis), title=title)
    absolute = alt.Chart(pred).mark_line(point=True).encode(
        x=x, y=alt.Y(f"{THROUGHPUT}:Q", title="predicted throughput (tok/s)"), color=color,
        tooltip=["ffn:N", f"{knob}:Q", alt.Tooltip(f"{THROUGHPUT}:Q", format=",.0f"), "fits_in_memory:N"],
    ).properties(width=300, height=240, title=absolute_title)
    rel = _relative(pred, "ffn", knob, baseline, (THROUGHPUT,)).rename(columns={THROUGHPUT: "rel"})
    layers = [alt.Chart(rel).mark_line(point=True, strokeDash=[4, 2]).encode(
        x=x, y=alt.Y("rel:Q", title=y_title, scale=alt.Scale(zero=False)), color=color,
        tooltip=["ffn:N", f"{knob}:Q", alt.Tooltip("rel:Q", format=".3f")])]
    claims = _claim_marks(result, knob, claim_at, "ffn")
    if claims is not None:
        layers.append(claims)
    if points is not None and not points.empty:
        pts = points[points[fixed[0]] == fixed[1]].rename(columns={"value": knob})
        pts = _relative(pts, "group", knob, baseline, ("measured", "predicted"))
        if not pts.empty:
            layers.append(_measured_layer(pts, knob, y_title, color))
    relative = alt.layer(*layers).properties(width=300, height=240, title=relative_title)
    return alt.hconcat(absolute, relative).properties(title=chart_title)


def top_k_chart(result: EffectResult, points: pd.DataFrame | None):
    """Throughput vs top-k per FFN width (the paper's setup, 8 experts), and relative to top-8
    with the paper's claimed ratios at top-1 (bars) and our measurements overlaid."""
    return _knob_chart(result, points, knob="top_k", title="top-k", axis=[1, 2, 4, 8], fixed=("num_experts", 8),
                       baseline=8, claim_at=1, absolute_title="paper setup, 8 experts",
                       y_title="throughput / throughput at top-8",
                       relative_title=("relative to top-8 (bars at top-1: the paper's claims; points: ours, "
                                       "mostly 8 layers)"),
                       chart_title="E2: throughput vs top-k per FFN width (lines: predicted)")


def experts_chart(result: EffectResult, points: pd.DataFrame | None):
    """Throughput vs number of experts per FFN width at top-2, and relative to 8 experts with the
    measurements and the paper's claimed range at 64 experts."""
    return _knob_chart(result, points, knob="num_experts", title="experts", axis=[8, 16, 32, 64],
                       fixed=("top_k", 2), baseline=8, claim_at=64, absolute_title="paper setup, top-2",
                       y_title="throughput / throughput at 8 experts",
                       relative_title=("relative to 8 experts (bar at 64: the paper's claim; points: ours, "
                                       "mostly 8 layers)"),
                       chart_title="E4: throughput vs number of experts (lines: predicted)")


def gain_chart(result: EffectResult, pairs: list[Any], quantity: str, title: str, y_title: str):
    """A predicted gain (%) vs batch, one line per length S = O, the paper's first claimed range
    as a band, and measured gains (ours) with the model's at the same points."""
    import altair as alt

    values = result.computed.values
    values = values[values["quantity"] == quantity]
    if values.empty:
        return None
    claim = result.effect.claims[0]
    layers = [b for b in [_band(claim.low, claim.high)] if b is not None]
    layers.append(alt.Chart(values).mark_line(point=True).encode(
        x=alt.X("batch:Q", title="batch B"), y=alt.Y("pct:Q", title=y_title),
        color=alt.Color("length:O", title="S = O"),
        tooltip=["batch:Q", "length:Q", alt.Tooltip("pct:Q", format="+.1f"), "fits:N"]))
    if pairs:
        frame = pd.DataFrame([{"batch": p.keys.get("batch"), "length": p.keys.get("input_len"),
                               "label": p.label, "sampling": p.sampling, "gpu": p.keys["gpu"],
                               "measured": p.measured_pct, "model": p.predicted_pct} for p in pairs])
        seen, model_at, shape = _marked(frame, "measured", "model", "pct")
        tooltip = ["label:N", "sampling:N", "source:N", alt.Tooltip("pct:Q", format="+.1f")]
        layers.append(alt.Chart(seen).mark_point(
            size=80, filled=True, color="#d62728").encode(x="batch:Q", y="pct:Q", shape=shape, tooltip=tooltip))
        layers.append(alt.Chart(model_at).mark_point(
            size=90, filled=False, strokeWidth=2, color="#d62728").encode(x="batch:Q", y="pct:Q", shape=shape,
                                                                           tooltip=tooltip))
    return alt.layer(*layers).properties(width=420, height=260, title=f"{title} (grey: the paper's {claim.text})")


def fused_chart(result: EffectResult):
    """E5: fused-MoE gain (%) vs batch and vs length, the paper's ranges as bands."""
    import altair as alt

    values = result.computed.values
    panels = []
    for claim, x, title in zip(result.effect.claims, ("batch", "length"), ("batch B", "S = O")):
        sub = values[values["quantity"] == claim.quantity]
        sub = sub[sub[list(claim.where)[0]] == list(claim.where.values())[0]] if claim.where else sub
        layers = [b for b in [_band(claim.low, claim.high)] if b is not None]
        layers.append(alt.Chart(sub).mark_line(point=True).encode(
            x=alt.X(f"{x}:Q", title=title), y=alt.Y("pct:Q", title="fused / unfused − 1 (%)"),
            tooltip=["batch:Q", "length:Q", alt.Tooltip("pct:Q", format="+.2f")]))
        panels.append(alt.layer(*layers).properties(width=300, height=220, title=f"grey: the paper's {claim.text}"))
    return alt.hconcat(*panels).properties(title="E5: fused-MoE gain, predicted (no measurement)")


def speculative_chart(result: EffectResult):
    """E10: speedup over no speculation vs acceptance α, one line per draft; the assumed α (rule)
    and the α each draft needs for the paper's ranking (derived points)."""
    import altair as alt

    table = result.computed.series
    curves = table[table["spec_draft"] != "none"]
    derived = result.computed.derived or {}
    alpha = next(iter(derived.get("assumed", {}).values()), None)
    layers = [alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="#444").encode(y="y:Q"),
              alt.Chart(curves).mark_line().encode(
                  x=alt.X("spec_accept:Q", title="acceptance rate α (a parameter: the paper gives none)"),
                  y=alt.Y("speedup:Q", title="throughput / without speculation"),
                  color=alt.Color("spec_draft:N", title="draft"),
                  tooltip=["spec_draft:N", "spec_accept:Q", alt.Tooltip("speedup:Q", format=".3f"),
                           alt.Tooltip(f"{THROUGHPUT}:Q", format=",.0f")])]
    if alpha is not None:
        layers.append(alt.Chart(pd.DataFrame({"x": [alpha]})).mark_rule(strokeDash=[4, 3], color=BAND).encode(x="x:Q"))
    marks = []
    for draft, a in {**derived.get("assumed", {}), **derived.get("derived", {})}.items():
        if a is None:
            continue
        c = curves[curves["spec_draft"] == draft].sort_values("spec_accept")
        marks.append({"spec_draft": draft, "spec_accept": a,
                      "speedup": float(np.interp(a, c["spec_accept"], c["speedup"]))})
    if marks:
        layers.append(alt.Chart(pd.DataFrame(marks)).mark_point(size=90, filled=True, shape="diamond").encode(
            x="spec_accept:Q", y="speedup:Q", color="spec_draft:N",
            tooltip=["spec_draft:N", alt.Tooltip("spec_accept:Q", format=".2f", title="α (assumed/derived)")]))
    return alt.layer(*layers).properties(
        width=460, height=280,
        title="E10: speculative speedup vs α (diamonds: the α that gives the paper's ranking — derived, an assumption)")


def effect_charts(result: EffectResult, pairs: list[Any], points: pd.DataFrame | None) -> list[Any]:
    """The charts of one effect (possibly none)."""
    eid = result.effect.id
    if result.computed.series.empty:
        return []
    if eid == "E1":
        pairs = [p for p in pairs if p.keys.get("model") in result.effect.setup.models]
        return [gain_chart(result, pairs, "fp8_gain", "E1: fp8 gain vs batch, predicted per S = O",
                           "fp8 / bf16 − 1 (%)")]
    if eid == "E2":
        return [top_k_chart(result, points)]
    if eid == "E4":
        return [experts_chart(result, points)]
    if eid == "E5":
        return [fused_chart(result)]
    if eid == "E10":
        return [speculative_chart(result)]
    return []
