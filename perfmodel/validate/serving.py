"""``perfmodel validate MODEL|all --serving``: the planning simulation against measured serving.

Reads the rows of ``perfmodel measure --serving`` (``validate/results/<gpu>-vllm-serving.jsonl``,
or ``--results FILE``) and replays them: always a labelled replay, on any machine (a serving run
takes minutes of GPU time; it is measured by ``measure --serving``, not by ``validate``). For each
measured rate it calls :func:`perfmodel.planning.predict_serving` for the same deployment:

- model, ``--set`` overrides and layers of the row;
- GPU: the row's ``gpu_name`` as a spec name (``NVIDIA H200`` -> ``h200`` -> h200-sxm; the longest
  leading part of the name that is a known GPU or alias), else ``--gpu``;
- layout: tp and pp as measured; vLLM's expert parallelism is predicted as TP on the same GPUs
  (as :mod:`perfmodel.measuring.compare` does for the offline rows);
- dtype (fp8 when the row ran ``--quantization fp8``), ``max_num_seqs``, and the engine's resolved
  ``max_num_batched_tokens`` (the planning default where the row lacks it);
- traffic: the rate the requests were really offered at (the row's ``achieved_rate``: a seeded
  Poisson schedule of N requests strays from its nominal rate by about 1/sqrt(N)), S and O;
  ``requests`` = the row's N and ``warmup`` = 0, since the measured run also starts from an idle
  engine; the row's seed.

Compared (relative error = predicted/measured - 1, MAPE over the finite ones): TTFT p50/p90,
ITL p50/p90, and the served throughput in output tokens/s: measured, the row's completion rate
times O; predicted, min(offered rate, the closed-form saturation rate) times O. A prediction that
overloads (infinite percentiles) is shown as such and left out of the MAPE.

Saturation, per group of rows that differ only in rate: a measured rate is *followed* while the
engine's completion rate is at least (1 - :data:`SATURATION_TOLERANCE`) of the rate requests
were offered at (``achieved_rate``); the measured saturation lies between the highest followed
rate and the lowest rate that is not, and the completion rate of the rates that are not is the
engine's measured capacity. Both are set beside the planning's closed-form saturation rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from perfmodel.errors import InputError, PerfModelError

#: A rate is followed while completion rate >= (1 - this) x the offered (achieved) rate.
SATURATION_TOLERANCE = 0.10
#: Compared latency metrics: name -> (measured field, ms; predicted metric, percentile).
LATENCY = {
    "ttft_p50": ("ttft_p50_ms", "ttft_s", "p50"),
    "ttft_p90": ("ttft_p90_ms", "ttft_s", "p90"),
    "itl_p50": ("itl_p50_ms", "itl_s", "p50"),
    "itl_p90": ("itl_p90_ms", "itl_s", "p90"),
}
METRICS = (*LATENCY, "served_tok_s")
#: The planning's engine profile the predictions use.
ENGINE = "vllm"


def results_path(gpu: str) -> Path:
    """The committed serving rows of a GPU: ``validate/results/<gpu>-vllm-serving.jsonl``."""
    from perfmodel.paths import RESULTS_DIR

    return RESULTS_DIR / f"{gpu.split('-')[0]}-vllm-serving.jsonl"


def gpu_spec_name(gpu_name: str | None, default: str) -> str:
    """The spec name of a measured GPU (``NVIDIA H200`` -> h200-sxm, ``NVIDIA H100 80GB HBM3`` ->
    h100-sxm through its ``h100-80gb`` alias): the longest leading part of the short name that
    is a known GPU; ``default`` when none is."""
    from perfmodel.measuring.env import gpu_short_name
    from perfmodel.specs.hardware import load_gpu

    if gpu_name and gpu_name != "cpu":
        parts = gpu_short_name(gpu_name).split("-")
        for n in range(len(parts), 0, -1):
            try:
                return load_gpu("-".join(parts[:n])).name
            except PerfModelError:
                continue
    return load_gpu(default).name


def serving_layout(row: dict[str, Any]) -> tuple[int, int, int]:
    """(tp, ep, pp) of the model's layout for a row: tp and pp as measured, ep = 1 (vLLM's EP
    reuses the tp GPUs; predicted as TP, see the module docstring)."""
    from perfmodel.measuring.compare import row_layout

    lay = row_layout(row)
    return int(lay["tp"]), 1, int(lay["pp"])


def serving_dtype(row: dict[str, Any]) -> str:
    """The planning dtype of a row: fp8 for ``--quantization fp8``, else bf16."""
    from perfmodel.measuring.compare import row_quant

    return "fp8" if row_quant(row) == "fp8" else "bf16"


def offered_rate(row: dict[str, Any]) -> float:
    """The rate a row's requests were offered at, req/s: its achieved rate, else its nominal one."""
    achieved = row.get("achieved_rate")
    return float(achieved) if isinstance(achieved, (int, float)) and achieved > 0 else float(row["rate"])


