"""Feed-forward blocks: the dense gated MLP, and the MoE block (router, routed and shared experts).

All FFNs are gated (SwiGLU-style): gate and up projections H→I, an activation-and-multiply,
and a down projection I→H, i.e. 3·H·I weights and 2·3·H·I FLOPs per token.

Routing statistics. Under uniform routing each token picks k of E experts, so one expert
escapes a token with probability (1 − k/E) and T tokens touch on average

    D = E·(1 − (1 − k/E)^T)

distinct experts. Skewed routing concentrates tokens on fewer experts: with skew σ ∈ [0, 1]
the tokens route uniformly over an effective population E_σ = (1 − σ)·E + σ·k (σ = 0:
uniform; σ = 1: the same k experts for every token). Weight traffic follows D, compute follows
T·k, and a grouped GEMM's efficiency follows the tokens per expert T·k/D.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from perfmodel.ops.base import Op
from perfmodel.ops.comm import all_to_all
from perfmodel.ops.elementwise import norm
from perfmodel.specs.model import MoESpec
from perfmodel.symbols import E, H, I_d, I_e, I_sh, T, b_a, b_e, b_w, ep, k, n_sh, sigma, tp


def effective_experts() -> sp.Expr:
    """E_σ: the population uniform routing would need to touch as few experts as skewed does."""
    return (1 - sigma) * E + sigma * k


def distinct_experts(tokens: sp.Expr = T) -> sp.Expr:
    """Expected distinct experts touched by ``tokens`` routed tokens (whole model, not per GPU)."""
    e_eff = effective_experts()
    return e_eff * (1 - (1 - k / e_eff) ** tokens)


def tokens_per_expert(tokens: sp.Expr = T) -> sp.Expr:
    """Mean rows of each touched expert's GEMM: T·k / D."""
    return tokens * k / distinct_experts(tokens)


def gated_ffn(name: str, op_class: str, *, tokens: sp.Expr, width: sp.Expr, weight_mats: sp.Expr,
              param_bytes: sp.Expr, shard: sp.Expr, params: sp.Expr, size: sp.Expr,
              kernels: int) -> Op:
    """A gated FFN applied to ``tokens`` rows of width H with intermediate ``width``.

    GEMM activation traffic per row: read x (H), write gate|up (2·I), read the activated
    product (I), write the output (H): 2H + 3I elements; the activation between the GEMMs
    is its own op (:func:`activation`). ``weight_mats`` is how many H×I matrices' worth of
    weights are read (3 per FFN touched).
    """
    return Op(
        name=name,
        op_class=op_class,  # type: ignore[arg-type]
        flops=2 * tokens * 3 * H * width / shard,
        weight_bytes=weight_mats * H * width * param_bytes / shard,
        act_bytes=tokens * (2 * H + 3 * width / shard) * b_a,
        params=params,
        size=size,
        kernels=kernels,
    )


def activation(name: str, tokens: sp.Expr, width: sp.Expr, shard: sp.Expr = tp) -> Op:
    """SiLU(gate)·up between a gated FFN's GEMMs: read gate|up (2·I), write the product (I)."""
    return Op(name=name, op_class="elementwise", act_bytes=tokens * 3 * width / shard * b_a,
              size=tokens * width / shard)


def router(bias: bool) -> Op:
    """Router logits (T×H by H×E, replicated) plus softmax and top-k over E."""
    params = H * E + (E if bias else 0)
    return Op(
        name="moe.router",
        op_class="gemm",
        flops=2 * T * H * E,
        weight_bytes=params * b_w,
        act_bytes=T * (H + 3 * E) * b_a,
        params=params,
        stored_bytes=params * b_w,
        size=T,
        kernels=4,  # logits GEMM, softmax, top-k, renormalize
    )


def routed_experts(bias: bool) -> Op:
    """The E routed experts on one GPU: E/ep local experts, each sharded by tp.

    Rows: T·k/ep routed copies; weights read: the D/ep distinct local experts touched.
    """
    d_local = distinct_experts() / ep
    params = E * 3 * H * I_e + (E * (2 * I_e + H) if bias else 0)
    op = gated_ffn("moe.experts", "grouped_gemm", tokens=T * k / ep, width=I_e,
                   weight_mats=3 * d_local, param_bytes=b_e, shard=tp, params=params,
                   size=tokens_per_expert(), kernels=2)  # the two grouped GEMMs
    return _with_storage(op, params * b_e / (tp * ep))


def shared_experts(gate: bool) -> Op:
    """n_sh always-active experts of width I_sh (one fused FFN), with an optional sigmoid gate."""
    width = n_sh * I_sh
    params = 3 * H * width + (H if gate else 0)
    op = gated_ffn("moe.shared", "gemm", tokens=T, width=width, weight_mats=3, param_bytes=b_w,
                   shard=tp, params=params, size=T, kernels=3 if gate else 2)
    if gate:  # the gate is a T×H by H×1 GEMM on every token
        op = replace(op, flops=op.flops + 2 * T * H, weight_bytes=op.weight_bytes + H * b_w)
    return _with_storage(op, params * b_w / tp)


def dispatch() -> Op:
    """Moving routed rows in and out of expert order: gather the T·k copies of the tokens,
    scale each by its routing weight, and add them back per token (index-add), each a read
    and a write of T·k·H activations (6 passes), on the local T·k/ep rows."""
    return Op(
        name="moe.dispatch",
        op_class="elementwise",
        act_bytes=6 * T * k / ep * H * b_a,
        size=T * k / ep * H,
        kernels=4,  # sort/histogram, gather, scale, index-add
    )


def moe_block(spec: MoESpec, norm_kind: str) -> list[Op]:
    """The MoE block of one layer: norm, router, dispatch, routed experts, shared experts."""
    ops = [norm("mlp.norm", H, norm_kind), router(spec.router_bias),
           all_to_all("comm.moe_all_to_all"), dispatch(), routed_experts(spec.expert_bias),
           activation("moe.experts_act", T * k / ep, I_e)]
    if spec.n_shared:
        ops += [shared_experts(spec.shared_gate), activation("moe.shared_act", T, n_sh * I_sh)]
    return ops


def dense_block(norm_kind: str, bias: bool) -> list[Op]:
    """The dense-MLP block of one layer, norm before it included."""
    params = 3 * H * I_d + ((2 * I_d + H) if bias else 0)
    op = gated_ffn("mlp.ffn", "gemm", tokens=T, width=I_d, weight_mats=3, param_bytes=b_w,
                   shard=tp, params=params, size=T, kernels=2)
    return [norm("mlp.norm", H, norm_kind), _with_storage(op, params * b_w / tp),
            activation("mlp.act", T, I_d)]


def _with_storage(op: Op, stored: sp.Expr) -> Op:
    return replace(op, stored_bytes=stored)
