"""Collectives between GPUs of one node (ring all-reduce, all-to-all, point-to-point).

Bytes are those one GPU sends; each collective step adds the link latency. All vanish at a
parallel degree of 1.
"""

from __future__ import annotations

from perfmodel.ops.base import Op, OpClass
from perfmodel.symbols import E, H, T, b_a, dp, ep, k, link_lat, pp, tp


def all_reduce(name: str) -> Op:
    """Ring all-reduce of the T×H hidden states over the tensor-parallel group."""
    return Op(
        name=name,
        op_class=OpClass.COMM,
        comm_bytes=2 * (tp - 1) / tp * T * H * b_a,
        fixed_latency=2 * (tp - 1) * link_lat,
        efficiency_size=T * H,
        kernels=0,
    )


def all_to_all(name: str) -> Op:
    """Dispatch and combine of routed tokens across the expert-parallel group.

    Each of the T·k routed copies leaves the GPU with probability (ep − 1)/ep, once to be
    dispatched and once to come back.
    """
    return Op(
        name=name,
        op_class=OpClass.COMM,
        comm_bytes=2 * T * k * H * b_a * (ep - 1) / ep,
        fixed_latency=2 * (ep - 1) * link_lat,
        efficiency_size=T * H,
        kernels=0,
    )


def dp_gather(name: str) -> Op:
    """The MoE layer's exchange between dp data-parallel ranks (vLLM's all-gather / reduce-scatter
    dispatch, its default without DeepEP): each rank gathers the other ranks' T hidden states and
    router logits (T×(H + E)) before the experts, and reduce-scatters the T×H outputs back after
    them, (dp − 1)·T·(2H + E)·b_a bytes per GPU in 2·(dp − 1) ring steps; none at dp = 1."""
    return Op(
        name=name,
        op_class=OpClass.COMM,
        comm_bytes=(dp - 1) * T * (2 * H + E) * b_a,
        fixed_latency=2 * (dp - 1) * link_lat,
        efficiency_size=T * H,
        kernels=0,
    )


def pipeline_send(name: str) -> Op:
    """Activations sent between the pp pipeline stages of one forward pass."""
    return Op(
        name=name,
        op_class=OpClass.COMM,
        comm_bytes=(pp - 1) * T * H * b_a,
        fixed_latency=(pp - 1) * link_lat,
        efficiency_size=T * H,
        kernels=0,
    )

