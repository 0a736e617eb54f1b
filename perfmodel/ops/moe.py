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
from typing import TYPE_CHECKING

import sympy as sp

from perfmodel.ops.base import Op, OpClass, Role
from perfmodel.ops.comm import all_to_all
from perfmodel.ops.elementwise import norm
from perfmodel.symbols import E, H, I_d, I_e, I_sh, T, b_a, b_e, b_w, ep, k, n_sh, sigma, tp

if TYPE_CHECKING:  # the specs need pydantic; the ops read only their fields
    from perfmodel.specs.model import MoESpec


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


def gemm(name: str, op_class: OpClass, *, rows: sp.Expr, d_in: sp.Expr, d_out: sp.Expr,
         matrices: sp.Expr = 1, param_bytes: sp.Expr = b_w) -> Op:
    """One GEMM of ``rows`` rows of width ``d_in`` into ``d_out``, the rows split over
    ``matrices`` d_in×d_out weight matrices (the experts they are routed to, each read once;
    1 for a dense GEMM): FLOPs 2·rows·d_in·d_out; bytes: the matrices, the rows read (d_in)
    and written (d_out). Its efficiency follows the rows per matrix (tokens per expert)."""
    return Op(
        name=name,
        op_class=op_class,
        flops=2 * rows * d_in * d_out,
        weight_bytes=matrices * d_in * d_out * param_bytes,
        act_bytes=rows * (d_in + d_out) * b_a,
        efficiency_size=rows / matrices,
    )


def gated_ffn(name: str, op_class: OpClass, *, tokens: sp.Expr, width: sp.Expr,
              experts: sp.Expr, param_bytes: sp.Expr, shard: sp.Expr, params: sp.Expr) -> Op:
    """A gated FFN applied to ``tokens`` rows of width H with intermediate ``width``: the
    gate|up GEMM (H → 2·I) and the down GEMM (I → H), each a :func:`gemm` over the
    ``experts`` FFN copies the rows are split over (1 when dense), sharded by ``shard``.

    Activation traffic per row: read x (H), write gate|up (2·I), read the activated product
    (I), write the output (H): 2H + 3I elements; the activation between the GEMMs is its own
    op (:func:`activation`).
    """
    up = gemm(f"{name}.gate_up", op_class, rows=tokens, d_in=H, d_out=2 * width / shard,
              matrices=experts, param_bytes=param_bytes)
    down = gemm(f"{name}.down", op_class, rows=tokens, d_in=width / shard, d_out=H,
                matrices=experts, param_bytes=param_bytes)
    return Op(
        name=name,
        op_class=op_class,
        flops=up.flops + down.flops,
        weight_bytes=up.weight_bytes + down.weight_bytes,
        act_bytes=sp.factor_terms(up.act_bytes + down.act_bytes),
        params=params,
        efficiency_size=up.efficiency_size,
        kernels=up.kernels + down.kernels,
    )


def activation(name: str, tokens: sp.Expr, width: sp.Expr, shard: sp.Expr = tp) -> Op:
    """SiLU(gate)·up between a gated FFN's GEMMs: read gate|up (2·I), write the product (I)."""
    return Op(name=name, op_class=OpClass.ELEMENTWISE, act_bytes=tokens * 3 * width / shard * b_a,
              efficiency_size=tokens * width / shard)


def router(bias: bool) -> Op:
    """Router logits (T×H by H×E, replicated) plus softmax and top-k over E."""
    params = H * E + (E if bias else 0)
    return Op(
        name="moe.router",
        op_class=OpClass.GEMM,
        flops=2 * T * H * E,
        weight_bytes=params * b_w,
        act_bytes=T * (H + 3 * E) * b_a,
        params=params,
        stored_bytes=params * b_w,
        efficiency_size=T,
        kernels=4,  # logits GEMM, softmax, top-k, renormalize
        role=Role.ROUTER,
    )


def routed_experts(bias: bool) -> Op:
    """The E routed experts on one GPU: E/ep local experts, each sharded by tp.

    Rows: T·k/ep routed copies; weights read: the D/ep distinct local experts touched.
    """
    d_local = distinct_experts() / ep
    params = E * 3 * H * I_e + (E * (2 * I_e + H) if bias else 0)
    op = gated_ffn("moe.experts", OpClass.GROUPED_GEMM, tokens=T * k / ep, width=I_e,
                   experts=d_local, param_bytes=b_e, shard=tp, params=params)
    return replace(op, stored_bytes=params * b_e / (tp * ep), role=Role.ROUTED_EXPERTS)


def shared_experts(gate: bool) -> Op:
    """n_sh always-active experts of width I_sh (one fused FFN), with an optional sigmoid gate."""
    width = n_sh * I_sh
    params = 3 * H * width + (H if gate else 0)
    op = gated_ffn("moe.shared", OpClass.GEMM, tokens=T, width=width, experts=1, param_bytes=b_w,
                   shard=tp, params=params)
    if gate:  # the gate is a T×H by H×1 GEMM on every token
        op = replace(op, flops=op.flops + 2 * T * H, weight_bytes=op.weight_bytes + H * b_w,
                     kernels=op.kernels + 1)
    return _with_storage(op, params * b_w / tp)


def dispatch() -> Op:
    """Moving routed rows in and out of expert order: gather the T·k copies of the tokens,
    scale each by its routing weight, and add them back per token (index-add), each a read
    and a write of T·k·H activations (6 passes), on the local T·k/ep rows."""
    return Op(
        name="moe.dispatch",
        op_class=OpClass.ELEMENTWISE,
        act_bytes=6 * T * k / ep * H * b_a,
        efficiency_size=T * k / ep * H,
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
    op = gated_ffn("mlp.ffn", OpClass.GEMM, tokens=T, width=I_d, experts=1, param_bytes=b_w,
                   shard=tp, params=params)
    return [norm("mlp.norm", H, norm_kind), _with_storage(op, params * b_w / tp),
            activation("mlp.act", T, I_d)]


def _with_storage(op: Op, stored: sp.Expr) -> Op:
    return replace(op, stored_bytes=stored)
