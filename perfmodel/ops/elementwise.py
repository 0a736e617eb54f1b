"""Memory-bound elementwise ops: normalization (with the residual add before it), RoPE."""

from __future__ import annotations

import sympy as sp

from perfmodel.ops.base import Op
from perfmodel.symbols import T, b_a, b_w


def norm(name: str, width: sp.Expr, kind: str = "rms", residual: bool = True) -> Op:
    """RMSNorm/LayerNorm over ``width`` per token, optionally fused with the residual add.

    Bytes: the add reads two tensors and writes one, the norm reads one and writes one
    (5 or 2 passes over T·width activations). Parameters: a scale (and a bias for LayerNorm).
    """
    passes = 5 if residual else 2
    params = width * (2 if kind == "layer" else 1)
    return Op(
        name=name,
        op_class="elementwise",
        act_bytes=passes * T * width * b_a,
        weight_bytes=params * b_w,
        stored_bytes=params * b_w,
        params=params,
        size=T * width,
        kernels=2 if residual else 1,
    )


def rope(name: str, width: sp.Expr) -> Op:
    """Rotary embedding over ``width`` q+k channels per token: one read and one write."""
    return Op(
        name=name,
        op_class="elementwise",
        act_bytes=2 * T * width * b_a,
        size=T * width,
    )


def qk_norm(name: str, width: sp.Expr, params: sp.Expr) -> Op:
    """Normalization of queries and keys (QK-norm) over ``width`` channels per token."""
    return Op(
        name=name,
        op_class="elementwise",
        act_bytes=2 * T * width * b_a,
        weight_bytes=params * b_w,
        stored_bytes=params * b_w,
        params=params,
        size=T * width,
        kernels=2,
    )
