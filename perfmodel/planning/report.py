"""``perfmodel plan --out DIR``: report.html (charts and tables, self-contained) and summary.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from perfmodel.planning import charts
from perfmodel.planning.question import burstiness_text
from perfmodel.planning.search import Plan
from perfmodel.vega import vega_scripts

TEMPLATES = ("perfmodel.planning", "templates")


def evaluation_rows(plan: Plan) -> list[dict[str, Any]]:
    """Every evaluation as a row: configuration, replicas, GPUs, cost, source, outcome."""
    return [{"config": ev.config_label(), "label": ev.label(), "replicas": sum(p.replicas for p in ev.pools),
             "gpus": ev.gpus, "usd_per_hour": ev.usd_per_hour, "source": ev.source, "outcome": ev.outcome,
             "failures": "; ".join(ev.failures), "ttft_p90_s": ev.metrics["ttft"]["p90"],
             "itl_p90_s": ev.metrics["itl"]["p90"], "e2e_p90_s": ev.metrics["e2e"]["p90"]}
            for ev in plan.evaluations]


def config_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: its cheapest evaluation that meets the SLOs (simulated first), else
    its last (largest) one; cheapest first."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["config"], []).append(row)
    out = []
    for config, group in by.items():
        ok = [r for r in group if r["outcome"] == "meets SLOs"]
        ok.sort(key=lambda r: (r["source"] != "simulation", r["usd_per_hour"]))
        out.append(ok[0] if ok else max(group, key=lambda r: (r["usd_per_hour"], r["source"] == "simulation")))
    return sorted(out, key=lambda r: r["usd_per_hour"])


def _fmt_ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and (value != value)):
        return "–"
    return "∞" if value == math.inf else f"{value * 1e3:.1f}"


def _environments():
    """(HTML environment, Markdown environment) over the plan's templates and the shared assets
    (:func:`perfmodel.templating.environments`)."""
    from perfmodel.templating import environments

    return environments(*TEMPLATES, ms=_fmt_ms)


def _context(plan: Plan, data: dict[str, Any]) -> dict[str, Any]:
    rows = evaluation_rows(plan)
    configs = config_rows(rows)
    q = plan.question
    bursty = burstiness_text(q.traffic.burstiness)
    bursty = f" ({bursty})" if bursty else ""
    return {"title": f"Capacity plan: {plan.model.name} at {q.traffic.rate:g} req/s{bursty}", "data": data,
            "rows": sorted(rows, key=lambda r: (r["usd_per_hour"], r["config"])), "configs": configs,
            "targets": q.slo.targets(), "question_yaml": _yaml(q.model_dump(mode="json", exclude_none=True)),
            "ms": _fmt_ms}


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip()


def report_html(plan: Plan, data: dict[str, Any]) -> str:
    from perfmodel.templating import script_json

    ctx = _context(plan, data)
    points = data.get("points") or []
    front = data["frontier"]
    targets = ctx["targets"]
    ttft_target = max([v for k, v in targets.items() if k.startswith("ttft")], default=None)
    specs = {}
    for div, chart in (("chart-frontier", charts.frontier_chart(points, front["throughput_vs_interactivity"])),
                       ("chart-cost-ttft", charts.cost_ttft_chart(points, front["cost_vs_ttft"], ttft_target)),
                       ("chart-rate", charts.rate_chart(data.get("rate_sweep") or [], targets)),
                       ("chart-cost", charts.cost_chart(ctx["configs"])),
                       ("chart-failures", charts.failure_chart(ctx["rows"]))):
        if chart is not None:
            specs[div] = chart.to_dict(validate=False)
    ctx.update(specs=specs, specs_json=script_json(specs),
               vega=vega_scripts())
    return _environments()[0].get_template("report.html.j2").render(**ctx).rstrip("\n") + "\n"


def summary_markdown(plan: Plan, data: dict[str, Any]) -> str:
    return _environments()[1].get_template("summary.md.j2").render(**_context(plan, data)).rstrip("\n") + "\n"


def write_report(plan: Plan, data: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.md``; returns their paths."""
    from perfmodel.templating import write_pages

    html, md = write_pages(out_dir, {"report.html": lambda: report_html(plan, data),
                                     "summary.md": lambda: summary_markdown(plan, data)})
    return html, md
