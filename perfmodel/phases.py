"""Phases: what one forward pass sees, as substitutions for T, P, C (and windowed P_w, C_w).

- prefill of B×S tokens: T = B·S, causal pairs Σ_{i=1..S} min(i, W), every cached token read
  once (C = S);
- a decode step at context L: T = B, one query against L keys (min(L, W) on windowed layers);
- the decode part of a fixed-batch request: O − 1 steps at L = S+1 … S+O−1. Every cost is
  linear in P and C, so the sum over steps equals (O − 1) steps at the mean pairs and mean
  keys, a closed form (:func:`decode_mean_substitutions`). Its roofline time is exact while no
  op changes bound during the decode; an op's bound cannot change when its FLOPs and bytes
  grow in the same proportion with L, which holds for the attention core (both ∝ L) and for
  every other op (independent of L).
"""

from __future__ import annotations

import sympy as sp

from perfmodel.symbols import B, C, Cw, L, O, P, Pw, S, T, W


def _tri(n: sp.Expr) -> sp.Expr:
    """1 + 2 + … + n for n ≥ 0."""
    return n * (n + 1) / 2


def window_sum(lo: sp.Expr, hi: sp.Expr, window: sp.Expr = W) -> sp.Expr:
    """Σ_{x=lo}^{hi} min(x, window), closed form (0 when hi < lo)."""
    below = _tri(sp.Min(hi, window)) - _tri(sp.Min(lo - 1, window))
    above = window * sp.Max(0, hi - sp.Max(lo - 1, window))
    return sp.Max(0, below + above)


def prefill_substitutions(causal: bool = True) -> dict[sp.Symbol, sp.Expr]:
    """Prefill of B sequences of S tokens. ``causal=False`` counts all S² pairs, as an
    attention implementation that computes the full score matrix and masks it does."""
    pairs = _tri(S) if causal else S * S
    pairs_w = window_sum(1, S) if causal else S * S
    return {T: B * S, P: pairs, C: S, Pw: pairs_w, Cw: S}


def decode_substitutions() -> dict[sp.Symbol, sp.Expr]:
    """One decode step at context L (keys attended, the new token included).

    For an engine that scores its whole allocated cache, L is the allocated length; the
    decode spans differ only over a request (:func:`decode_mean_substitutions`).
    """
    return {T: B, P: L, C: L, Pw: sp.Min(L, W), Cw: sp.Min(L, W)}


def decode_mean_substitutions(span: str = "context") -> dict[sp.Symbol, sp.Expr]:
    """Mean pairs and keys per step over the O − 1 decode steps of a request.

    ``span="context"``: step j attends S + j keys (j = 1 … O−1), mean S + O/2.
    ``span="allocated"``: every step attends the allocated S + O tokens (windowed layers
    keep a cache of min(S + O, W)).
    """
    if span == "allocated":
        full, windowed = S + O, sp.Min(S + O, W)
    elif span == "context":
        full = S + O / 2
        # O = 1 has no decode step: take the step at L = S + 1 rather than an empty window
        # sum (zero keys would make the attention's efficiency 0/0 and the request's E2E NaN)
        windowed = window_sum(S + 1, S + sp.Max(O - 1, 1)) / sp.Max(O - 1, 1)
    else:
        raise ValueError(f"unknown decode span '{span}'")
    return {T: B, P: full, C: full, Pw: windowed, Cw: windowed}
