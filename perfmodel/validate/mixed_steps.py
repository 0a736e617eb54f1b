"""The model's engine step against vLLM's steps that add a prompt to running decodes, profiled.

``scripts/profile_mixed_steps.py`` builds, on a synchronous vLLM engine, the step that adds one
prompt of P tokens (1,024) to D running decodes, D = 0 (the prompt alone), 16, 64 and 128, and
records the median wall time of its repetitions, the GPU kernels' busy time of one profiled
step, and the host's probe: ``validate/results/<gpu>-vllm-mixed-steps.jsonl``. The model's
counterpart is the serving planner's step (:meth:`perfmodel.planning.steptime.StepTimes.step_parts`):
the larger of its GPU time (the pass over D + P tokens, the decodes' attention over their
context, the prompt's) and its host time (a launched step's floor for D + 1 sequences, and what
a prompt beside decodes adds, :func:`perfmodel.prediction.split_host`), with the step tables
built for the row's engine (its token budget, sequence limit, longest context and largest
CUDA graph) at the host speed its probes read. The decodes' context is the row's prompt
context plus its timed repetitions (each advances a decode by two tokens: one decode-only
step, one mixed step), a few tokens that move no step measurably.

Which rows a fit read: the MLA models' rows the profile's ``mla_split_layer_s`` was fitted on
(its ``fit.mla_split.pairs``, or its anchor's, :mod:`perfmodel.calibration.fit_mla_split`), and
the training models' GPU-bound rows its launched step's serial host time was
(``fit.launch_serial`` and ``fit.launch_serial_seq``, :mod:`perfmodel.calibration.fit_launch_serial`);
every other row is held out. A row whose prompt alone kept the GPU busy for more than
:data:`perfmodel.measuring.mixed_steps.HOST_BOUND` of its wall time is GPU-bound (the
model's GPU terms set it), the rest host-bound (its launch floor sets it).

``perfmodel validate all --mixed-steps --gpu GPU`` writes the comparison to
``validate/results/<gpu>-vllm-mixed-steps-validation.md`` (:func:`write_mixed_steps_validation`).
Times in ms.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from perfmodel.errors import InputError


def step_rows(gpu: str) -> tuple[Path, list[dict[str, Any]]]:
    """A GPU's profiled mixed steps (the file and its rows); one clear line where none."""
    from perfmodel.measuring.results import read_rows
    from perfmodel.paths import mixed_steps_file, results_file

    path = mixed_steps_file(results_file("vllm", gpu))
    if not path.is_file():
        raise InputError(f"no profiled mixed steps for {gpu} ({path.name}: scripts/profile_mixed_steps.py)")
    rows = [r for r in read_rows(path, unique=False, warn=False).rows if r.get("mixed_median_ms")]
    if not rows:
        raise InputError(f"{path.name} holds no profiled step")
    return path, rows


def _host_record(profile, name: str) -> dict[str, Any]:
    """The profile's ``fit.<name>`` record, else its anchor's (an anchored profile carries the
    anchor's host terms); {} where neither has one."""
    import yaml

    from perfmodel.paths import ROOT

    fit = profile.fit or {}
    record = fit.get(name)
    if record is None and (fit.get("anchor") or {}).get("profile"):
        anchor = yaml.safe_load((ROOT / fit["anchor"]["profile"]).read_text()) or {}
        record = (anchor.get("fit") or {}).get(name)
    return record or {}


def fitted_groups(profile) -> set[tuple[str, str]]:
    """(file, model with its overrides) of the rows the profile's MLA term was fitted on
    (``fit.mla_split.pairs``, its own or its anchor's)."""
    groups = set()
    for pair in _host_record(profile, "mla_split").get("pairs", []):
        file, rest = pair["row"].split(": ", 1)
        groups.add((file, rest.rsplit(" D=", 1)[0]))
    return groups


def fitted_prompts(profile) -> set[tuple[str, str, str, int]]:
    """(file, model with its overrides, scheme, D) of the rows the profile's launched-step serial
    time was fitted on: the prompts alone (D = 0) of ``launch_serial_s`` (``fit.launch_serial.rows``)
    and the prompts beside D decodes of ``launch_serial_seq_s`` (``fit.launch_serial_seq.rows``),
    its own or its anchor's."""
    rows = set()
    for name in ("launch_serial", "launch_serial_seq"):
        for entry in _host_record(profile, name).get("rows", []):
            file, rest = entry["row"].split(": ", 1)
            rest, _, decodes = rest.partition(" D=")
            group, scheme = rest.rsplit(" ", 1)
            rows.add((file, group, scheme, int(decodes or 0)))
    return rows


