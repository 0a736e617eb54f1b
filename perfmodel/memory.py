"""Memory of one GPU: weights, KV cache, activation peak, as sympy over a model graph."""

from __future__ import annotations

import sympy as sp

from perfmodel.graph import ModelGraph
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
            per_token += op.kv_bytes_per_token * (sp.Min(tokens, W) if op.windowed else tokens)
        total += group.count * per_token
    return B * total / pp


def activation_peak_bytes(graph: ModelGraph, subs: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    """Largest activation footprint of one op of the pass (its inputs and outputs together)."""
    return sp.Max(*[op.act_bytes.subs(subs) for _, op in graph.all_ops()])


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
