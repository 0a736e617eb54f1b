"""Terminal output of ``perfmodel validate``: predicted vs measured per point, and MAPE."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from perfmodel.report_terminal import format_time


def print_validation(result: dict, console: Console) -> None:
    """Per-point predicted vs measured (held-out marked) and MAPE per engine, split and metric."""
    src = result["source"]
    label = ("REPLAY of committed measurements" if src["mode"] == "replay" else "LIVE measurements")
    console.print(f"[bold]{label}[/bold]: {src['results_file']} · {src['gpu']} · driver {src['driver']} · "
                  f"torch {src['torch']} · transformers {src['transformers']} · measured {src['date']} "
                  f"(commit {src['git_commit']})")
    points = result["points"]
    engines = list(dict.fromkeys(p["engine"] for p in points))
    same_len = all(p["input_len"] == p["output_len"] for p in points)
    table = Table(title="predicted vs measured", header_style="bold")
    for col in ("model", "B", "S=O" if same_len else "S/O", "split", "metric", "measured",
                *[f"{e}" for e in engines], *[f"err {e}" for e in engines]):
        table.add_column(col, justify="left" if col in ("model", "split", "metric") else "right")
    # one row per point (its full identity: overrides, layers, B, S, O, dtype, settings) and metric
    by_key: dict[tuple, dict] = {}
    for p in points:
        point = p.get("point_id") or (p["model"], p["batch"], p["input_len"], p["output_len"])
        key = (point, p["split"], p["metric"])
        row = by_key.setdefault(key, {"measured": p["measured"], "point": p, "engines": {}})
        row["engines"][p["engine"]] = (p["predicted"], p["rel_error"])
    for (_, split, metric), vals in by_key.items():
        point, by_engine = vals["point"], vals["engines"]
        fmt = (lambda v: f"{v:,.0f}") if metric == "throughput" else format_time
        cells = [fmt(by_engine[e][0]) if e in by_engine else "" for e in engines]
        errs = [f"{by_engine[e][1]:+.1%}" if e in by_engine else "" for e in engines]
        s, o = point["input_len"], point["output_len"]
        table.add_row(Text(str(point.get("variant") or point["model"])), str(point["batch"]),
                      str(s) if same_len else f"{s}/{o}", str(split),
                      metric, fmt(vals["measured"]), *cells, *errs)
    console.print(table)
    mape = Table(title="MAPE (%)", header_style="bold")
    # rows of several layouts (1 GPU, TP=2, TP=4+EP, ...) are grouped by layout
    by_layout = len({row.get("layout", "1 GPU") for row in result["mape"]}) > 1
    for col in ("engine", *(("layout",) if by_layout else ()), "split", "metric", "mean", "median", "max", "n"):
        mape.add_column(col)
    for row in result["mape"]:
        mape.add_row(row["engine"], *((row.get("layout", "1 GPU"),) if by_layout else ()), row["split"],
                     row["metric"], f"{row['mean']:.1f}", f"{row['median']:.1f}", f"{row['max']:.1f}",
                     str(row["count"]))
    console.print(mape)
    verdict = result.get("verdict")
    if verdict:
        style = {"PASS": "bold green", "FAIL": "bold red"}.get(verdict["result"], "bold")
        console.print(Text(verdict["line"], style=style))
    repeats = result.get("repeats") or {}
    if repeats.get("points"):
        from perfmodel.validate.repeats import summary_line

        console.print(f"{len(repeats['points'])} points were measured more than once (the report's "
                      f"\"Repeated measurements\"): {summary_line(repeats['summary'])}", markup=False)
    console.print(f"report: {result['report_html']}  summary: {result['summary_md']}")


def print_change_band(result: dict, console: Console) -> None:
    """The change band of a GPU's vLLM rows (``validate all --changes``): per knob and metric, its
    held-out pairs, the band, the median |ratio error| and how many lie within 10%."""
    table = Table(title=f"the model's change against measured pairs · vllm on {result['gpu']} (held out)")
    for name in ("knob", "metric", "pairs", f"band (p{result['percentile']:g} |ratio error|)", "median",
                 "within ±10%", "pairs a fit read"):
        table.add_column(name, justify="left" if name in ("knob", "metric") else "right")
    for knob, metrics in result["knobs"].items():
        for metric, entry in metrics.items():
            shown = (f"±{entry['band_pct']:.1f}%" if entry["band_pct"] is not None
                     else f"– (fewer than {result['min_pairs']})")
            median = "–" if entry["median_pct"] is None else f"{entry['median_pct']:.1f}%"
            table.add_row(knob, metric, str(entry["pairs"]), shown, median, str(entry["within_10pct"]),
                          str(entry["fitted_pairs"]))
    console.print(table)
    console.print(Text(f"{result['source']}. Written to {result['written']}; sweep --baseline shows it."))
