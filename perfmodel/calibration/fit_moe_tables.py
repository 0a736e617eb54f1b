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
import statistics
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
    factor = _sig(statistics.geometric_mean(ratios))
    record = {"file": tiles_file(results).name, "models": sorted({a["model"] for a, _ in pairs}),
              "schemes": sorted({_experts_scheme(a) for a, _ in pairs}),
              "ratios": {f"B={a['batch']} S={a['input_len']}": round(x, 4) for (a, _), x in zip(pairs, ratios)}}
    return factor, [r["point_id"] for pair in pairs for r in pair], record


def fit_table_extra(results: Path, gpu: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``options.moe_table_extra``: per expert shape (experts, width, scheme, hidden size, top-k)
    timed at a shipped table, the kernel's time at the table less its time at the default rule,
    s, at every pass timed at both (each side's geometric mean where a pass was timed more than
    once), with the table's keys where ``specs/vllm-moe-tables.yaml`` lists them; and the record
    (file; every shape timed at a table, with its passes, the range of table/default, and whether
    the table is made for larger passes). ([], {}) without the file or such shapes. The kernel
    timings are of the op alone: no validation row is read.

    With the keys, the passes that run one entry of the table (:func:`perfmodel.moe_tables.nearest_key`)
    have their differences taken as the running median of three neighbours among them
    (:func:`running_median`; the first and last as timed). One entry runs one set of tiles over
    its range, and a single pass carries the draw of its routing: Mixtral-8x7B's experts in fp8
    on the H100, timed every 16 tokens from 1,024 to 1,184 in one entry, gave a difference of
    -312 µs at 1,024 tokens, +15 µs at 1,040 (its replays spread over 957-1,204 µs) and -86 to
    -157 µs at the twelve passes from 1,056 to 1,280 (h1c49); at 1,152 tokens +90 µs in one call,
    -143 µs in another. Phi-3.5-MoE's fp8 table changes entry at 1,152 tokens
    (the tie of 1,024 and 1,280 goes to 1,280): +520 to +600 µs below, +355 to +385 µs above,
    where a step at the midpoint of two timed passes put it at 1,088.

    Every timed table is taken, so that the experts' terms the rows fit are the default rule's on
    every shape: a row at a timed table is predicted at the default rule plus that table's
    measured difference, whether the table is made for larger passes (Phi-3.5-MoE's fp8 tables,
    1.1-1.75 times the default rule's time) or tuned from a single token (Mixtral-8x7B's in fp8,
    0.64-0.92 of it from 256 tokens). Without the cost of experts larger than the L2 cache
    (:func:`fit_l2_spill`) this was tried and not kept: fp8's compute multiplier, fitted on
    Mixtral-8x7B's rows with its table's difference taken, fell to 0.85 to stand for its 176 MB
    experts, and put the other fp8 models' prompts 5-15% long; with it, the multiplier is 0.99
    (docs/h100.md, "Experts larger than the L2 cache")."""
    from collections import defaultdict

    from perfmodel.measuring.kernel_timings import read_kernel_timings
    from perfmodel.moe_tables import nearest_key, table_keys, tuned_from
    from perfmodel.paths import moe_kernel_file

    path = moe_kernel_file(results)
    if not path.is_file():
        return [], {}
    times: dict[tuple, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in read_kernel_timings(path):
        shape = (row["experts"], row["width"], row["scheme"], row["hidden"], row["top_k"])
        times[shape][row["tokens"]][row["tiles"]].append(float(row["us"]))

    def seconds(values: list[float]) -> float:  # µs -> s, the geometric mean of repeats
        return 1e-6 * statistics.geometric_mean(values)

    out, shapes = [], []
    for shape in sorted(times):
        passes = sorted(m for m, t in times[shape].items() if t.get("table") and t.get("default"))
        if not passes:
            continue
        table = [seconds(times[shape][m]["table"]) for m in passes]
        default = [seconds(times[shape][m]["default"]) for m in passes]
        ratios = [a / b for a, b in zip(table, default)]
        experts, width, scheme, hidden, top_k = shape
        keys = table_keys(gpu, experts, width, scheme)
        extra = [a - b for a, b in zip(table, default)]
        if keys:  # each entry's passes smoothed among themselves
            entry = [nearest_key(m, keys) for m in passes]
            for key in set(entry):
                where = [i for i, e in enumerate(entry) if e == key]
                for i, value in zip(where, running_median([extra[i] for i in where])):
                    extra[i] = value
        out.append({"experts": experts, "width": width, "scheme": scheme, "hidden": hidden, "top_k": top_k,
                    "tokens": passes, "extra_s": [_sig(x) for x in extra],
                    **({"keys": list(keys)} if keys else {})})
        kind = "made for larger passes" if tuned_from(gpu, experts, width, scheme) > 0 else "tuned from small passes"
        shapes.append(f"E={experts} N={width} {scheme} (hidden {hidden}, top-{top_k}): {len(passes)} passes, "
                      f"table/default {min(ratios):.2f}-{max(ratios):.2f} ({kind}"
                      f"{f'; {len(keys)} keys' if keys else '; keys not listed'})")
    return out, ({"file": path.name, "shapes": shapes} if shapes else {})

def running_median(values: list[float]) -> list[float]:
    """Each value replaced by the median of itself and its two neighbours; the first and the last
    kept (Tukey's running median of three: one value off its neighbours is pulled to them, a
    trend kept)."""
    return [v if i in (0, len(values) - 1) else statistics.median(values[i - 1:i + 2])
            for i, v in enumerate(values)]


#: Passes of at least this many tokens run the fused-MoE kernel compute-bound: there its
#: default-rule timings fit the cost of experts larger than the L2 cache (:func:`fit_l2_spill`).
L2_SPILL_TOKENS = 1024


def l2_spill_rows(rows: list[dict[str, Any]], train: tuple[str, ...]) -> list[dict[str, Any]]:
    """The timed rows :func:`fit_l2_spill` fits on: unquantized, at the default tile rule, of
    passes of at least :data:`L2_SPILL_TOKENS` tokens, of a training model's own expert shape at
    one GPU (its experts, width, hidden size and top-k)."""
    from perfmodel.specs.model import load_model

    shapes = {(m.moe.n_experts, m.moe.expert_intermediate, m.hidden, m.moe.top_k)
              for m in map(load_model, train) if m.moe is not None}
    return [r for r in rows if r["scheme"] == "none" and r["tiles"] == "default" and r["tokens"] >= L2_SPILL_TOKENS
            and (r["experts"], r["width"], r["hidden"], r["top_k"]) in shapes]


def fit_l2_spill(results: Path, base: dict[str, Any], gpu: str,
                 train: tuple[str, ...]) -> tuple[float | None, dict[str, Any]]:
    """``options.moe_l2_spill``, s_L2 (:func:`perfmodel.ops.moe.l2_spill_scale`): by least squares
    on log(predicted/measured) of one fused-MoE call of the kernel timed alone
    (:func:`l2_spill_rows`; :func:`perfmodel.measuring.kernel_timings.kernel_call_seconds`), every
    other term at ``base`` (the bf16 fit); and the record (file, shapes, passes, predicted/measured
    before and at the fit). (None, {}) without the file, or without a training shape whose
    experts outgrow the GPU's L2 cache (nothing then speaks to s_L2).

    The training models' own rows fit the fused MoE's compute fraction, on experts that fit in
    L2 (OLMoE-1B-7B's 13 MB, Qwen1.5-MoE-A2.7B's 17 MB in bf16); Mixtral-8x7B's experts (352 MB in
    bf16) are the training shape that outgrows it, timed alone. Every other shape the kernel was
    timed on (other widths, other top-k, Phi-3.5-MoE's experts, fp8) stays held out for
    ``perfmodel validate all --moe-kernel``."""
    from scipy.optimize import least_squares

    from perfmodel.calibration.fit import _profile
    from perfmodel.measuring.kernel_timings import kernel_call_seconds, read_kernel_timings
    from perfmodel.paths import moe_kernel_file

    path = moe_kernel_file(results)
    if not path.is_file():
        return None, {}

    def predicted(rows: list[dict[str, Any]], value: float) -> list[float | None]:
        profile = _profile({**base, "options": {**base["options"], "moe_l2_spill": value}})
        return [kernel_call_seconds(r, gpu, profile) for r in rows]

    candidates = l2_spill_rows(read_kernel_timings(path), train)
    # the rows whose experts outgrow L2: those the term moves
    rows = [r for r, plain, spilled in zip(candidates, predicted(candidates, 0.0), predicted(candidates, 1.0))
            if plain is not None and spilled > plain]
    if not rows:
        return None, {}
    measured = [1e-6 * float(r["us"]) for r in rows]

    def ratios(value: float) -> list[float]:
        return [p / m for p, m in zip(predicted(rows, value), measured)]

    # from inside the bounds (a start on the bound at 0 stalled there), steps of 0.1% of the value
    result = least_squares(lambda x: [math.log(v) for v in ratios(float(x[0]))], [0.2], bounds=([0.0], [5.0]),
                           diff_step=1e-3)
    value = _sig(float(result.x[0]))
    before, at_fit = ratios(0.0), ratios(value)
    shapes = sorted({f"E={r['experts']} N={r['width']} (hidden {r['hidden']}, top-{r['top_k']})" for r in rows})
    return value, {"file": path.name, "tiles": "default", "scheme": "none", "min_tokens": L2_SPILL_TOKENS,
                   "shapes": shapes, "passes": len(rows),
                   "predicted_over_measured": {"without": [round(min(before), 3), round(max(before), 3)],
                                               "fitted": [round(min(at_fit), 3), round(max(at_fit), 3)]}}
