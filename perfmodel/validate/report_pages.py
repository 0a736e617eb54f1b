"""The validation report's two files: an HTML page and a Markdown summary, from templates.

``write_report(points, ops, out_dir, title=..., source=...)`` takes the two tables of
:func:`perfmodel.measuring.compare.compare` for BOTH engines stacked (column ``engine``: the
calibrated one and the uncalibrated baseline) and writes ``out_dir/report.html`` and
``out_dir/summary.md``. Points are told apart by ``point_id`` and shown by their ``variant``
(e.g. ``mixtral-8x7b [L=8 E=16 k=2 F=1792]``; the model name where the tables have no such column).

``source`` says where the measurements come from. ``mode`` is ``"replay"`` (committed
measurements read back from a results file, no GPU involved now) or ``"live"`` (measured by this
very run); the report says which at the top of both files, with the date, GPU and versions.

The pages are jinja2 templates in ``perfmodel/validate/templates/`` (``report.html.j2``,
``summary.md.j2``), with the page's style and script as plain files beside them
(``report.css``, ``banner-<mode>.css``, ``report.js``), copied into the page as they are. This
module only prepares what the templates show (numbers formatted, cells marked); the numbers
come from :mod:`perfmodel.validate.report_metrics` and the charts from
:mod:`perfmodel.validate.report_charts`. The HTML is self-contained when ``vl-convert-python``
is installed (the Vega JavaScript is inlined, the page renders offline); otherwise it loads the
scripts from a CDN and says so, and the tables still need no script.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfmodel.measuring.results import PROFILE_CATEGORIES
from perfmodel.templating import script_json
from perfmodel.validate import report_charts as charts
from perfmodel.validate.repeats import repeat_section
from perfmodel.validate.report_metrics import (
    BAD_ERROR_PCT, METRIC_LABEL, METRIC_UNIT, METRICS, N_WORST, check_mode, decode_regime_rows,
    engines, layout_rows, lookup, mape_table, num, ordered_metrics, pct, provenance_line, regime_rows,
    model_rows, shown_splits, signed, source_items, targets, verdict, verdict_line, what_if_rows, with_variant,
    worst_points,
)
from perfmodel.validate.report_prefill import decode_summary, prefill_section, profiled_steps
from perfmodel.vega import vega_scripts

#: The templates' package and folder.
TEMPLATES = ("perfmodel.validate", "templates")


@dataclass(frozen=True)
class Cell:
    """One cell of a sortable table: its sort key ``value``, the ``text`` shown, a CSS class."""

    value: Any
    text: str
    cls: str = ""


def _cell(value: Any, text: str | None = None, cls: str = "") -> Cell:
    return Cell(value, str(value) if text is None else text, cls)


@dataclass(frozen=True)
class ChartSlot:
    """Where a chart goes on the page (``id``), and whether there is one to draw."""

    id: str
    drawn: bool


@functools.cache
def _environments():
    """(HTML environment, Markdown environment) over the templates folder and the shared assets
    (:func:`perfmodel.templating.environments`)."""
    from perfmodel.templating import environments

    return environments(*TEMPLATES, strict=True)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

def ops_rows(points, ops, calibrated: str) -> dict[str, Any]:
    """One decode step's kernel time by op category at the worst held-out points whose step was
    profiled (:func:`~perfmodel.validate.report_charts.ops_points`), as a table: measured
    (profiler) / predicted, ms; no rows without profiled points."""
    out: dict[str, Any] = {"header": [], "rows": []}
    if ops is None or ops.empty:
        return out
    ids = charts.ops_points(points, calibrated, ops=ops)
    sel = with_variant(ops[(ops["engine"] == calibrated) & ops["point_id"].isin(ids)])
    if sel.empty:
        return out
    cats = [c for c in PROFILE_CATEGORIES if c in set(sel["category"])]
    err = points[(points["engine"] == calibrated) & (points["metric"] == "decode_step")]
    err = dict(zip(err["point_id"], err["rel_error"]))
    out["header"] = ["model", "B", "S", "O", "step err %"] + [f"{c} ms" for c in cats]
    for pid in ids:
        mine = sel[sel["point_id"] == pid].drop_duplicates("category", keep="last").set_index("category")
        first = mine.iloc[0]
        cells = []
        for c in cats:
            if c not in mine.index:
                cells.append("–")
                continue
            m, p = mine.loc[c, "measured_s"], mine.loc[c, "predicted_s"]
            cells.append(f"{m * 1e3:.3f} / {p * 1e3:.3f}")
        out["rows"].append([str(first["variant"]), str(first["batch"]), str(first["input_len"]),
                            str(first["output_len"]), signed(100 * err.get(pid, float("nan")))] + cells)
    return out


def summary_markdown(points, *, title: str, source: dict[str, Any], repeats=None, ops=None,
                     every=None, prefill=None) -> str:
    """The Markdown summary (the file's text): provenance, source, verdict, MAPE per split, the
    repeated measurements (``repeats``: :func:`perfmodel.validate.repeats.repeated_points`; the
    section is left out when there are none; ``every``: the points of every measurement, as
    :func:`perfmodel.validate.repeats.repeat_section` reads them), the worst points, and the decode step by op
    category at the worst profiled points (``ops``: :func:`perfmodel.measuring.compare.compare`'s
    second table; left out without profiled points), and one prefill by op category (``prefill``:
    :func:`perfmodel.measuring.prefill_kernels.prefill_kernels`' table with each point's split,
    :func:`perfmodel.validate.report_prefill.prefill_section`; left out without it)."""
    mode = check_mode(source)
    calibrated, baseline = engines(points, source)
    bounds = targets(source)
    table = mape_table(points)
    splits = []
    for split in shown_splits(points):
        header = ["metric", f"{calibrated} MAPE", f"{calibrated} median", f"{calibrated} max"]
        if baseline:
            header.append(f"{baseline} MAPE")
        header += ["points", "target (held-out)"]
        rows = []
        for metric in ordered_metrics(points):
            row = [METRIC_LABEL.get(metric, metric),
                   pct(lookup(table, calibrated, split, metric)),
                   pct(lookup(table, calibrated, split, metric, "median")),
                   pct(lookup(table, calibrated, split, metric, "max"))]
            if baseline:
                row.append(pct(lookup(table, baseline, split, metric)))
            count = lookup(table, calibrated, split, metric, "count")
            row += ["–" if count is None else str(int(count)),
                    f"≤ {bounds[metric]:g}" if metric in bounds and split == "held-out" else "–"]
            rows.append(row)
        models = sorted(set(points.loc[points["split"] == split, "model"])) if not points.empty else []
        splits.append({"name": split, "models": models, "header": header, "rows": rows})

    worst = worst_points(points, calibrated)
    worst_table: dict[str, Any] = {"header": [], "rows": []}
    if not worst.empty:
        metrics = [m for m in ordered_metrics(points) if m in worst.columns]
        worst_table["header"] = (["model", "B", "S", "O"]
                                 + [f"{METRIC_LABEL.get(m, m)} err %" for m in metrics] + ["worst"])
        worst_table["rows"] = [
            [str(r["variant"]), str(r["batch"]), str(r["input_len"]), str(r["output_len"])]
            + [signed(r[m]) for m in metrics]
            + [METRIC_LABEL.get(r["worst_metric"], r["worst_metric"])]
            for _, r in worst.iterrows()]
    _, md_env = _environments()
    text = md_env.get_template("summary.md.j2").render(
        title=title, provenance=provenance_line(source), source_items=source_items(source),
        verdict=verdict_line(points, calibrated, bounds), calibrated=calibrated, baseline=baseline,
        splits=splits, layouts=layout_rows(points, calibrated, baseline), n_worst=N_WORST,
        worst=worst_table, replay=mode == "replay", repeats=repeat_section(repeats, points, calibrated, every),
        regimes=regime_rows(points, calibrated), decode_regimes=decode_regime_rows(points, calibrated),
        what_ifs=what_if_rows(points, calibrated), models=model_rows(points, calibrated, bounds),
        ops=ops_rows(points, ops, calibrated),
        decode=decode_summary(ops, calibrated),
        prefill=prefill_section(points, prefill, calibrated))
    return text


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

def _bad(error_pct: Any) -> str:
    return "bad" if error_pct != "" and abs(error_pct) > BAD_ERROR_PCT else ""


def mape_rows(points, calibrated: str, baseline: str | None, bounds: dict[str, float]) -> dict[str, Any]:
    """The MAPE table of the page: splits × engines, one row per metric; the calibrated engine's
    held-out cells marked ok or bad against their target."""
    table = mape_table(points)
    shown = [calibrated] + ([baseline] if baseline else [])
    rows = []
    splits = shown_splits(points)
    for metric in ordered_metrics(points):
        cells = []
        for split in splits:
            for engine in shown:
                value = lookup(table, engine, split, metric)
                n = lookup(table, engine, split, metric, "count")
                cls = ""
                if engine == calibrated and split == "held-out" and metric in bounds and value is not None:
                    cls = "ok" if value <= bounds[metric] else "bad"
                cells.append({"text": pct(value), "cls": cls,
                              "title": "" if n is None else f"{int(n)} points"})
        rows.append({"label": METRIC_LABEL.get(metric, metric), "cells": cells,
                     "target": f"≤ {bounds[metric]:g}" if metric in bounds else "–"})
    return {"splits": splits, "engines": shown, "rows": rows}


def points_rows(points, calibrated: str, baseline: str | None) -> dict[str, Any]:
    """Every point × metric: measured, each engine's prediction and error %, split."""
    import pandas as pd

    points = with_variant(points)
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

    def missing(v) -> bool:
        return v is None or pd.isna(v)

    rows = []
    for _, r in frame.iterrows():
        unit, scale = METRIC_UNIT.get(r["metric"], ("", 1.0))

        def shown(v):
            return _cell("", "–") if missing(v) else _cell(float(v) * scale, num(float(v) * scale))

        def error(v):
            if missing(v):
                return _cell("", "–")
            e = float(v) * 100
            return _cell(e, f"{e:+.1f}", _bad(e))

        row = [_cell(r["variant"], cls="l"), _cell(r["batch"]), _cell(r["input_len"]),
               _cell(r["output_len"]), _cell(r["metric"], METRIC_LABEL.get(r["metric"], r["metric"]), "l"),
               _cell(unit, cls="l"), shown(r["measured"]), shown(r["pred_cal"]), error(r["err_cal"])]
        if baseline:
            row += [shown(r["pred_base"]), error(r["err_base"])]
        row.append(_cell(r["split"], cls="l"))
        rows.append(row)
    return {"header": [{"text": h, "cls": "l"} for h in header], "rows": rows}


def worst_rows(points, calibrated: str) -> dict[str, Any]:
    """The worst held-out points of the calibrated engine (:func:`worst_points`), as a table."""
    worst = worst_points(points, calibrated)
    if worst.empty:
        return {"header": [], "rows": []}
    metrics = [m for m in ordered_metrics(points) if m in worst.columns]
    header = ([{"text": "model", "cls": "l"}] + [{"text": h, "cls": ""} for h in ("B", "S", "O")]
              + [{"text": f"{METRIC_LABEL.get(m, m)} err %", "cls": ""} for m in metrics]
              + [{"text": "worst", "cls": "l"}])
    rows = [[_cell(r["variant"], cls="l"), _cell(r["batch"]), _cell(r["input_len"]), _cell(r["output_len"])]
            + [_cell(r[m], signed(r[m]), _bad(r[m])) for m in metrics]
            + [_cell(METRIC_LABEL.get(r["worst_metric"], r["worst_metric"]), cls="l")]
            for _, r in worst.iterrows()]
    return {"header": header, "rows": rows}


def _slot(div_id: str, chart, specs: dict[str, Any]) -> ChartSlot:
    if chart is not None:
        specs[div_id] = chart.to_dict()
    return ChartSlot(div_id, chart is not None)


def report_html(points, ops, *, title: str, source: dict[str, Any], repeats=None, every=None,
                prefill=None) -> str:
    """The HTML page: provenance, verdict, source, MAPE, the repeated measurements (``repeats``
    and ``every``, as in :func:`summary_markdown`), charts per metric, per-op breakdown, every
    profiled decode step and one prefill by op category (``prefill``, as in
    :func:`summary_markdown`), each with a chart of measured / model per point and category, the
    worst points and every point (sortable)."""
    mode = check_mode(source)
    calibrated, baseline = engines(points, source)
    shown = [calibrated] + ([baseline] if baseline and baseline in set(points["engine"]) else [])
    engine_titles = {calibrated: f"{calibrated} (calibrated)"}
    if baseline:
        engine_titles[baseline] = f"{baseline} (uncalibrated baseline)"
    specs: dict[str, Any] = {}
    metrics = []
    for metric in ordered_metrics(points):
        metrics.append({"key": metric, "label": METRIC_LABEL.get(metric, metric), "charts": [
            _slot(f"chart-scatter-{metric}", charts.scatter_chart(points, metric, shown, engine_titles),
                  specs),
            _slot(f"chart-error-{metric}",
                  charts.error_chart(points, metric, calibrated, engine_titles[calibrated]), specs)]})
    ops_slot = _slot("chart-ops", charts.ops_chart(points, ops, calibrated), specs)
    steps = profiled_steps(ops, calibrated) if ops is not None else None
    decode_slot = _slot("chart-decode-categories", charts.category_ratio_chart(
        steps, "Every profiled decode step: measured kernel time / the model's, per category"), specs)
    prefill_slot = _slot("chart-prefill-categories", charts.category_ratio_chart(
        prefill, "Profiled one-step prefills: measured kernel time / the model's, per category"), specs)
    head, rest = provenance_line(source).split(": ", 1)
    html_env, _ = _environments()
    return html_env.get_template("report.html.j2").render(
        title=title, mode=mode, banner_head=head, banner_rest=rest,
        verdict_word=verdict(points, calibrated, targets(source))[0],
        verdict_text=verdict_line(points, calibrated, targets(source)).replace("`", ""),
        source_items=source_items(source), vega=vega_scripts(),
        mape=mape_rows(points, calibrated, baseline, targets(source)),
        repeats=repeat_section(repeats, points, calibrated, every),
        regimes=regime_rows(points, calibrated), decode_regimes=decode_regime_rows(points, calibrated),
        what_ifs=what_if_rows(points, calibrated), models=model_rows(points, calibrated, targets(source)),
        metrics=metrics, ops_chart=ops_slot,
        decode=decode_summary(ops, calibrated),
        decode_chart=decode_slot, prefill_chart=prefill_slot,
        prefill=prefill_section(points, prefill, calibrated),
        calibrated=calibrated, n_worst=N_WORST, worst=worst_rows(points, calibrated),
        points=points_rows(points, calibrated, baseline), specs_json=script_json(specs),
    ).rstrip("\n")


def write_report(points, ops, out_dir: Path, *, title: str,
                 source: dict[str, Any], repeats=None, every=None, prefill=None) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.md``; returns their paths. ``repeats``:
    the repeated measurements (:func:`perfmodel.validate.repeats.repeated_points`), or None;
    ``every``: the points of every measurement (:func:`perfmodel.validate.repeats.repeat_section`);
    ``prefill``: the profiled prefills by op category (:func:`summary_markdown`), or None."""
    check_mode(source)  # refuse an unlabelled source before writing anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "summary.md"
    html_path.write_text(report_html(points, ops, title=title, source=source, repeats=repeats, every=every,
                                     prefill=prefill), encoding="utf-8")
    md_path.write_text(summary_markdown(points, title=title, source=source, repeats=repeats, ops=ops,
                                        every=every, prefill=prefill),
                       encoding="utf-8")
    return html_path, md_path


def write_gpu_page(gpu: str, out: Path | None, compare, page, suffix: str) -> dict[str, Any]:
    """A comparison over a GPU's committed files written as one markdown page: ``compare(gpu)``
    (the GPU's spec name) shown by ``page(result)``, written to ``out`` (default
    ``validate/results/<gpu>-vllm-<suffix>-validation.md``); the result, with its ``path``."""
    from perfmodel.errors import InputError
    from perfmodel.paths import results_file
    from perfmodel.specs.hardware import load_gpu

    name = load_gpu(gpu).name
    result = compare(name)
    rows_file = results_file("vllm", name)
    path = out or rows_file.with_name(f"{rows_file.stem}-{suffix}-validation.md")
    try:
        Path(path).write_text(page(result))
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return {**result, "path": str(path)}