def predict_row(row: dict[str, Any], gpu: str) -> dict[str, Any]:
    """:func:`perfmodel.planning.predict_serving` of the deployment and traffic a row measured."""
    from perfmodel import planning
    from perfmodel.measuring.compare import row_overrides

    engine = row.get("engine") or {}
    kwargs: dict[str, Any] = {}
    if isinstance(engine.get("max_num_batched_tokens"), int):
        kwargs["max_batched_tokens"] = engine["max_num_batched_tokens"]
    return planning.predict_serving(
        row["model"], gpu, serving_layout(row),
        {"rate": offered_rate(row), "input_len": int(row["input_len"]), "output_len": int(row["output_len"])},
        dtype=serving_dtype(row), max_num_seqs=int(row["max_num_seqs"]), engine=ENGINE,
        overrides=row_overrides(row), requests=max(20, int(row["num_requests"])), warmup=0,
        seed=int(row.get("seed") or 0), **kwargs)


def _served(row: dict[str, Any]) -> float | None:
    rate = row.get("completion_rate")
    return None if rate is None else float(rate) * int(row["output_len"])


def predicted_served(row: dict[str, Any], prediction: dict[str, Any]) -> float:
    """Output tokens/s the planning says one engine serves at the row's offered rate:
    min(offered rate, closed-form saturation) x O."""
    sat = prediction.get("saturation_rate_per_replica")
    rate = offered_rate(row) if sat is None else min(offered_rate(row), float(sat))
    return rate * int(row["output_len"])


def _rel(predicted: float, measured: float | None) -> float | None:
    if measured is None or measured <= 0 or not math.isfinite(predicted):
        return None
    return predicted / measured - 1.0


def _group_key(row: dict[str, Any], gpu: str) -> tuple:
    engine = row.get("engine") or {}
    return (row["model"], tuple(row.get("overrides") or ()), row.get("layers"), row["input_len"],
            row["output_len"], row["max_num_seqs"], gpu, serving_layout(row), serving_dtype(row),
            engine.get("max_num_batched_tokens"))


def followed(row: dict[str, Any]) -> bool | None:
    """Whether the engine kept up with a row's rate (None when the row lacks the rates)."""
    served, offered = row.get("completion_rate"), row.get("achieved_rate")
    if served is None or offered is None:
        return None
    return served >= (1.0 - SATURATION_TOLERANCE) * offered


def saturation(rows: list[dict[str, Any]], predicted_rate: float | None) -> dict[str, Any]:
    """The measured saturation of one group of rows (differing only in rate) beside the
    predicted one (req/s)."""
    rows = sorted(rows, key=lambda r: r["rate"])
    flags = [(r["rate"], followed(r), r.get("completion_rate")) for r in rows]
    kept = [rate for rate, ok, _ in flags if ok]
    lost = [(rate, served) for rate, ok, served in flags if ok is False]
    below = max(kept) if kept else None
    above = min(rate for rate, _ in lost) if lost else None
    capacity = sum(s for _, s in lost) / len(lost) if lost else None
    inside = None
    if predicted_rate is not None and (below is not None or above is not None):
        inside = (below is None or predicted_rate >= below) and (above is None or predicted_rate <= above)
    return {
        "rates": [r["rate"] for r in rows],
        "followed_up_to": below, "saturated_from": above, "spans": below is not None and above is not None,
        "measured_capacity_rps": capacity, "predicted_saturation_rps": predicted_rate,
        "predicted_in_bracket": inside,
        "capacity_rel_error": (_rel(predicted_rate, capacity) if predicted_rate is not None else None),
    }


