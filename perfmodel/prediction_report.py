"""A prediction as a report (``perfmodel predict ... --out DIR``): ``report.html``, one
self-contained page (the metrics with their band, each op on the GPU's roofline, each op's time,
the per-op table, the provenance), and ``summary.md``, the same without the charts.

Times in the page are ms; FLOPs and bytes per GPU of the layout, over the whole pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfmodel.prediction import Prediction
from perfmodel.prediction_charts import above_roofs, op_time_chart, roofline_chart
from perfmodel.report_terminal import (
    header_lines, metric_rows, op_table_rows, speculative_text, time_split_text,
)

#: The page's templates, in the shared templates folder.
TEMPLATES = ("prediction.html.j2", "prediction.md.j2")


def context(p: Prediction) -> dict[str, Any]:
    """What both templates show: header lines, metric rows (name, its depth under the row it is
    part of, value, band), the band's note, speculative decoding, where the time goes, the ops
    (with their share of the pass), those above the GPU's roofline and the provenance."""
    prov = p.provenance
    return {"title": header_lines(p)[0], "header": header_lines(p)[1:],
            "metrics": [{"name": n.strip(), "depth": (len(n) - len(n.lstrip())) // 2, "value": v,
                         "band": f"±{rel:.0%}" if rel else ""} for n, v, rel in metric_rows(p)],
            "band_note": prov.get("error_band_note") or "no error band",
            "speculative": speculative_text(p.speculative) if p.speculative else None,
            "time_split": time_split_text(p),
            "ops": op_table_rows(p), "above_roofs": above_roofs(p), "provenance": prov, "model": p.model}


def _charts(p: Prediction) -> dict[str, Any]:
    """The page's Vega-Lite specs by element id."""
    charts = {"chart-roofline": roofline_chart(p, p.gpu), "chart-op-time": op_time_chart(p)}
    return {div: chart.to_dict(validate=False) for div, chart in charts.items() if chart is not None}


def _environments():
    from perfmodel.templating import environments

    return environments("perfmodel", strict=True)


def report_html(p: Prediction) -> str:
    from perfmodel.templating import script_json

    from perfmodel.vega import vega_scripts

    specs = _charts(p)
    page = _environments()[0].get_template(TEMPLATES[0]).render(
        **context(p), specs=specs, specs_json=script_json(specs),
        vega=vega_scripts())
    return page.rstrip("\n") + "\n"


def summary_markdown(p: Prediction) -> str:
    return _environments()[1].get_template(TEMPLATES[1]).render(**context(p)).rstrip("\n") + "\n"


def write_report(p: Prediction, out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.md``; returns their paths."""
    from perfmodel.templating import write_pages

    html, md = write_pages(out_dir, {"report.html": lambda: report_html(p), "summary.md": lambda: summary_markdown(p)})
    return html, md
