"""Quantized linear layers: their weight bytes with scales, and on-the-fly activation quantization.

A quantization scheme (:mod:`perfmodel.quantization`, data in ``specs/quantization.yaml``)
applies to the linear layers: the QKV/O projections, the routed and shared experts and the
dense MLP (not the embedding, the lm_head, the router or the norms, as vLLM leaves them), or
those of them it names (:data:`LINEAR_LAYERS`; gpt-oss's MXFP4 checkpoints: the routed experts
alone). It
stores their weights at b_q bytes per element plus scales: z_g bytes per weight element (one
scale per 128×128 block, or per group of 128 weights along the input) and z_c bytes per output
channel, so a matrix of ``elements`` weights and ``channels`` output channels takes

    elements·(b_q + z_g) + channels·z_c   bytes

(a per-tensor scale, 4 bytes per matrix, is left out as negligible). Its GEMMs run at the
scheme's peak (F_peak_q) and kernel efficiency, and a weight-only kernel dequantizes in
registers the weights it reads (:func:`perfmodel.roofline.op_time`).

A W8A8 scheme with dynamic activation scales quantizes each GEMM's input just before it:
one elementwise pass (:func:`activation_quant`) that reads the bf16 rows and writes them at
b_aq bytes per element, plus their scales (z_ar bytes per row for per-token scales, z_ae per
element for per-group scales). The routed experts' inputs are quantized inside vLLM's fused-MoE
op, an opaque custom op its compiled code calls, so their quantization is launched from Python:
a launched eager pass pays the scheme's host time per layer for it, t_moe_host (the engine
profile's ``quantization.<scheme>.host_layer_s``; :attr:`perfmodel.ops.base.Op.launch_host`), a
replayed CUDA graph none.
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from perfmodel.ops.base import Op, OpClass, Role
from perfmodel.symbols import b_a, b_aq, t_moe_host, z_ae, z_ar, z_c, z_g

#: The linear layers a scheme can store quantized: the QKV and O projections, the routed
#: experts, the shared experts, the dense MLP.
LINEAR_LAYERS = ("attention", "experts", "shared_experts", "dense_mlp")


def weight_bytes(elements: sp.Expr, channels: sp.Expr, bytes_per_element: sp.Expr) -> sp.Expr:
    """Bytes of quantized weights: ``elements`` weights at ``bytes_per_element`` (b_q)
    plus their block/group scales (z_g each) and per-channel scales (z_c per output channel)."""
    return elements * (bytes_per_element + z_g) + channels * z_c


def activation_quant(name: str, inputs: tuple[tuple[sp.Expr, sp.Expr], ...]) -> Op:
    """Dynamic quantization of a quantized layer's GEMM inputs, one kernel per input matrix
    of (rows, width): read each element (b_a), write it quantized (b_aq) and its scales
    (z_ae per element, z_ar per row)."""
    elements = sp.Add(*[rows * width for rows, width in inputs])
    rows = sp.Add(*[rows for rows, _ in inputs])
    return Op(
        name=name,
        op_class=OpClass.ELEMENTWISE,
        act_bytes=elements * (b_a + b_aq + z_ae) + rows * z_ar,
        efficiency_size=elements,
        kernels=len(inputs),
    )


def with_activation_quant(ops: list[Op]) -> list[Op]:
    """``ops`` with an :func:`activation_quant` op (``<name>.act_quant``) before each
    quantized linear layer (an op whose ``quantized`` is set). The routed experts' (inside the
    fused-MoE op, launched from Python) carries t_moe_host as its host time in a launched pass,
    unless the experts' kernel already does (a tiled kernel's launches)."""
    out: list[Op] = []
    for op in ops:
        if op.quantized is not None and op.quantized.inputs:
            quant = activation_quant(f"{op.name}.act_quant", op.quantized.inputs)
            if op.role is Role.ROUTED_EXPERTS and sp.sympify(op.launch_host) == 0:
                quant = replace(quant, launch_host=t_moe_host)
            out.append(quant)
        out.append(op)
    return out
