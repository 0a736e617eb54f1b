"""Phases: what one forward pass sees, as substitutions for T, P, C (and windowed P_w, C_w).

- prefill of B×S tokens: T = B·S, causal pairs Σ_{i=1..S} min(i, W), every cached token read
  once (C = S);
- a decode step at context L: T = B, one query against L keys (min(L, W) on windowed layers);
  an engine that replays a pass from a CUDA graph captured at fixed sizes runs T = the
  graph's size, the pass's tokens padded up to the next captured size (:func:`graph_batch`;
  a prefill too, when it fits the largest graph);
- the decode part of a fixed-batch request: O − 1 steps at L = S+1 … S+O−1. Every cost is
  linear in P and C, so the sum over steps equals (O − 1) steps at the mean pairs and mean
  keys, a closed form (:func:`decode_mean_substitutions`). Its roofline time is exact while no
  op changes bound during the decode; an op's bound cannot change when its FLOPs and bytes
  grow in the same proportion with L, which holds for the attention core (both ∝ L) and for
  every other op (independent of L);
- the verify pass of speculative decoding: T = B·(γ+1), each sequence's γ+1 queries at
  context L (:func:`verify_substitutions`); linear in L too, so a request's mean verify pass
  is the one at the decode steps' mean substitutions.
"""

from __future__ import annotations

import sympy as sp

from perfmodel.minmax import Max, Min
from perfmodel.symbols import B, C, Cw, L, M_chunk, M_graph, O, P, Pw, S, T, W


def _tri(n: sp.Expr) -> sp.Expr:
    """1 + 2 + … + n for n ≥ 0."""
    return n * (n + 1) / 2


def window_sum(lo: sp.Expr, hi: sp.Expr, window: sp.Expr = W) -> sp.Expr:
    """Σ_{x=lo}^{hi} min(x, window), closed form (0 when hi < lo)."""
    below = _tri(Min(hi, window)) - _tri(Min(lo - 1, window))
    above = window * Max(0, hi - Max(lo - 1, window))
    return Max(0, below + above)


def prefill_substitutions(causal: bool = True, padded: bool = False) -> dict[sp.Symbol, sp.Expr]:
    """Prefill of B sequences of S tokens. ``causal=False`` counts all S² pairs, as an
    attention implementation that computes the full score matrix and masks it does.
    ``padded``: a prefill of at most M_graph tokens is replayed from a CUDA graph of the next
    captured size, T = :func:`graph_batch` (B·S) (a larger one runs its B·S tokens as they are)."""
    pairs = _tri(S) if causal else S * S
    pairs_w = window_sum(1, S) if causal else S * S
    return {T: graph_batch(B * S) if padded else B * S, P: pairs, C: S, Pw: pairs_w, Cw: S}


def prefill_steps() -> sp.Expr:
    """Engine steps a chunked prefill of the batch takes: ⌈B·S / M_chunk⌉, M_chunk being the
    engine's token budget per step (vLLM's ``max_num_batched_tokens``). Each step is a pass of
    its own: it pays the per-pass fixed costs and, when launched from the host, the host's
    launch time; the tokens' work is the same as in one pass (the weights re-read by each step
    are not counted: at budgets of thousands of tokens a prefill step is compute-bound)."""
    return sp.ceiling(B * S / M_chunk)


