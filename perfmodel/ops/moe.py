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

Tile padding. A fused-MoE kernel (vLLM's ``moe_align_block_size``) pads each touched
expert's rows to a multiple of BLOCK_SIZE_M = M; the grouped GEMM computes the padded rows
(:func:`padded_rows`), while the bytes it moves follow the real rows.

Tiles in waves. A tiled MoE kernel (vLLM's MXFP4 MoE kernel on Hopper, triton_kernels'
``matmul_ogs``, whose name gives its tile, ``16x256x128``: BLOCK_M × BLOCK_N × BLOCK_K) gives
each CTA one N_tile-wide block of output columns of one touched expert, and each SM holds one
such CTA at a time. A CTA walks the input dimension in ⌈K/K_tile⌉ steps, each a round trip to
HBM for a K_tile × N_tile block of weights, dequantized before the multiply. With few tiles
(4 experts × ⌈5760/256⌉ = 92 for gpt-oss's gate|up GEMM at B = 1, on 132 SMs) the kernel
streams its bytes at a fraction of HBM's bandwidth, and its time is the K loops of its waves,
not its bytes (:func:`tile_floor`).

Tuned tables made for larger passes. vLLM's Triton fused-MoE kernel takes its tiles from a
table tuned per expert shape and GPU, the entry nearest the pass's tokens, else a default rule.
A few of the tables it ships start at hundreds of tokens (Phi-3.5-MoE's experts in fp8 on the
H100: 256 tokens and up, tiles 64 × 256 × 64), so a decode step of a few to 64 tokens runs
tiles made for 256 or more. On the H100 that kernel streamed the same experts' weights 1.41×
slower than at the default rule's tiles, at every batch measured (1 to 64 sequences): a factor
f_off on its memory time at every pass of such a shape (:func:`off_table_scale`; the tables:
``specs/vllm-moe-tables.yaml``).

Tables, timed. Where the kernel itself was timed on a shape at the shipped table and at the
default rule, pass by pass (``scripts/bench_moe_tiles.py``), the difference Δt(T) of the two
times is added to the experts' time, per layer (:func:`table_extra`): the table's entry a pass of
T tokens runs is the one whose key is nearest T (``specs/vllm-moe-tables.yaml`` lists the keys),
and Δt(T) runs linearly between the passes measured in that entry's range, stepping where the
entry changes; so that the experts' own terms are the default rule's. On a table made for
larger passes it stands in place of f_off: a table's entries are
tiles of different kinds (64 × 256 with two stages, 128 × 128 with four, ...), and what the
table costs moves with the entry a pass meets (Phi-3.5-MoE's experts in fp8 on the H100: the
table's time 1.3–1.45 times the default rule's up to 256 tokens, 1.1–1.75 above, by entry). A
difference, not a ratio: the timed op holds the quantization of its inputs, the expert
alignment, the activation and the top-k sum beside its GEMMs, the same kernels at either tile
choice, which a ratio would spread over the GEMMs alone.

Experts larger than the L2 cache. The fused kernel walks a pass's rows in blocks, and each block
streams the tiles of its expert's weights; while one expert's weights fit in L2 the blocks after
the first find them there, beyond it they fetch the part that does not fit from HBM again. Timed
alone on the H100 in bf16 above 256 tokens (compute-bound passes), the kernel ran 0.98 of the
model's time at 44 MB of weights per expert, 0.91 at 88 MB, 0.86 at 157-176 MB and 0.83 at 352
MB, where the fused-MoE compute fraction was fitted on experts of 13-17 MB. A factor on the
experts' compute time, 1 + s_L2 · max(0, 1 − L2/w) for an expert of w weight bytes on one GPU
(:func:`l2_spill_scale`): the share of its weights L2 cannot hold, at a cost s_L2 fitted on the
kernel's timings.

Three implementations of the routed experts (:data:`MOE_IMPLS`): ``fused`` (one grouped GEMM
per projection for the whole block, the kernels a fused MoE launches), ``staged`` (the same
grouped GEMMs with the routing, the activation and the top-k sum as kernels of their own
between them) and ``unfused`` (a
loop over the touched experts, as an engine without a fused MoE kernel runs them, e.g.
transformers' ``eager`` experts): per touched local expert the host finds the expert's rows
in the routing mask (``torch.where``: it waits for the GPU), gathers them, runs a dense
gate|up GEMM, the activation and multiply, a dense down GEMM, and scales the rows by their
routing weights into the output (index-add). Kernel launches and host synchronisations
grow with the distinct experts D, each GEMM runs as a dense GEMM of the expert's rows (the
dense GEMM's efficiency at T·k/D rows, not the grouped GEMM's), and the gathered and scaled
rows make extra trips through HBM.

The staged block is vLLM's MXFP4 MoE at ``--moe-backend triton_unfused`` (its
``UnfusedOAITritonExperts``, vLLM 0.26): the router's top-k ids become triton_kernels' routing
data on the GPU (``make_routing_data``: a bitmatrix of the chosen experts, one bit each, packed
by ``pack_bitmatrix``, then the mask's row and column sums), the gate|up GEMM writes its output
in expert order, a gather puts it back in token order for the activation, a second gather
returns the activated rows to expert order for the down GEMM, and a top-k sum
(``masked_moe_sum``) adds each token's k rows, where the fused kernel's own reduction did.
The pack runs one program per 512 tokens, and each walks the bitmatrix's ⌈E/32⌉ columns of
32-bit words one after another: a time that follows the experts, not the tokens, on one SM,
and one column's pass needs no loop (:func:`routing_bitmatrix`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import sympy as sp

from perfmodel.codecache import lambdify_named
from perfmodel.minmax import Max, Min
from perfmodel.ops.base import Op, OpClass, Quantized, Role
from perfmodel.ops.comm import all_to_all, dp_gather
from perfmodel.ops.elementwise import norm
from perfmodel.ops.quant import weight_bytes
from perfmodel.symbols import (E, H, I_d, I_e, I_sh, K_tile, L2, M_chunk, N_tile, T, b_a, b_e, b_q, b_w, dp, ep,
                               f_off, k, n_SM, n_sh, s_l2, sigma, t_bitpack, t_bitpack_loop, t_bitpack_one, t_kstep,
                               t_moe_host, t_tile, tp, x_ep, z_busy)

if TYPE_CHECKING:  # the specs need pydantic; the ops read only their fields
    from perfmodel.specs.model import MoESpec

#: How the routed experts run: one fused grouped-GEMM block, the same GEMMs with the routing,
#: activation and top-k sum staged apart, or a loop over touched experts.
MOE_IMPLS = ("fused", "staged", "unfused")

#: Kernels the staged block launches per layer beyond the fused block's routing and dispatch
#: (``moe.dispatch``'s four), as vLLM 0.26's ``UnfusedOAITritonExperts`` runs them and its
#: profiled decode steps list them (gpt-oss-120b, H200): in ``make_routing_data`` the ids' cast to
#: int16 and the weights' to bf16, the bitmatrix's and the mask sums' zero fills (3), the
#: invalid-slot ``torch.where`` and the copy of the sums (``memcpy32_post``); the two gathers
#: between the GEMMs; the activation's own kernel (the fused kernel computes it in the gate|up
#: GEMM's epilogue); the top-k sum, which replaces the fused kernel's reduction, and the
#: triton_kernels top-k it no longer runs (the router's top-k runs instead): 12 more, 2 fewer.
#: The bitmatrix pack is an op of its own (:func:`routing_bitmatrix`).
STAGED_DISPATCH_KERNELS = 10
#: Experts per 32-bit word of the staged block's routing bitmatrix (a bit each).
BITMATRIX_WORD = 32

#: Kernel launches of the unfused loop (transformers 5.17's ``eager`` experts on torch 2.11
#: CUDA, as its code runs). Before the loop (``moe.dispatch``): the output's zero fill, the
#: one-hot routing mask (zero fill, scatter), its per-expert sum and test, and the touched
#: experts' ``nonzero`` (count, select, write indices: 4). Per touched expert: in
#: ``moe.dispatch`` the test of the expert's index, ``torch.where`` on its mask row (a
#: ``nonzero``: 4), the gather of its rows, the gather of their routing weights, the scale and
#: the index-add (10); in ``moe.experts_act`` the SiLU and the multiply (2); in ``moe.experts``
#: the gate|up and the down GEMM (2). Besides those, the device-to-host copies of the loop's
#: synchronisations (:data:`UNFUSED_COPIES_PER_EXPERT`), which run on the stream like a small
#: kernel (their host wait is ``t_sync``); 19 per expert in all, as profiled eager steps show.
UNFUSED_DISPATCH_KERNELS = 9
UNFUSED_DISPATCH_KERNELS_PER_EXPERT = 10
#: Device-to-host copies per touched expert: the scalar reads of its index and the sizes its
#: ``nonzero`` returns (the eager decode steps of OLMoE-1B-7B at B = 1 to 64 and Qwen1.5-MoE at
#: B = 1 on the H200: 7.3–8.7 µs of copies per touched expert).
UNFUSED_COPIES_PER_EXPERT = 5
UNFUSED_ACT_KERNELS_PER_EXPERT = 2
UNFUSED_GEMM_KERNELS_PER_EXPERT = 2
#: Serial host stalls of the unfused loop per touched expert: the loop waits for the GPU
#: several times per expert (the scalar reads of its index, ``torch.where`` on its mask row),
#: counted as one stall whose host time is ``t_sync`` (:func:`perfmodel.prediction.pass_time`).
UNFUSED_SYNCS_PER_EXPERT = 1

#: Rows of a fused-MoE tile by tokens per pass, as ((at most T tokens, M rows), ...), the
#: last for any larger T: here one tier of M = 1, i.e. no padding.
NO_PADDING: tuple[tuple[float, int], ...] = ((math.inf, 1),)


def effective_experts() -> sp.Expr:
    """E_σ: the population uniform routing would need to touch as few experts as skewed does."""
    return (1 - sigma) * E + sigma * k


def expert_tokens() -> sp.Expr:
    """Tokens the routed experts of one GPU serve per pass: the T of each of the dp data-parallel
    ranks, whose MoE layers run together (vLLM gathers the ranks' tokens before the experts),
    dp·T; T at dp = 1."""
    return dp * T


def expert_split() -> tuple[sp.Expr, sp.Expr]:
    """How the routed experts are cut over the tp·dp GPUs of an expert group (each of the
    model's ep groups, :mod:`perfmodel.specs.layout`): (groups, shard) = (ep·(tp·dp)^x_ep,
    (tp·dp)^(1 − x_ep)), one GPU holding E/groups experts of width I/shard and computing the rows
    routed to them. Without vLLM's expert parallelism (x_ep = 0): the widths split over the tp·dp
    GPUs, (ep, tp·dp), every GPU computing every routed row at its slice; with it (x_ep = 1,
    ``--enable-expert-parallel``): whole experts, (ep·tp·dp, 1), every GPU the rows routed to its
    experts. The bytes and FLOPs of the GEMMs are the same under uniform routing; the rows each
    GPU moves through its dispatch differ, and so does the busiest GPU's load (:func:`local_load`)."""
    cut = tp * dp
    return ep * cut**x_ep, cut ** (1 - x_ep)


@functools.cache
def _split_numbers() -> tuple[tuple[str, ...], Any]:
    """(argument names in the function's order, the function) of :func:`expert_split`, compiled
    once and kept on disk (:func:`perfmodel.codecache.lambdify_named`)."""
    _, order, fn = lambdify_named("moe.expert_split", lambda: dict(zip(("groups", "shard"), expert_split())),
                                  ("tp", "ep", "dp", "x_ep"))
    return order, fn


def expert_cut(tp_: Any, ep_: Any, dp_: Any, expert_parallel: bool) -> tuple[Any, Any]:
    """:func:`expert_split` at numbers or numpy arrays of tp, ep and dp, with or without vLLM's
    expert parallelism: (groups, shard), lambdified."""
    order, fn = _split_numbers()
    values = {"tp": tp_, "ep": ep_, "dp": dp_, "x_ep": float(expert_parallel)}
    groups, shard = fn(*[values[name] for name in order])
    return groups, shard


def busiest_z(tp_: Any, ep_: Any, dp_: Any, expert_parallel: bool) -> Any:
    """z_busy of :func:`local_load` at numbers or numpy arrays of a layout: the expected largest of
    g standard normal draws, g the GPUs holding whole experts (:func:`expert_cut`'s groups;
    :func:`perfmodel.specs.layout.expected_max_normal`)."""
    from perfmodel.specs.layout import expected_max_normal

    return expected_max_normal(expert_cut(tp_, ep_, dp_, expert_parallel)[0])


def local_load(tokens: sp.Expr, groups: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(rows, touched experts) of the busiest of ``groups`` GPUs that hold whole experts, E/g
    each, when ``tokens`` tokens are routed: a step waits for its slowest GPU. Each of the
    tokens·k routed rows lands on a given GPU with probability 1/g, so its rows have mean
    tokens·k/g and variance tokens·k·(1/g)·(1 − 1/g); each of its E/g experts is touched with
    probability p = D/E (:func:`distinct_experts`), so its touched experts have mean D/g and
    variance (E/g)·p·(1 − p), at most E/g. The busiest GPU's is taken as mean + z_busy·σ, z_busy the
    expected largest of g standard normal draws (:func:`perfmodel.specs.layout.expected_max_normal`;
    0 at g = 1, where this is the whole layer's tokens·k rows and D experts)."""
    d = distinct_experts(tokens)
    p = d / E
    rows = tokens * k / groups + z_busy * sp.sqrt(tokens * k * (1 / groups) * (1 - 1 / groups))
    return rows, Min(E / groups, d / groups + z_busy * sp.sqrt(E / groups * p * (1 - p)))


def distinct_experts(tokens: sp.Expr = T) -> sp.Expr:
    """Expected distinct experts touched by ``tokens`` routed tokens (whole model, not per GPU)."""
    e_eff = effective_experts()
    return e_eff * (1 - (1 - k / e_eff) ** tokens)


def tokens_per_expert(tokens: sp.Expr = T) -> sp.Expr:
    """Mean rows of each touched expert's GEMM: T·k / D."""
    return tokens * k / distinct_experts(tokens)


def row_tiers(pairs) -> tuple[tuple[float, int], ...]:
    """Tiers of tile rows as data gives them, ((bound or None, M), ...), as :func:`block_rows`
    takes them: each bound a float, the last (None: any more) infinite."""
    return tuple((math.inf if bound is None else float(bound), int(m)) for bound, m in pairs)


def block_rows(tiers: tuple[tuple[float, int], ...], tokens: sp.Expr = T) -> sp.Expr:
    """BLOCK_SIZE_M of a fused-MoE kernel as a step function of the pass's ``tokens``:
    ``tiers`` = ((t_1, M_1), (t_2, M_2), ...): M_1 up to t_1 tokens, M_2 up to t_2, ...; the
    last tier holds for any larger T. As sympy: M_1 + Σ_i (M_{i+1} − M_i)·θ(T − t_i), with
    θ(0) = 0 (a tier includes its bound)."""
    rows = sp.Integer(tiers[0][1])
    for (bound, m), (_, m_next) in zip(tiers, tiers[1:]):
        if m_next != m:
            rows += (m_next - m) * sp.Heaviside(tokens - bound, 0)
    return rows


def padded_rows(rows: sp.Expr, experts: sp.Expr, block: sp.Expr) -> sp.Expr:
    """Rows a fused-MoE grouped GEMM computes when ``rows`` routed rows fall on ``experts``
    touched experts and each expert's rows are padded to a multiple of ``block`` (M):

        max(D·M, rows + D·(M − 1)/2)

    Every touched expert computes at least one tile of M rows (exact while each gets at most
    M rows: decode, where the padding matters most); once experts get many rows, their counts
    spread over every remainder mod M and pad (M − 1)/2 rows each on average. Never below
    ``rows``; ``rows`` itself when M = 1 (no padding). The expectation over random routing, so
    it does not vanish when the mean rows per expert happen to be a multiple of M: individual
    counts still scatter around the mean."""
    if sp.sympify(block) == 1:
        return rows
    return Max(experts * block, rows + experts * (block - 1) / 2)


def tile_floor(experts: sp.Expr, gemms: tuple[tuple[sp.Expr, sp.Expr], ...]) -> sp.Expr:
    """The least time of a tiled grouped GEMM kernel per GEMM of ``gemms`` ((N, K): output
    columns and input depth per expert) over ``experts`` touched experts, s:

        Σ_g  t_tile + ⌈experts·⌈N_g/N_tile⌉ / n_SM⌉ · ⌈K_g/K_tile⌉ · t_kstep

    one tile per touched expert and N_tile-wide column block (a decode's few rows per expert fit
    one row block), one tile per SM at a time: the kernel's waves, each a K loop of
    ⌈K/K_tile⌉ steps of t_kstep, after a fixed t_tile. A floor in every regime: a prefill's
    experts hold more row blocks, whose work the roofline's compute bound costs. Non-decreasing
    in the experts, and so in the tokens."""
    return sp.Add(*[t_tile + sp.ceiling(experts * sp.ceiling(n / N_tile) / n_SM) * sp.ceiling(depth / K_tile)
                    * t_kstep for n, depth in gemms])


def off_table_scale(tuned_from: int) -> sp.Expr:
    """The factor on a fused-MoE kernel's memory time when its engine's tuned tile table starts
    at ``tuned_from`` tokens per pass: f_off at every pass, 1 for ``tuned_from`` 0 (no such
    table). Measured where it matters, the decode steps below the table's start (vLLM takes the
    entry nearest the pass, so all of them run the first entry's tiles); assumed beyond, where
    the table's other entries have tiles of the same kind and a prefill's experts are mostly
    compute-bound. Constant, so a step's time stays non-decreasing in its tokens, as it must
    where the tiles are the same."""
    return f_off if tuned_from > 0 else sp.Integer(1)


def expert_weight_bytes(quantized: bool = False) -> sp.Expr:
    """One routed expert's weight bytes on one GPU: its three matrices of H × I/shard
    (:func:`expert_split`), at b_q per weight where its scheme stores them quantized, else b_e."""
    _, shard = expert_split()
    return 3 * H * I_e / shard * (b_q if quantized else b_e)


def l2_spill_scale(expert_bytes: sp.Expr) -> sp.Expr:
    """The factor on a fused-MoE kernel's compute time for experts of ``expert_bytes`` weight
    bytes each on one GPU: 1 + s_L2 · max(0, 1 − L2/w), the share of one expert's weights that
    the L2 cache (L2 bytes) cannot hold while the kernel's row blocks stream them, at a cost s_L2
    per unit share (a profile's ``options.moe_l2_spill``; 0: none). 1 for experts that fit."""
    return 1 + s_l2 * Max(0, 1 - L2 / expert_bytes)


#: vLLM's default fused-MoE tiles group this many row blocks per column block where a pass holds
#: more than :data:`GROUPED_ABOVE` tokens per local expert, else 1 (``get_default_config`` of
#: vLLM 0.26, bf16 and fp8 per-tensor: ``GROUP_SIZE_M = 16 if M // E > 128 else 1``).
GROUP_ROWS = 16
GROUPED_ABOVE = 128


def group_rows(tokens: sp.Expr, experts: sp.Expr) -> sp.Expr:
    """GROUP_SIZE_M of vLLM's default fused-MoE tiles for a pass of ``tokens`` tokens over
    ``experts`` local experts: :data:`GROUP_ROWS` where ⌊tokens/experts⌋ > :data:`GROUPED_ABOVE`
    (whole tokens ≥ (GROUPED_ABOVE + 1)·experts), else 1."""
    return 1 + (GROUP_ROWS - 1) * sp.Heaviside(tokens - (GROUPED_ABOVE + 1) * experts + sp.Rational(1, 2), 0)


def row_blocks(rows: sp.Expr, experts: sp.Expr, block: sp.Expr, tokens: sp.Expr) -> sp.Expr:
    """Row blocks of ``block`` (M) rows per touched expert when ``rows`` routed rows of a pass
    of ``tokens`` tokens fall on ``experts`` touched experts:

        min(padded/(D·M), ⌈tokens/M⌉)

    their padded rows over M (:func:`padded_rows`: counts that scatter around their mean sit
    anywhere on the grid of blocks, half a block of padding each on average), and never more
    than ⌈tokens/M⌉, since a token picks an expert once: an expert holds at most ``tokens``
    rows (top-k = E at 16 tokens and M = 16: one block each, exactly)."""
    return Min(padded_rows(rows, experts, block) / (block * experts), sp.ceiling(tokens / block))


def reread_scale(blocks: sp.Expr, group: sp.Expr, expert_bytes: sp.Expr) -> sp.Expr:
    """The factor on a fused-MoE kernel's memory time for its weights read again by each row
    block, where an expert's weights outgrow the L2 cache:

        1 + (max(1, b/G) − 1) · max(0, 1 − L2/w)

    ``blocks`` b: the row blocks of BLOCK_SIZE_M rows per touched expert (:func:`row_blocks`);
    ``group`` G: the row blocks the kernel's tile order runs beside one
    another over each column block (GROUP_SIZE_M, :func:`group_rows`), which share its weight
    tiles; ``expert_bytes`` w: one expert's weight bytes on one GPU. The kernel's program order
    walks every column block of one row block before the next, so that each group of G row
    blocks streams the expert's weights from HBM again, but for the share L2/w the cache still
    holds. 1 for experts that fit in L2 and for passes of one block per expert (decode below M
    rows per expert)."""
    return 1 + (Max(1, blocks / group) - 1) * Max(0, 1 - L2 / expert_bytes)


def table_extra(tokens: sp.Expr, points: tuple[tuple[float, float], ...],
                keys: tuple[int, ...] = ()) -> sp.Expr:
    """The time a fused-MoE kernel's tuned table adds over the default rule's tiles per layer, s,
    as measured at the passes ``points`` ((tokens, seconds), increasing tokens); 0 with no points.

    With the table's ``keys`` (in its file's order): a pass runs the entry of the key nearest its
    tokens (:func:`perfmodel.moe_tables.nearest_key`), so the time steps where the entry changes,
    at the midpoint of two keys (on the side vLLM breaks the tie to); within one entry's range it
    runs linearly between the passes measured there, flat beyond the first and last of them. An
    entry without a measured pass takes the measured pass nearest its key. Without keys: the
    measured pass nearest ``tokens``, a step at the midpoint of two."""
    if not points:
        return sp.Integer(0)
    if not keys:
        pieces = [(sp.Float(extra, 6), sp.StrictLessThan(tokens, sp.Rational(int(m + n), 2)))
                  for (m, extra), (n, _) in zip(points, points[1:])]
        return sp.Piecewise(*pieces, (sp.Float(points[-1][1], 6), True))
    from perfmodel.moe_tables import nearest_key

    ordered = sorted(keys)
    pieces = []
    for i, key in enumerate(ordered):
        measured = [p for p in points if nearest_key(p[0], keys) == key]
        curve = _interpolated(tokens, measured or [min(points, key=lambda p: abs(p[0] - key))])
        if i + 1 == len(ordered):
            pieces.append((curve, True))
            continue
        mid = sp.Rational(key + ordered[i + 1], 2)
        below = sp.LessThan if nearest_key(mid, keys) == key else sp.StrictLessThan
        pieces.append((curve, below(tokens, mid)))
    return sp.Piecewise(*pieces)


def _interpolated(tokens: sp.Expr, points: list[tuple[float, float]]) -> sp.Expr:
    """Linear between ``points`` ((tokens, value), increasing tokens), flat beyond the first and last."""
    first, last = points[0], points[-1]
    pieces = [(sp.Float(first[1], 6), sp.StrictLessThan(tokens, first[0]))]
    for (m, a), (n, b) in zip(points, points[1:]):
        pieces.append((sp.Float(a, 6) + sp.Float((b - a) / (n - m), 6) * (tokens - m), sp.StrictLessThan(tokens, n)))
    return sp.Piecewise(*pieces, (sp.Float(last[1], 6), True))


def gemm(name: str, op_class: OpClass, *, rows: sp.Expr, d_in: sp.Expr, d_out: sp.Expr,
         matrices: sp.Expr = 1, param_bytes: sp.Expr = b_w, computed_rows: sp.Expr | None = None,
         quantized: bool = False, input_rows: sp.Expr | None = None) -> Op:
    """One GEMM of ``rows`` rows of width ``d_in`` into ``d_out``, the rows split over
    ``matrices`` d_in×d_out weight matrices (the experts they are routed to, each read once;
    1 for a dense GEMM): FLOPs 2·rows·d_in·d_out; bytes: the matrices, the rows read (d_in)
    and written (d_out). Its efficiency follows the rows per matrix (tokens per expert).

    ``computed_rows``: the rows the kernel computes when it pads them to its tiles
    (:func:`padded_rows`): FLOPs and the efficiency's rows per matrix follow them, bytes the
    real ``rows``. ``quantized``: the matrices are stored by a quantization scheme
    (``param_bytes`` per element plus scales, :mod:`perfmodel.ops.quant`); ``input_rows``: the
    rows of its input a W8A8 scheme quantizes (default ``rows``).
    """
    computed = rows if computed_rows is None else computed_rows
    elements = matrices * d_in * d_out
    op = Op(
        name=name,
        op_class=op_class,
        flops=2 * computed * d_in * d_out,
        weight_bytes=elements * param_bytes,
        act_bytes=rows * (d_in + d_out) * b_a,
        efficiency_size=computed / matrices,
    )
    if quantized:
        op = replace(op, weight_bytes=weight_bytes(elements, matrices * d_out, param_bytes),
                     quantized=Quantized(weights=elements,
                                         inputs=((rows if input_rows is None else input_rows, d_in),)))
    return op


def gated_ffn(name: str, op_class: OpClass, *, tokens: sp.Expr, width: sp.Expr,
              experts: sp.Expr, param_bytes: sp.Expr, shard: sp.Expr, params: sp.Expr,
              computed_tokens: sp.Expr | None = None, quantized: bool = False,
              input_tokens: sp.Expr | None = None) -> Op:
    """A gated FFN applied to ``tokens`` rows of width H with intermediate ``width``: the
    gate|up GEMM (H → 2·I) and the down GEMM (I → H), each a :func:`gemm` over the
    ``experts`` FFN copies the rows are split over (1 when dense), sharded by ``shard``.

    Activation traffic per row: read x (H), write gate|up (2·I), read the activated product
    (I), write the output (H): 2H + 3I elements; the activation between the GEMMs is its own
    op (:func:`activation`). ``computed_tokens``: rows computed after tile padding;
    ``quantized``: quantized weights, whose gate|up input a W8A8 scheme quantizes as
    ``input_tokens`` rows (default ``tokens``) and whose down input as ``tokens`` rows.
    """
    common = dict(matrices=experts, param_bytes=param_bytes, computed_rows=computed_tokens,
                  quantized=quantized)
    up = gemm(f"{name}.gate_up", op_class, rows=tokens, d_in=H, d_out=2 * width / shard,
              input_rows=input_tokens, **common)
    down = gemm(f"{name}.down", op_class, rows=tokens, d_in=width / shard, d_out=H, **common)
    quant = None
    if quantized:
        assert up.quantized is not None and down.quantized is not None
        quant = Quantized(weights=up.quantized.weights + down.quantized.weights,
                          inputs=up.quantized.inputs + down.quantized.inputs)
    return Op(
        name=name,
        op_class=op_class,
        flops=up.flops + down.flops,
        weight_bytes=up.weight_bytes + down.weight_bytes,
        act_bytes=sp.factor_terms(up.act_bytes + down.act_bytes),
        params=params,
        efficiency_size=up.efficiency_size,
        kernels=up.kernels + down.kernels,
        quantized=quant,
    )


def activation(name: str, tokens: sp.Expr, width: sp.Expr, shard: sp.Expr = tp,
               kernels: int | sp.Expr = 1) -> Op:
    """SiLU(gate)·up between a gated FFN's GEMMs: read gate|up (2·I), write the product (I);
    ``kernels`` launches (in a loop over experts, a SiLU and a multiply per touched expert)."""
    return Op(name=name, op_class=OpClass.ELEMENTWISE, act_bytes=tokens * 3 * width / shard * b_a,
              efficiency_size=tokens * width / shard, kernels=kernels)


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


def routed_experts(bias: bool, *, impl: str = "fused", tiers: tuple[tuple[float, int], ...] = NO_PADDING,
                   tiers_by_rows: bool = False, quantized: bool = False, tiled: bool = False,
                   tuned_from: int = 0, table_extra_s: tuple[tuple[float, float], ...] = (),
                   table_keys: tuple[int, ...] = (), reread: bool = False, chunked: bool = False) -> Op:
    """The E routed experts on one GPU: E/g local experts of width I/shard (:func:`expert_split`:
    g = ep and shard = tp·dp, or whole experts under vLLM's expert parallelism, g = ep·tp·dp),
    serving the dp·T tokens of the dp ranks (:func:`expert_tokens`).

    Rows: dp·T·k/g routed copies; weights read: the D/g distinct local experts the dp·T tokens
    touch; both those of the busiest GPU where g > 1 (:func:`local_load`). FLOPs
    follow the rows padded to the tiles of ``tiers`` (:func:`block_rows`, :func:`padded_rows`),
    tiers by the pass's tokens T, or by the mean rows per expert T·k/E where ``tiers_by_rows``
    (Marlin's MoE kernel picks its block so: the smallest of 8, 16, 32, 48, 64 rows above
    1/0.9 of the mean, at least 16 rows computed by its m16 MMAs).
    ``impl="fused"`` (and ``"staged"``, whose GEMMs are the fused block's): one grouped GEMM per
    projection (class ``grouped_gemm``).
    ``impl="unfused"``: a dense GEMM per projection per touched local expert (class ``gemm``,
    2·D/ep kernels), whose efficiency follows the dense GEMM's at the expert's rows,
    T·k/D, padded alike. ``quantized``: the experts' weights are stored by a quantization
    scheme (b_q per element plus scales, instead of b_e; biases at b_w). ``tiled`` (a fused
    block): its kernel runs in tiles whose waves of K loops set a floor under its time
    (:func:`tile_floor`: the gate|up GEMM, N = 2·I/tp over K = H, and the down GEMM, N = H over
    K = I/tp), and whose library launches it from Python inside the fused-MoE op: a launched
    eager pass pays t_moe_host per layer for it (:attr:`Op.launch_host`). ``tuned_from`` (a
    fused block; ignored for ``impl="unfused"``): the smallest pass of the engine's tuned tile
    table for these experts, tokens (:func:`off_table_scale`; 0: none that starts above small
    passes). ``table_extra_s`` (a fused block): the time that table adds over the default rule's
    tiles, measured at passes of (tokens, s), stepping where the table's ``table_keys`` change
    its entry (:func:`table_extra`); it replaces ``tuned_from``'s factor where given.
    ``reread`` (a fused block at vLLM's Triton tiles): each group of row blocks reads the
    weights of an expert larger than L2 again (:func:`reread_scale`, :func:`group_rows`), in
    each engine step: one of at most M_chunk tokens where the engine ``chunked`` its prefill.
    """
    tokens, (groups, shard) = expert_tokens(), expert_split()
    rows, d_local = local_load(tokens, groups)
    block = block_rows(tiers, tokens * k / E if tiers_by_rows else tokens)
    weights = E * 3 * H * I_e
    params = weights + (E * (2 * I_e + H) if bias else 0)
    op_class = OpClass.GEMM if impl == "unfused" else OpClass.GROUPED_GEMM
    op = gated_ffn("moe.experts", op_class, tokens=rows, width=I_e, experts=d_local,
                   param_bytes=b_q if quantized else b_e, shard=shard, params=params,
                   computed_tokens=padded_rows(rows, d_local, block),
                   quantized=quantized, input_tokens=tokens)
    stored = params * b_e / (shard * groups)
    if quantized:
        stored = (weight_bytes(weights / (shard * groups), E * (2 * I_e / shard + H) / groups, b_q)
                  + (params - weights) * b_w / (shard * groups))
    op = replace(op, stored_bytes=stored, role=Role.ROUTED_EXPERTS)
    if impl == "unfused":
        return replace(op, kernels=UNFUSED_GEMM_KERNELS_PER_EXPERT * d_local)
    if tiled:
        op = replace(op, tile_floor=tile_floor(d_local, ((2 * I_e / shard, H), (H, I_e / shard))),
                     launch_host=t_moe_host)
    else:  # one expert's weights on one GPU against the L2 cache
        op = replace(op, compute_scale=l2_spill_scale(expert_weight_bytes(quantized)))
        if reread:  # the blocks of one engine step, of at most M_chunk tokens where prefills are chunked
            step = Min(tokens, M_chunk) if chunked else tokens
            blocks = row_blocks(rows * step / tokens, d_local, block, step)
            op = replace(op, memory_scale=reread_scale(blocks, group_rows(step, E / groups),
                                                       expert_weight_bytes(quantized)))
    if table_extra_s:
        op = replace(op, fixed_latency=op.fixed_latency + table_extra(tokens, table_extra_s, table_keys))
    elif tuned_from > 0:
        op = replace(op, memory_scale=op.memory_scale * off_table_scale(tuned_from))
    return op


def shared_experts(gate: bool, quantized: bool = False) -> Op:
    """n_sh always-active experts of width I_sh (one fused FFN), with an optional sigmoid gate
    (kept at b_w when the FFN is ``quantized``). Run uncompiled (:attr:`Op.uncompiled`): vLLM
    calls them from Python inside its opaque fused-MoE custom op (``moe_forward_shared``)."""
    width = n_sh * I_sh
    params = 3 * H * width + (H if gate else 0)
    op = gated_ffn("moe.shared", OpClass.GEMM, tokens=T, width=width, experts=1,
                   param_bytes=b_q if quantized else b_w, shard=tp, params=params, quantized=quantized)
    op = replace(op, uncompiled=1)
    stored = params * b_w / tp
    if quantized:
        stored = weight_bytes(3 * H * width / tp, 2 * width / tp + H, b_q) + (H * b_w / tp if gate else 0)
    if gate:  # the gate is a T×H by H×1 GEMM on every token
        op = replace(op, flops=op.flops + 2 * T * H, weight_bytes=op.weight_bytes + H * b_w,
                     kernels=op.kernels + 1)
    return _with_storage(op, stored)


def dispatch(impl: str = "fused") -> Op:
    """Moving routed rows in and out of expert order, on the local dp·T·k/g rows, the busiest
    GPU's (:func:`expert_tokens`, :func:`expert_split`, :func:`local_load`; the widths below are a
    GPU's shard, I/shard).

    ``fused``: gather the T·k copies of the tokens, scale each by its routing weight, and add
    them back per token (index-add), each a read and a write of T·k·H activations (6 passes),
    in 4 kernels (sort/histogram, gather, scale, index-add).

    ``staged``: the fused block's passes, plus the two gathers between the GEMMs, each a read
    and a write of the rows it moves: the gate|up output (2·I/tp wide) and the activation's
    output (I/tp wide), 6·T·k·I/tp more; the fused block's 4 kernels and
    :data:`STAGED_DISPATCH_KERNELS` more.

    ``unfused`` (a loop over the D/ep touched local experts): per expert, gather its rows
    (read, write), scale them by their routing weights (read, write) and index-add them into
    the output (read the rows, read and write the output rows): 7 passes over the T·k·H
    routed rows, plus zero-filling the T×H output. Kernels: the loop's bookkeeping
    (:data:`UNFUSED_DISPATCH_KERNELS` before it, :data:`UNFUSED_DISPATCH_KERNELS_PER_EXPERT`
    and :data:`UNFUSED_COPIES_PER_EXPERT` device-to-host copies per touched local expert, each
    a small kernel's fixed cost); host synchronisations: :data:`UNFUSED_SYNCS_PER_EXPERT` per
    touched local expert (the host reads which rows the expert has before it launches them).
    """
    tokens, (groups, shard) = expert_tokens(), expert_split()
    rows, d_local = local_load(tokens, groups)
    if impl == "staged":
        return Op(
            name="moe.dispatch",
            op_class=OpClass.ELEMENTWISE,
            act_bytes=(6 * H + 6 * I_e / shard) * rows * b_a,
            efficiency_size=rows * H,
            kernels=4 + STAGED_DISPATCH_KERNELS,
        )
    if impl == "unfused":
        return Op(
            name="moe.dispatch",
            op_class=OpClass.ELEMENTWISE,
            act_bytes=(7 * rows + tokens) * H * b_a,
            efficiency_size=rows * H,
            kernels=(UNFUSED_DISPATCH_KERNELS
                     + (UNFUSED_DISPATCH_KERNELS_PER_EXPERT + UNFUSED_COPIES_PER_EXPERT) * d_local),
            host_syncs=UNFUSED_SYNCS_PER_EXPERT * d_local,
        )
    return Op(
        name="moe.dispatch",
        op_class=OpClass.ELEMENTWISE,
        act_bytes=6 * rows * H * b_a,
        efficiency_size=rows * H,
        kernels=4,  # sort/histogram, gather, scale, index-add
    )


def routing_bitmatrix() -> Op:
    """The bitmatrix pack (``pack_bitmatrix``) of a tiled kernel's routing given as expert ids:
    the staged block's, and the fused block's where it is handed ids instead of the router's
    logits (vLLM 0.26's TRITON MXFP4 MoE under its routing simulator builds its routing data
    from the ids so: the kernel shows in the profiled decode steps of gpt-oss-120b on the H100,
    36 packs a step, where its own routing from logits runs none). Each token's k expert ids (int16)
    set a bit each in a T × n matrix of 32-bit words (T: the dp·T tokens the experts serve,
    :func:`expert_tokens`), n = ⌈E/(32·g)⌉ columns for the E/g local experts
    (:func:`expert_split`). One program per
    512 tokens walks the columns one after another, so the kernel takes at least

        t_bitpack_one                        (n = 1: no loop)
        t_bitpack_loop + n · t_bitpack       (n ≥ 2)

    whatever its bytes (its :attr:`Op.tile_floor`, written t_one + θ(n − 1)·(t_loop + n·t_col −
    t_one), θ(0) = 0): a time of the experts, flat in the tokens while the programs fit the SMs
    at once. The kernel timed alone (vLLM 0.26 on the H100, 8 to 512 experts) takes 3.8 µs at one
    column and 34.5 µs at two, then about 10 µs more per column: the single column's pass has no
    loop; from two on, the loop's fixed cost comes first."""
    columns = sp.ceiling(E / (BITMATRIX_WORD * expert_split()[0]))
    one, loop = t_bitpack_one, t_bitpack_loop + columns * t_bitpack
    return Op(
        name="moe.routing_bitmatrix",
        op_class=OpClass.ELEMENTWISE,
        act_bytes=expert_tokens() * (k * 2 + columns * 4),
        efficiency_size=expert_tokens() * k,
        kernels=1,
        tile_floor=one + sp.Heaviside(columns - 1, 0) * (loop - one),
        role=Role.ROUTER,
    )


def moe_block(spec: MoESpec, norm_kind: str, *, impl: str = "fused",
              tiers: tuple[tuple[float, int], ...] = NO_PADDING, tiers_by_rows: bool = False,
              quantized: bool = False, quantized_shared: bool | None = None, tiled: bool = False,
              tuned_from: int = 0, table_extra_s: tuple[tuple[float, float], ...] = (),
              table_keys: tuple[int, ...] = (), reread: bool = False, chunked: bool = False,
              routing_ids: bool = False) -> list[Op]:
    """The MoE block of one layer: norm, router, the exchanges between GPUs (the model's ep
    groups' all-to-all, the dp ranks' gather), dispatch, routed experts, shared experts.

    ``impl``: :data:`MOE_IMPLS`; ``tiers``: the fused-MoE tile rows by tokens
    (:func:`block_rows`), by the mean rows per expert where ``tiers_by_rows``; ``quantized``:
    the routed experts' weights are stored by a quantization scheme (:mod:`perfmodel.ops.quant`),
    and ``quantized_shared`` the shared experts' (default: as the routed experts'); ``tiled``:
    the routed experts' kernel runs in tiles whose waves set a floor under its time
    (:func:`tile_floor`); ``tuned_from``: the smallest pass of the engine's tuned tile table for
    the routed experts (:func:`off_table_scale`); ``table_extra_s``: the time it adds over the
    default rule's, measured by tokens per pass, and the table's keys (:func:`table_extra`);
    ``reread``: the routed experts' row blocks read their weights again (:func:`reread_scale`), per
    engine step of at most M_chunk tokens where ``chunked``; ``routing_ids``: the experts' kernel
    is handed each token's expert ids, not the router's logits (vLLM's routing simulator). A
    tiled kernel's routing given as ids is packed into a bitmatrix first (:func:`routing_bitmatrix`):
    always in the staged block, whose routing runs apart from its GEMMs, and in the fused block
    where it is handed ids. How the experts are cut over GPUs is a symbol's (:func:`expert_split`).
    """
    if quantized_shared is None:
        quantized_shared = quantized
    if impl not in MOE_IMPLS:
        raise ValueError(f"unknown MoE implementation '{impl}' (known: {', '.join(MOE_IMPLS)})")
    tokens, (groups, shard) = expert_tokens(), expert_split()
    rows, d_local = local_load(tokens, groups)
    act_kernels = UNFUSED_ACT_KERNELS_PER_EXPERT * d_local if impl == "unfused" else 1
    bitmatrix = impl == "staged" or (tiled and routing_ids)
    ops = [norm("mlp.norm", H, norm_kind), router(spec.router_bias),
           *([routing_bitmatrix()] if bitmatrix else []),
           all_to_all("comm.moe_all_to_all"), dp_gather("comm.moe_dp_gather"), dispatch(impl),
           routed_experts(spec.expert_bias, impl=impl, tiers=tiers, tiers_by_rows=tiers_by_rows,
                          quantized=quantized, tiled=tiled, tuned_from=tuned_from,
                          table_extra_s=table_extra_s, table_keys=table_keys, reread=reread,
                          chunked=chunked),
           activation("moe.experts_act", rows, I_e, shard=shard, kernels=act_kernels)]
    if spec.n_shared:
        ops += [shared_experts(spec.shared_gate, quantized_shared), activation("moe.shared_act", T, n_sh * I_sh)]
    return ops


def dense_block(norm_kind: str, bias: bool, quantized: bool = False) -> list[Op]:
    """The dense-MLP block of one layer, norm before it included; ``quantized``: its weights
    are stored by a quantization scheme (biases at b_w)."""
    weights = 3 * H * I_d
    params = weights + ((2 * I_d + H) if bias else 0)
    op = gated_ffn("mlp.ffn", OpClass.DENSE_MLP, tokens=T, width=I_d, experts=1,
                   param_bytes=b_q if quantized else b_w, shard=tp, params=params, quantized=quantized)
    stored = params * b_w / tp
    if quantized:
        stored = weight_bytes(weights / tp, 2 * I_d / tp + H, b_q) + (params - weights) * b_w / tp
    return [norm("mlp.norm", H, norm_kind), _with_storage(op, stored),
            activation("mlp.act", T, I_d)]


def _with_storage(op: Op, stored: sp.Expr) -> Op:
    return replace(op, stored_bytes=stored)
