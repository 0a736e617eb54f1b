"""Roofline time of one op, as sympy:

    t = max(FLOPs / (F_peak · η_c(x)),  bytes / (BW · η_m(x)),  comm / (BW_link · η_link))
        + kernels · t_kernel + fixed latency

with η(x) = η_max · x / (x + x_half) over the op's size x (see :mod:`perfmodel.profile`).
The attention core runs at the attention peak (bf16) whatever the weight dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from perfmodel.ops import Op
from perfmodel.symbols import bw, efficiency_symbols, link_bw, peak, peak_attn, t_kernel


@dataclass(frozen=True)
class OpTime:
    """The parts of an op's roofline time, s: compute, memory, link, and fixed latency."""

    compute: sp.Expr
    memory: sp.Expr
    link: sp.Expr
    latency: sp.Expr

    @property
    def total(self) -> sp.Expr:
        """max(compute, memory, link) + latency."""
        return sp.Max(self.compute, self.memory, self.link) + self.latency


def efficiency(op_class: str, which: str, size: sp.Expr) -> sp.Expr:
    """η_which(size) of an op class, which ∈ {compute, memory}."""
    eta = efficiency_symbols(op_class)
    return eta[which] * size / (size + eta[f"{which}_half"])


def op_time(op: Op, subs: dict[sp.Symbol, sp.Expr]) -> OpTime:
    """Roofline time parts of ``op`` after the phase substitutions ``subs``."""
    size = op.size.subs(subs)
    f_peak = peak_attn if op.op_class == "attention" else peak
    if op.op_class == "comm":
        link = op.comm_bytes.subs(subs) / (link_bw * efficiency("comm", "memory", size))
        return OpTime(sp.Integer(0), sp.Integer(0), link, op.fixed_latency)
    compute = op.flops.subs(subs) / (f_peak * efficiency(op.op_class, "compute", size))
    memory = op.bytes.subs(subs) / (bw * efficiency(op.op_class, "memory", size))
    return OpTime(compute, memory, sp.Integer(0), op.kernels * t_kernel + op.fixed_latency)
