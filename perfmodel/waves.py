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
def _lambdified(which: str) -> tuple[tuple[str, ...], Any]:
    exprs, args = ((plan_expressions(), _PLAN_ARGS) if which == "plan" else (timeline_expressions(), _WAVE_ARGS))
    symbols = {sym.name: sym for e in exprs.values() for sym in e.free_symbols}
    return tuple(exprs), sp.lambdify([symbols[a] for a in args], list(exprs.values()), "numpy")


def _evaluate(which: str, *values: Any) -> dict[str, np.ndarray]:
    names, fn = _lambdified(which)
    arrays = np.broadcast_arrays(*[np.asarray(v, dtype=float) for v in values])
    with np.errstate(divide="ignore", invalid="ignore"):
        return {n: np.broadcast_to(np.asarray(v, dtype=float), arrays[0].shape)
                for n, v in zip(names, fn(*arrays))}


def one_pass(metrics: Mapping[str, Any], batch: Any) -> dict[str, Any]:
    """A single pass (a prefill, a decode step) holds all B sequences at once: B and one wave
    where it fits, 0 and 0 where not (``fits_in_memory``)."""
    fits = np.asarray(metrics["fits_in_memory"])
    return {**metrics, "concurrent_sequences": np.where(fits, batch, 0), "kv_waves": np.where(fits, 1, 0)}


def run_in_waves(metrics: Mapping[str, Any], batch: Any, input_len: Any, output_len: Any, usable: Any,
                 chunk: int | None, limit: int | None,
                 rerun: Callable[[np.ndarray], Mapping[str, Any]]) -> dict[str, Any]:
    """The request metrics of a fixed batch run in waves (see the module), numbers or numpy
    arrays alike.

    ``metrics``: the batch's metrics as one wave (:data:`perfmodel.prediction.METRICS`);
    ``usable``: bytes per GPU the engine may fill; ``chunk``: its prefill chunk (tokens; None:
    none); ``limit``: its most sequences at once (None: no limit); ``rerun(b)``: the same
    prediction's metrics at batch sizes ``b`` (an array of the batch's shape; called only when
    some point needs more than one wave). Adds :data:`WAVE_METRICS` and sets ``fits_in_memory``
    to B_run ≥ 1.
    """
    plan = _evaluate("plan", batch, input_len, metrics["weights_bytes"], metrics["activation_bytes"],
                     metrics["kv_cache_bytes"], usable, np.inf if chunk is None else chunk,
                     np.inf if limit is None else limit)
    running, waves = plan["concurrent_sequences"], plan["kv_waves"]
    out = {**metrics, "concurrent_sequences": running, "kv_waves": waves, "fits_in_memory": running >= 1}
    split = waves > 1
    if not split.any():
        return out
    whole = np.broadcast_to(np.asarray(batch, dtype=float), split.shape)
    first = rerun(np.where(split, running, whole))
    last = rerun(np.where(split, plan["last_wave"], whole))
    timeline = _evaluate("timeline", waves, batch, input_len, output_len, first["e2e_s"], first["itl_s"],
                         last["e2e_s"], last["itl_s"])
    for name in out:
        if name in WAVE_METRICS or name == "fits_in_memory":
            continue
        if name in timeline:
            out[name] = np.where(split, timeline[name], out[name])
        elif name in first:
            out[name] = np.where(split, first[name], out[name])
    return out
