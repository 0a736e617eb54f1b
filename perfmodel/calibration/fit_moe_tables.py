"""Fitting the cost of a tuned fused-MoE tile table made for larger passes (``options.moe_off_table_memory``).

vLLM's Triton fused-MoE kernel takes its tiles from a tuned table for the expert shape and GPU,
the entry nearest the pass's tokens; a few tables start at hundreds of tokens
(``specs/vllm-moe-tables.yaml``), so a decode step runs tiles tuned for passes many times its
size (:func:`perfmodel.ops.moe.off_table_scale`). The factor on the kernel's memory time comes
from an A/B on one GPU: the same points, profiled, once at the table vLLM ships and once at
vLLM's default rule (``perfmodel measure --moe-config-dir``, a folder written by
``scripts/moe_tile_file.py --default``; those rows are kept apart, in
``validate/results/<gpu>-vllm-tiles.jsonl``). Per pair of points, the ratio of the expert
kernels' time in one decode step (``decode_profile.split_ms.expert_gemm``); the factor is
their geometric mean. The rows of both sides are the points the factor is fitted on. The schemes
the pairs' experts ran at are recorded with it (``options.moe_off_table_schemes``): only those
schemes' tables take the factor. The H100's bf16 table for 32 experts of width 1,792 (from 512
tokens) ran a decode step within 3% of the model without it, where the fp8 table the factor was
measured on slowed the experts' kernels 1.4-fold: the factor is one kind of table's, not every
listed table's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from perfmodel.calibration.fit import _sig, one_gpu_rows

#: The pairs' key: what must match between the table's row and the default rule's.
PAIR_KEYS = ("model", "batch", "input_len", "output_len")


def tiles_file(results: Path) -> Path:
    """The companion file of a results file holding rows measured at a folder of tile files of
    their own (``--moe-config-dir``: vLLM's default rule, for the A/B)."""
    results = Path(results)
    return results.with_name(f"{results.stem}-tiles{results.suffix}")


def _expert_ms(row: dict[str, Any]) -> float | None:
    value = ((row.get("decode_profile") or {}).get("split_ms") or {}).get("expert_gemm")
    return float(value) if value else None


def _key(row: dict[str, Any]) -> tuple:
    from perfmodel.measuring.compare import row_quant, row_routing

    return (*(row[k] for k in PAIR_KEYS), row_quant(row), row_routing(row))


def _experts_scheme(row: dict[str, Any]) -> str:
    """The scheme a row's routed experts ran at (``none``: unquantized)."""
    from perfmodel.measuring.compare import row_quant
    from perfmodel.prediction import Workload, experts_scheme

    return experts_scheme(Workload(quant=row_quant(row)))


def off_table_pairs(rows: list[dict[str, Any]], own_tiles: list[dict[str, Any]],
                    gpu: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row at vLLM's shipped table, row at the default rule) pairs of profiled decode steps on
    one GPU: the first a row whose expert shape has a table listed for ``gpu`` (its decode steps
    below the table's start run that table's first tiles); the second the same point measured at
    a folder of its own tiles. The latest row of each point id on either side."""
    from perfmodel.measuring.compare import row_overrides, row_own_tiles, row_quant
    from perfmodel.prediction import Workload, moe_table_start
    from perfmodel.specs.model import load_model

    def shipped(row: dict[str, Any]) -> bool:
        start = moe_table_start(gpu, Workload(quant=row_quant(row)), load_model(row["model"], row_overrides(row)))
        return start > 0

    def latest(candidates: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        by_id = {r["point_id"]: r for r in one_gpu_rows(candidates)
                 if r.get("status") == "ok" and _expert_ms(r) is not None}
        return {_key(r): r for r in by_id.values()}

    table = latest([r for r in rows if not row_own_tiles(r) and shipped(r)])
    default = latest([r for r in own_tiles if row_own_tiles(r)])
    return [(table[k], default[k]) for k in sorted(table.keys() & default.keys(), key=str)]


def fit_off_table(rows: list[dict[str, Any]], results: Path, gpu: str) -> tuple[float | None, list[str], dict]:
    """``moe_off_table_memory``: the geometric mean over :func:`off_table_pairs` of the expert
    kernels' time at the shipped table over that at the default rule; the point ids of both
    sides; the record (pairs, each ratio, and ``schemes``: the schemes the pairs' experts ran at).
    (None, [], {}) without pairs."""
    from perfmodel.measuring.results import read_rows

    own = read_rows(tiles_file(results), unique=False, warn=False).rows
    pairs = off_table_pairs(rows, own, gpu)
    if not pairs:
        return None, [], {}
    ratios = [_expert_ms(a) / _expert_ms(b) for a, b in pairs]
    factor = _sig(math.exp(sum(math.log(x) for x in ratios) / len(ratios)))
    record = {"file": tiles_file(results).name, "models": sorted({a["model"] for a, _ in pairs}),
              "schemes": sorted({_experts_scheme(a) for a, _ in pairs}),
              "ratios": {f"B={a['batch']} S={a['input_len']}": round(x, 4) for (a, _), x in zip(pairs, ratios)}}
    return factor, [r["point_id"] for pair in pairs for r in pair], record


def fit_table_extra(results: Path, gpu: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``options.moe_table_extra``: per expert shape timed at a shipped table made for larger
    passes (``specs/vllm-moe-tables.yaml``: experts, width, scheme), the kernel's time at the
    table less its time at the default rule, s, at every pass timed at both (each side's
    geometric mean where a pass was timed more than once); and the record (file; every shape
    timed at a table, with its hidden size, top-k, passes, the range of table/default, and
    whether the profile takes it). ([], {}) without the file or such shapes. The kernel timings
    are of the op alone: no validation row is read.

    Only the listed tables are taken: the fit's own rows set the experts' terms at the tables
    their shapes run (Mixtral-8x7B's fp8 rows at a tuned table that runs 0.64-0.92 times the
    default rule's time from 256 tokens, the bf16 training models at the default rule, having no
    table), so a difference from the default rule belongs where a table is known to stray from
    what the rows measured, as the listed ones do."""
    from collections import defaultdict

    from perfmodel.measuring.kernel_timings import read_kernel_timings
    from perfmodel.moe_tables import tuned_from
    from perfmodel.paths import moe_kernel_file

    path = moe_kernel_file(results)
    if not path.is_file():
        return [], {}
    times: dict[tuple, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    measured: dict[tuple, tuple[int, int]] = {}
    for row in read_kernel_timings(path):
        shape = (row["experts"], row["width"], row["scheme"])
        measured.setdefault(shape, (row["hidden"], row["top_k"]))
        times[shape][row["tokens"]][row["tiles"]].append(float(row["us"]))

    def seconds(values: list[float]) -> float:  # µs -> s, the geometric mean of repeats
        return 1e-6 * math.exp(sum(map(math.log, values)) / len(values))

    out, shapes = [], []
    for shape in sorted(times, key=str):
        passes = sorted(m for m, t in times[shape].items() if t.get("table") and t.get("default"))
        if not passes:
            continue
        table = [seconds(times[shape][m]["table"]) for m in passes]
        default = [seconds(times[shape][m]["default"]) for m in passes]
        ratios = [a / b for a, b in zip(table, default)]
        experts, width, scheme = shape
        listed = tuned_from(gpu, experts, width, scheme) > 0
        if listed:
            out.append({"experts": experts, "width": width, "scheme": scheme, "tokens": passes,
                        "extra_s": [_sig(a - b) for a, b in zip(table, default)]})
        hidden, top_k = measured[shape]
        shapes.append(f"E={experts} N={width} {scheme} (hidden {hidden}, top-{top_k}): {len(passes)} passes, "
                      f"table/default {min(ratios):.2f}-{max(ratios):.2f}, "
                      + ("taken (a listed table)" if listed else "not taken (a table the rows ran)"))
    return out, ({"file": path.name, "shapes": shapes} if shapes else {})
