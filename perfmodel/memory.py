"""Memory of one GPU: weights, KV cache, activation peak, as sympy over a model graph."""

from __future__ import annotations

import sympy as sp

from perfmodel.graph import ModelGraph
from perfmodel.minmax import Max, Min
from perfmodel.ops import Role
from perfmodel.symbols import B, E, W, k, pp


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
    (vLLM's max_num_seqs; ∞ for none). Bytes are per GPU, S (``prompt``) and M in tokens.
    """
    per_sequence = kv_batch / batch
    per_token = activations / Min(batch * prompt, chunk)
    free = usable - weights
    one_pass = Min(free / (per_sequence + per_token * prompt), chunk / prompt)
    in_chunks = (free - per_token * chunk) / per_sequence
    return Max(0, Min(batch, limit, sp.floor(Max(one_pass, in_chunks))))


def kv_waves(batch: sp.Expr, running: sp.Expr) -> sp.Expr:
    """Waves W = ⌈B / B_run⌉ the batch runs in, B_run sequences each (the last one may be
    smaller: :func:`last_wave`); 0 when no sequence fits (B_run = 0)."""
    return sp.Piecewise((0, running < 1), (sp.ceiling(batch / running), True))


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
