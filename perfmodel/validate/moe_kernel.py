"""The model's fused-MoE ops against vLLM's fused-MoE kernel timed alone, pass by pass.

``scripts/bench_moe_tiles.py`` times vLLM's Triton fused-MoE op (the inputs' quantization under a
W8A8 scheme, the expert alignment, both GEMMs, the activation and the top-k sum) on expert shapes
at passes of T tokens, at the tile table vLLM ships for the GPU and at its default tile rule:
``validate/results/<gpu>-vllm-moe-kernel.jsonl``. The model's counterpart of one such call is the
per-layer time of the MoE block's ops that kernel runs, predicted for one sequence's prefill pass
of T tokens with the GPU's own vllm profile
(:func:`perfmodel.measuring.kernel_timings.kernel_call_seconds`: the dispatch, the inputs'
quantization, the routed experts and their activation; not the router, not shared experts; their
GPU time, with no host and no CUDA-graph padding, as the kernel was timed, replayed from a graph).
The expert shape is set on a zoo model of the same hidden size by ``--set num_experts, ffn,
top_k``; the zoo models whose experts have the shape are named beside it.

A row at the default rule is predicted at the default rule (``moe_tables`` false), a row at the
shipped table with the tables the profile costs. A profile's timing of a table
(``options.moe_table_extra``: every table timed, :func:`perfmodel.calibration.fit_moe_tables.fit_table_extra`)
is the difference of these very rows, so the table rows of a shape it takes are not held out:
the held-out rows are every default-rule row, and the table rows of any shape it does not take.
The default-rule rows the cost of experts larger than the L2 cache is fitted on
(``options.moe_l2_spill``, :func:`perfmodel.calibration.fit_moe_tables.fit_l2_spill`: a training
model's own shape) are counted apart, as training rows.

``perfmodel validate all --moe-kernel --gpu GPU`` writes the comparison to
``validate/results/<gpu>-vllm-moe-kernel-validation.md`` (:func:`write_moe_kernel_validation`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from perfmodel.errors import InputError
from perfmodel.measuring.kernel_timings import BASES, kernel_call_seconds

#: How a shape's held-out rows read in the page: all of them, some, none.
HELD_OUT_WORDS = {True: "yes", "partly": "partly", False: "no"}

#: Passes up to this many tokens are decode-sized (the engine's CUDA graphs hold them).
DECODE_TOKENS = 256


def kernel_rows(gpu: str) -> tuple[Path, list[dict[str, Any]]]:
    """The kernel timings of a GPU (the file and its timed rows); one clear line where none."""
    from perfmodel.measuring.kernel_timings import read_kernel_timings
    from perfmodel.paths import moe_kernel_file, results_file

    path = moe_kernel_file(results_file("vllm", gpu))
    if not path.is_file():
        raise InputError(f"no fused-MoE kernel timings for {gpu} ({path.name}: scripts/bench_moe_tiles.py)")
    return path, read_kernel_timings(path)


def zoo_models(experts: int, width: int, hidden: int, top_k: int) -> list[str]:
    """Zoo models whose routed experts have this shape on one GPU at some tensor-parallel degree
    (``name`` at tp 1, ``name (tp N)`` beyond)."""
    from perfmodel.moe_tables import zoo_experts

    return [name if tp == 1 else f"{name} (tp {tp})"
            for name, tp in zoo_experts(experts, width, hidden=hidden, top_k=top_k)]


def predicted_us(row: dict[str, Any], gpu: str, profile=None) -> float | None:
    """The model's time of one fused-MoE call of ``row``'s shape, pass and tile choice, µs per
    layer (:func:`perfmodel.measuring.kernel_timings.kernel_call_seconds`), with ``profile``
    (default: the GPU's vllm profile); None for a hidden size no base model has."""
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu

    name = load_gpu(gpu).name
    seconds = kernel_call_seconds(row, name, profile if profile is not None else load_profile("vllm", name))
    return None if seconds is None else 1e6 * seconds


def compare_kernel(gpu: str) -> dict[str, Any]:
    """Every timed row beside the model: per row the shape, pass, tile choice, measured and
    predicted µs, their ratio and whether it is held out; per shape and tile choice the held-out
    rows' MAPE, median and range of predicted/measured, at decode-sized passes and above; and
    the held-out MAPE over all."""
    from perfmodel.profile import load_profile

    path, rows = kernel_rows(gpu)
    profile = load_profile("vllm", gpu)
    taken = [(t.experts, t.width, t.scheme, t.hidden, t.top_k) for t in (profile.options.moe_table_extra or ())]

    def timed(row: dict[str, Any]) -> bool:  # the profile's extra time is the difference of this shape's rows
        return any((e, w, s) == (row["experts"], row["width"], row["scheme"]) and h in (None, row["hidden"])
                   and k in (None, row["top_k"]) for e, w, s, h, k in taken)

    spill = (profile.fit or {}).get("moe_l2_spill") or {}

    def spill_fitted(row: dict[str, Any]) -> bool:  # a row the L2 term was fitted on
        shape = f"E={row['experts']} N={row['width']} (hidden {row['hidden']}, top-{row['top_k']})"
        return (bool(spill) and shape in spill["shapes"] and row["tiles"] == spill["tiles"]
                and row["scheme"] == spill["scheme"] and row["tokens"] >= spill["min_tokens"])

    points = []
    for row in rows:
        us = predicted_us(row, gpu, profile)
        if us is None:
            continue
        points.append({"experts": row["experts"], "width": row["width"], "hidden": row["hidden"],
                       "top_k": row["top_k"], "scheme": row["scheme"], "tokens": row["tokens"],
                       "tiles": row["tiles"], "measured_us": row["us"], "predicted_us": us,
                       "ratio": us / row["us"],
                       "held_out": not spill_fitted(row) if row["tiles"] == "default" else not timed(row)})
    if not points:
        raise InputError(f"{path.name}: no timed row of a hidden size the model sets shapes on "
                         f"({', '.join(map(str, BASES))})")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault((point["experts"], point["width"], point["hidden"], point["top_k"], point["scheme"],
                           point["tiles"]), []).append(point)
    shapes = []
    for (experts, width, hidden, top_k, scheme, tiles), part in groups.items():
        summary = {"experts": experts, "width": width, "hidden": hidden, "top_k": top_k, "scheme": scheme,
                   "tiles": tiles, "models": zoo_models(experts, width, hidden, top_k),
                   "held_out": (True if all(p["held_out"] for p in part)
                                else "partly" if any(p["held_out"] for p in part) else False),
                   "passes": len(part)}
        for label, sub in (("decode", [p for p in part if p["tokens"] <= DECODE_TOKENS]),
                           ("prefill", [p for p in part if p["tokens"] > DECODE_TOKENS])):
            ratios = [p["ratio"] for p in sub]
            summary[label] = ({"mape_pct": 100 * statistics.fmean(abs(r - 1) for r in ratios),
                               "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
                               "max_ratio": max(ratios)} if ratios else None)
        shapes.append(summary)
    held = [abs(p["ratio"] - 1) for p in points if p["held_out"]]
    return {"gpu": gpu, "file": path.name, "source": {k: rows[0].get(k) for k in
                                                       ("gpu_name", "vllm", "torch", "triton", "driver", "date",
                                                        "git_commit")},
            "profile": profile.name, "held_out_mape_pct": 100 * statistics.fmean(held) if held else None,
            "held_out_points": len(held), "shapes": shapes, "points": points}


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown page."""
    src = result["source"]
    lines = [f"# The fused-MoE ops against vLLM's kernel timed alone: {result['gpu']}", "",
             f"**REPLAY** of `validate/results/{result['file']}`: {src['gpu_name']}, driver {src['driver']}, "
             f"vLLM {src['vllm']}, torch {src['torch']}, Triton {src['triton']}, measured {src['date']} "
             f"(commit {src['git_commit']}); predicted with `{result['profile']}` (perfmodel.validate.moe_kernel).",
             "",
             "Per expert shape and tile choice, the model's time of one call (the dispatch, the inputs' "
             "quantization, the routed experts and their activation, per layer) over the kernel's, at passes "
             f"of up to {DECODE_TOKENS} tokens (decode-sized) and above. Held out: every row at vLLM's default "
             "rule but those the cost of experts larger than the L2 cache is fitted on (`fit.moe_l2_spill`), "
             "and the shipped-table rows of the shapes whose table the profile does not time "
             "(`options.moe_table_extra` is the difference of the others' rows).", "",
             f"Held-out MAPE: {result['held_out_mape_pct']:.1f}% over {result['held_out_points']} passes.", "",
             "| experts × width, hidden, top-k | scheme | tiles | zoo models | held out | decode-sized: MAPE, "
             "median (range) of model/kernel | larger: MAPE, median (range) |",
             "|---|---|---|---|---|---|---|"]

    def cell(part: dict[str, Any] | None) -> str:
        if part is None:
            return "–"
        return (f"{part['mape_pct']:.1f}%, {part['median_ratio']:.2f} "
                f"({part['min_ratio']:.2f}–{part['max_ratio']:.2f})")

    for s in sorted(result["shapes"], key=lambda s: (s["hidden"], s["experts"], s["width"], s["scheme"], s["tiles"])):
        lines.append(f"| {s['experts']} × {s['width']}, {s['hidden']}, {s['top_k']} | {s['scheme']} | {s['tiles']} | "
                     f"{', '.join(s['models']) or '–'} | {HELD_OUT_WORDS[s['held_out']]} | {cell(s['decode'])} | "
                     f"{cell(s['prefill'])} |")
    return "\n".join(lines) + "\n"


def write_moe_kernel_validation(gpu: str, out: Path | None = None) -> dict[str, Any]:
    """:func:`compare_kernel` of a GPU, written as markdown to ``out`` (default
    ``validate/results/<gpu>-vllm-moe-kernel-validation.md``); the result, with its ``path``."""
    from perfmodel.validate.report_pages import write_gpu_page

    return write_gpu_page(gpu, out, compare_kernel, markdown, "moe-kernel")
