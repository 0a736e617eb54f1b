"""``perfmodel report paper``: the model against a study's headline effects, in three forms.

:func:`build` predicts and judges every effect (:mod:`~perfmodel.validate.paper.compute`) and
finds the same comparisons in our measurements (:mod:`~perfmodel.validate.paper.measured`);
:func:`write` renders ``report.html`` (self-contained: the Vega JavaScript is inlined when
vl-convert-python is installed, as in the validation report) and ``report.md`` from the
templates beside this module; :func:`to_json` is the ``--json`` object. The summary rows
(effect, paper, predicted, measured, verdict) are the same in all of them and in the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from perfmodel import paths
from perfmodel.measuring.compare import what_if_file
from perfmodel.paths import results_file
from perfmodel.validate.paper import charts, measured
from perfmodel.validate.paper.compute import Context, EffectResult, compute_effects
from perfmodel.validate.paper.effects import DEFAULT_STUDY, Study, load_study
from perfmodel.validate.paper.verdict import REPRODUCED, TRACKS, Tracking, judge_tracking, pct_range
from perfmodel.wording import count_of

TEMPLATES = ("perfmodel.validate.paper", "templates")
#: How the report names the engine of a comparison's measurements.
MEASURED_ENGINES = {"vllm": "vLLM", "hf": "transformers"}

#: Where the report goes by default.
DEFAULT_OUT = Path("reports") / "paper"


@dataclass
class PaperReport:
    """A study checked: every effect predicted and judged, and its measured comparisons."""

    study: Study
    gpu: str
    engine: str
    provenance: dict[str, Any]
    source: dict[str, Any]
    results: list[EffectResult]
    pairs: dict[str, list[measured.MeasuredPair]]
    points: dict[str, pd.DataFrame]

    def tracking(self, effect_id: str) -> Tracking:
        """The model against our measurements of an effect, pair by pair
        (:func:`~perfmodel.validate.paper.verdict.judge_tracking`)."""
        pairs = self.pairs.get(effect_id) or []
        return judge_tracking([p.predicted_pct for p in pairs], [p.measured_pct for p in pairs],
                              self.study.study.tolerance_pp)


def _source(rows: list[dict[str, Any]], left_out: list[str], paper_gpu: str) -> dict[str, Any]:
    """Where the measurements come from, per source (:data:`measured.SOURCES`) that has rows: its
    GPU (the model's name, the rows' own, whether it is the paper's ``paper_gpu``), engine and
    versions, files, rows and dates; and the groups left out because their routing collapsed
    (:func:`measured.without_collapsed_routing`)."""
    def one(key: str, among: list[dict[str, Any]]) -> str:
        found = sorted({str(r.get(key)) for r in among if r.get(key)})
        return ", ".join(found) or "–"

    def dates(among: list[dict[str, Any]]) -> str:
        days = sorted(str(r.get("date", ""))[:10] for r in among if r.get("date"))
        return "–" if not days else days[0] if days[0] == days[-1] else f"{days[0]} – {days[-1]}"

    sets = []
    for gpu, engine in measured.SOURCES:
        mine = [r for r in rows if r["measured_gpu"] == gpu and r.get("backend", "vllm") == engine]
        if not mine:
            continue
        path = results_file(engine, gpu)
        files = [str(f.relative_to(paths.ROOT)) for f in (path, what_if_file(path)) if f.exists()]
        sets.append({"gpu": gpu, "engine": engine, "engine_name": MEASURED_ENGINES[engine],
                     "version": one("vllm" if engine == "vllm" else "transformers", mine),
                     "gpu_name": one("gpu_name", mine), "paper_gpu": gpu == paper_gpu, "files": files,
                     "rows": len(mine), "dates": dates(mine)})
    return {"sets": sets, "left_out": left_out}


def source_text(source: dict[str, Any]) -> str:
    """The report's measurements in one sentence: each source's engine, GPU, files, rows and
    dates, and the groups left out."""
    parts = []
    for s in source["sets"]:
        paper = "the paper's GPU; " if s["paper_gpu"] else ""
        why = ("" if s["engine"] == "vllm" else
               " where vLLM has no switch for a comparison (the fused vs unfused MoE), predicted with the hf profile")
        parts.append(f"our {s['engine_name']} {s['version']} runs on the {s['gpu_name']} "
                     f"({paper}{', '.join(s['files'])}; {s['rows']} rows, {s['dates']}){why}")
    text = "; ".join(parts) + (". Beside each measured change: the model's change for exactly those points (the rows' "
                               "GPU with its own fit, the host speed each row probed, the rows' layers, one GPU)")
    if source["left_out"]:
        text += (". Left out, their routing having collapsed under vLLM's dummy weights (decode steps faster than "
                 f"uniform routing allows): {', '.join(source['left_out'])}")
    return text + "."


def build(*, gpu: str = "h100-sxm", engine: str = "vllm", study: str | Study = DEFAULT_STUDY) -> PaperReport:
    """Predict and judge every effect of ``study`` on ``gpu`` with ``engine``; pair measurements.

    Bad ``gpu`` or ``engine`` names raise :class:`perfmodel.errors.InputError` before anything
    is computed."""
    study = study if isinstance(study, Study) else load_study(study)
    ctx = Context(gpu=gpu, engine=engine)
    first = study.effects[0].setup
    probe = ctx.predict(first.models[0], batch=first.batch[0], input_len=first.lengths[0],
                        output_len=first.lengths[0], **first.layout)
    prov = probe.provenance
    provenance = {k: prov[k] for k in ("profile", "engine", "gpu", "calibrated", "transfer", "note")}
    results = compute_effects(study, ctx)
    rows, left_out = measured.without_collapsed_routing(measured.load_sources())
    pairs, points = {}, {}
    for effect in study.effects:
        if effect.measured:
            pairs[effect.id] = measured.effect_pairs(rows, effect.measured, engine)
            points[effect.id] = measured.effect_points(rows, effect.measured, engine)
    return PaperReport(study, probe.provenance["gpu"], engine, provenance, _source(rows, left_out, study.study.gpu),
                       results, pairs, points)


def measured_engines(effect) -> str:
    """Whose measurements an effect's comparisons are, as the report names them (``vLLM``,
    ``transformers``; several comma-separated, in the comparisons' order; empty for none)."""
    return ", ".join(MEASURED_ENGINES[e] for e in dict.fromkeys(m.engine for m in effect.measured))


def measured_text(report: PaperReport, effect_id: str) -> str:
    """The measured comparisons of an effect in one line, per GPU and model: ``H200
    mixtral-8x7b +26…+67% (model +42…+61%, 6 pairs)``, and per comparison where the effect
    makes several (``H200 olmoe-1b-7b, 12 pairs: E=56 vs 64 +3% (model +6%), …``), led by the
    engine where the measurements are not vLLM's (``transformers: …``); why there are none
    otherwise."""
    effect = report.study.effect(effect_id)
    if not effect.measured:
        return "not measured"
    pairs = report.pairs.get(effect_id) or []
    if not pairs:
        return "no measured pair"
    parts = []
    for (gpu, model), mine in _by_gpu_and_model(pairs).items():
        model = f"{measured.gpu_label(gpu)} {model}"
        count = count_of(len(mine), "pair")
        if len(effect.measured) == 1:
            seen, model_change = _changes(mine)
            parts.append(f"{model} {seen} (model {model_change}, {count})")
            continue
        each = []
        for compares in dict.fromkeys(measured.compares_text(p.comparison) for p in mine):
            seen, model_change = _changes([p for p in mine if measured.compares_text(p.comparison) == compares])
            each.append(f"{compares} {seen} (model {model_change})")
        parts.append(f"{model}, {count}: " + ", ".join(each))
    engines = measured_engines(effect)
    return ("" if engines == MEASURED_ENGINES["vllm"] else f"{engines}: ") + "; ".join(parts)


def _by_gpu_and_model(pairs: list[measured.MeasuredPair]) -> dict[tuple[str, str], list[measured.MeasuredPair]]:
    """Pairs grouped by (GPU, model), in their order."""
    groups: dict[tuple[str, str], list[measured.MeasuredPair]] = {}
    for p in pairs:
        groups.setdefault((p.keys["gpu"], p.keys["model"]), []).append(p)
    return groups


def _changes(pairs: list[measured.MeasuredPair]) -> tuple[str, str]:
    """The measured and the predicted changes of some pairs, each as a range (``+3…+34%``)."""
    return pct_range([p.measured_pct for p in pairs]), pct_range([p.predicted_pct for p in pairs])


def tracking_text(pairs: list[measured.MeasuredPair]) -> str:
    """How closely the model's change follows the measured one at the same points, per GPU and
    model: the mean absolute difference in percentage points."""
    parts = []
    for (gpu, model), mine in _by_gpu_and_model(pairs).items():
        gaps = [abs(p.predicted_pct - p.measured_pct) for p in mine]
        parts.append(f"{measured.gpu_label(gpu)} {model} {sum(gaps) / len(gaps):.0f} pp (largest {max(gaps):.0f} pp)")
    return ("At the measured points the model's change is off the measured one by, on average: "
            + "; ".join(parts) + ".") if parts else ""


def summary_rows(report: PaperReport) -> list[dict[str, Any]]:
    """One row per effect: id, title, paper (claims), predicted (per claim), measured, verdict."""
    out = []
    for r in report.results:
        out.append({"id": r.effect.id, "title": r.effect.title,
                    "paper": "; ".join(c.claim.text for c in r.claims),
                    "predicted": "; ".join(f"{c.claim.id.removeprefix(r.effect.id)} {c.shown}" for c in r.claims),
                    "measured": measured_text(report, r.effect.id), "verdict": r.verdict,
                    "model_vs_measured": report.tracking(r.effect.id).shown})
    return out


def standing(report: PaperReport) -> str:
    """The report's bottom line: how many effects the model reproduces, how many of the measured
    comparisons it follows (and of those measured on the paper's GPU), and the effects it misses
    in the paper while it follows our measurements (there the paper and our measurement
    disagree), named apart where every pair of ours on the paper's GPU says so."""
    reproduced = [r.effect.id for r in report.results if r.verdict == REPRODUCED]
    tracked = {r.effect.id: report.tracking(r.effect.id) for r in report.results}
    gaps = [g for t in tracked.values() for g in t.gaps]
    tolerance = report.study.study.tolerance_pp
    paper_gpu = report.study.study.gpu
    on_paper_gpu = {e: [abs(p.predicted_pct - p.measured_pct) for p in pairs if p.keys["gpu"] == paper_gpu]
                    for e, pairs in report.pairs.items()}
    text = (f"The model reproduces {len(reproduced)} of {len(report.results)} effects in the paper's setup"
            + (f" ({', '.join(reproduced)})" if reproduced else "") + ".")
    if gaps:
        text += (f" At our {len(gaps)} measured pairs its change is within ±{tolerance:g} pp of the measured one "
                 f"at {sum(g <= tolerance for g in gaps)}")
        there = [g for found in on_paper_gpu.values() for g in found]
        if there:
            text += (f"; of the {count_of(len(there), 'pair')} measured on the paper's GPU "
                     f"({measured.gpu_label(paper_gpu)}), at {sum(g <= tolerance for g in there)}")
        text += "."
    missed = [r.effect.id for r in report.results if r.verdict != REPRODUCED]
    sides = [e for e in missed if tracked[e].verdict == TRACKS]
    if sides:
        text += (f" Where it misses the paper but follows our measurement ({', '.join(sides)}), our vLLM "
                 "measurement differs from the paper's figure as the model does.")
    own_gpu = [e for e in missed if on_paper_gpu.get(e) and max(on_paper_gpu[e]) <= tolerance]
    if own_gpu:
        text += (f" Of the effects it misses, those we measured on the paper's own GPU ({', '.join(own_gpu)}) "
                 f"have every pair of ours there within ±{tolerance:g} pp of the model.")
    return text


def _pair_dict(p: measured.MeasuredPair) -> dict[str, Any]:
    return {"label": p.label, "sampling": p.sampling, "measured_pct": p.measured_pct,
            "predicted_pct": p.predicted_pct, "measured_tok_s": [p.measured_side, p.measured_base],
            "predicted_tok_s": [p.predicted_side, p.predicted_base],
            "point_ids": [p.side["point_id"], p.base["point_id"]]}


def to_json(report: PaperReport, files: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole report as one JSON-ready object."""
    effects = []
    for r, row in zip(report.results, summary_rows(report)):
        e = r.effect
        effects.append({
            "id": e.id, "title": e.title, "claim": e.claim, "numbers": e.numbers, "source": e.source,
            "setup": {**e.setup.model_dump(), "gpu": report.gpu}, "missing": e.missing,
            "claims": [{"id": c.claim.id, "text": c.claim.text, "quantity": c.claim.quantity,
                        "where": c.claim.where, "low": c.claim.low, "high": c.claim.high,
                        "direction": c.claim.direction, "statistic": c.claim.statistic,
                        "predicted": list(c.values), "points": c.points, "verdict": c.verdict}
                       for c in r.claims],
            "verdict": r.verdict, "explanation": r.computed.explanation, "notes": r.notes,
            "derived": r.computed.derived,
            "measured": {"summary": row["measured"], "tracking": tracking_text(report.pairs.get(e.id, [])),
                         "model_vs_measured": report.tracking(e.id).verdict,
                         "gaps_pp": list(report.tracking(e.id).gaps),
                         "pairs": [_pair_dict(p) for p in report.pairs.get(e.id, [])]}})
    return {"study": report.study.study.model_dump(), "gpu": report.gpu, "engine": report.engine,
            "provenance": report.provenance, "measured_source": report.source,
            "summary": summary_rows(report), "standing": standing(report), "effects": effects,
            **(files or {})}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _environments():
    """(HTML environment, Markdown environment) over this report's templates and the shared
    assets (:func:`perfmodel.templating.environments`)."""
    from perfmodel.templating import environments

    return environments(*TEMPLATES, strict=True)


def _layout(layout: dict[str, int | bool]) -> str:
    """``TP=4 +EP``: the degrees, and +EP for vLLM's expert parallelism."""
    return " ".join("+EP" if k == "expert_parallel" else f"{k.upper()}={v}"
                    for k, v in layout.items() if k != "expert_parallel" or v)


def layout_text(setup) -> str:
    """How the setup's GPUs are used: ``TP=2``, per model, or per named layout."""
    named = setup.extra("layouts")
    if named:
        return "; ".join(f"{name}: {_layout(lay)}" for name, lay in named.items())
    text = _layout(setup.layout)
    by_model = setup.extra("layout_by_model")
    if by_model:
        text += " (" + "; ".join(f"{m}: {_layout(lay)}" for m, lay in by_model.items()) + ")"
    return text




def _context(report: PaperReport) -> dict[str, Any]:
    """What both templates show."""
    effects = []
    for r, row in zip(report.results, summary_rows(report)):
        effects.append({"r": r, "row": row, "setup": r.effect.setup, "layout": layout_text(r.effect.setup),
                        "pairs": report.pairs.get(r.effect.id, []), "has_measured": bool(r.effect.measured),
                        "measured_engine": measured_engines(r.effect),
                        "tracking": tracking_text(report.pairs.get(r.effect.id, []))})
    return {"study": report.study.study, "gpu": report.gpu, "engine": report.engine,
            "provenance": report.provenance, "source": report.source, "source_text": source_text(report.source),
            "rows": summary_rows(report),
            "effects": effects, "standing": standing(report), "pct": lambda v: pct_range([v]),
            "span": lambda lo_hi: pct_range(list(lo_hi))}


def report_markdown(report: PaperReport) -> str:
    """The Markdown report (the file's text)."""
    _, md = _environments()
    return md.get_template("report.md.j2").render(**_context(report))


def report_html(report: PaperReport) -> str:
    """The HTML page: summary table, then per effect its claims, measurements, explanation, charts."""
    from perfmodel.templating import script_json

    from perfmodel.vega import vega_scripts

    specs: dict[str, Any] = {}
    slots: dict[str, list[str]] = {}
    for r in report.results:
        for i, chart in enumerate(charts.effect_charts(r, report.pairs.get(r.effect.id, []),
                                                        report.points.get(r.effect.id))):
            if chart is not None:
                chart_id = f"chart-{r.effect.id}-{i}"
                specs[chart_id] = chart.to_dict()
                slots.setdefault(r.effect.id, []).append(chart_id)
    html, _ = _environments()
    return html.get_template("report.html.j2").render(
        **_context(report), slots=slots, vega=vega_scripts(),
        specs_json=script_json(specs)).rstrip("\n")


def write(report: PaperReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.md``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(report_html(report), encoding="utf-8")
    md_path.write_text(report_markdown(report), encoding="utf-8")
    return html_path, md_path
