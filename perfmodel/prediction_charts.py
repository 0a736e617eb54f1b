"""The charts of a prediction's report (Vega-Lite, through altair): each op on the GPU's
roofline, and each op's time, pass by pass.

Per GPU of the layout and over the whole pass (all layers), as the per-op breakdown of
``perfmodel predict`` gives them: FLOPs, bytes moved, time (s). The roofs are the GPU's datasheet
peaks (dense tensor-core FLOP/s of each compute dtype the workload uses, HBM bytes/s); an op sits
below them by its calibrated efficiency, its fixed latency and, where the engine pads or tiles it,
the work it does beyond the FLOPs counted.
"""

from __future__ import annotations

from typing import Any

from perfmodel.prediction import Prediction
from perfmodel.report_terminal import op_table_rows
from perfmodel.roofs import compute_dtypes
from perfmodel.specs.hardware import GPUSpec

#: The bounds an op can have (:func:`perfmodel.prediction.op_rows`), in legend order, and colours.
BOUNDS = ("compute", "memory", "link", "tiles", "latency")
BOUND_COLOURS = ("#d62728", "#1f77b4", "#9467bd", "#ff7f0e", "#7f7f7f")
#: How far the roof lines reach beyond the ops' intensities, as a factor each way.
MARGIN = 4.0


def roofs(gpu: GPUSpec, dtypes: list[str], lo: float, hi: float) -> list[dict[str, Any]]:
    """Each roof as points of a line: min(peak, bandwidth · intensity) from intensity ``lo`` to
    ``hi`` (FLOP/byte), TFLOP/s, one line per compute dtype
    (:func:`perfmodel.roofs.compute_dtypes`)."""
    rows = []
    for dtype in dtypes:
        peak = gpu.peak(dtype)
        ridge = peak / gpu.hbm_bandwidth
        for x in sorted({lo, min(max(ridge, lo), hi), hi}):
            rows.append({"roof": f"{dtype} peak {peak / 1e12:,.0f} TFLOP/s, HBM {gpu.hbm_bandwidth_tb_s:g} TB/s",
                         "label": f"{dtype} {peak / 1e12:,.0f} TFLOP/s" if x == hi else "",
                         "intensity": x, "tflops": min(peak, gpu.hbm_bandwidth * x) / 1e12})
    return rows


def placed_ops(p: Prediction) -> list[dict[str, Any]]:
    """The ops that do matrix math and move bytes, placed on the roofline: intensity
    (FLOP/byte), achieved TFLOP/s (FLOPs over the op's predicted time) and the op's share of its
    pass's time. Ops without FLOPs (norms, copies, collectives) have no place on it."""
    return [{"op": op["name"], "pass": op["pass"], "bound": op["bound"],
             "intensity": op["flops"] / op["bytes"], "tflops": op["flops"] / op["time_s"] / 1e12,
             "gflop": op["flops"] / 1e9, "gb": op["bytes"] / 1e9, "time_ms": op["time_s"] * 1e3,
             "share": op["share"]}
            for op in op_table_rows(p) if op["flops"] > 0 and op["bytes"] > 0]


def above_roofs(p: Prediction) -> list[dict[str, Any]]:
    """The ops that reach above the GPU's roofline: predicted faster than their speed-of-light
    time (``of_roof`` above 1, :meth:`~perfmodel.prediction.Prediction.op_dicts`), each with its
    ``pass``, ``op`` and ``over``, the factor. Only a fitted efficiency above the datasheet's
    puts an op there."""
    return [{"pass": op["pass"], "op": op["name"], "over": op["of_roof"]}
            for op in p.op_dicts() if op["of_roof"] is not None and op["of_roof"] > 1 + 1e-6]


def _bound_colour():
    import altair as alt

    return alt.Color("bound:N", title="bound", scale=alt.Scale(domain=list(BOUNDS), range=list(BOUND_COLOURS)))


def roofline_chart(p: Prediction, gpu: GPUSpec):
    """One roofline per pass (prefill, decode): the roofs, and each op with FLOPs as a point
    sized by its share of the pass's time; None when no op does matrix math."""
    import altair as alt
    import pandas as pd

    ops = pd.DataFrame(placed_ops(p))
    if ops.empty:
        return None
    dtypes = compute_dtypes(p.workload, gpu)
    span = list(ops["intensity"]) + [gpu.peak(d) / gpu.hbm_bandwidth for d in dtypes]
    lines = pd.DataFrame(roofs(gpu, dtypes, min(span) / MARGIN, max(span) * MARGIN))
    x = alt.X("intensity:Q", scale=alt.Scale(type="log"), title="arithmetic intensity (FLOP/byte)")
    y = alt.Y("tflops:Q", scale=alt.Scale(type="log"), title="TFLOP/s per GPU")
    panels = []
    for name in dict.fromkeys(ops["pass"]):
        roof = alt.Chart(lines).mark_line(color="#444", strokeDash=[4, 3]).encode(
            x=x, y=y, detail="roof:N", tooltip=["roof:N"])
        roof += alt.Chart(lines).mark_text(align="right", dy=-7, fontSize=11, color="#444").encode(
            x=x, y=y, text="label:N")
        points = alt.Chart(ops[ops["pass"] == name]).mark_circle(opacity=0.8).encode(
            x=x, y=y, color=_bound_colour(),
            size=alt.Size("share:Q", title="share of the pass", scale=alt.Scale(range=[30, 900])),
            tooltip=["op:N", "bound:N", alt.Tooltip("gflop:Q", format=",.1f", title="GFLOP"),
                     alt.Tooltip("gb:Q", format=",.3f", title="GB moved"),
                     alt.Tooltip("time_ms:Q", format=",.3f", title="time ms"),
                     alt.Tooltip("share:Q", format=".1%"), alt.Tooltip("tflops:Q", format=",.1f", title="TFLOP/s")])
        panels.append((roof + points).properties(width=380, height=300, title=f"{name}: ops on the roofline"))
    return alt.hconcat(*panels)


def op_time_chart(p: Prediction):
    """Each op's time per pass (ms, the whole pass), longest first, coloured by its bound;
    None without ops."""
    import altair as alt
    import pandas as pd

    data = pd.DataFrame([{"op": op["name"], "pass": op["pass"], "bound": op["bound"], "time_ms": op["time_s"] * 1e3}
                         for op in op_table_rows(p)])
    if data.empty:
        return None
    panels = []
    for name in dict.fromkeys(data["pass"]):
        rows = data[data["pass"] == name].sort_values("time_ms", ascending=False)
        panels.append(alt.Chart(rows).mark_bar().encode(
            x=alt.X("time_ms:Q", title="time, ms (all layers)"),
            y=alt.Y("op:N", sort=list(rows["op"]), title=None),
            color=_bound_colour(),
            tooltip=["op:N", "bound:N", alt.Tooltip("time_ms:Q", format=",.3f")],
        ).properties(width=380, title=f"{name}: time by op"))
    return alt.hconcat(*panels)
