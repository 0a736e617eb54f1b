"""Memory of one GPU: weights, KV cache, activation peak, as sympy over a model graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp

from perfmodel.graph import GraphOptions, ModelGraph
from perfmodel.minmax import Max, Min
from perfmodel.ops import Role
from perfmodel.symbols import (B, E, H, I_d, I_e, I_sh, N_seqs, T, V, W, a_res, b_a, b_aq, b_res, c_res, dp, ep, k,
                               n_sh, pp, s_logit, tp, x_ep)

if TYPE_CHECKING:
    from perfmodel.quantization import QuantScheme
    from perfmodel.specs.model import ModelSpec


def weights_bytes(graph: ModelGraph) -> sp.Expr:
    """Parameter bytes stored on one GPU (layers split over pp stages)."""
    return sp.Add(*[c * op.stored_bytes for c, op in graph.all_ops()]) / pp


def kv_cache_bytes(graph: ModelGraph, tokens: sp.Expr) -> sp.Expr:
    """KV-cache bytes on one GPU for B sequences of ``tokens`` cached tokens each.

    Per token, each layer keeps what its attention op stores on one GPU
    (``kv_bytes_per_token``: ⌈n_kv/tp⌉ KV heads for GQA, the whole latent for MLA); a
    windowed op keeps at most W tokens.
    """
    total = sp.Integer(0)
    for group in graph.groups:
        per_token = sp.Integer(0)
        for op in group.ops:
            per_token += op.kv_bytes_per_token * (Min(tokens, W) if op.windowed else tokens)
        total += group.count * per_token
    return B * total / pp


def activation_peak_bytes(graph: ModelGraph, subs: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    """Largest activation footprint of one op of the pass (its inputs and outputs together)."""
    return Max(*[op.act_bytes.subs(subs) for _, op in graph.all_ops()])


def reserved_activation_bytes(graph: ModelGraph, options: GraphOptions) -> sp.Expr:
    """Activation bytes an engine keeps out of its KV cache on one GPU, as vLLM measures them at
    start-up: the peak of one pass of T tokens (its ``max_num_batched_tokens``) and of its
    sampler over N_seqs rows (``max_num_seqs``), coefficients a_res, b_res, c_res and s_logit
    from the profile's ``activation_reserve`` (fitted on the engine's logs,
    :mod:`perfmodel.calibration.fit_vllm_memory`):

        max(W + max(R(n_sh·I_sh), s·N_seqs·V), R(I_d)),   R(I) = a + b·T·H·b_a + c·T·3·I/tp·b_a

    (a, b, c, s = a_res, b_res, c_res, s_logit)

    W: the fused-MoE kernel's two workspaces, kept for the whole pass, T·k rows (the GPU's own
    tokens: under data parallelism each rank sizes its start-up pass alone, and how far gathering
    the ranks' tokens grows them has not been measured) of
    max(2·I_e/shard, H) and max(I_e/shard, H) activations, and, where the experts' inputs are
    quantized on the fly (``options``, the graph's: a W8A8 scheme over the experts), one more of
    I_e/shard at b_aq (vLLM 0.26's Triton experts' workspace shapes); 0 without routed experts. R: the pass's other
    activations, a fixed part, b hidden-width copies per token and c of a gated MLP's three
    intermediates of the widest unrouted MLP on one GPU (shared experts beside the routed ones;
    a dense layer's MLP, which runs before any expert allocates W). s·N_seqs·V: the sampler's
    logits, bytes per logit s. Bytes on one GPU.
    """
    from perfmodel.ops.moe import expert_split

    workspace = sp.Integer(0)
    if any(op.role is Role.ROUTED_EXPERTS for _, op in graph.all_ops()):
        shard = expert_split()[1]
        rows = T * k
        workspace = rows * (Max(2 * I_e / shard, H) + Max(I_e / shard, H)) * b_a
        if options.quantized_activations and options.quantizes("experts"):
            workspace += rows * I_e / shard * b_aq

    def rest(width: sp.Expr) -> sp.Expr:
        return a_res + b_res * T * H * b_a + c_res * T * 3 * width / tp * b_a

    sampler = s_logit * N_seqs * V
    return Max(workspace + Max(rest(n_sh * I_sh), sampler), rest(I_d))


def one_gpu_reserve(model: ModelSpec, options: GraphOptions, scheme: QuantScheme, tokens: float,
                    seqs: float) -> sp.Expr:
    """:func:`reserved_activation_bytes` of ``model`` on one GPU (no TP, EP or DP) with bf16
    activations, for an engine of ``tokens`` per pass and ``seqs`` sequences, its linear layers
    stored by ``scheme`` under the graph ``options``: an expression of the reserve's coefficients
    (a_res, b_res, c_res, s_logit) alone, bytes."""
    from perfmodel.graph import build_graph, model_values

    values = {**model_values(model), **scheme.values(2.0), T: tokens, N_seqs: seqs, b_a: 2.0,
              tp: 1, dp: 1, ep: 1, x_ep: 0}
    return reserved_activation_bytes(build_graph(model, decode=False, options=options), options).subs(values)


def concurrent_sequences(batch: sp.Expr, prompt: sp.Expr, weights: sp.Expr, activations: sp.Expr,
                         kv_batch: sp.Expr, usable: sp.Expr, chunk: sp.Expr, limit: sp.Expr) -> sp.Expr:
    """Sequences of a fixed batch that run at once, B_run (0 when not even one fits).

    The memory left after the weights, ``usable`` − ``weights``, holds the running sequences'
    KV cache and the activations of their prefill. The batch's own numbers give the rates:
    KV bytes per sequence, κ = ``kv_batch``/B (every sequence at its full S + O tokens, windowed
    layers capped as in :func:`kv_cache_bytes`), and activation bytes per prefill token,
    a = ``activations``/min(B·S, M), a pass holding at most M = ``chunk`` tokens (the engine's
    prefill chunk; ∞ without one). b sequences then need a·min(b·S, M) + κ·b, so

        B_run = min(B, N_seqs, ⌊max(min(F/(κ + a·S), M/S), (F − a·M)/κ)⌋),  F = usable − weights

    (the first term: waves whose prompts fit one pass; the second: waves prefilled in full
    chunks, whose activations are one chunk's, a·M). At b = B this is the batch's own memory, so
    B_run = B exactly when the whole batch fits. ``usable``: bytes of one GPU the engine may
    fill (HBM × its usable fraction); ``limit`` = N_seqs: the engine's most sequences at once
    (vLLM's max_num_seqs; ∞ for none). Bytes are per GPU, S (``prompt``) and M in tokens. An
    engine that reserves its activations at start-up (:func:`reserved_activation_bytes`) is
    planned with them beside the weights and ``activations`` 0: B_run = min(B, N_seqs,
    ⌊(usable − weights − reserve)/κ⌋) (:func:`perfmodel.waves.run_in_waves`, ``reserved``).
    """
    fit = sequences_that_fit(batch, prompt, weights, activations, kv_batch, usable, chunk)
    return Max(0, Min(batch, limit, sp.floor(fit)))


def sequences_that_fit(batch: sp.Expr, prompt: sp.Expr, weights: sp.Expr, activations: sp.Expr,
                       kv_batch: sp.Expr, usable: sp.Expr, chunk: sp.Expr) -> sp.Expr:
    """Whole sequences (S + O tokens of cache each) the memory beside the weights holds, before
    rounding down and the engine's limits: max(min(F/(κ + a·S), M/S), (F − a·M)/κ) in the terms
    of :func:`concurrent_sequences`. Times S + O, it is the KV cache in tokens the engine
    schedules on (:mod:`perfmodel.kv_schedule`)."""
    per_sequence = kv_batch / batch
    per_token = activations / Min(batch * prompt, chunk)
    free = usable - weights
    one_pass = Min(free / (per_sequence + per_token * prompt), chunk / prompt)
    in_chunks = (free - per_token * chunk) / per_sequence
    return Max(one_pass, in_chunks)


#: What ⌈B/B_run⌉ subtracts before rounding up, far below 1/B_run for any engine's B_run.
WAVE_TOLERANCE = sp.Rational(1, 10**9)


def kv_waves(batch: sp.Expr, running: sp.Expr) -> sp.Expr:
    """Waves W = ⌈B / B_run⌉ the batch runs in, B_run sequences each (the last one may be
    smaller: :func:`last_wave`); 0 when no sequence fits (B_run = 0)."""
    # B/B_run is printed as B·(1/B_run): at a whole number of waves it may land an ulp above it
    # (630·(1/210) = 3.0000000000000004); a fraction of a wave is at least 1/B_run above one
    return sp.Piecewise((0, running < 1), (sp.ceiling(batch / running - WAVE_TOLERANCE), True))


def last_wave(batch: sp.Expr, running: sp.Expr) -> sp.Expr:
    """Sequences of the last wave, B − (W − 1)·B_run (B_run when they divide evenly)."""
    return batch - (kv_waves(batch, running) - 1) * running


def parameter_count(graph: ModelGraph) -> sp.Expr:
    """Parameters of the whole model (unsharded)."""
    return graph.total("params")


def active_parameter_count(graph: ModelGraph) -> sp.Expr:
    """Parameters one token uses: routed experts count k of E."""
    total = sp.Integer(0)
    for count, op in graph.all_ops():
        share = k / E if op.role is Role.ROUTED_EXPERTS else 1
        total += count * op.params * share
    return total
