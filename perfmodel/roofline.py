"""Roofline time of one op, as sympy:

    t = max(max(FLOPs / (F_peak · η_c(x)),  bytes / (BW · η_m(bytes)),  comm / (BW_link · η_l(comm)))
            + a · min(t_c, t_m),  t_tiles)
        + kernels · t_kernel + fixed latency

t_tiles is the op's tile floor (:attr:`perfmodel.ops.Op.tile_floor`; 0 for most ops): a tiled
kernel with few tiles cannot finish before its waves of K loops, however few bytes it moves
(:func:`perfmodel.ops.moe.tile_floor`). Its K loop already holds the kernel's overlap of loads
and math, so the floor stands in for the whole roofline time, exposed part included.

t_kernel is the fixed cost of one kernel of a compute class (a GEMM's or an attention kernel's);
an op of a memory-bound class (elementwise, copy: :attr:`perfmodel.ops.OpClass.small_kernels`)
pays t_kernel_small per kernel instead, the floor of a small kernel that moves a few bytes. A
profile that gives no separate small-kernel cost prices both alike.

Efficiencies saturate (see :mod:`perfmodel.profile`): η(u) = η_max · u / (u + u_half), where
the compute curve's u is the op's efficiency size x (GEMM rows, tokens per expert, keys
attended) and the memory and link curves' u is the bytes they move. Each op class says which
peak its FLOPs run at (:class:`perfmodel.ops.Peak`): the attention core runs at the attention
peak (bf16) whatever the weight dtype; a class with no peak moves bytes only.

A quantized linear layer (an op with ``quantized`` set, :mod:`perfmodel.ops.quant`) runs at
the scheme's peak F_peak_q, its η_c and η_m scaled by the scheme's kernel multipliers μ_c and
μ_m (profile key ``quantization``); a weight-only kernel also dequantizes every weight element
it reads, n_dq matmul-FLOP equivalents each, at the class's η_c maximum (not its size curve:
that work does not depend on the rows):

    t_c = FLOPs/(F_peak_q·μ_c·η_c(x)) + n_dq·weights/(F_peak_q·μ_c·η_c,max)

n_dq is the scheme file's estimate unless the profile states the engine's own, fitted on its
measured kernels (``quantization.<scheme>.dequant_flops_per_weight``); so is the bytes at which
the quantized kernels move weights at half their η_m (``memory_half``: a fixed cost per kernel
of that many bytes' time, the op class's own x_m where not stated).

An attention kernel (the classes at the attention peak) reading a KV cache stored in another
dtype than the model's (``--kv-dtype fp8``: b_kv bytes per element) moves those bytes at its
η_m times μ_kv, the profile's multiplier for that dtype (``kv_cache``; 1 at the model's own):
FlashAttention-3's fp8 path moves half the bytes of its bf16 one but does not move them as fast
(its V tiles transposed in shared memory for the fp8 MMA, the scales applied per block), so
halving the bytes does not halve the time.

Why those variables. A performance model's time must never fall when the work grows. With
η(u) = η_max·u/(u + u_half), work/η(u) = (work/u)·(u + u_half)/η_max, which is non-decreasing
whenever u and work/u are. Both hold for the compute side: every op's FLOPs are its size
times a per-unit cost that does not shrink as the workload grows (FLOPs per GEMM row; per
row times the experts touched for a grouped GEMM; per key times the mean keys of a query for
attention), so t_c = (FLOPs/x)·(x + x_half)/(F_peak·η_max) grows with B, S, L and top-k. Bytes
are not proportional to the size: weights are read once whatever the rows (a grouped GEMM at
decode reads every touched expert once, however many tokens each gets) and a decode step's
queries are read once whatever the keys. A memory curve in the size would then let the time
fall as rows or keys grow over fixed weights. In the bytes themselves, the memory time is
affine, t_m = (bytes + bytes_half)/(BW·η_max) — the bytes a kernel must have in flight before
it streams at its peak — and non-decreasing by construction; an op that moves no bytes takes
no memory time. An op that reads a cache per sequence (the attention core) also saturates in the
keys C each sequence reads: η_m(C) = η_max·C/(C + C_half), so its cache read of B·C·w bytes
costs B·(C + C_half)·w/(BW·η_max), non-decreasing in B and C (``Op.context_bytes`` = B·w).
The max of non-decreasing parts, and sums of them, are non-decreasing.

The exposed fraction a (profile key ``exposed``, 0 by default) is the part of the shorter of
the compute and memory times that the op's kernels do not hide behind the longer: a kernel that
streams its weights and multiplies them in one software pipeline overlaps the two only as far as
its tiles keep both busy. a·min(t_c, t_m) is non-decreasing too, and 0 for an op that only moves
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from perfmodel.minmax import Max, Min
from perfmodel.ops import Op, Peak
from perfmodel.symbols import (
    bw, efficiency_symbols, link_bw, mu_kv, n_dq, peak, peak_attn, peak_q, quant_efficiency_symbols, t_kernel,
    t_kernel_small,
)

#: The FLOP/s symbol of each compute peak.
PEAK_SYMBOLS = {Peak.MATMUL: peak, Peak.ATTENTION: peak_attn}


@dataclass(frozen=True)
class OpTime:
    """The parts of an op's roofline time, s: compute, memory, link, fixed latency, the part
    of the shorter of compute and memory its kernels leave exposed, and its tile floor."""

    compute: sp.Expr
    memory: sp.Expr
    link: sp.Expr
    latency: sp.Expr
    exposed: sp.Expr = sp.Integer(0)
    tiles: sp.Expr = sp.Integer(0)

    @property
    def total(self) -> sp.Expr:
        """max(max(compute, memory, link) + exposed, tiles) + latency (a bound that is 0, such
        as the link time of an op that moves nothing over a link, is left out of the max: times
        are ≥ 0)."""
        bounds = [t for t in (self.compute, self.memory, self.link) if t != 0] or [sp.Integer(0)]
        roofline = Max(*bounds) + self.exposed
        return (roofline if self.tiles == 0 else Max(roofline, self.tiles)) + self.latency


def efficiency(op_class: str, which: str, size: sp.Expr) -> sp.Expr:
    """η_which(size) = η_max·size/(size + half) of an op class, which ∈ {compute, memory};
    ``size`` in the curve's unit (the op's efficiency size for compute, bytes for memory)."""
    eta = efficiency_symbols(op_class)
    return eta[which] * size / (size + eta[f"{which}_half"])


def transfer_time(nbytes: sp.Expr, rate: sp.Expr, op_class: str, half: sp.Expr | None = None) -> sp.Expr:
    """Seconds to move ``nbytes`` bytes at ``rate`` B/s with η_m saturating in the bytes:
    nbytes/(rate·η_m(nbytes)) = (nbytes + half)/(rate·η_max) when anything moves, and 0 when
    nothing does (the half is weighted by the step θ(nbytes), 0 at 0). Never falling as the
    bytes grow: both terms are non-decreasing in them."""
    eta = efficiency_symbols(op_class)
    half = eta["memory_half"] if half is None else half
    return (nbytes + half * sp.Heaviside(nbytes, 0)) / (rate * eta["memory"])


def op_time(op: Op, subs: dict[sp.Symbol, sp.Expr]) -> OpTime:
    """Roofline time parts of ``op`` after the phase substitutions ``subs``."""
    cls = op.op_class
    if cls.over_link:
        link = transfer_time(op.comm_bytes.subs(subs), link_bw, cls)
        return OpTime(sp.Integer(0), sp.Integer(0), link, op.fixed_latency)
    compute = sp.Integer(0)
    q = op.quantized
    mu = quant_efficiency_symbols(cls)
    if cls.peak is not Peak.NONE:
        size = op.efficiency_size.subs(subs)
        rate = PEAK_SYMBOLS[cls.peak] if q is None else peak_q * mu["compute"]
        compute = op.flops.subs(subs) / (rate * efficiency(cls, "compute", size))
        if q is not None:  # weights dequantized in registers: n_dq FLOP-equivalents per weight read
            compute += n_dq * q.weights.subs(subs) / (rate * efficiency_symbols(cls)["compute"])
        compute = compute * sp.sympify(op.compute_scale).subs(subs)
    moved = op.bytes + efficiency_symbols(cls)["context_half"] * op.context_bytes
    rate = bw if q is None else bw * mu["memory"]
    if cls.peak is Peak.ATTENTION:  # the attention kernels' η_m at the KV cache's dtype
        rate = rate * mu_kv
    memory = transfer_time(moved.subs(subs), rate, cls, None if q is None else mu["memory_half"])
    memory = memory * sp.sympify(op.memory_scale).subs(subs)
    kernels = sp.sympify(op.kernels).subs(subs)  # an expression for a loop over experts
    exposed = (efficiency_symbols(cls)["exposed"] * Min(compute, memory) if cls.peak is not Peak.NONE
               else sp.Integer(0))
    per_kernel = t_kernel_small if cls.small_kernels else t_kernel
    fixed = sp.sympify(op.fixed_latency).subs(subs)  # an expression of the pass's tokens where measured so
    return OpTime(compute, memory, sp.Integer(0), kernels * per_kernel + fixed, exposed,
                  sp.sympify(op.tile_floor).subs(subs))
