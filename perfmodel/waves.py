"""A fixed batch whose KV cache does not fit at once, run as vLLM's offline engine runs it.

vLLM does not refuse B prompts whose KV cache exceeds its memory. Its scheduler admits prompts
by the tokens they hold now, so all of them go in while their S tokens each fit, and preempts
the newest running sequences (to be recomputed later) as the decodes grow past the cache
(:mod:`perfmodel.kv_schedule` plays it for B identical requests on the cache of
C = (S + O)·B_fit tokens, B_fit the whole sequences that fit beside the weights,
:func:`perfmodel.memory.sequences_that_fit`). B_run sequences hold their whole S + O tokens at
once (:func:`perfmodel.memory.concurrent_sequences`), and W = ⌈B / B_run⌉ is still reported as
``kv_waves``: where W > 1 the batch outgrows the cache.

Reported for a batch with W > 1 (seconds, tokens/s):

- TTFT: the prefill of all B prompts (what a run of one output token takes: its prompts need
  S + 1 tokens each, admitted in turn);
- E2E = TTFT + TTFT·(P − B·S)/(B·S) + Σ_k w_k · t_k: every token prefilled (P: each prompt
  once, and each recompute's S + g), then the decode steps, w_k of them apportioned to the running counts
  n_k ∈ {1, 4, 16, … below the most that ran at once, B_run, the most} (a step's time t_k, the
  ITL of one pass of n_k sequences, taken linear in the count between them:
  :func:`knot_sizes`, :meth:`perfmodel.kv_schedule.Schedule.knot_weights`);
- ITL = (E2E − TTFT)/(O − 1), as the seed study and the measured rows define it;
- throughput B·(S + O)/E2E and output throughput B·O/E2E, over the whole batch;
- every other number is that of B_run sequences at once: the passes (``prefill_s``,
  ``decode_step_s``, the op breakdown), the memory (the cache full), the speculative split.

Against vLLM 0.26 on one H100 (S = O = 2,048; OLMoE-1B-7B at B = 128, Qwen1.5-MoE-A2.7B,
Qwen3-30B-A3B and Mixtral-8x7B in fp8 at B = 64), where waves run one after another, each of
B_run sequences, over-predicted E2E by 18, 19, 2 and 25%: vLLM's first sequences run together
at more than B_run, and only the preempted few run after them. This schedule: +0.8, −0.8, −5.8
and +0.7%.

``concurrent_sequences`` = B_run, ``kv_waves`` = W and ``kv_preemptions``, the requests the
schedule preempts (each one recomputed): B, 1 and 0 when the batch fits at once; 0, 0 and 0,
with the whole batch's numbers, when not even one sequence fits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sympy as sp

from perfmodel import symbols as s
from perfmodel.codecache import lambdify_named
from perfmodel.kv_schedule import schedule
from perfmodel.memory import concurrent_sequences, kv_waves, sequences_that_fit

#: What a prediction adds about its KV cache's schedule (counts; integers in JSON): B_run, W and
#: the requests preempted (and recomputed) over the run.
WAVE_METRICS = ("concurrent_sequences", "kv_waves", "kv_preemptions")


def knot_sizes(most: np.ndarray, running: np.ndarray) -> list[np.ndarray]:
    """The running counts a decode step's time is taken at, per point (arrays of the points'
    shape): ``running`` (B_run), ``most``, then min(4^j, most) for each 4^j below the largest
    ``most``; between them the time is taken linear in the count. Powers, because a step's time
    grows fast over its first sequences (each brings experts of its own) and slowly once most
    experts are read; of four, because on the four H100 batches that outgrew the cache E2E came
    within 0.4–2.6% of taking every running count's own step time (powers of two: 0.3–2.9%, with
    more evaluations; 1, B_run and the most alone: 1.1–10.5%)."""
    top = int(np.max(most))
    powers = [4 ** j for j in range(top.bit_length()) if 4 ** j < top] or [1]
    return [running, most, *(np.minimum(p, most) for p in powers)]


_PLAN_ARGS = ("B", "S", "O", "weights_bytes", "activation_bytes", "kv_cache_bytes", "usable_bytes", "chunk_tokens",
              "max_sequences")
_WAVE_ARGS = ("ranks", "B", "S", "O", "prefill_tokens", "ttft_whole", "decode_s")


def plan_expressions() -> dict[str, sp.Expr]:
    """B_run, W and the KV cache in tokens, in the symbols of :data:`_PLAN_ARGS`: B, S, O, the
    whole batch's weights, activation peak and KV cache and the usable capacity (bytes per GPU),
    the engine's prefill chunk (tokens) and sequence limit."""
    weights, act, kv, usable, chunk, limit = (sp.Symbol(n, positive=True) for n in _PLAN_ARGS[3:])
    batch = s.B
    running = concurrent_sequences(batch, s.S, weights, act, kv, usable, chunk, limit)
    fit = sequences_that_fit(batch, s.S, weights, act, kv, usable, chunk)
    return {"concurrent_sequences": running, "kv_waves": kv_waves(batch, running),
            "kv_capacity_tokens": sp.floor(fit * (s.S + s.O))}