def predicted_ms(row: dict[str, Any], gpu: str, profile) -> dict[str, Any]:
    """The model's step for one profiled row: its time, its GPU and host parts (ms), and whether
    the engine launched it (more tokens than its largest CUDA graph); of the GPU part, the
    kernels' time and the host's work they do not overlap in a launched step (``serial_ms``)."""
    from statistics import fmean

    from perfmodel.measuring.compare import row_routing_ids
    from perfmodel.planning.steptime import build_step_times
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    settings = row.get("settings") or {}
    engine = row.get("engine") or {}
    probes = row.get("host_probe_ms") or []
    steps = build_step_times(
        load_model(row["model"], list(row.get("overrides") or [])), load_gpu(gpu), profile,
        row.get("quantization") or "none", Layout(1, 1, 1),
        max_tokens=int(settings.get("max_num_batched_tokens") or 16384),
        max_seqs=int(settings.get("max_num_seqs") or 256),
        max_context=int(engine.get("max_model_len") or row["prompt"] + row["context"]),
        host_probe_ms=fmean(probes) if probes and profile.latency.host_probe_ref_ms is not None else None,
        graph_tokens=max(settings.get("cudagraph_capture_sizes") or [0]) or None,
        routing_ids=row_routing_ids(row))
    decodes, prompt = int(row["decodes"]), int(row["prompt"])
    context = float(row["context"]) + len(row.get("mixed_ms") or [])
    gpu_s, host_s, launched = steps.step_parts(decodes, context, prompt, prompt * steps.prefill_rate(prompt))
    serial_s = float(steps.serial(decodes + 1)) if launched else 0.0
    return {"ms": 1e3 * max(gpu_s, host_s), "gpu_ms": 1e3 * gpu_s, "host_ms": 1e3 * host_s, "launched": launched,
            "kernels_ms": 1e3 * (gpu_s - serial_s), "serial_ms": 1e3 * serial_s}


