"""The validation report: predicted against measured, as an HTML page and a Markdown summary.

``write_report(points, ops, out_dir, title=..., source=...)`` takes the two tables of
:func:`perfmodel.measuring.compare.compare` for BOTH engines stacked (column ``engine``: the calibrated
one and the uncalibrated baseline) and writes ``out_dir/report.html`` and
``out_dir/summary.md``. Points are told apart by ``point_id`` and shown by their ``variant``
(e.g. ``mixtral-8x7b [L=8 E=16 k=2 F=1792]``; the model name where the tables have no such column).

``source`` says where the measurements come from. ``mode`` is ``"replay"`` (committed
measurements read back from a results file, no GPU involved now) or ``"live"`` (measured by this
very run); the report says which at the top of both files, with the date, GPU and versions.

Charts are Vega-Lite (altair). The HTML is self-contained when ``vl-convert-python`` is
installed: its bundle of vega, vega-lite and vega-embed is inlined, so the page renders
offline. Without it the page loads those scripts from a CDN and says so in a banner (and each
chart's box keeps a "not rendered" note if they cannot be loaded); the tables need no script.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

#: Held-out MAPE targets of the calibrated engine, % (metric → bound).
TARGETS = {"decode_step": 8.0, "ttft": 10.0, "throughput": 8.0}

#: Metric display order and labels.
METRICS = ("ttft", "decode_step", "e2e", "throughput")
METRIC_LABEL = {"ttft": "TTFT", "decode_step": "Decode step (ITL)", "e2e": "E2E latency",
                "throughput": "Throughput"}
#: Display unit of each metric and its scale from the table's unit (s or tok/s).
METRIC_UNIT = {"ttft": ("ms", 1e3), "decode_step": ("ms", 1e3), "e2e": ("ms", 1e3),
               "throughput": ("tok/s", 1.0)}

SPLITS = ("held-out", "train")
SOURCE_KEYS = ("mode", "date", "gpu", "driver", "torch", "transformers", "results_file",
               "git_commit", "calibrated_engine", "baseline_engine", "train_models",
               "held_out_models")
#: How many held-out points the per-op chart shows, and the Markdown's worst-points table.
N_OPS_POINTS = 6
N_WORST = 10


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

def mape_table(points) -> "Any":
    """MAPE (%) and friends per engine × split × metric: mean, median, max of |error|, count."""
    import pandas as pd

    if points.empty:
        return pd.DataFrame(columns=["engine", "split", "metric", "mape", "median", "max", "count"])
    table = points.assign(ape=points["rel_error"].abs() * 100.0)
    out = (table.groupby(["engine", "split", "metric"])["ape"]
           .agg(mape="mean", median="median", max="max", count="count").reset_index())
    return out


def _lookup(table, engine: str, split: str, metric: str, column: str = "mape") -> float | None:
    hit = table[(table["engine"] == engine) & (table["split"] == split) & (table["metric"] == metric)]
    if hit.empty:
        return None
    value = hit[column].iloc[0]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def verdict(points, calibrated: str) -> tuple[str, list[tuple[str, float | None, float, bool | None]]]:
    """("PASS" | "FAIL" | "INCOMPLETE", [(metric, held-out MAPE, target, met)]) for the calibrated engine."""
    table = mape_table(points)
    checks = []
    for metric, target in TARGETS.items():
        value = _lookup(table, calibrated, "held-out", metric)
        checks.append((metric, value, target, None if value is None else value <= target))
    if any(met is None for *_, met in checks):
        word = "INCOMPLETE"
    elif all(met for *_, met in checks):
        word = "PASS"
    else:
        word = "FAIL"
    return word, checks


def verdict_line(points, calibrated: str) -> str:
    word, checks = verdict(points, calibrated)
    parts = []
    for metric, value, target, met in checks:
        mark = "no data" if met is None else ("met" if met else "missed")
        parts.append(f"{METRIC_LABEL[metric]} {_pct(value, 1)}% (target ≤ {target:g}%: {mark})")
    return f"Verdict: {word} — held-out MAPE of `{calibrated}`: " + "; ".join(parts) + "."


def _engines(points, source: dict[str, Any]) -> tuple[str, str | None]:
    present = list(dict.fromkeys(points["engine"])) if not points.empty else []
    calibrated = source.get("calibrated_engine") or (present[0] if present else "calibrated")
    baseline = source.get("baseline_engine")
    if baseline is None:
        others = [e for e in present if e != calibrated]
        baseline = others[0] if others else None
    return calibrated, baseline


def _ordered_metrics(points) -> list[str]:
    have = set(points["metric"]) if not points.empty else set()
    return [m for m in METRICS if m in have] + sorted(have - set(METRICS))


def _with_variant(frame):
    """``frame`` with a ``variant`` column (the model name where it is missing or empty)."""
    if frame is None or "model" not in frame.columns:
        return frame
    if "variant" not in frame.columns:
        return frame.assign(variant=frame["model"].astype(str))
    variant = frame["variant"].where(frame["variant"].notna() & (frame["variant"] != ""), frame["model"])
    return frame.assign(variant=variant.astype(str))


def _point_label(row) -> str:
    name = row.get("variant") if isinstance(row.get("variant"), str) and row.get("variant") else row["model"]
    return f"{name} B={row['batch']} S={row['input_len']} O={row['output_len']}"


def worst_points(points, engine: str, n: int = N_WORST):
    """Held-out points of ``engine`` ranked by their largest |error| over the metrics.

    One row per point: model, variant, batch, input_len, output_len, point_id, one error-%
    column per metric, the worst metric and its |error| %.
    """
    import pandas as pd

    sel = points[(points["engine"] == engine) & (points["split"] == "held-out")]
    if sel.empty:
        return pd.DataFrame()
    sel = _with_variant(sel)
    keys = ["model", "variant", "batch", "input_len", "output_len", "point_id"]
    wide = sel.pivot_table(index=keys, columns="metric", values="rel_error", aggfunc="first")
    wide = wide[[m for m in _ordered_metrics(sel)]] * 100.0
    worst_metric = wide.abs().idxmax(axis=1)
    worst_abs = wide.abs().max(axis=1)
    wide = wide.assign(worst_metric=worst_metric, worst_abs=worst_abs).reset_index()
    return wide.sort_values("worst_abs", ascending=False).head(n).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Source block
# --------------------------------------------------------------------------------------------

def _fmt_source_value(value: Any) -> str:
    if value is None or value == "":
        return "unknown"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "none"
    return str(value)


def _mode(source: dict[str, Any]) -> str:
    mode = str(source.get("mode", "")).lower()
    if mode not in ("replay", "live"):
        raise ValueError(f"source['mode'] must be 'replay' or 'live', not {source.get('mode')!r}")
    return mode


def provenance_line(source: dict[str, Any]) -> str:
    """The one sentence saying where the measured numbers come from."""
    mode = _mode(source)
    gpu = _fmt_source_value(source.get("gpu"))
    versions = (f"driver {_fmt_source_value(source.get('driver'))}, "
                f"torch {_fmt_source_value(source.get('torch'))}, "
                f"transformers {_fmt_source_value(source.get('transformers'))}")
    date = _fmt_source_value(source.get("date"))
    results = _fmt_source_value(source.get("results_file"))
    commit = _fmt_source_value(source.get("git_commit"))
    if mode == "replay":
        return (f"REPLAY of committed measurements: the measured numbers are read back from "
                f"{results} (commit {commit}); they were measured on {date} on {gpu} "
                f"({versions}). No GPU ran for this report.")
    return (f"LIVE RUN: the measured numbers were measured by this run on {date} on {gpu} "
            f"({versions}) and written to {results} (commit {commit}).")


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(points, *, title: str, source: dict[str, Any]) -> str:
    mode = _mode(source)
    calibrated, baseline = _engines(points, source)
    table = mape_table(points)
    out = [f"# {title}", ""]
    out += [f"**{provenance_line(source)}**", ""]
    out += ["## Source", ""]
    out += [f"- {key}: {_fmt_source_value(source.get(key))}" for key in SOURCE_KEYS]
    extra = [k for k in source if k not in SOURCE_KEYS]
    out += [f"- {key}: {_fmt_source_value(source.get(key))}" for key in extra]
    out += ["", verdict_line(points, calibrated), ""]

    out += ["## MAPE (%)", "",
            f"Calibrated engine `{calibrated}`" + (f", baseline `{baseline}` (uncalibrated)."
                                                   if baseline else ".")
            + " MAPE = mean of |predicted/measured − 1|, in %.", ""]
    for split in SPLITS:
        header = ["metric", f"{calibrated} MAPE", f"{calibrated} median", f"{calibrated} max"]
        if baseline:
            header.append(f"{baseline} MAPE")
        header += ["points", "target (held-out)"]
        rows = []
        for metric in _ordered_metrics(points):
            row = [METRIC_LABEL.get(metric, metric),
                   _pct(_lookup(table, calibrated, split, metric)),
                   _pct(_lookup(table, calibrated, split, metric, "median")),
                   _pct(_lookup(table, calibrated, split, metric, "max"))]
            if baseline:
                row.append(_pct(_lookup(table, baseline, split, metric)))
            count = _lookup(table, calibrated, split, metric, "count")
            row += ["–" if count is None else str(int(count)),
                    f"≤ {TARGETS[metric]:g}" if metric in TARGETS else "–"]
            rows.append(row)
        models = sorted(set(points.loc[points["split"] == split, "model"])) if not points.empty else []
        out += [f"### {split} ({', '.join(models) if models else 'no points'})", "",
                _md_table(header, rows), ""]

    worst = worst_points(points, calibrated)
    out += [f"## The {N_WORST} worst held-out points of `{calibrated}`", "",
            "Ranked by the largest |error| over the metrics; errors are predicted/measured − 1, in %.",
            ""]
    if worst.empty:
        out += ["No held-out points.", ""]
    else:
        metrics = [m for m in _ordered_metrics(points) if m in worst.columns]
        header = ["model", "B", "S", "O"] + [f"{METRIC_LABEL.get(m, m)} err %" for m in metrics] + ["worst"]
        rows = []
        for _, r in worst.iterrows():
            rows.append([str(r["variant"]), str(r["batch"]), str(r["input_len"]), str(r["output_len"])]
                        + [_signed(r[m]) for m in metrics]
                        + [METRIC_LABEL.get(r["worst_metric"], r["worst_metric"])])
        out += [_md_table(header, rows), ""]
    if mode == "replay":
        out += ["_This report replays committed measurements; it is not a new measurement._", ""]
    return "\n".join(out)


def _signed(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.1f}"


# --------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------

def _display(points):
    """Points with display values: measured/predicted in the metric's display unit, error %."""
    unit = points["metric"].map(lambda m: METRIC_UNIT.get(m, ("", 1.0))[0])
    scale = points["metric"].map(lambda m: METRIC_UNIT.get(m, ("", 1.0))[1]).astype(float)
    points = _with_variant(points)
    return points.assign(unit=unit,
                         measured_d=points["measured"].astype(float) * scale,
                         predicted_d=points["predicted"].astype(float) * scale,
                         error_pct=points["rel_error"].astype(float) * 100.0,
                         point=points.apply(_point_label, axis=1) if not points.empty else [])


