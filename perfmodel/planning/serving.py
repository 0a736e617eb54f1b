"""Steady state of continuous batching in closed form.

Decoding requests form an infinite-server queue (each spends Ō − 1 steps decoding, whatever
the others do), so below the engine's limits the number decoding at once is Poisson with mean
n. Parametrized by n, everything else is explicit:

- a decode-only step with k sequences takes D(k), a step that also holds prompt tokens M(k)
  (:class:`StepTimes`); steps holding prompt tokens take a fraction φ = min(1, λ·c·M̄) of the
  time (c: the steps a prompt is chunked over in what is left of the token budget), each
  with one chunk S̄/c, or with the λ·S̄·M̄ prompt tokens that arrive during one when they
  come faster than one per step;
- tokens per second: Σ_k P(k)·k·((1 − φ)/D(k) + φ/M(k)) = λ·(Ō − 1), which gives λ(n); a
  token's inter-token latency is D(k) or M(k) with those weights (its percentiles);
  by Little's law the mean ITL is n/(λ·(Ō − 1));
- TTFT ≈ the rest of the running step plus c mixed steps; E2E ≈ TTFT + (Ō − 1)·mean ITL.

With asynchronous scheduling (:mod:`perfmodel.planning.pipeline`) M(k) is what a mixed step
adds to a stream of decode-only steps (its host launch overlaps the decode step before it,
unless, with probability share, that step held prompt tokens too),
and a prompt's first token waits, after its last chunk, for the launch of the step after it
(a decode-only step, or with probability share one holding prompt tokens).

The curve λ(n) is evaluated once per configuration and read at any rate; its largest λ under
the limits (n ≤ max_num_seqs, n·(S̄ + Ō/2) ≤ KV-cache tokens, n + prompt tokens per step ≤ the
token budget) is the saturation rate. It holds below saturation, where queues stay short; the
simulation (:mod:`perfmodel.planning.simulate`) gives percentiles with queueing.

Pools of a disaggregated deployment: a prefill pool (Ō = 1: prompts only, its wait from an
M/D/1 queue, or under bursty arrivals a G/D/1 queue by Kingman's approximation, the M/D/1 wait
times the gaps' squared coefficient of variation c_a²) and a decode pool (prompts arrive
computed: φ = 0).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
from scipy.special import gammaln

from perfmodel import symbols
from perfmodel.phases import prefill_steps

from perfmodel.planning.pipeline import mixed_in_decodes
from perfmodel.planning.simulate import EngineLimits
from perfmodel.planning.steptime import StepTimes

#: Points of the λ(n) curve.
_CURVE_POINTS = 48
#: Percentiles the closed form reports.
_QS = (50, 90, 99)
#: Standard exponential quantiles for the waiting-time tail of the prefill pool.
_EXP_Q = {50: math.log(2.0), 90: math.log(10.0), 99: math.log(100.0)}


@functools.cache
def _prefill_steps_fn():
    """Steps of a chunked prefill, ⌈B·S/M⌉ (:func:`perfmodel.phases.prefill_steps`), as a numpy
    function of (B, S, M)."""
    return sp.lambdify((symbols.B, symbols.S, symbols.M_chunk), prefill_steps(), "numpy")


def _inf() -> dict[str, float]:
    return {"p50": math.inf, "p90": math.inf, "p99": math.inf, "mean": math.inf}


@dataclass(frozen=True)
class SteadyState:
    """The closed form at one rate (req/s, per engine): mean batch, step times (s), latencies."""

    rate: float
    stable: bool
    limit: str  # what bounds the rate: max_num_seqs, kv_cache, token_budget, compute
    batch: float
    decode_step_s: float
    mixed_step_s: float
    mixed_fraction: float
    ttft: dict[str, float]
    itl: dict[str, float]
    tpot: dict[str, float]
    e2e: dict[str, float]

    def metrics(self) -> dict[str, dict[str, float]]:
        return {"ttft": self.ttft, "itl": self.itl, "tpot": self.tpot, "e2e": self.e2e}


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray) -> list[float]:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    if cum[-1] <= 0:
        return [math.nan] * len(_QS)
    idx = np.searchsorted(cum, np.array(_QS) / 100.0 * cum[-1], side="left")
    return [float(values[order][min(i, len(values) - 1)]) for i in idx]


@dataclass
class ServingCurve:
    """λ(n) and what goes with it, for one engine (one stream of one replica).

    Columns over n (mean decoding sequences): ``rate`` req/s, ``itl`` (mean, p50, p90, p99)
    s, ``decode``/``mixed`` mean step times s, ``fraction`` of time in mixed steps, ``ttft``
    (mean, p50, p90, p99) s.
    """

    kind: str  # colocated, prefill, decode
    n: np.ndarray
    rate: np.ndarray
    itl: np.ndarray  # (points, 4)
    ttft: np.ndarray  # (points, 4)
    decode: np.ndarray
    mixed: np.ndarray
    fraction: np.ndarray
    saturation_rate: float
    limit: str
    mean_in: float
    mean_out: float
    single_prefill_s: float  # one prompt alone, s

    def capped(self, max_num_seqs: int) -> "ServingCurve":
        """The curve of the same engine with at most ``max_num_seqs`` sequences (n ≤ it)."""
        if self.kind == "prefill" or not len(self.n) or self.n[-1] <= max_num_seqs:
            return self
        keep = self.n <= max_num_seqs
        if not keep.any():
            keep[0] = True
        cut = slice(0, int(keep.sum()))
        rate = self.rate[cut]
        return ServingCurve(self.kind, self.n[cut], rate, self.itl[cut], self.ttft[cut],
                            self.decode[cut], self.mixed[cut], self.fraction[cut], float(rate[-1]),
                            "max_num_seqs", self.mean_in, self.mean_out, self.single_prefill_s)

    def at(self, rate: float, arrival_scv: float = 1.0) -> SteadyState:
        """The steady state at ``rate`` req/s (unstable at or above the saturation rate).
        ``arrival_scv``: the squared coefficient of variation of the gaps between arrivals (1:
        Poisson; :func:`perfmodel.planning.simulate.arrival_scv`), which a prefill pool's queue
        feels; the colocated form knows no queueing."""
        if not rate < self.saturation_rate:
            return SteadyState(rate, False, self.limit, math.nan, math.inf, math.inf, math.nan,
                               _inf(), _inf(), _inf(), _inf())
        if self.kind == "prefill":
            return self._prefill_at(rate, arrival_scv)
        j = int(np.clip(np.searchsorted(self.rate, rate), 1, len(self.rate) - 1))
        w = (rate - self.rate[j - 1]) / (self.rate[j] - self.rate[j - 1])
        w = min(max(w, 0.0), 1.0)

        def pick(a):
            return a[j - 1] + w * (a[j] - a[j - 1])

        itl_row, ttft_row = pick(self.itl), pick(self.ttft)
        names = ("mean", "p50", "p90", "p99")
        itl = dict(zip(names, map(float, itl_row)))
        ttft = dict(zip(names, map(float, ttft_row)))
        steps = max(self.mean_out - 1.0, 0.0)
        e2e = {k: v + steps * itl["mean"] for k, v in ttft.items()}
        tpot = dict.fromkeys(names, itl["mean"])
        return SteadyState(rate, True, self.limit, float(pick(self.n)), float(pick(self.decode)),
                           float(pick(self.mixed)), float(pick(self.fraction)), ttft, itl, tpot, e2e)

    def _prefill_at(self, rate: float, arrival_scv: float = 1.0) -> SteadyState:
        m1 = self.single_prefill_s
        rho = rate / self.saturation_rate
        # G/D/1 mean wait, one prompt's step as service (Kingman: M/D/1's times c_a²)
        wait = arrival_scv * rho / (2.0 * (1.0 - rho)) * m1
        ttft = {f"p{q}": m1 + wait * _EXP_Q[q] for q in _QS}
        ttft["mean"] = m1 + wait
        nan = dict.fromkeys(("mean", "p50", "p90", "p99"), math.nan)
        return SteadyState(rate, True, self.limit, 0.0, math.nan, m1, 1.0, ttft, nan, dict(nan), dict(ttft))


def serving_curve(steps: StepTimes, limits: EngineLimits, mean_in: float, mean_out: float,
                  kind: str = "colocated") -> ServingCurve:
    """The closed form of one engine for requests of ``mean_in``/``mean_out`` tokens.

    ``kind``: ``colocated`` (prefill and decode share steps), ``prefill`` (a prefill-only pool),
    ``decode`` (a decode-only pool: prompts arrive computed).
    """
    budget = limits.max_batched_tokens
    rate_s = steps.prefill_rate(mean_in)
    chunk1 = min(mean_in, budget)
    single = steps.step(0.0, 1.0, chunk1, chunk1 * rate_s) * float(_prefill_steps_fn()(1.0, mean_in, budget))
    empty = np.zeros((0,))
    if kind == "prefill":
        full = steps.step(0.0, 1.0, budget, budget * rate_s)
        return ServingCurve(kind, empty, empty, np.zeros((0, 4)), np.zeros((0, 4)), empty, empty,
                            empty, budget / (mean_in * full), "token_budget", mean_in, mean_out, single)
    decode_steps = max(mean_out - 1.0, 1e-9)
    context = mean_in + mean_out / 2.0
    limits_n = {"max_num_seqs": float(limits.max_num_seqs),
                "kv_cache": limits.kv_tokens / max(context, 1.0)}
    limit = min(limits_n, key=limits_n.get)
    n_max = limits_n[limit]
    if n_max <= 0:
        return ServingCurve(kind, empty, empty, np.zeros((0, 4)), np.zeros((0, 4)), empty, empty,
                            empty, 0.0, limit, mean_in, mean_out, single)
    ns = np.geomspace(min(1e-2, n_max), n_max, _CURVE_POINTS)[:, None]  # (N, 1)
    top = int(min(limits.max_num_seqs, math.ceil(n_max + 8.0 * math.sqrt(n_max) + 10.0)))
    k = np.arange(0, top + 1, dtype=float)[None, :]  # (1, K)
    pk = np.exp(k * np.log(ns) - ns - gammaln(k + 1.0))  # Poisson(n) decodes at once
    pk[:, -1] += np.maximum(0.0, 1.0 - pk.sum(axis=1))  # the cap holds the tail
    d = steps.steps(np.maximum(k, 1.0), context, 0.0, 0.0)  # (1, K)
    m, phi = d, np.zeros_like(ns)
    decode = steps.parts(np.maximum(k, 1.0), context, 0.0, 0.0)
    first_out = None  # (N, K): from a prompt's last step's scheduling to its first token, async
    room = np.maximum(budget - ns, 1.0)
    chunks = _prefill_steps_fn()(1.0, mean_in, room)
    tokens = (pk * k / d).sum(axis=1, keepdims=True)
    lam = tokens / decode_steps
    p = mean_in / chunks
    if kind == "colocated":
        for _ in range(6):  # λ, φ and a mixed step's prompt tokens settle in a few rounds
            d_mean = (pk * d).sum(axis=1, keepdims=True)
            m_mean = (pk * m).sum(axis=1, keepdims=True)
            # a step holds prompt tokens when any arrived during the step before it
            a, b = -np.expm1(-lam * d_mean), -np.expm1(-lam * m_mean)
            share = np.minimum(1.0, chunks * a / np.maximum(a + 1.0 - b, 1e-300))
            span = share * m_mean + (1.0 - share) * d_mean
            phi = np.where(share > 0, share * m_mean / span, 0.0)
            p = np.maximum(np.where(share > 0, lam * mean_in * span / np.maximum(share, 1e-300), 0.0),
                           mean_in / chunks)
            used = np.minimum(p, room)
            mixed = steps.parts(k, context, used, used * rate_s, np.maximum(used / mean_in, 1.0))  # (N, K) each
            m = np.maximum(mixed[0], mixed[1])  # the step alone
            if limits.async_scheduling:  # its launch overlaps the decode step before it
                after_decode, first_out = mixed_in_decodes(decode, mixed)
                pair, first_then_mixed = mixed_in_decodes(decode, mixed, then_mixed=True)
                # the step before it holds prompt tokens too with probability share
                m = (1.0 - share) * after_decode + share * (pair - after_decode)
                first_out = (1.0 - share) * first_out + share * first_then_mixed
            tokens = (pk * k * ((1.0 - phi) / d + phi / m)).sum(axis=1, keepdims=True)
            lam = tokens / decode_steps
    p_col = np.broadcast_to(p, ns.shape)[:, 0]
    ok = (tokens[:, 0] > 0) & (p_col <= room[:, 0] * 1.0001)
    valid = len(ok) if ok.all() else int(np.argmin(ok))  # past it, prompts outrun the budget
    if valid < len(ok):
        limit = "token_budget"
    rows = []
    busy = 1.0 - pk[:, 0]
    d_full = np.broadcast_to(d, pk.shape)
    m_full = np.broadcast_to(m, pk.shape)
    phi_col = np.broadcast_to(phi, (len(ns), 1))
    for i in range(valid):
        w_d = pk[i, 1:] * k[0, 1:] * (1.0 - phi_col[i, 0]) / d_full[i, 1:]
        w_m = pk[i, 1:] * k[0, 1:] * phi_col[i, 0] / m_full[i, 1:]
        qs = _weighted_quantiles(np.concatenate([d_full[i, 1:], m_full[i, 1:]]), np.concatenate([w_d, w_m]))
        n = float(ns[i, 0])
        itl = [n / float(tokens[i, 0]), *qs]
        step_mean = float((pk[i, 1:] * ((1.0 - phi_col[i, 0]) * d_full[i, 1:] + phi_col[i, 0] * m_full[i, 1:])).sum()
                          / max(busy[i], 1e-12))
        m_mean = float((pk[i] * m_full[i]).sum())
        if kind == "decode":
            base = 0.0
        elif first_out is None:
            base = float(chunks[i, 0]) * m_mean
        else:
            base = (float(chunks[i, 0]) - 1.0) * m_mean + float((pk[i] * first_out[i]).sum())
        ttft = [base + busy[i] * 0.5 * step_mean, *[base + busy[i] * q / 100.0 * step_mean for q in _QS]]
        rows.append((n, float(lam[i, 0]), itl, ttft, float((pk[i] * d_full[i]).sum()), m_mean,
                     float(phi_col[i, 0])))
    if not rows:
        return ServingCurve(kind, empty, empty, np.zeros((0, 4)), np.zeros((0, 4)), empty, empty,
                            empty, 0.0, limit, mean_in, mean_out, single)
    n, rate, itl, ttft, dec, mix, frac = (np.array(col, dtype=float) for col in zip(*rows))
    best = int(np.argmax(rate))
    if best < len(rate) - 1:
        limit = "compute"  # the rate peaks before any limit: larger batches slow steps more
    keep = slice(0, best + 1)
    return ServingCurve(kind, n[keep], rate[keep], itl[keep], ttft[keep], dec[keep], mix[keep],
                        frac[keep], float(rate[best]), limit, mean_in, mean_out, single)
