"""The plan on a terminal: a progress bar while searching, then rich tables."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

from perfmodel.planning.question import burstiness_text


@contextlib.contextmanager
def progress_bar() -> Iterator[Any]:
    """A rich progress bar on stderr (only on a terminal); yields a ``(stage, fraction)`` callback."""
    if not sys.stderr.isatty():
        yield lambda stage, fraction: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, fraction: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=1.0)
            bar.update(tasks[stage], completed=min(max(fraction, 0.0), 1.0))

        yield update


def _s(value: Any) -> str:
    if value is None or value != value:
        return "–"
    if value == float("inf"):
        return "∞"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def print_answer(data: dict[str, Any], console) -> None:
    from rich.table import Table

    q = data["question"]
    t = data["traffic"]
    bursty = burstiness_text(t.get("burstiness"))
    bursty = f" ({bursty})" if bursty else ""
    console.print(f"[bold]{data['model']}[/bold] at {t['rate_req_s']:g} req/s{bursty}, "
                  f"{t['mean_input_len']:.0f} in / {t['mean_output_len']:.0f} out tokens (means); "
                  f"GPUs {', '.join(q['search']['gpus'])}, at most {q['search']['max_gpus']}")
    c = data["chosen"]
    if c is None:
        console.print(f"[bold red]No configuration meets every SLO.[/bold red] {data['infeasible']}")
    else:
        cost = data["cost"]
        console.print(f"[bold green]{c['label']}[/bold green] ({c['kind']}): {c['gpus']} GPU{'s' if c['gpus'] != 1 else ''}, "
                      f"${cost['usd_per_hour']:.2f}/h, ${cost['usd_per_million_output_tokens']:.3f} per "
                      f"million output tokens")
        bands = [p.get("serving_error_band") for p in data["profile"]]
        band = bands[0] if len(bands) == 1 else None
        table = Table(title="predicted latencies (simulation)")
        columns = ("metric", "p50", "p90", "p99", "mean", "target") + (("measured error, p90",) if band else ())
        for col in columns:
            table.add_column(col, justify="right" if col in ("p50", "p90", "p99", "mean") else "left")
        targets = q["slo"]
        for key, name in (("ttft_s", "TTFT"), ("itl_s", "ITL"), ("tpot_s", "TPOT"), ("e2e_s", "E2E")):
            m = data["latency"][key]
            goal = ", ".join(f"{k.split('_')[1]} ≤ {_s(v)}" for k, v in targets.items()
                             if v is not None and k.startswith(key.split("_")[0] + "_"))
            cells = [name, _s(m["p50"]), _s(m["p90"]), _s(m["p99"]), _s(m["mean"]), goal]
            if band:
                metric = key.split("_")[0]
                cells.append(", ".join(f"{pct} ±{band[f'{metric}_{pct}']:.0%}" for pct in ("p50", "p90", "mean")
                                       if band.get(f"{metric}_{pct}") is not None) or "–")
            table.add_row(*cells)
        console.print(table)
        tp = data["throughput"]
        good = data["goodput"]["fraction"]
        console.print(f"throughput {tp['output_tokens_per_s']:.0f} output tok/s "
                      f"({tp['output_tokens_per_s_per_gpu']:.0f}/GPU, {tp['tokens_per_s_per_user'] or 0:.1f}/user); "
                      f"goodput {100 * (good or 0):.1f}% of requests")
        lines: dict[str, list[str]] = {}  # a pool's line, and the pools it stands for
        for p in data["profile"]:
            text = f"{p['profile']}: {p['note']}; {p['error_band_note']}; {p['serving_error_band_note']}"
            lines.setdefault(text, []).append(p["gpu"] if p["pool"] == "all" else f"{p['pool']} pool, {p['gpu']}")
        for text, pools in lines.items():
            console.print(f"profile ({'; '.join(pools)}): {text}")
        for p in data["profile"]:
            m = p.get("memory_per_gpu")
            if m:
                pool = p["gpu"] if p["pool"] == "all" else f"{p['pool']} pool, {p['gpu']}"
                kv = "given" if m["kv_cache_given"] else "what is left"
                console.print(f"memory per GPU ({pool}): {m['usable_gib']:.1f} GiB usable, weights "
                              f"{m['weights_gib']:.1f} GiB, activations {m['activations_gib']:.1f} GiB, KV cache "
                              f"{m['kv_cache_gib']:.1f} GiB ({kv}: {m['kv_cache_tokens']:,} tokens)")
    for choice, options in (data.get("cheapest_by") or {}).items():
        table = Table(title=f"cheapest meeting every SLO, per {'weights' if choice == 'dtype' else 'GPU type'}")
        for col in (choice, "deployment", "GPUs", "$/h", "$/M out tok", "from"):
            table.add_column(col, justify="right" if col in ("GPUs", "$/h", "$/M out tok") else "left")
        for option, p in options.items():
            table.add_row(option, *(("none meets the SLOs", "", "", "", "") if p is None else
                                    (p["label"], str(p["gpus"]), f"{p['usd_per_hour']:.2f}",
                                     f"{p['usd_per_million_output_tokens']:.3f}", p["source"])))
        console.print(table)
    front = data["frontier"]["throughput_vs_interactivity"]
    if front:
        table = Table(title="frontier: output tok/s per GPU vs tok/s per user")
        for col in ("deployment", "GPUs", "tok/s/GPU", "tok/s/user", "$/M out tok", "from", "SLOs"):
            table.add_column(col, justify="left" if col in ("deployment", "from", "SLOs") else "right")
        for p in front[:10]:
            table.add_row(p["label"], str(p["gpus"]), f"{p['output_tok_s_per_gpu']:.0f}",
                          f"{p['tok_s_per_user']:.1f}", f"{p['usd_per_million_output_tokens']:.3f}", p["source"],
                          "meets" if p["meets"] else p["outcome"])
        console.print(table)
    for line in data["caveats"]:
        console.print(f"[dim]- {line}[/dim]")
    if data.get("report"):
        console.print(f"wrote {', '.join(data['report'])}")
