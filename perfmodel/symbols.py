"""The base symbols of the cost model, declared once.

Every formula in :mod:`perfmodel.ops` is a sympy expression in these symbols. Numbers enter
only through :func:`sympy.lambdify` at the end. Units: token counts and sizes are element
counts; ``b_*`` are bytes per element; hardware rates are per second.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Mapping

import sympy as sp

_pos_int = dict(positive=True, integer=True)
_nonneg_int = dict(nonnegative=True, integer=True)

# --- workload -------------------------------------------------------------------------------
B = sp.Symbol("B", **_pos_int)  #: sequences in the batch
S = sp.Symbol("S", **_pos_int)  #: input (prompt) tokens per sequence
O = sp.Symbol("O", **_pos_int)  #: output tokens per sequence
L = sp.Symbol("L", **_pos_int)  #: keys a decode step attends to (context length)

# --- one forward pass (phases substitute these) ------------------------------------------
T = sp.Symbol("T", positive=True)  #: tokens processed in the pass, all sequences
P = sp.Symbol("P", positive=True)  #: query-key pairs per sequence per (full-attention) layer
C = sp.Symbol("C", positive=True)  #: cached tokens (KV-cache entries) read per sequence per layer
Pw = sp.Symbol("P_w", positive=True)  #: query-key pairs per sequence, windowed layers
Cw = sp.Symbol("C_w", positive=True)  #: cached tokens read per sequence, windowed layers

# --- architecture -------------------------------------------------------------------------
H = sp.Symbol("H", **_pos_int)  #: hidden size
V = sp.Symbol("V", **_pos_int)  #: vocabulary size
N_layers = sp.Symbol("N_layers", **_pos_int)  #: decoder layers
N_dense = sp.Symbol("N_dense", **_nonneg_int)  #: layers with a dense MLP
N_window = sp.Symbol("N_window", **_nonneg_int)  #: layers with sliding/chunked attention
W = sp.Symbol("W", positive=True)  #: attention window, tokens
n_h = sp.Symbol("n_h", **_pos_int)  #: query heads
n_kv = sp.Symbol("n_kv", **_pos_int)  #: key/value heads
d_h = sp.Symbol("d_h", **_pos_int)  #: head dimension
I_d = sp.Symbol("I_d", **_nonneg_int)  #: dense-MLP intermediate size
E = sp.Symbol("E", **_pos_int)  #: routed experts
k = sp.Symbol("k", **_pos_int)  #: experts per token (top-k)
I_e = sp.Symbol("I_e", **_pos_int)  #: routed-expert intermediate size
n_sh = sp.Symbol("n_sh", **_nonneg_int)  #: shared experts
I_sh = sp.Symbol("I_sh", **_nonneg_int)  #: intermediate size of one shared expert
r_q = sp.Symbol("r_q", **_nonneg_int)  #: MLA query LoRA rank
r_kv = sp.Symbol("r_kv", **_pos_int)  #: MLA key/value latent rank
d_nope = sp.Symbol("d_nope", **_pos_int)  #: MLA non-rotary q/k head dim
d_rope = sp.Symbol("d_rope", **_pos_int)  #: MLA rotary q/k head dim
d_v = sp.Symbol("d_v", **_pos_int)  #: MLA value head dim
sigma = sp.Symbol("sigma", nonnegative=True)  #: routing skew, 0 = uniform, → 1 = k hot experts

# --- numerics (bytes per element) ----------------------------------------------------------
b_w = sp.Symbol("b_w", positive=True)  #: dense weights
b_e = sp.Symbol("b_e", positive=True)  #: routed-expert weights
b_a = sp.Symbol("b_a", positive=True)  #: activations
b_kv = sp.Symbol("b_kv", positive=True)  #: KV cache

# --- quantization of the linear layers (perfmodel.ops.quant; a scheme's numbers) -----------
b_q = sp.Symbol("b_q", positive=True)  #: quantized linear weights (QKV/O, experts, shared, dense MLP)
z_g = sp.Symbol("z_g", nonnegative=True)  #: weight-scale bytes per weight element (block/group scales)
z_c = sp.Symbol("z_c", nonnegative=True)  #: weight-scale bytes per output channel (per-channel scales)
b_aq = sp.Symbol("b_aq", nonnegative=True)  #: bytes per element of activations quantized on the fly
z_ar = sp.Symbol("z_ar", nonnegative=True)  #: activation-scale bytes per row (per-token scales)
z_ae = sp.Symbol("z_ae", nonnegative=True)  #: activation-scale bytes per element (per-group scales)
n_dq = sp.Symbol("n_dq", nonnegative=True)  #: in-kernel dequantization per weight element read, matmul FLOP equivalents

# --- a tiled MoE kernel (perfmodel.ops.moe.tile_floor; a scheme's tiles, a profile's times) --
n_SM = sp.Symbol("n_SM", **_pos_int)  #: streaming multiprocessors of the GPU
N_tile = sp.Symbol("N_tile", **_pos_int)  #: output columns of one tile of the kernel (BLOCK_N)
K_tile = sp.Symbol("K_tile", **_pos_int)  #: input depth one step of a tile's K loop covers (BLOCK_K)
t_tile = sp.Symbol("t_tile", nonnegative=True)  #: fixed time of one tiled GEMM kernel (prologue, epilogue), s
t_kstep = sp.Symbol("t_kstep", nonnegative=True)  #: time of one step of a tile's K loop, s
#: The staged MoE's routing bitmatrix pack (perfmodel.ops.moe.routing_bitmatrix), s: one 32-expert
#: column of its loop, the loop's fixed time (two or more columns), and a single column's pass.
t_bitpack = sp.Symbol("t_bitpack", nonnegative=True)
t_bitpack_loop = sp.Symbol("t_bitpack_loop", nonnegative=True)
t_bitpack_one = sp.Symbol("t_bitpack_one", nonnegative=True)
#: the fused-MoE kernel's memory time at the tiles of a tuned table made for larger passes
f_off = sp.Symbol("f_off", positive=True)
#: the fused-MoE kernel's compute time per share of one expert's weights beyond the L2 cache
s_l2 = sp.Symbol("s_L2", nonnegative=True)
L2 = sp.Symbol("L2", positive=True)  #: the GPU's L2 cache, B

# --- parallelism ---------------------------------------------------------------------------
tp = sp.Symbol("tp", **_pos_int)  #: tensor-parallel degree
ep = sp.Symbol("ep", **_pos_int)  #: expert-parallel degree
pp = sp.Symbol("pp", **_pos_int)  #: pipeline-parallel degree
#: data-parallel ranks: each runs its own B sequences' attention; the MoE layers span all of them
dp = sp.Symbol("dp", **_pos_int)
#: expected largest of g standard normal draws, g the GPUs whole experts are placed over (0 at g = 1)
z_busy = sp.Symbol("z_busy", nonnegative=True)
#: 1 with vLLM's expert parallelism (whole experts over the tp·dp GPUs), 0 without (widths split)
x_ep = sp.Symbol("x_ep", nonnegative=True)

# --- hardware and engine (roofline) ---------------------------------------------------------
peak = sp.Symbol("F_peak", positive=True)  #: dense matmul peak for the compute dtype, FLOP/s
peak_attn = sp.Symbol("F_peak_attn", positive=True)  #: matmul peak of the attention core (bf16), FLOP/s
peak_q = sp.Symbol("F_peak_q", positive=True)  #: matmul peak of the quantized linear layers, FLOP/s
bw = sp.Symbol("BW", positive=True)  #: HBM bandwidth, B/s
mu_kv = sp.Symbol("mu_kv", positive=True)  #: attention kernels' η_m with the KV cache in its dtype, × the model dtype's
link_bw = sp.Symbol("BW_link", positive=True)  #: scale-up link bandwidth per GPU, B/s
link_lat = sp.Symbol("t_link", nonnegative=True)  #: latency of one collective step, s
t_kernel = sp.Symbol("t_kernel", nonnegative=True)  #: fixed cost per kernel of a compute class (GEMM, attention), s
t_kernel_small = sp.Symbol("t_kernel_small", nonnegative=True)  #: fixed cost per kernel of a memory-bound class (elementwise, copy), s
t_layer = sp.Symbol("t_layer", nonnegative=True)  #: fixed cost per layer per pass, s
t_step = sp.Symbol("t_step", nonnegative=True)  #: fixed cost per forward pass, s
t_eager_layer = sp.Symbol("t_eager_layer", nonnegative=True)  #: host launch time per layer (eager), s
t_eager_step = sp.Symbol("t_eager_step", nonnegative=True)  #: host time per eager pass, s
t_eager_seq = sp.Symbol("t_eager_seq", nonnegative=True)  #: host time per sequence of an eager step, s
t_uncompiled = sp.Symbol("t_uncompiled", nonnegative=True)  #: host time per uncompiled op of an eager step, s
t_moe_host = sp.Symbol("t_moe_host", nonnegative=True)  #: host time per layer of a scheme's MoE kernel launched from Python, s
t_piece_layer = sp.Symbol("t_piece_layer", nonnegative=True)  #: host time per layer of a piecewise-graph pass, s
t_dense_launch = sp.Symbol("t_dense_launch", nonnegative=True)  #: host time per dense-MLP layer of a launched pass, s
t_launch_serial = sp.Symbol("t_launch_serial", nonnegative=True)  #: host time of a launched step its GPU work does not hide, s
t_launch_serial_seq = sp.Symbol("t_launch_serial_seq", nonnegative=True)  #: what each further sequence adds to it, s
t_mla_split = sp.Symbol("t_mla_split", nonnegative=True)  #: host time per MLA layer of a step holding prompts beside decodes, s
t_req = sp.Symbol("t_req", nonnegative=True)  #: host time per request of one offline batch call (admission, output), s
t_host_step = sp.Symbol("t_host_step", nonnegative=True)  #: host time of one graph-replayed decode step, s
t_host_seq = sp.Symbol("t_host_seq", nonnegative=True)  #: host time per sequence of one graph-replayed decode step, s
t_draft = sp.Symbol("t_draft", nonnegative=True)  #: host time per draft pass (speculative decoding), s
t_sync = sp.Symbol("t_sync", nonnegative=True)  #: host time per sync of an eager pass (an expert of a loop), s
p_host = sp.Symbol("p_host", positive=True)  #: the host's probe time (a fixed pure-Python loop), ms
p_ref = sp.Symbol("p_ref", positive=True)  #: the probe time at which a profile's host times hold, ms
alpha_host = sp.Symbol("alpha_host", nonnegative=True)  #: elasticity of the engine's host time to the probe's
sigma_w = sp.Symbol("sigma_w", nonnegative=True)  #: launch noise: sd of log host time, drawn anew each launch
sigma_f = sp.Symbol("sigma_f", nonnegative=True)  #: launch noise: sd of log host time, fast-varying part
tau_f = sp.Symbol("tau_f", positive=True)  #: launch noise: correlation time of the fast part, s
sigma_s = sp.Symbol("sigma_s", nonnegative=True)  #: launch noise: sd of log host time, slow-varying part
tau_s = sp.Symbol("tau_s", positive=True)  #: launch noise: correlation time of the slow part, s
lag = sp.Symbol("Delta_t", nonnegative=True)  #: time between two launches, s
T_run = sp.Symbol("T_run", positive=True)  #: launch noise: the span of one run's launches, s
z_launch = sp.Symbol("z", real=True)  #: launch noise: one drifting part of the log host time, at the last launch
eps_launch = sp.Symbol("epsilon", real=True)  #: launch noise: a standard normal draw
M_chunk = sp.Symbol("M_chunk", positive=True)  #: prompt tokens per prefill step (chunked prefill)
N_seqs = sp.Symbol("N_seqs", positive=True)  #: most sequences the engine runs at once (max_num_seqs)
# the engine's activation reserve (perfmodel.memory.reserved_activation_bytes; a profile's numbers)
a_res = sp.Symbol("a_res", nonnegative=True)  #: fixed activation bytes of its start-up pass
b_res = sp.Symbol("b_res", nonnegative=True)  #: hidden-width copies per token held at that pass's peak
c_res = sp.Symbol("c_res", nonnegative=True)  #: copies of a gated MLP's three intermediates per token
s_logit = sp.Symbol("s_logit", nonnegative=True)  #: bytes per logit of its sampler's start-up pass
M_graph = sp.Symbol("M_graph", nonnegative=True)  #: largest pass (tokens) replayed from a captured CUDA graph


@functools.cache
def efficiency_symbols(op_class: str) -> Mapping[str, sp.Symbol]:
    """η symbols of one op class: compute/memory maxima and half-saturation sizes (compute in
    the op's size, memory in bytes, context in cached tokens per sequence), and the fraction of
    the shorter of its compute and memory times that its kernels leave exposed (made once per
    class, read-only)."""
    return MappingProxyType({
        "compute": sp.Symbol(f"eta_c_{op_class}", positive=True),
        "memory": sp.Symbol(f"eta_m_{op_class}", positive=True),
        "compute_half": sp.Symbol(f"x_c_{op_class}", nonnegative=True),
        "memory_half": sp.Symbol(f"x_m_{op_class}", nonnegative=True),
        "context_half": sp.Symbol(f"x_k_{op_class}", nonnegative=True),
        "exposed": sp.Symbol(f"a_x_{op_class}", nonnegative=True),
    })


@functools.cache
def quant_efficiency_symbols(op_class: str) -> Mapping[str, sp.Symbol]:
    """μ symbols of one op class: a quantization scheme's kernels' efficiency, as multipliers
    of the class's η_c (compute) and η_m (memory) maxima (made once per class, read-only)."""
    return MappingProxyType({
        "compute": sp.Symbol(f"mu_c_{op_class}", positive=True),
        "memory": sp.Symbol(f"mu_m_{op_class}", positive=True),
        "memory_half": sp.Symbol(f"x_mq_{op_class}", nonnegative=True),
    })
