"""vLLM's fused-MoE kernel timed alone (``scripts/bench_moe_tiles.py``): reading its rows.

One JSON row per (expert shape, pass, tile choice): ``experts``, ``width``, ``hidden``, ``top_k``,
``scheme``, ``tokens``, ``tiles`` (``table``: the tiles vLLM picks; ``default``: its default
rule), ``us`` (µs per call) with its provenance; a row that failed has ``error`` and no ``us``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perfmodel.errors import InputError

#: The fields a timed row must have.
FIELDS = ("experts", "width", "hidden", "top_k", "scheme", "tokens", "tiles", "us")


def read_kernel_timings(path: Path) -> list[dict[str, Any]]:
    """The timed rows of a kernel-timings file (the failed ones left out); one clear line for a
    line that is not JSON or a timed row that lacks a field."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path.name}, line {number}: not JSON") from None
        if not isinstance(row, dict) or "error" in row or "us" not in row:
            continue
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise InputError(f"{path.name}, line {number}: a timed row without {', '.join(missing)}")
        rows.append(row)
    return rows


#: The model's ops that vLLM's fused-MoE op runs, per MoE layer: the dispatch, the inputs'
#: quantization, the routed experts and their activation (not the router, not shared experts).
KERNEL_OPS = ("moe.dispatch", "moe.experts.act_quant", "moe.experts", "moe.experts_act")

#: The zoo model an expert shape is set on, by hidden size (its MoE block's other ops do not count).
BASES = {4096: "mixtral-8x7b", 3584: "qwen2-57b-a14b", 2048: "qwen3-30b-a3b"}


def kernel_call_seconds(row: dict[str, Any], gpu: str, profile) -> float | None:
    """The model's time of one fused-MoE call of a timed row's expert shape, pass (``tokens``)
    and tile choice (``tiles``: ``default`` predicted at the default rule, ``table`` with the
    tables ``profile`` costs), s per layer, under ``profile`` (an
    :class:`perfmodel.profile.EngineProfile`) on ``gpu``: the :data:`KERNEL_OPS` of one sequence's
    prefill pass, their GPU time with no host and no CUDA-graph padding, as the kernel was timed.
    The shape is set on the zoo model of the row's hidden size (:data:`BASES`) by
    ``num_experts``, ``ffn`` and ``top_k``; None for a hidden size no base model has."""
    from perfmodel.prediction import Workload, evaluate
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    base = BASES.get(row["hidden"])
    if base is None:
        return None
    model = load_model(base, {"num_experts": row["experts"], "ffn": row["width"], "top_k": row["top_k"]})
    workload = Workload(batch=1, input_len=row["tokens"], quant=None if row["scheme"] == "none" else row["scheme"],
                        moe_tables=row["tiles"] == "table")
    ops = evaluate(model, load_gpu(gpu), profile, workload.stored_as(model), "prefill").ops
    return sum(op["time_s"] for op in ops if op["name"] in KERNEL_OPS) / model.n_moe_layers
