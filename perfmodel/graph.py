"""The op graph of a model: layer groups of ops, and the symbol values a spec gives them.

Layers come in up to four groups (dense or MoE MLP × full or windowed attention); their
counts are expressions in N_layers, N_dense and N_window, so sweeps over those stay
vectorized. Where dense and windowed layers both exist, windowed layers are assumed spread
evenly over dense and MoE layers (exact for every zoo model: in each, one of the two kinds is
all or none of the layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from perfmodel.ops import LayerGroup, Op
from perfmodel.ops.attention import gqa_ops, mla_ops
from perfmodel.ops.comm import all_reduce, pipeline_send
from perfmodel.ops.elementwise import norm
from perfmodel.ops.embedding import embedding, lm_head
from perfmodel.ops.moe import MOE_IMPLS, NO_PADDING, dense_block, moe_block
from perfmodel.ops.quant import LINEAR_LAYERS, with_activation_quant
from perfmodel.specs.model import ModelSpec
from perfmodel import symbols as s


@dataclass(frozen=True)
class GraphOptions:
    """Engine choices that change which ops run (not just how fast).

    ``mla_cache``: "latent" stores MLA's compressed latent (vLLM, SGLang, transformers 5.x);
    "expanded" stores per-head keys and values. ``mla_absorb_decode``: decode attends over the
    latent with absorbed up-projections (needs the latent cache); without it a latent cache is
    re-expanded to per-head keys and values every step (transformers 5.x eager/SDPA).
    ``decode_kv_expand``: decode materializes per-head keys and values before the attention
    kernel (transformers with a static cache: SDPA gets a mask, so grouped heads are repeated;
    MLA's re-expanded keys are concatenated with their rotary part).

    ``moe_impl``: how the routed experts run (:data:`perfmodel.ops.moe.MOE_IMPLS`: one fused
    block, or a loop over the touched experts). ``moe_block_m``: the fused-MoE tile rows by
    tokens per pass, ((at most T, M), ...) (:func:`perfmodel.ops.moe.block_rows`; M = 1: no
    padding), by the mean rows per expert T·k/E instead where ``moe_block_by_rows`` (a
    scheme's kernel that picks its block so). ``quantized``: the linear layers (QKV/O
    projections, routed and shared experts, dense MLP) are stored and run by a quantization scheme (:mod:`perfmodel.ops.quant`), those
    of ``quantized_layers`` (:data:`perfmodel.ops.quant.LINEAR_LAYERS`: all by default);
    ``quantized_activations``: the scheme quantizes each such layer's input on the fly, an
    elementwise op before it. ``moe_tiled``: the quantized routed experts' kernel runs in
    tiles whose waves of K loops set a floor under its time (the scheme's ``moe_tile``,
    :func:`perfmodel.ops.moe.tile_floor`). ``moe_routing_ids``: the experts' kernel is
    handed each token's expert ids instead of the router's logits (vLLM's routing simulator): a
    tiled kernel packs them into a bitmatrix first (:func:`perfmodel.ops.moe.moe_block`).
    ``moe_tuned_from``: the smallest pass, tokens, of the engine's tuned tile table for the routed
    experts where it starts above small passes (:func:`perfmodel.ops.moe.off_table_scale`; 0:
    none). ``moe_table_extra_s``: the time that table adds over the engine's default tile rule,
    measured at passes of (tokens, s) (:func:`perfmodel.ops.moe.table_extra`; empty: not
    measured), with the table's keys in its file's
    order (``moe_table_keys``: where its entry changes; empty: not known). ``moe_reread``: the
    fused-MoE kernel's row blocks read again the weights of experts larger than L2, grouped as
    vLLM's Triton tiles group them (:func:`perfmodel.ops.moe.reread_scale`), in each engine step
    of at most M_chunk tokens where ``moe_reread_chunked`` (the engine chunks prefills). ``cudagraph_padding``: a pass
    replayed from a CUDA graph runs its tokens padded up to the next captured size
    (:func:`perfmodel.phases.graph_batch`).
    """

    mla_cache: str = "latent"
    mla_absorb_decode: bool = True
    decode_kv_expand: bool = False
    moe_impl: str = "fused"
    moe_block_m: tuple[tuple[float, int], ...] = NO_PADDING
    moe_block_by_rows: bool = False
    quantized: bool = False
    quantized_activations: bool = False
    cudagraph_padding: bool = False
    quantized_layers: tuple[str, ...] = LINEAR_LAYERS
    moe_tiled: bool = False
    moe_routing_ids: bool = False
    moe_tuned_from: int = 0
    moe_table_extra_s: tuple[tuple[float, float], ...] = ()
    moe_table_keys: tuple[int, ...] = ()
    moe_reread: bool = False
    moe_reread_chunked: bool = False

    def __post_init__(self) -> None:
        if self.moe_impl not in MOE_IMPLS:
            raise ValueError(f"unknown MoE implementation '{self.moe_impl}' (known: {', '.join(MOE_IMPLS)})")
        unknown = set(self.quantized_layers) - set(LINEAR_LAYERS)
        if unknown:
            raise ValueError(f"unknown linear layers {sorted(unknown)} (known: {', '.join(LINEAR_LAYERS)})")

    def quantizes(self, layer: str) -> bool:
        """Whether the linear ``layer`` (:data:`perfmodel.ops.quant.LINEAR_LAYERS`) is quantized."""
        return self.quantized and layer in self.quantized_layers


@dataclass(frozen=True)
class ModelGraph:
    """Ops of one forward pass: per-layer groups plus the ops outside the layers."""

    groups: tuple[LayerGroup, ...]
    head_ops: tuple[Op, ...]
    tail_ops: tuple[Op, ...]

    def all_ops(self) -> list[tuple[sp.Expr, Op]]:
        """(count, op) for every op of the pass, layers expanded by their group count."""
        out: list[tuple[sp.Expr, Op]] = [(sp.Integer(1), op) for op in self.head_ops]
        for group in self.groups:
            out += [(group.count, op) for op in group.ops]
        out += [(sp.Integer(1), op) for op in self.tail_ops]
        return out

    def total(self, quantity: str) -> sp.Expr:
        """Sum of one quantity (flops, bytes, params, ...) over the whole pass."""
        return sp.Add(*[count * op.quantity(quantity) for count, op in self.all_ops()])


def _attention(model: ModelSpec, windowed: bool, decode: bool, options: GraphOptions) -> list[Op]:
    spec = model.attention
    if spec.kind == "mla":
        latent = options.mla_cache == "latent"
        return mla_ops(spec, windowed=windowed, norm_kind=model.norm, latent_cache=latent,
                       absorbed=decode and latent and options.mla_absorb_decode,
                       expand_kv=options.decode_kv_expand, decode=decode,
                       quantized=options.quantizes("attention"),
                       split=not decode and latent and options.mla_absorb_decode)
    return gqa_ops(spec, windowed=windowed, norm_kind=model.norm,
                   expand_kv=decode and options.decode_kv_expand, quantized=options.quantizes("attention"))


def build_graph(model: ModelSpec, *, decode: bool, options: GraphOptions = GraphOptions()) -> ModelGraph:
    """The op graph of one forward pass (prefill if not ``decode``)."""
    n_moe = s.N_layers - s.N_dense
    window_frac = s.N_window / s.N_layers
    counts = {
        ("dense", False): s.N_dense * (1 - window_frac),
        ("dense", True): s.N_dense * window_frac,
        ("moe", False): n_moe * (1 - window_frac),
        ("moe", True): n_moe * window_frac,
    }
    present = {
        ("dense", False): model.n_dense_layers > 0 and model.n_window_layers < model.n_layers,
        ("dense", True): model.n_dense_layers > 0 and model.n_window_layers > 0,
        ("moe", False): model.n_moe_layers > 0 and model.n_window_layers < model.n_layers,
        ("moe", True): model.n_moe_layers > 0 and model.n_window_layers > 0,
    }
    groups = []
    for (mlp, windowed), count in counts.items():
        if not present[(mlp, windowed)]:
            continue
        ops = _attention(model, windowed, decode, options) + [all_reduce("comm.attn_all_reduce")]
        if mlp == "moe":
            assert model.moe is not None
            ops += moe_block(model.moe, model.norm, impl=options.moe_impl, tiers=options.moe_block_m,
                             tiers_by_rows=options.moe_block_by_rows, quantized=options.quantizes("experts"),
                             quantized_shared=options.quantizes("shared_experts"),
                             tiled=options.moe_tiled and options.quantizes("experts"),
                             routing_ids=options.moe_routing_ids,
                             tuned_from=options.moe_tuned_from, table_extra_s=options.moe_table_extra_s,
                             table_keys=options.moe_table_keys, reread=options.moe_reread,
                             chunked=options.moe_reread_chunked)
        else:
            ops += dense_block(model.norm, model.mlp_bias, quantized=options.quantizes("dense_mlp"))
        ops.append(all_reduce("comm.mlp_all_reduce"))
        if options.quantized_activations:
            ops = with_activation_quant(ops)
        name = f"{mlp}{'-window' if windowed else ''}"
        groups.append(LayerGroup(name=name, count=count, ops=tuple(ops)))
    tail = (norm("final_norm", s.H, model.norm, residual=True),
            lm_head(model.tie_embeddings, model.lm_head_bias), pipeline_send("comm.pipeline"))
    return ModelGraph(groups=tuple(groups), head_ops=(embedding(),), tail_ops=tail)


def model_values(model: ModelSpec) -> dict[sp.Symbol, float]:
    """The architecture symbols' values for one model."""
    a = model.attention
    values: dict[sp.Symbol, float] = {
        s.H: model.hidden, s.V: model.vocab, s.N_layers: model.n_layers,
        s.N_dense: model.n_dense_layers, s.N_window: model.n_window_layers,
        s.W: model.window or 1, s.n_h: a.n_heads, s.n_kv: a.n_kv_heads, s.d_h: a.head_dim,
        s.I_d: model.dense_intermediate, s.r_q: a.q_lora_rank, s.r_kv: a.kv_lora_rank or 1,
        s.d_nope: a.qk_nope_head_dim or 1, s.d_rope: a.qk_rope_head_dim or 1,
        s.d_v: a.v_head_dim or 1,
        s.E: 1, s.k: 1, s.I_e: 1, s.n_sh: 0, s.I_sh: 0,
    }
    if model.moe is not None:
        m = model.moe
        values.update({s.E: m.n_experts, s.k: m.top_k, s.I_e: m.expert_intermediate,
                       s.n_sh: m.n_shared, s.I_sh: m.shared_intermediate})
    return values