def timeline_expressions() -> dict[str, sp.Expr]:
    """The metrics of a batch that outgrows its cache (see the module: TTFT, E2E, ITL,
    throughputs) from the whole batch's TTFT (s), the tokens prefilled, the decode steps' time
    D = Σ_k w_k·t_k (s; :func:`run_in_waves`), one rank's B, S, O and the data-parallel ranks."""
    ranks, prefilled, ttft = sp.symbols("ranks prefill_tokens ttft_whole", positive=True)
    B, S, O = s.B, s.S, s.O
    decode = sp.Symbol("decode_s", nonnegative=True)
    recomputed = prefilled - B * S  # the tokens prefilled again, beyond each prompt's first prefill
    e2e = ttft + ttft * recomputed / (B * S) + decode
    return {"ttft_s": ttft, "e2e_s": e2e, "itl_s": (e2e - ttft) / sp.Max(O - 1, 1),
            "throughput_tok_s": ranks * B * (S + O) / e2e, "output_throughput_tok_s": ranks * B * O / e2e}


@functools.cache
def _lambdified(which: str) -> tuple[tuple[str, ...], tuple[int, ...], Any]:
    """(output names, the position in :data:`_PLAN_ARGS` or :data:`_WAVE_ARGS` of each of the
    compiled function's arguments, the function), compiled once and kept on disk."""
    build, args = (plan_expressions, _PLAN_ARGS) if which == "plan" else (timeline_expressions, _WAVE_ARGS)
    # the plan computes B_run once, not again inside W and the last wave's size
    names, order, fn = lambdify_named(f"waves.{which}", build, args, cse=which == "plan")
    return names, tuple(args.index(a) for a in order), fn


def _evaluate(which: str, *values: Any) -> dict[str, np.ndarray]:
    """The expressions of ``which`` at ``values`` (numbers or arrays that broadcast together,
    in the order of :data:`_PLAN_ARGS` or :data:`_WAVE_ARGS`; each intermediate is computed over
    the shape of its own inputs only), each output of the broadcast shape."""
    names, order, fn = _lambdified(which)
    shape = np.broadcast_shapes(*(np.shape(v) for v in values))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = [np.asarray(v, dtype=float) for v in fn(*[np.asarray(values[i], dtype=float) for i in order])]
    return {n: v if v.shape == shape else np.broadcast_to(v, shape) for n, v in zip(names, out)}


@functools.lru_cache(maxsize=65536)
def _played(batch: int, prompt: int, output: int, capacity: int, max_sequences: int,
            running: int, slots: int) -> tuple[float, ...]:
    """The schedule of one point (:func:`perfmodel.kv_schedule.schedule`) as the numbers the
    timeline takes: tokens prefilled, preemptions, then the decode steps
    apportioned to each of the :func:`knot_sizes` with ``slots`` powers of four (a running count
    two of them share counts once, at the first)."""
    run = schedule(batch, prompt, output, capacity, max_sequences)
    sizes = [running, run.max_running, *(min(4 ** j, run.max_running) for j in range(slots))]
    knots = tuple(sorted(set(sizes)))
    weight = dict(zip(knots, run.knot_weights(knots)))
    shares = [weight[n] if sizes.index(n) == i else 0.0 for i, n in enumerate(sizes)]
    return (float(run.prefill_tokens), float(run.preemptions), *shares)


def one_pass(metrics: Mapping[str, Any], batch: Any, ranks: Any = 1) -> dict[str, Any]:
    """A single pass (a prefill, a decode step) holds all B sequences at once: B and one wave
    where it fits, 0 and 0 where not (``fits_in_memory``); B of each of ``ranks`` data-parallel
    ranks, ``concurrent_sequences`` counting all of them."""
    fits = np.asarray(metrics["fits_in_memory"])
    return {**metrics, "concurrent_sequences": np.where(fits, np.multiply(batch, ranks), 0),
            "kv_waves": np.where(fits, 1, 0), "kv_preemptions": np.zeros_like(fits, dtype=int)}


def _activations_at_most(metrics: Mapping[str, Any], batch: Any, input_len: Any, output_len: Any,
                         limit: int | None, rerun: Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]) -> Any:
    """The activation peak the wave plan takes (bytes per GPU): the batch's, except where B is
    above the engine's sequence ``limit``, which no wave exceeds: there the peak at ``limit``
    sequences (a decode step's activations, its logits above all, grow with the sequences it
    holds; a batch of 10⁶ would otherwise count 10⁶ sequences' logits against every wave)."""
    act = metrics["activation_bytes"]
    if limit is None:
        return act
    shape = np.broadcast_shapes(np.shape(batch), np.shape(input_len), np.shape(output_len), np.shape(act))
    over = np.broadcast_to(np.asarray(batch) > limit, shape)
    if not over.any():
        return act
    capped = np.array(np.broadcast_to(np.asarray(act, dtype=float), shape))
    capped[over] = np.asarray(rerun(np.full(int(over.sum()), limit), over)["activation_bytes"], dtype=float)
    return capped


