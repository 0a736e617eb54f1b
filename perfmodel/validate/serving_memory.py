"""The serving validation's memory check: the KV cache the planning gives one engine against
the one the measured engine allocated.

vLLM sizes its KV cache once, at start: the memory its ``gpu_memory_utilization`` leaves after
the weights and the peak of a profiling pass of ``max_num_batched_tokens`` tokens, in blocks
(``num_gpu_blocks`` x ``block_size`` tokens, :func:`perfmodel.measuring.serving_replay.engine_kv_tokens`).
The planning's capacity (:attr:`perfmodel.planning.steptime.StepTimes.kv_tokens`) is the same
quantity from the model's memory terms: the GPU's usable bytes (less what CUDA holds outside
torch, where the profile fitted it) less the weights and the activations of a pass of that many
tokens (the engine's start-up reserve, :func:`perfmodel.memory.reserved_activation_bytes`, where
the profile has one), over the cached bytes per token at the traffic's longest context. vLLM also
keeps its estimate of its CUDA graphs' memory out of the cache, which the planning does not
count. The replay holds the engine's own capacity; this
check says how far the planning's, which a plan stands on where nothing was measured, is from it.

A capacity depends on the engine's configuration, not on the rate: each configuration (model,
``--set``, scheme, GPU, layout, ``max_num_seqs``, lengths) counts once, the first run of it.
"""

from __future__ import annotations

from typing import Any, Iterable

#: The run fields that name one engine configuration.
CONFIG_FIELDS = ("model", "scheme", "gpu", "layout", "max_num_seqs", "lengths")


def kv_capacity(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per engine configuration of ``runs`` (the serving validation's runs, each with
    ``engine_kv_tokens`` and ``model_kv_tokens``, tokens) that has both: the configuration's
    fields, ``engine_tokens`` and ``model_tokens`` and ``rel_error`` (model/engine − 1)."""
    out: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        engine, model = run.get("engine_kv_tokens"), run.get("model_kv_tokens")
        if not engine or model is None:
            continue
        key = tuple(run.get(f) for f in CONFIG_FIELDS)
        out.setdefault(key, {**{f: run.get(f) for f in CONFIG_FIELDS}, "engine_tokens": int(engine),
                             "model_tokens": int(model), "rel_error": model / engine - 1.0})
    return list(out.values())


def kv_summary(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``n``, ``mape`` (%), ``max`` (% of the largest |error|) and ``mean`` (signed, %) over
    :func:`kv_capacity`'s entries; None without any."""
    if not entries:
        return None
    errs = [100.0 * e["rel_error"] for e in entries]
    return {"n": len(errs), "mape": sum(map(abs, errs)) / len(errs), "max": max(map(abs, errs)),
            "mean": sum(errs) / len(errs)}


def kv_sentence(entries: list[dict[str, Any]]) -> str:
    """The check in one sentence; empty without entries."""
    s = kv_summary(entries)
    if s is None:
        return ""
    return (f"KV cache: the planning's capacity (usable memory less the weights and the activations of "
            f"a max_num_batched_tokens pass, over the cached bytes per token) against the tokens the engine "
            f"allocated (num_gpu_blocks x block_size), over {s['n']} engine configuration"
            f"{'' if s['n'] == 1 else 's'}: mean |error| {s['mape']:.1f}% (largest {s['max']:.1f}%, "
            f"mean {s['mean']:+.1f}%). The replay holds the engine's own.")


def kv_cell(run: dict[str, Any]) -> str:
    """A run's KV cache cell: ``engine / model (error)`` tokens, or the planning's alone (what the
    replay held) where the row does not say what the engine allocated."""
    engine, model = run.get("engine_kv_tokens"), run.get("model_kv_tokens")
    if engine and model is not None:
        return f"{int(engine):,} / {int(model):,} ({100.0 * (model / engine - 1.0):+.1f}%)"
    if model is not None:
        return f"– / {int(model):,}"
    return "–"