def graph_batch(n: sp.Expr = B, largest: sp.Expr = M_graph) -> sp.Expr:
    """Tokens a step of ``n`` tokens runs when the engine replays it from a CUDA graph captured
    at vLLM's default sizes (1, 2, 4, then multiples of 8 to 256, then of 16) up to
    ``largest`` (M_graph): n padded up to the next size, n itself beyond ``largest`` (no graph).

        n + θ(M_graph − n + ½)·(g(n) − n),
        g(n) = n·[n ≤ 2] + 4·[2 < n ≤ 4] + 8⌈n/8⌉·[4 < n ≤ 256] + 16⌈n/16⌉·[n > 256]

    (θ the Heaviside step, [a < n ≤ b] = θ(n − a) − θ(n − b), θ(0) = 0). The padded rows are
    computed like real ones: the engine's persistent input buffers hold earlier tokens there, so
    the experts they touch count too (on the lent H200, Qwen3-30B-A3B's serving decode steps of
    10 sequences took as long as those of 16: 12.8 and 12.9 ms, against 9.4 ms at 8)."""
    g = (n * (1 - sp.Heaviside(n - 2, 0)) + 4 * (sp.Heaviside(n - 2, 0) - sp.Heaviside(n - 4, 0))
         + 8 * sp.ceiling(n / 8) * (sp.Heaviside(n - 4, 0) - sp.Heaviside(n - 256, 0))
         + 16 * sp.ceiling(n / 16) * sp.Heaviside(n - 256, 0))
    return n + sp.Heaviside(largest - n + sp.Rational(1, 2), 0) * (g - n)


def decode_substitutions(padded: bool = False) -> dict[sp.Symbol, sp.Expr]:
    """One decode step at context L (keys attended, the new token included).

    For an engine that scores its whole allocated cache, L is the allocated length; the
    decode spans differ only over a request (:func:`decode_mean_substitutions`). ``padded``:
    the engine replays the step from a CUDA graph of the next captured size, T =
    :func:`graph_batch` (the attention still sees the B sequences, the host too).
    """
    return {T: graph_batch() if padded else B, P: L, C: L, Pw: Min(L, W), Cw: Min(L, W)}


def decode_mean_substitutions(span: str = "context", padded: bool = False) -> dict[sp.Symbol, sp.Expr]:
    """Mean pairs and keys per step over the O − 1 decode steps of a request.

    ``span="context"``: step j attends S + j keys (j = 1 … O−1), mean S + O/2.
    ``span="allocated"``: every step attends the allocated S + O tokens (windowed layers
    keep a cache of min(S + O, W)). ``padded``: as in :func:`decode_substitutions`.
    """
    if span == "allocated":
        full, windowed = S + O, Min(S + O, W)
    elif span == "context":
        full = S + O / 2
        # O = 1 has no decode step: take the step at L = S + 1 rather than an empty window
        # sum (zero keys would make the attention's efficiency 0/0 and the request's E2E NaN)
        windowed = window_sum(S + 1, S + Max(O - 1, 1)) / Max(O - 1, 1)
    else:
        raise ValueError(f"unknown decode span '{span}'")
    return {T: graph_batch() if padded else B, P: full, C: full, Pw: windowed, Cw: windowed}


def verify_substitutions(queries: sp.Expr, base: dict[sp.Symbol, sp.Expr] | None = None, *,
                         causal: bool = True) -> dict[sp.Symbol, sp.Expr]:
    """A target model's verify pass of speculative decoding: each of the B sequences brings
    q = ``queries`` tokens at once (its last token and the γ = q − 1 draft tokens), at the
    context of ``base``, the substitutions of a decode step (default
    :func:`decode_substitutions`, at context L; :func:`decode_mean_substitutions` for the mean
    over a request).

    A decode-like pass of T = B·q tokens. Query j (j = 0 … q−1) attends L + j keys, so the
    pairs per sequence are q·L + q(q−1)/2 (the causal part among the new tokens) and the
    cache read holds L + q − 1 tokens. On windowed layers a query attends at most W keys:
    P_w = min(q·P_w,decode + q(q−1)/2, q·W) and C_w = min(C_w,decode + q − 1, W), exact when
    the q queries all lie below the window or all beyond it. ``causal=False`` is for an
    engine that scores its whole allocated cache under a mask (the causal part is inside
    it): P = q·P_decode, C = C_decode. Units: tokens and pairs per sequence per layer.
    """
    q = queries
    base = decode_substitutions() if base is None else base
    causal_pairs = q * (q - 1) / 2 if causal else 0
    new_keys = q - 1 if causal else 0
    return {T: B * q, P: q * base[P] + causal_pairs, C: base[C] + new_keys,
            Pw: Min(q * base[Pw] + causal_pairs, q * W), Cw: Min(base[Cw] + new_keys, W)}
