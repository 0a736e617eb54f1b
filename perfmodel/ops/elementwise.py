"""Memory-bound elementwise ops: normalization (with the residual add before it), RoPE."""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from perfmodel.ops.base import Op, OpClass
from perfmodel.symbols import T, b_a, b_w


def streaming(name: str, elements: sp.Expr, passes: int, kernels: int = 1) -> Op:
    """A memory-bound op over ``elements`` activations: ``passes`` tensors of that size read
    or written (a residual add: 3; a plain device copy: 2), no parameters."""
    return Op(
        name=name,
        op_class=OpClass.ELEMENTWISE,
        act_bytes=passes * elements * b_a,
        efficiency_size=elements,
        kernels=kernels,
    )


def residual_add(name: str, width: sp.Expr) -> Op:
    """The residual add over ``width`` per token: reads two tensors and writes one."""
    return streaming(name, T * width, passes=3)


def norm(name: str, width: sp.Expr, kind: str = "rms", residual: bool = True) -> Op:
    """RMSNorm/LayerNorm over ``width`` per token, optionally fused with the residual add.

    Bytes: the add reads two tensors and writes one (:func:`residual_add`), the norm reads
    one and writes one (5 or 2 passes over T·width activations). Parameters: a scale (and a
    bias for LayerNorm).
    """
    params = width * (2 if kind == "layer" else 1)
    op = Op(
        name=name,
        op_class=OpClass.ELEMENTWISE,
        act_bytes=2 * T * width * b_a,
        weight_bytes=params * b_w,
        stored_bytes=params * b_w,
        params=params,
        efficiency_size=T * width,
    )
    if residual:
        add = residual_add(name, width)
        op = replace(op, act_bytes=add.act_bytes + op.act_bytes, kernels=add.kernels + op.kernels)
    return op


def rope(name: str, width: sp.Expr) -> Op:
    """Rotary embedding over ``width`` q+k channels per token: one read and one write."""
    return Op(
        name=name,
        op_class=OpClass.ELEMENTWISE,
        act_bytes=2 * T * width * b_a,
        efficiency_size=T * width,
    )


def qk_norm(name: str, width: sp.Expr, params: sp.Expr) -> Op:
    """Normalization of queries and keys (QK-norm) over ``width`` channels per token."""
    return Op(
        name=name,
        op_class=OpClass.ELEMENTWISE,
        act_bytes=2 * T * width * b_a,
        weight_bytes=params * b_w,
        stored_bytes=params * b_w,
        params=params,
        efficiency_size=T * width,
        kernels=2,
    )