def compare_mixed_steps(gpu: str) -> dict[str, Any]:
    """Every profiled step of a GPU against the model's (see the module docstring)."""
    from perfmodel.measuring.mixed_steps import busy_ms, group_name, host_bound
    from perfmodel.profile import load_profile

    path, rows = step_rows(gpu)
    profile = load_profile("vllm", gpu)
    fitted, prompts = fitted_groups(profile), fitted_prompts(profile)
    alone = {}
    for row in rows:  # the prompt alone of each group sets whether the group is host- or GPU-bound
        if int(row["decodes"]) == 0:
            alone[(group_name(row), row.get("quantization") or "none")] = host_bound(row)
    points = []
    for row in rows:
        group = group_name(row)
        quant = row.get("quantization") or "none"
        model = predicted_ms(row, gpu, profile)
        points.append({"group": group, "quantization": quant, "decodes": int(row["decodes"]),
                       "measured_ms": row["mixed_median_ms"],
                       "busy_ms": busy_ms(row),
                       "host_probe_ms": row.get("host_probe_ms"), "predicted_ms": model["ms"],
                       "gpu_ms": model["gpu_ms"], "host_ms": model["host_ms"], "launched": bool(model["launched"]),
                       "kernels_ms": model["kernels_ms"], "serial_ms": model["serial_ms"],
                       "host_bound": alone.get((group, quant)),
                       "held_out": ((path.name, group) not in fitted
                                    and (path.name, group, quant, int(row["decodes"])) not in prompts),
                       "ratio": model["ms"] / row["mixed_median_ms"]})
    summary = {}
    for label, keep in (("host-bound", lambda p: p["host_bound"] is True),
                        ("GPU-bound", lambda p: p["host_bound"] is False)):
        for cut in (False, True):
            part = [p for p in points if p["held_out"] and keep(p) and (" " in p["group"]) == cut]
            if part:
                summary[f"{label}, {'cut to fewer layers' if cut else 'as built'}"] = {
                    "points": len(part), "mape_pct": 100 * statistics.fmean(abs(p["ratio"] - 1) for p in part),
                    "median_ratio": statistics.median(p["ratio"] for p in part)}
    gpu_side = {}  # the model's GPU time against the profiled GPU busy time, where the GPU set the step
    for cut in (False, True):
        part = [p for p in points if p["held_out"] and p["host_bound"] is False and p["busy_ms"]
                and (" " in p["group"]) == cut]
        if part:
            gpu_side["cut to fewer layers" if cut else "as built"] = {
                "points": len(part),
                "mape_pct": 100 * statistics.fmean(abs(p["kernels_ms"] / p["busy_ms"] - 1) for p in part),
                "median_ratio": statistics.median(p["kernels_ms"] / p["busy_ms"] for p in part),
                "median_gap_ms": statistics.median(p["measured_ms"] - p["busy_ms"] for p in part),
                "median_serial_ms": statistics.median(p["serial_ms"] for p in part)}
    held = [abs(p["ratio"] - 1) for p in points if p["held_out"]]
    first = rows[0].get("provenance") or {}
    return {"gpu": gpu, "file": path.name, "profile": profile.name,
            "source": {k: first.get(k) for k in ("gpu_name", "vllm", "torch", "driver")},
            "dates": sorted({str((r.get("provenance") or {}).get("date", ""))[:10] for r in rows}),
            "commits": sorted({str((r.get("provenance") or {}).get("git_commit", "")) for r in rows}),
            "held_out_mape_pct": 100 * statistics.fmean(held) if held else None, "held_out_points": len(held),
            "summary": summary, "gpu_side": gpu_side, "points": points}


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown page."""
    src = result["source"]
    lines = [f"# A prompt's engine step beside running decodes against the model: {result['gpu']}", "",
             f"**REPLAY** of `validate/results/{result['file']}`: {src['gpu_name']}, driver {src['driver']}, "
             f"vLLM {src['vllm']}, torch {src['torch']}, measured {', '.join(result['dates'])} (commit "
             f"{', '.join(result['commits'])}); predicted with `{result['profile']}` (perfmodel.validate.mixed_steps).",
             "",
             "Each row: the median wall time of the synchronous engine's step that adds a prompt to D running "
             "decodes (D = 0: the prompt alone), against the serving planner's step at the row's host speed, the "
             "larger of its GPU time and its host time (a launched step's floor and what a prompt beside decodes "
             "adds). Held out: every row but those the profile's MLA term was fitted on (`fit.mla_split`) and the "
             "rows its launched step's serial host time was (`fit.launch_serial`, `fit.launch_serial_seq`: the "
             "training models' GPU-bound rows). "
             "Host-bound: the prompt alone kept the GPU busy for at most 60% of its step.", "",
             (f"Held-out MAPE: {result['held_out_mape_pct']:.1f}% over {result['held_out_points']} steps."
              if result["held_out_mape_pct"] is not None else "No held-out step."), "",
             "| held-out steps | points | MAPE | median model/measured |", "|---|---|---|---|"]
    for label, s in result["summary"].items():
        lines.append(f"| {label} | {s['points']} | {s['mape_pct']:.1f}% | {s['median_ratio']:.2f} |")
    if result.get("gpu_side"):
        lines += ["", "The GPU-bound steps' kernels alone: the model's kernel time against the profiled step's GPU "
                  "busy time (the kernels' union), and what the wall time adds to that busy time (the host's part of "
                  "the step that the GPU does not hide: its scheduling, inputs, first launches and outputs) beside "
                  "the model's (`latency.launch_serial_s` and D·`latency.launch_serial_seq_s` at the row's host "
                  "speed).", "",
                  "| held-out GPU-bound steps | points | kernel MAPE | median model kernels/busy | "
                  "median wall − busy | median model's part |", "|---|---|---|---|---|---|"]
        for label, s in result["gpu_side"].items():
            lines.append(f"| {label} | {s['points']} | {s['mape_pct']:.1f}% | {s['median_ratio']:.2f} | "
                         f"{s['median_gap_ms']:.1f} ms | {s['median_serial_ms']:.1f} ms |")
    lines += ["", "| model | scheme | D | measured ms | GPU busy ms | host probe ms | model ms (GPU / host) | "
              "model/measured | bound | held out |", "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(x: float | None, digits: int = 1) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    for p in sorted(result["points"], key=lambda p: (p["group"], p["quantization"], p["decodes"])):
        probes = p["host_probe_ms"] or []
        lines.append(
            f"| {p['group']} | {p['quantization']} | {p['decodes']} | {p['measured_ms']:.2f} | {fmt(p['busy_ms'])} | "
            f"{'–' if not probes else f'{min(probes):.1f}–{max(probes):.1f}'} | {p['predicted_ms']:.2f} "
            f"({p['gpu_ms']:.1f} / {p['host_ms']:.1f}) | {p['ratio']:.2f} | "
            f"{'–' if p['host_bound'] is None else 'host' if p['host_bound'] else 'GPU'} | "
            f"{'yes' if p['held_out'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_mixed_steps_validation(gpu: str, out: Path | None = None) -> dict[str, Any]:
    """:func:`compare_mixed_steps` of a GPU, written as markdown to ``out`` (default
    ``validate/results/<gpu>-vllm-mixed-steps-validation.md``); the result, with its ``path``."""
    from perfmodel.validate.report_pages import write_gpu_page

    return write_gpu_page(gpu, out, compare_mixed_steps, markdown, "mixed-steps")