def _canonical(model: str) -> str:
    from perfmodel.specs.model import load_model

    try:
        return load_model(model).name
    except PerfModelError:
        return model.lower()


def _source(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    from perfmodel.paths import ROOT

    ok = [r for r in rows if r.get("status") == "ok"]
    first = ok[0] if ok else {}
    dates = sorted(str(r.get("date", ""))[:10] for r in ok if r.get("date"))
    try:
        shown = str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {
        "mode": "replay", "results_file": shown, "gpu": first.get("gpu_name", ""),
        "driver": first.get("driver", ""), "torch": first.get("torch", ""), "vllm": first.get("vllm", ""),
        "git_commit": first.get("git_commit", ""),
        "date": (dates[0] if dates[0] == dates[-1] else f"{dates[0]}..{dates[-1]}") if dates else "",
        "predicted_by": f"perfmodel.planning.predict_serving (engine profile {ENGINE})",
    }


#: Fields an ok serving row must hold as numbers: the nominal rate (req/s) and the integers of
#: the run (tokens, sequences, requests).
_ROW_NUMBERS = {"rate": False, "input_len": True, "output_len": True, "max_num_seqs": True,
                "num_requests": True}
#: Measured fields that are numbers when present (ms, req/s).
_ROW_MEASURED = (*(field for field, _, _ in LATENCY.values()), "achieved_rate", "completion_rate")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_row(row: dict[str, Any]) -> None:
    """Refuse (:class:`perfmodel.errors.InputError`, one line) an ok serving row that lacks the
    fields a replay reads, or holds them in another form."""
    name = row.get("point_id") or "without a point_id"
    if not isinstance(row.get("model"), str) or not row["model"]:
        raise InputError(f"malformed serving row {name}: no 'model'")
    if not isinstance(row.get("point_id"), str):
        raise InputError(f"malformed serving row of {row['model']}: no 'point_id'")
    for field, whole in _ROW_NUMBERS.items():
        value = row.get(field)
        if not _number(value) or (whole and not float(value).is_integer()):
            raise InputError(f"malformed serving row {name}: '{field}' must be a "
                             f"{'whole ' if whole else ''}number, got {value!r}")
    for field in _ROW_MEASURED:
        value = row.get(field)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise InputError(f"malformed serving row {name}: '{field}' must be a number, got {value!r}")
    engine = row.get("engine") or {}
    if not isinstance(engine, dict):
        raise InputError(f"malformed serving row {name}: 'engine' must be a mapping")
    for field, value in [*((f"engine.{k}", engine.get(k)) for k in ("tp", "pp", "dp")), ("seed", row.get("seed"))]:
        if value is not None and not (_number(value) and float(value).is_integer()):
            raise InputError(f"malformed serving row {name}: '{field}' must be a whole number, got {value!r}")
    overrides = row.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise InputError(f"malformed serving row {name}: 'overrides' must be a list of KEY=VALUE strings")
    if row.get("gpu_name") is not None and not isinstance(row["gpu_name"], str):
        raise InputError(f"malformed serving row {name}: 'gpu_name' must be a string")


def compare_serving(rows: Iterable[dict[str, Any]], *, gpu: str = "h200-sxm",
                    model: str = "all") -> dict[str, Any]:
    """Predicted vs measured for every ok serving row (of ``model``, or all): ``points`` (one
    per row and metric), ``rates`` (one per row), ``mape`` (per metric), ``saturation`` (per
    group of rows differing only in rate)."""
    from perfmodel.measuring.compare import layout_label

    wanted = None if model == "all" else _canonical(model)
    points: list[dict[str, Any]] = []
    rates: list[dict[str, Any]] = []
    groups: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("mode") != "serving":
            continue
        check_row(row)
        if wanted is not None and _canonical(row["model"]) != wanted:
            continue
        spec_gpu = gpu_spec_name(row.get("gpu_name"), gpu)
        key = dict(model=row["model"], input_len=row["input_len"], output_len=row["output_len"],
                   max_num_seqs=row["max_num_seqs"], rate=row["rate"], gpu=spec_gpu,
                   layout=layout_label(row), point_id=row["point_id"])
        try:
            pred = predict_row(row, spec_gpu)
        except PerfModelError as exc:
            rates.append({**key, "error": str(exc)})
            continue
        for metric, (field, predicted, pct) in LATENCY.items():
            measured = row.get(field)
            value = float(pred[predicted][pct])
            measured_s = None if measured is None else measured * 1e-3
            points.append({**key, "metric": metric, "measured": measured_s, "predicted": value,
                           "rel_error": _rel(value, measured_s)})
        served, served_pred = _served(row), predicted_served(row, pred)
        points.append({**key, "metric": "served_tok_s", "measured": served, "predicted": served_pred,
                       "rel_error": _rel(served_pred, served)})
        rates.append({**key, "achieved_rate": row.get("achieved_rate"), "completion_rate": row.get("completion_rate"),
                      "completed": row.get("completed"), "num_requests": row.get("num_requests"),
                      "followed": followed(row), "predicted_overloaded": bool(pred.get("overloaded")),
                      "predicted_saturation_rps": pred.get("saturation_rate_per_replica")})
        group = groups.setdefault(_group_key(row, spec_gpu), {"rows": [], "key": key, "sat": None})
        group["rows"].append(row)
        group["sat"] = pred.get("saturation_rate_per_replica")
    if wanted is not None and not rates:
        raise InputError(f"no serving measurements of {wanted}")
    mape = []
    for metric in METRICS:
        errs = [abs(p["rel_error"]) * 100 for p in points if p["metric"] == metric and p["rel_error"] is not None]
        left_out = sum(1 for p in points if p["metric"] == metric and p["rel_error"] is None)
        mape.append({"metric": metric, "mape": sum(errs) / len(errs) if errs else None,
                     "max": max(errs) if errs else None, "count": len(errs), "left_out": left_out})
    sat = []
    for group in groups.values():
        k = group["key"]
        sat.append({"model": k["model"], "input_len": k["input_len"], "output_len": k["output_len"],
                    "max_num_seqs": k["max_num_seqs"], "gpu": k["gpu"], "layout": k["layout"],
                    **saturation(group["rows"], group["sat"])})
    return {"points": points, "rates": rates, "mape": mape, "saturation": sat}


def run_serving_validation(model: str, *, gpu: str = "h200-sxm", results: Path | None = None,
                           out_dir: Path | None = None) -> dict[str, Any]:
    """Replay the serving rows of ``model`` (or ``all``) against the planning's predictions;
    writes ``summary.md`` into ``out_dir`` (default ``reports/validate/serving-<model>``)."""
    from perfmodel.measuring.results import read_rows
    from perfmodel.paths import ROOT
    from perfmodel.specs.hardware import load_gpu

    gpu = load_gpu(gpu).name
    path = Path(results) if results is not None else results_path(gpu)
    if path.is_dir():
        raise InputError(f"--results {path} is a folder; give the serving rows' JSONL file")
    if not path.exists():
        raise InputError(f"no serving measurements at {path} (measure them with `perfmodel measure MODEL "
                         "--backend vllm --serving --rate ...`, or give --results FILE)")
    rows = [r for r in read_rows(path).rows if r.get("mode") == "serving"]
    if not any(r.get("status") == "ok" for r in rows):
        raise InputError(f"no measured serving rows in {path}")
    result = {"source": _source(rows, path), **compare_serving(rows, gpu=gpu, model=model)}
    out_dir = Path(out_dir) if out_dir is not None else ROOT / "reports" / "validate" / f"serving-{model}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / "summary.md"
        md.write_text(summary_markdown(result))
    except OSError as exc:
        raise InputError(f"cannot write the report into {out_dir}: {exc.strerror or exc}") from None
    result["summary_md"] = str(md)
    return result


# --------------------------------------------------------------------------- output


def _fmt(metric: str, value: float | None) -> str:
    from perfmodel.report_terminal import format_time

    if value is None:
        return "–"
    if not math.isfinite(value):
        return "∞ (overloaded)"
    return f"{value:,.0f} tok/s" if metric == "served_tok_s" else format_time(value)


def _err(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _saturation_line(s: dict[str, Any]) -> str:
    head = f"{s['model']} S={s['input_len']} O={s['output_len']} seqs≤{s['max_num_seqs']} {s['gpu']} {s['layout']}"
    if s["followed_up_to"] is None and s["saturated_from"] is None:
        measured = "not known (rows lack their rates)"
    elif s["saturated_from"] is None:
        measured = f"above {_rate(s['followed_up_to'])} req/s (every rate followed)"
    elif s["followed_up_to"] is None:
        measured = f"below {_rate(s['saturated_from'])} req/s (no rate followed)"
    else:
        measured = f"between {_rate(s['followed_up_to'])} and {_rate(s['saturated_from'])} req/s"
    cap = s["measured_capacity_rps"]
    measured += f", capacity {_rate(cap)} req/s" if cap is not None else ""
    predicted = f"predicted {_rate(s['predicted_saturation_rps'])} req/s"
    if s["capacity_rel_error"] is not None:
        predicted += f" ({_err(s['capacity_rel_error'])} vs the measured capacity)"
    if s["predicted_in_bracket"] is not None:
        predicted += ", inside the measured bracket" if s["predicted_in_bracket"] else ", outside the measured bracket"
    return f"{head}: measured saturation {measured}; {predicted}"


def summary_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: source, predicted vs measured per rate and metric, MAPE, saturation."""
    src = result["source"]
    lines = [
        "# perfmodel serving validation",
        "",
        f"**REPLAY** of `{src['results_file']}`: {src['gpu']}, driver {src['driver']}, torch {src['torch']}, "
        f"vLLM {src['vllm']}, measured {src['date']} (commit {src['git_commit']}); predicted by {src['predicted_by']}.",
        "",
        "| model | S/O | seqs | rate req/s | metric | measured | predicted | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        lines.append(f"| {p['model']} | {p['input_len']}/{p['output_len']} | {p['max_num_seqs']} | {_rate(p['rate'])} "
                     f"| {p['metric']} | {_fmt(p['metric'], p['measured'])} | {_fmt(p['metric'], p['predicted'])} "
                     f"| {_err(p['rel_error'])} |")
    failed = [r for r in result["rates"] if r.get("error")]
    if failed:
        lines += [""] + [f"- not predicted: {r['model']} at {_rate(r['rate'])} req/s: {r['error']}" for r in failed]
    lines += ["", "| metric | MAPE % | max % | n | left out (overloaded) |", "|---|---|---|---|---|"]
    for m in result["mape"]:
        lines.append(f"| {m['metric']} | {_pct(m['mape'])} | {_pct(m['max'])} | {m['count']} | {m['left_out']} |")
    lines += ["", "## Saturation", ""] + [f"- {_saturation_line(s)}" for s in result["saturation"]]
    return "\n".join(lines) + "\n"


def print_serving_validation(result: dict[str, Any], console) -> None:
    """Terminal tables: predicted vs measured per rate and metric, MAPE, saturation."""
    from rich.table import Table
    from rich.text import Text

    src = result["source"]
    console.print(f"[bold]REPLAY of serving measurements[/bold]: {src['results_file']} · {src['gpu']} · "
                  f"driver {src['driver']} · torch {src['torch']} · vLLM {src['vllm']} · measured "
                  f"{src['date']} (commit {src['git_commit']}) · predicted by {src['predicted_by']}")
    table = Table(title="serving: predicted vs measured", header_style="bold")
    for col in ("model", "S/O", "seqs", "rate", "metric", "measured", "predicted", "error"):
        table.add_column(col, justify="left" if col in ("model", "metric") else "right")
    for p in result["points"]:
        table.add_row(Text(str(p["model"])), f"{p['input_len']}/{p['output_len']}", str(p["max_num_seqs"]),
                      _rate(p["rate"]), p["metric"], _fmt(p["metric"], p["measured"]),
                      _fmt(p["metric"], p["predicted"]), _err(p["rel_error"]))
    console.print(table)
    for r in result["rates"]:
        if r.get("error"):
            console.print(f"not predicted: {r['model']} at {_rate(r['rate'])} req/s: {r['error']}", markup=False)
    mape = Table(title="MAPE (%)", header_style="bold")
    for col in ("metric", "mean", "max", "n", "left out"):
        mape.add_column(col)
    for m in result["mape"]:
        mape.add_row(m["metric"], _pct(m["mape"]), _pct(m["max"]), str(m["count"]), str(m["left_out"]))
    console.print(mape)
    for s in result["saturation"]:
        console.print(_saturation_line(s), markup=False, highlight=False)
    console.print(f"summary: {result['summary_md']}")