def _scales(points):
    import altair as alt

    models = sorted(set(points["model"]))
    color = alt.Color("model:N", scale=alt.Scale(domain=models, scheme="tableau10"), title="model")
    shape = alt.Shape("split:N", scale=alt.Scale(domain=list(SPLITS), range=["triangle-up", "circle"]),
                      title="split")
    return color, shape


def scatter_chart(points, metric: str, engines: list[str], engine_titles: dict[str, str]):
    """Predicted vs measured (log-log) for one metric, one panel per engine, y = x and ±10 %."""
    import altair as alt
    import pandas as pd

    data = _display(points[points["metric"] == metric])
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
    color, shape = _scales(points)
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

    data = _display(points[(points["metric"] == metric) & (points["engine"] == engine)])
    color, shape = _scales(points)
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


def ops_points(points, engine: str, n: int = N_OPS_POINTS):
    """The n held-out points of ``engine`` with the largest |decode-step error| (point_id list)."""
    sel = points[(points["engine"] == engine) & (points["split"] == "held-out")
                 & (points["metric"] == "decode_step")]
    sel = sel.assign(abs_err=sel["rel_error"].abs()).sort_values("abs_err", ascending=False)
    return list(sel["point_id"].head(n))


def ops_chart(points, ops, engine: str):
    """Grouped bars: predicted vs measured decode-step kernel time by op category, worst points."""
    import altair as alt
    import pandas as pd

    ids = ops_points(points, engine)
    if not ids or ops is None or ops.empty:
        return None
    sel = _with_variant(ops[(ops["engine"] == engine) & (ops["point_id"].isin(ids))].copy())
    if sel.empty:
        return None
    err = points[(points["engine"] == engine) & (points["metric"] == "decode_step")]
    err = dict(zip(err["point_id"], err["rel_error"]))
    rank = {pid: i for i, pid in enumerate(ids)}
    sel["panel"] = sel.apply(lambda r: f"#{rank[r['point_id']] + 1} {_point_label(r)} "
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


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

def _vega_scripts() -> tuple[str, str]:
    """(<script> tags that define vegaEmbed, a note on how): inlined if vl-convert is installed."""
    import altair as alt

    try:
        import vl_convert as vlc
        from altair.utils._importers import vl_version_for_vl_convert

        bundle = vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())
        bundle = bundle.replace("</script", "<\\/script")
        version = getattr(vlc, "__version__", "?")
        note = (f"Charts: Vega-Lite {alt.VEGALITE_VERSION}, JavaScript inlined from "
                f"vl-convert-python {version}; the page needs no network.")
        return f"<script type=\"text/javascript\">\n{bundle}\n</script>", note
    except Exception:  # noqa: BLE001 - any failure means: fall back to the CDN
        base = "https://cdn.jsdelivr.net/npm"
        tags = "\n".join(
            f'<script type="text/javascript" src="{base}/{name}@{ver}"></script>'
            for name, ver in (("vega", alt.VEGA_VERSION), ("vega-lite", alt.VEGALITE_VERSION),
                              ("vega-embed", alt.VEGAEMBED_VERSION)))
        note = ("Charts: the Vega JavaScript is loaded from a CDN (vl-convert-python is not "
                "installed, so it could not be inlined); offline, the charts do not render.")
        return tags, note


