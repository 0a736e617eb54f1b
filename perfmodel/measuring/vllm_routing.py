"""Which experts a vLLM engine's router picks: the routing a measurement really ran.

vLLM's dummy weights are tiny random numbers, and for some families the router's logits come out
nearly equal for every token, so few experts are touched (measured: DeepSeek-V2-Lite and
Phi-3.5-MoE decode faster than uniform routing allows). A prediction is only comparable with such
a point at the routing it measured, so the vllm backend can probe it (``measure --backend vllm
--routing-probe``):

- the timed engine replays decode steps from CUDA graphs and runs prefill from compiled graphs,
  where Python hooks never run; the probe builds its own eager engine (``enforce_eager=True``)
  of the same config and seed, hence the same dummy weights, after the timed engine is gone;
- two views of each MoE layer's routing per forward pass:
  ``selected``: the expert ids the fused-MoE router really selects, from vLLM's own capture
  callback (``router.set_capture_fn``, called with the top-k ids before any expert-parallel
  remapping), and ``logits``: the top-k of the router's logits in float32 (a forward hook on
  every module named ``*.gate`` whose output has one column per expert). They differ where the
  router's own arithmetic ties: DeepSeek-V2's grouped top-k takes a softmax of the bf16 logits in
  bf16, and with dummy weights (±1e-3) the logits are ~1e-5, so every probability rounds to 1/E
  and every token gets the same experts, while the float32 logits still differ per token;
- per pass and view it records the routed tokens T and, averaged over the MoE layers, the
  distinct experts touched and the hottest expert's share of the routed rows;
- :func:`effective_skew` turns (T, distinct experts) into the model's routing skew σ, solving
  the model's own distinct-experts formula (:func:`perfmodel.ops.moe.distinct_experts`).
"""

from __future__ import annotations

import statistics
from typing import Any

#: Attribute under which the probe keeps its hooks and records on the model.
_STATE = "_perfmodel_routing_probe"


def _record(records: list, source: str, ids, num_experts: int) -> None:
    """One router call's (source, tokens, distinct experts, hottest share) from its [T, k] ids."""
    if ids.dim() != 2 or ids.shape[0] == 0:
        return
    counts = ids.flatten().long().bincount(minlength=num_experts)
    records.append((source, int(ids.shape[0]), int((counts > 0).sum()),
                    float(counts.max()) / float(ids.numel())))


def install(model, num_experts: int, top_k: int) -> int:
    """Hook every router of ``model`` (an ``nn.Module``): vLLM's capture callback on each fused-MoE
    router (the selected ids) and a forward hook on each ``*.gate`` (the logits' top-k). Returns
    how many MoE layers are observed (the larger of the two counts)."""
    records: list[tuple[str, int, int, float]] = []
    handles, routers = [], []

    def hook(_module, _inputs, output) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        if logits.dim() != 2 or logits.shape[-1] != num_experts:
            return
        _record(records, "logits", logits.float().topk(top_k, dim=-1).indices, num_experts)

    def capture(ids) -> None:
        _record(records, "selected", ids, num_experts)

    for name, module in model.named_modules():
        router = getattr(module, "router", None)
        if router is not None and callable(getattr(router, "set_capture_fn", None)):
            router.set_capture_fn(capture)
            routers.append(router)
        if name.split(".")[-1] == "gate":
            handles.append(module.register_forward_hook(hook))
    setattr(model, _STATE, (records, handles, routers))
    return max(len(handles), len(routers))


def collect(model) -> list[tuple[str, int, int, float]]:
    """The records of :func:`install` (and remove its hooks, callbacks and records)."""
    records, handles, routers = getattr(model, _STATE, ([], [], []))
    if hasattr(model, _STATE):
        delattr(model, _STATE)
    for handle in handles:
        handle.remove()
    for router in routers:
        router.set_capture_fn(None)
    return list(records)


def summarize(records: list[tuple[str, int, int, float]], num_experts: int, top_k: int) -> list[dict[str, Any]]:
    """One entry per view (``selected`` first, then ``logits``) and distinct routed-token count T:
    the mean distinct experts per layer, the hottest expert's mean share, the number of router
    calls, and the skew σ they imply."""
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for source, tokens, distinct, share in records:
        groups.setdefault((source, tokens), []).append((distinct, share))
    out = []
    for source, tokens in sorted(groups, key=lambda g: (g[0] != "selected", g[1])):
        calls = groups[source, tokens]
        distinct = statistics.fmean(d for d, _ in calls)
        out.append({"source": source, "tokens": tokens, "distinct_experts": round(distinct, 3),
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
