"""Measured rows whose routing collapsed: decode steps faster than uniform routing allows.

vLLM's dummy weights can route every token of a step to the same few experts, which real
weights do not: such a step reads fewer expert weights than any uniform routing would. A
row's decode step (``itl_ms``) is set against the HBM floor of uniform routing, the bytes the
model's own ops read in that step (the expected distinct experts' weights, every other weight,
the KV cache) at the GPU's datasheet bandwidth (the ``roofline`` engine's ops of
:func:`perfmodel.prediction.predict`); a (model, quantization, routing) group with a row below it
has collapsed. So has, by construction, a group of a model whose router adds a bias (gpt-oss),
run at its own router (:func:`bias_routed`): vLLM's dummy weights draw the bias, like every
weight, in ±1e-3, tens of times the token-dependent part of the logits, so every token picks the
bias's top-k (``tests/test_vllm_routing.py`` shows it with the dummy weights' statistics);
with 32 experts such a step need not beat the floor. Routing is the row's
(:func:`perfmodel.measuring.compare.row_routing`): the same model run through vLLM's routing
simulator is a group of its own. The fit leaves such groups out of the error band, and the
paper report out of its measured pairs.
"""

from __future__ import annotations

from typing import Any

from perfmodel.measuring.compare import row_gpus, row_quant, row_routing
from perfmodel.measuring.results import has_decode_step


def routing_group(row: dict[str, Any]) -> tuple[str, str, str]:
    """A row's (model, quantization, routing) group: quantization ``bf16`` where unquantized."""
    return row["model"], row_quant(row) or "bf16", row_routing(row)


def group_name(model: str, quant: str, routing: str) -> str:
    """``model quant``, and the routing where it is not the model's own."""
    return f"{model} {quant}" + ("" if routing == "model" else f" routing={routing}")


def floor_ratios(rows: list[dict[str, Any]], gpu: str) -> dict[tuple[str, str, str], float]:
    """(model, quantization, routing) → the lowest measured/floor ratio of its ok as-built rows
    (no overrides, no layer cut), where < 1."""
    from perfmodel.prediction import predict
    from perfmodel.specs.hardware import load_gpu

    bandwidth = load_gpu(gpu).hbm_bandwidth_tb_s * 1e12
    worst: dict[tuple[str, str, str], float] = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("overrides") or row.get("layers") or not has_decode_step(row):
            continue  # a variant, or no decode step
        p = predict(row["model"], gpu=gpu, engine="roofline", phase="decode", batch=row["batch"],
                    context=row["input_len"], quant=row_quant(row))
        floor = sum(op["bytes"] for op in p.ops) / bandwidth
        ratio = row["itl_ms"] * 1e-3 / floor
        key = routing_group(row)
        if ratio < 1.0:
            worst[key] = min(ratio, worst.get(key, 1.0))
    return worst


def bias_routed(rows: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """The groups (:func:`routing_group`) of ok rows at their model's own router where that
    router adds a bias (:attr:`perfmodel.specs.model.MoESpec.router_bias`): collapsed under
    dummy weights, whatever their step times."""
    from perfmodel.specs.model import load_model

    groups, biased = set(), {}
    for row in rows:
        if row.get("status") != "ok" or row_routing(row) != "model":
            continue
        model = row["model"]
        if model not in biased:
            moe = load_model(model).moe
            biased[model] = bool(moe is not None and moe.router_bias)
        if biased[model]:
            groups.add(routing_group(row))
    return groups


def collapsed_routing(rows: list[dict[str, Any]], gpu: str) -> set[tuple[str, str, str]]:
    """The groups (:func:`routing_group`) of one-GPU rows some of whose decode steps beat the HBM
    floor of uniform routing on ``gpu`` (:func:`floor_ratios`), and those of a router with a
    bias at its own routing (:func:`bias_routed`)."""
    one_gpu = [r for r in rows if row_gpus(r) == 1]
    return set(floor_ratios(one_gpu, gpu)) | bias_routed(one_gpu)