def _json_for_script(obj: Any) -> str:
    return json.dumps(obj).replace("</", "<\\/")


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px; color: #222; }
h1 { margin-bottom: 4px; }
.banner { padding: 12px 16px; border-radius: 6px; font-size: 1.05em; margin: 12px 0; }
.banner .tag { font-weight: 700; letter-spacing: .05em; margin-right: .5em; }
.verdict { padding: 8px 12px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.verdict.PASS { background: #e6f4ea; } .verdict.FAIL { background: #fdecea; }
.verdict.INCOMPLETE { background: #fff4e5; }
table { border-collapse: collapse; margin: 8px 0 16px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:after { content: " ⇅"; color: #aaa; }
td.bad { color: #b00020; } td.ok { color: #1b5e20; }
.chart { margin: 8px 0 24px 0; min-height: 60px; }
.chart .pending { color: #b00020; font-style: italic; }
.note { color: #555; font-size: 13px; }
section { margin-bottom: 28px; }
dl.source { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 14px; }
dl.source dt { font-weight: 600; } dl.source dd { margin: 0; }
"""

#: The provenance banner's colours, per mode (only the page's own mode is written out).
_BANNER_CSS = {"replay": ".banner.replay { background: #e8f0fe; border: 2px solid #4c78a8; }",
               "live": ".banner.live { background: #e6f4ea; border: 2px solid #2e7d32; }"}

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) { r = nx - ny; } else { r = String(x).localeCompare(String(y)); }
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _num(x: float) -> str:
    """4 significant digits without exponents: 0.01234, 12.34, 1,234, 123,457."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = max(0, 3 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{digits}f}"


def _cell(value: Any, text: str | None = None, cls: str = "") -> str:
    shown = html.escape(str(value) if text is None else text)
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{html.escape(str(value))}">{shown}</td>'


def _mape_html(points, calibrated: str, baseline: str | None) -> str:
    table = mape_table(points)
    engines = [calibrated] + ([baseline] if baseline else [])
    head = ["<tr><th class='l' rowspan='2'>metric</th>"
            + "".join(f"<th colspan='{len(engines)}'>{html.escape(s)}</th>" for s in SPLITS)
            + "<th rowspan='2'>held-out target</th></tr>",
            "<tr>" + "".join(f"<th>{html.escape(e)}</th>" for _ in SPLITS for e in engines) + "</tr>"]
    body = []
    for metric in _ordered_metrics(points):
        cells = [f"<td class='l'>{html.escape(METRIC_LABEL.get(metric, metric))}</td>"]
        for split in SPLITS:
            for engine in engines:
                value = _lookup(table, engine, split, metric)
                n = _lookup(table, engine, split, metric, "count")
                cls = ""
                if engine == calibrated and split == "held-out" and metric in TARGETS and value is not None:
                    cls = "ok" if value <= TARGETS[metric] else "bad"
                title = "" if n is None else f" title='{int(n)} points'"
                cls_attr = f" class='{cls}'" if cls else ""
                cells.append(f"<td{cls_attr}{title}>{_pct(value)}</td>")
        cells.append(f"<td>{'≤ %g' % TARGETS[metric] if metric in TARGETS else '–'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table class='mape'><thead>" + "".join(head) + "</thead><tbody>" + "".join(body)
            + "</tbody></table>")


def _points_html(points, calibrated: str, baseline: str | None) -> str:
    import pandas as pd

    points = _with_variant(points)
    keys = ["model", "variant", "batch", "input_len", "output_len", "point_id", "metric", "split"]
    cal = points[points["engine"] == calibrated].set_index(keys)
    frame = cal[["measured", "predicted", "rel_error"]].rename(
        columns={"predicted": "pred_cal", "rel_error": "err_cal"})
    if baseline:
        base = points[points["engine"] == baseline].set_index(keys)[["predicted", "rel_error"]]
        frame = frame.join(base.rename(columns={"predicted": "pred_base", "rel_error": "err_base"}),
                           how="outer")
    frame = frame.reset_index()
    metric_rank = {m: i for i, m in enumerate(METRICS)}
    frame = frame.assign(_m=frame["metric"].map(lambda m: metric_rank.get(m, 99)))
    frame = frame.sort_values(["split", "model", "variant", "batch", "input_len", "output_len", "_m"])
    header = ["model", "B", "S", "O", "metric", "unit", "measured", f"{calibrated} predicted",
              f"{calibrated} error %"]
    if baseline:
        header += [f"{baseline} predicted", f"{baseline} error %"]
    header.append("split")
    rows = []
    for _, r in frame.iterrows():
        unit, scale = METRIC_UNIT.get(r["metric"], ("", 1.0))

        def num(v):
            return "" if v is None or pd.isna(v) else float(v) * scale

        def shown(v):
            return "–" if v is None or pd.isna(v) else _num(float(v) * scale)

        def err(v):
            return ("" if v is None or pd.isna(v) else float(v) * 100,
                    "–" if v is None or pd.isna(v) else f"{float(v) * 100:+.1f}")

        cells = [_cell(r["variant"], cls="l"), _cell(r["batch"]), _cell(r["input_len"]),
                 _cell(r["output_len"]), _cell(r["metric"], METRIC_LABEL.get(r["metric"], r["metric"]), "l"),
                 _cell(unit, cls="l"), _cell(num(r["measured"]), shown(r["measured"])),
                 _cell(num(r["pred_cal"]), shown(r["pred_cal"]))]
        v, t = err(r["err_cal"])
        cells.append(_cell(v, t, "bad" if v != "" and abs(v) > 10 else ""))
        if baseline:
            cells.append(_cell(num(r["pred_base"]), shown(r["pred_base"])))
            v, t = err(r["err_base"])
            cells.append(_cell(v, t, "bad" if v != "" and abs(v) > 10 else ""))
        cells.append(_cell(r["split"], cls="l"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr>" + "".join(f"<th class='l'>{html.escape(h)}</th>" for h in header) + "</tr>"
    return ("<table class='sortable points'><thead>" + head + "</thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _worst_html(points, calibrated: str) -> str:
    worst = worst_points(points, calibrated)
    if worst.empty:
        return "<p class='note'>No held-out points.</p>"
    metrics = [m for m in _ordered_metrics(points) if m in worst.columns]
    head = ("<tr><th class='l'>model</th><th>B</th><th>S</th><th>O</th>"
            + "".join(f"<th>{html.escape(METRIC_LABEL.get(m, m))} err %</th>" for m in metrics)
            + "<th class='l'>worst</th></tr>")
    rows = []
    for _, r in worst.iterrows():
        rows.append("<tr>" + _cell(r["variant"], cls="l") + _cell(r["batch"]) + _cell(r["input_len"])
                    + _cell(r["output_len"])
                    + "".join(_cell(r[m], _signed(r[m]), "bad" if abs(r[m]) > 10 else "") for m in metrics)
                    + _cell(METRIC_LABEL.get(r["worst_metric"], r["worst_metric"]), cls="l") + "</tr>")
    return "<table class='sortable'><thead>" + head + "</thead><tbody>" + "".join(rows) + "</tbody></table>"


def _chart_div(div_id: str, chart, specs: dict[str, Any]) -> str:
    if chart is None:
        return f"<div class='chart' id='{div_id}'><p class='note'>No data for this chart.</p></div>"
    specs[div_id] = chart.to_dict()
    return (f"<div class='chart' id='{div_id}'><p class='pending'>Chart not rendered: the Vega "
            f"JavaScript did not load or failed (see the browser console).</p></div>")


def report_html(points, ops, *, title: str, source: dict[str, Any]) -> str:
    mode = _mode(source)
    calibrated, baseline = _engines(points, source)
    engines = [calibrated] + ([baseline] if baseline and baseline in set(points["engine"]) else [])
    engine_titles = {calibrated: f"{calibrated} (calibrated)"}
    if baseline:
        engine_titles[baseline] = f"{baseline} (uncalibrated baseline)"
    scripts, js_note = _vega_scripts()
    specs: dict[str, Any] = {}

    head, rest = provenance_line(source).split(": ", 1)
    banner = (f"<div class='banner {mode}' id='provenance'><span class='tag'>{html.escape(head)}:"
              f"</span>{html.escape(rest)}</div>")
    source_dl = "<dl class='source'>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(_fmt_source_value(source.get(k)))}</dd>"
        for k in list(SOURCE_KEYS) + [k for k in source if k not in SOURCE_KEYS]) + "</dl>"
    word, _ = verdict(points, calibrated)
    verdict_text = verdict_line(points, calibrated).replace("`", "")

    parts = [f"<!DOCTYPE html><html><head><meta charset='UTF-8'><title>{html.escape(title)}"
             f"{' (replay)' if mode == 'replay' else ''}</title>",
             f"<style>{_CSS}{_BANNER_CSS[mode]}\n</style>", scripts, "</head><body>",
             f"<h1>{html.escape(title)}</h1>", banner,
             f"<div class='verdict {word}' id='verdict'>{html.escape(verdict_text)}</div>",
             "<section id='source'><h2>Source</h2>", source_dl,
             f"<p class='note'>{html.escape(js_note)}</p></section>",
             "<section id='mape'><h2>MAPE (%) per engine × split × metric</h2>",
             "<p class='note'>MAPE = mean |predicted/measured − 1| in %. Held-out: models no profile "
             "was fitted on. Green/red: the calibrated engine's held-out MAPE against its target. "
             "Hover a cell for its point count.</p>",
             _mape_html(points, calibrated, baseline), "</section>"]

    parts.append("<section id='charts'><h2>Predicted vs measured, per metric</h2>")
    for metric in _ordered_metrics(points):
        label = METRIC_LABEL.get(metric, metric)
        parts.append(f"<section class='metric' id='metric-{metric}'><h3>{html.escape(label)}</h3>")
        parts.append(_chart_div(f"chart-scatter-{metric}", scatter_chart(points, metric, engines,
                                                                       engine_titles), specs))
        parts.append(_chart_div(f"chart-error-{metric}",
                                error_chart(points, metric, calibrated, engine_titles[calibrated]),
                                specs))
        parts.append("</section>")
    parts.append("</section>")

    parts.append("<section id='ops'><h2>Per-op breakdown of the worst held-out points</h2>"
                 "<p class='note'>Predicted decode-step time of each op category against the "
                 "profiler's GPU kernel time of one measured decode step (launch gaps excluded), "
                 "for the held-out points with the largest decode-step error of the calibrated "
                 "engine. Each panel has its own y scale.</p>")
    parts.append(_chart_div("chart-ops", ops_chart(points, ops, calibrated), specs))
    parts.append("</section>")

    parts.append(f"<section id='worst'><h2>The {N_WORST} worst held-out points of "
                 f"{html.escape(calibrated)}</h2><p class='note'>Ranked by the largest |error| "
                 "over the metrics.</p>" + _worst_html(points, calibrated) + "</section>")
    parts.append("<section id='points'><h2>All points</h2><p class='note'>Click a column "
                 "header to sort. Error % = predicted/measured − 1.</p>"
                 + _points_html(points, calibrated, baseline) + "</section>")

    parts.append("<script type='text/javascript'>\n" + _SORT_JS + "\n(function () {\n"
                 f"  var specs = {_json_for_script(specs)};\n"
                 "  if (typeof vegaEmbed === 'undefined') { return; }\n"
                 "  Object.keys(specs).forEach(function (id) {\n"
                 "    var el = document.getElementById(id);\n"
                 "    vegaEmbed(el, specs[id], {actions: false, renderer: 'svg'})\n"
                 "      .catch(function (e) { console.error(id, e); el.insertAdjacentHTML('beforeend',"
                 " '<p class=\"pending\">' + String(e) + '</p>'); });\n"
                 "  });\n})();\n</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(points, ops, out_dir: Path, *, title: str,
                 source: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.md``; returns their paths."""
    _mode(source)  # refuse an unlabelled source before writing anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "summary.md"
    html_path.write_text(report_html(points, ops, title=title, source=source), encoding="utf-8")
    md_path.write_text(summary_markdown(points, title=title, source=source) + "\n", encoding="utf-8")
    return html_path, md_path


def source_from_rows(rows: Iterable[dict[str, Any]], *, results_file: str, calibrated_engine: str,
                     baseline_engine: str, train_models: Iterable[str],
                     mode: str = "replay") -> dict[str, Any]:
    """A ``source`` block read off measured rows (dates as a range, versions as found)."""
    ok = [r for r in rows if r.get("status") == "ok"]

    def values(key: str) -> str | None:
        found = sorted({str(r[key]) for r in ok if r.get(key) is not None})
        return ", ".join(found) if found else None

    dates = sorted(str(r["date"]) for r in ok if r.get("date"))
    date = None if not dates else (dates[0][:10] if dates[0][:10] == dates[-1][:10]
                                    else f"{dates[0][:10]} to {dates[-1][:10]}")
    train = sorted(train_models)
    models = sorted({str(r["model"]) for r in ok})
    return {"mode": mode, "date": date, "gpu": values("gpu_name"), "driver": values("driver"),
            "torch": values("torch"), "transformers": values("transformers"),
            "results_file": results_file, "git_commit": values("git_commit"),
            "calibrated_engine": calibrated_engine, "baseline_engine": baseline_engine,
            "train_models": train,
            "held_out_models": [m for m in models if m.lower() not in {t.lower() for t in train}]}
