"""A fixed batch whose KV cache does not fit runs in waves, as vLLM's offline engine runs it.

vLLM does not refuse B prompts whose KV cache exceeds its memory: the scheduler runs as many
sequences as the cache (and ``max_num_seqs``) allows and admits the rest as earlier ones
finish. The model runs a request of B sequences as W = ⌈B / B_run⌉ waves
(:func:`perfmodel.memory.concurrent_sequences`, :func:`perfmodel.memory.kv_waves`): W − 1 full
waves of B_run sequences, then the rest (:func:`perfmodel.memory.last_wave`), each a prefill
and O − 1 decode steps at its own batch size, one after another. What vLLM does between waves
is not modelled: it admits prompts by their prefill's blocks and preempts (recomputes) the
newest sequences when growing decodes run out of blocks, so waves overlap a little and some
prompts are prefilled twice.

Reported for a batch in W > 1 waves (seconds, tokens/s):

- E2E: the sum of the waves' E2E, (W − 1)·E2E(B_run) + E2E(B_last);
- TTFT: the first wave's;
- ITL: the mean of the waves' ITL weighted by each wave's duration, Σ_w E2E_w·ITL_w / Σ_w E2E_w
  (the decode step in progress at a moment drawn uniformly over the run);
- throughput B·(S + O)/E2E and output throughput B·O/E2E, over the whole batch;
- every other number is the first wave's: its passes (``prefill_s``, ``decode_step_s``, the op
  breakdown), its memory (what is on the GPU at once), its speculative step split.

``concurrent_sequences`` = B_run and ``kv_waves`` = W: B and 1 when the batch fits at once; 0
and 0, with the whole batch's numbers, when not even one sequence fits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sympy as sp

from perfmodel import symbols as s
from perfmodel.codecache import lambdify_named
from perfmodel.memory import concurrent_sequences, kv_waves, last_wave

#: What a prediction adds about its waves (counts; integers in JSON).
WAVE_METRICS = ("concurrent_sequences", "kv_waves")

_PLAN_ARGS = ("B", "S", "weights_bytes", "activation_bytes", "kv_cache_bytes", "usable_bytes", "chunk_tokens",
              "max_sequences")
_WAVE_ARGS = ("W", "B", "S", "O", "e2e_first", "itl_first", "e2e_last", "itl_last")


def plan_expressions() -> dict[str, sp.Expr]:
    """B_run, W and the last wave's size in the symbols of :data:`_PLAN_ARGS`: B, S, the whole
    batch's weights, activation peak and KV cache and the usable capacity (bytes per GPU), the
    engine's prefill chunk (tokens) and sequence limit."""
    weights, act, kv, usable, chunk, limit = (sp.Symbol(n, positive=True) for n in _PLAN_ARGS[2:])
    batch = s.B
    running = concurrent_sequences(batch, s.S, weights, act, kv, usable, chunk, limit)
    return {"concurrent_sequences": running, "kv_waves": kv_waves(batch, running),
            "last_wave": last_wave(batch, running)}


def timeline_expressions() -> dict[str, sp.Expr]:
    """The metrics W waves set (see the module: E2E, ITL, throughputs) from a full wave's and the
    last wave's E2E and ITL (s), W, B, S and O."""
    W, e2e_1, itl_1, e2e_n, itl_n = sp.symbols("W e2e_first itl_first e2e_last itl_last", positive=True)
    B, S, O = s.B, s.S, s.O
    e2e = (W - 1) * e2e_1 + e2e_n
    itl = ((W - 1) * e2e_1 * itl_1 + e2e_n * itl_n) / e2e
    return {"e2e_s": e2e, "itl_s": itl, "throughput_tok_s": B * (S + O) / e2e,
            "output_throughput_tok_s": B * O / e2e}


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


def one_pass(metrics: Mapping[str, Any], batch: Any, ranks: Any = 1) -> dict[str, Any]:
    """A single pass (a prefill, a decode step) holds all B sequences at once: B and one wave
    where it fits, 0 and 0 where not (``fits_in_memory``); B of each of ``ranks`` data-parallel
    ranks, ``concurrent_sequences`` counting all of them."""
    fits = np.asarray(metrics["fits_in_memory"])
    return {**metrics, "concurrent_sequences": np.where(fits, np.multiply(batch, ranks), 0),
            "kv_waves": np.where(fits, 1, 0)}


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
    """The request metrics of a fixed batch run in waves (see the module), numbers or numpy
    arrays alike.

    ``metrics``: the batch's metrics as one wave (:data:`perfmodel.prediction.METRICS`);
    ``usable``: bytes per GPU the engine may fill; ``chunk``: its prefill chunk (tokens; None:
    none); ``limit``: its most sequences at once (None: no limit); ``rerun(b, where)``: the same
    prediction's metrics at the points that run in waves only. ``where``, a boolean mask over
    the broadcast shape of ``batch``, ``input_len``, ``output_len`` and ``metrics`` (0-d for
    single numbers), marks them; ``b`` (1-D, in C order of the marked points) gives their batch
    sizes; ``rerun`` returns, per metric, one value per marked point or one for all. It is
    called only when some point runs in waves: at the full waves' size, then at the last
    wave's where that differs at some point. Adds :data:`WAVE_METRICS` and sets
    ``fits_in_memory`` to B_run ≥ 1. ``ranks``: data-parallel ranks, each running ``batch``
    sequences in waves of its own (``rerun`` gets one rank's sizes): the throughputs and
    ``concurrent_sequences`` count all of them. ``reserved``: the engine keeps the activations
    out of its cache at start-up (a profile's ``activation_reserve``), whatever a wave holds: they
    are counted once beside the weights, not per prefill token.
    """
    weights = metrics["weights_bytes"]
    if reserved:
        weights, activations = np.add(weights, metrics["activation_bytes"]), 0.0
    else:
        activations = _activations_at_most(metrics, batch, input_len, output_len, limit, rerun)
    plan = _evaluate("plan", batch, input_len, weights, activations,
                     metrics["kv_cache_bytes"], usable, np.inf if chunk is None else chunk,
                     np.inf if limit is None else limit)
    running, waves = plan["concurrent_sequences"], plan["kv_waves"]
    out = {**metrics, "concurrent_sequences": running * ranks, "kv_waves": waves, "fits_in_memory": running >= 1}
    split = waves > 1
    if not split.any():
        return out
    shape = np.broadcast_shapes(split.shape, np.shape(input_len), np.shape(output_len),
                                *(np.shape(v) for v in metrics.values()))
    where = np.broadcast_to(split, shape)

    def waved(value: Any) -> np.ndarray:
        """``value`` at the points in waves (1-D)."""
        value = np.asarray(value)
        return (value if value.shape == shape else np.broadcast_to(value, shape))[where]

    full_size, last_size = waved(running), waved(plan["last_wave"])
    first = rerun(full_size, where)
    last = first if np.array_equal(last_size, full_size) else rerun(last_size, where)
    timeline = _evaluate("timeline", waved(waves), waved(np.multiply(batch, ranks)), waved(input_len),
                         waved(output_len), first["e2e_s"], first["itl_s"], last["e2e_s"], last["itl_s"])
    for name, value in out.items():
        if name in WAVE_METRICS or name == "fits_in_memory":
            continue
        source = timeline if name in timeline else first if name in first else None
        if source is not None:
            merged = np.full(shape, value, dtype=float)  # a copy, written below
            merged[where] = source[name]
            out[name] = merged
    return out
