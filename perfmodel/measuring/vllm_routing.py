"""Which experts a vLLM engine's router picks: the routing a measurement really ran.

vLLM's dummy weights are tiny random numbers, and for some families the router's logits come out
nearly equal for every token, so few experts are touched (measured: DeepSeek-V2-Lite and
Phi-3.5-MoE decode faster than uniform routing allows). A prediction is only comparable with such
a point at the routing it measured, so the vllm backend can probe it (``measure --backend vllm
--routing-probe``):

- the timed engine replays decode steps from CUDA graphs and runs prefill from compiled graphs,
  where Python hooks never run; the probe builds its own eager engine (``enforce_eager=True``)
  of the same config and seed, hence the same dummy weights, after the timed engine is gone;
- a forward hook on every router (a module named ``*.gate`` whose output has one column per
  expert) takes the top-k of its logits for each forward pass (the experts a softmax or
  grouped top-k router selects; Phi's sparse mixer picks the same top-2 on near-equal logits);
- per pass it records the routed tokens T and, averaged over the MoE layers, the distinct experts
  touched and the hottest expert's share of the routed rows;
- :func:`effective_skew` turns (T, distinct experts) into the model's routing skew σ, solving
  the model's own distinct-experts formula (:func:`perfmodel.ops.moe.distinct_experts`).
"""

from __future__ import annotations

import statistics
from typing import Any

#: Attribute under which the probe keeps its hooks and records on the model.
_STATE = "_perfmodel_routing_probe"


def install(model, num_experts: int, top_k: int) -> int:
    """Hook every router of ``model`` (an ``nn.Module``); returns how many were hooked."""
    records: list[tuple[int, int, float]] = []  # (tokens, distinct experts, hottest share) per router call
    handles = []

    def hook(_module, _inputs, output) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        if logits.dim() != 2 or logits.shape[-1] != num_experts or logits.shape[0] == 0:
            return
        chosen = logits.float().topk(top_k, dim=-1).indices.flatten()
        counts = chosen.bincount(minlength=num_experts)
        records.append((int(logits.shape[0]), int((counts > 0).sum()),
                        float(counts.max()) / float(chosen.numel())))

    for name, module in model.named_modules():
        if name.split(".")[-1] == "gate":
            handles.append(module.register_forward_hook(hook))
    setattr(model, _STATE, (records, handles))
    return len(handles)


def collect(model) -> list[tuple[int, int, float]]:
    """The records of :func:`install` (and remove its hooks and records)."""
    records, handles = getattr(model, _STATE, ([], []))
    if hasattr(model, _STATE):
        delattr(model, _STATE)
    for handle in handles:
        handle.remove()
    return list(records)


def summarize(records: list[tuple[int, int, float]], num_experts: int, top_k: int) -> list[dict[str, Any]]:
    """One entry per distinct routed-token count T: the mean distinct experts per layer, the
    hottest expert's mean share, the number of router calls, and the skew σ they imply."""
    by_tokens: dict[int, list[tuple[int, float]]] = {}
    for tokens, distinct, share in records:
        by_tokens.setdefault(tokens, []).append((distinct, share))
    out = []
    for tokens in sorted(by_tokens):
        calls = by_tokens[tokens]
        distinct = statistics.fmean(d for d, _ in calls)
        out.append({"tokens": tokens, "distinct_experts": round(distinct, 3),
                    "hottest_share": round(statistics.fmean(s for _, s in calls), 4),
                    "router_calls": len(calls),
                    "skew": effective_skew(tokens, distinct, num_experts, top_k)})
    return out


def effective_skew(tokens: int, distinct: float, num_experts: int, top_k: int) -> float:
    """The routing skew σ ∈ [0, 1] under which the model expects ``distinct`` experts touched by
    ``tokens`` routed tokens (0: uniform; 1: the same k experts for every token). Clipped to
    [0, 1] where the measurement lies outside what the model can express."""
    import sympy as sp
    from scipy.optimize import brentq

    from perfmodel import symbols
    from perfmodel.ops.moe import distinct_experts

    expected = sp.lambdify(symbols.sigma, distinct_experts(symbols.T).subs(
        {symbols.T: tokens, symbols.E: num_experts, symbols.k: top_k}), "math")
    if distinct >= expected(0.0):
        return 0.0
    if distinct <= expected(1.0):
        return 1.0
    return round(float(brentq(lambda s: expected(s) - distinct, 0.0, 1.0, xtol=1e-6)), 4)