def run_in_waves(metrics: Mapping[str, Any], batch: Any, input_len: Any, output_len: Any, usable: Any,
                 chunk: int | None, limit: int | None,
                 rerun: Callable[[np.ndarray, np.ndarray], Mapping[str, Any]], ranks: Any = 1,
                 reserved: bool = False) -> dict[str, Any]:
    """The request metrics of a fixed batch, run as vLLM's scheduler runs it where it outgrows
    its KV cache (see the module), numbers or numpy arrays alike.

    ``metrics``: the batch's metrics as one wave (:data:`perfmodel.prediction.METRICS`);
    ``usable``: bytes per GPU the engine may fill; ``chunk``: its prefill chunk (tokens; None:
    none); ``limit``: its most sequences at once (None: no limit); ``rerun(b, where)``: the same
    prediction's metrics, one pass of b sequences, at the points that outgrow the cache only.
    ``where``, a boolean mask over the broadcast shape of ``batch``, ``input_len``,
    ``output_len`` and ``metrics`` (0-d for single numbers), marks them; ``b`` (1-D, in C order
    of the marked points) gives their batch sizes; ``rerun`` returns, per metric, one value per
    marked point or one for all. It is called only when some point outgrows its cache: at B_run,
    then at each of the :func:`knot_sizes` some point's decode steps fall on (at the most that
    ran at once where that is not B). Adds :data:`WAVE_METRICS` and sets ``fits_in_memory`` to
    B_run ≥ 1. ``ranks``: data-parallel ranks, each scheduling ``batch``
    sequences on a cache of its own (``rerun`` gets one rank's sizes): the throughputs,
    ``concurrent_sequences`` and ``kv_preemptions`` count all of them. ``reserved``: the engine
    keeps the activations out of its cache at start-up (a profile's ``activation_reserve``),
    whatever a pass holds: they are counted once beside the weights, not per prefill token.
    """
    weights = metrics["weights_bytes"]
    if reserved:
        weights, activations = np.add(weights, metrics["activation_bytes"]), 0.0
    else:
        activations = _activations_at_most(metrics, batch, input_len, output_len, limit, rerun)
    plan = _evaluate("plan", batch, input_len, output_len, weights, activations,
                     metrics["kv_cache_bytes"], usable, np.inf if chunk is None else chunk,
                     np.inf if limit is None else limit)
    running, waves = plan["concurrent_sequences"], plan["kv_waves"]
    out = {**metrics, "concurrent_sequences": running * ranks, "kv_waves": waves,
           "kv_preemptions": np.zeros_like(running), "fits_in_memory": running >= 1}
    split = waves > 1
    if not split.any():
        return out
    shape = np.broadcast_shapes(split.shape, np.shape(input_len), np.shape(output_len),
                                *(np.shape(v) for v in metrics.values()))
    where = np.broadcast_to(split, shape)

    def waved(value: Any) -> np.ndarray:
        """``value`` at the points that outgrow the cache (1-D)."""
        value = np.asarray(value)
        return (value if value.shape == shape else np.broadcast_to(value, shape))[where]

    b, s_in, s_out, run = (waved(v).astype(int) for v in (batch, input_len, output_len, running))
    cap = waved(plan["kv_capacity_tokens"]).astype(int)
    seqs = np.minimum(b, np.inf if limit is None else limit).astype(int)
    keys = list(zip(b.tolist(), s_in.tolist(), s_out.tolist(), cap.tolist(), seqs.tolist()))
    most = np.array([schedule(*key).max_running for key in keys])
    sizes = knot_sizes(most, run)
    played = np.array([_played(*key, r, len(sizes) - 2) for key, r in zip(keys, run.tolist())])
    prefilled, preemptions, steps = played[:, 0], played[:, 1], played[:, 2:].T
    first = rerun(run, where)  # B_run's pass: the numbers the run reports beside its timeline
    decode = steps[0] * np.asarray(first["itl_s"])
    for size, weight in zip(sizes[1:], steps[1:]):
        if not weight.any():  # a knot no point's steps fall on (or one B_run or the most took)
            continue
        itl = waved(metrics["itl_s"]) if np.array_equal(size, b) else rerun(size, where)["itl_s"]
        decode = decode + weight * np.asarray(itl)
    timeline = _evaluate("timeline", waved(ranks), b, s_in, s_out, prefilled, waved(metrics["ttft_s"]), decode)
    preempted = np.zeros(shape)
    preempted[where] = preemptions * waved(ranks)
    out["kv_preemptions"] = preempted
    for name, value in out.items():
        if name in WAVE_METRICS or name == "fits_in_memory":
            continue
        source = timeline if name in timeline else first if name in first else None
        if source is not None:
            merged = np.full(shape, value, dtype=float)  # a copy, written below
            merged[where] = source[name]
            out[name] = merged
    return out
