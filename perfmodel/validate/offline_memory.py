"""The offline validation's memory check: the KV cache the model gives each measured vLLM engine
against the one the engine allocated.

vLLM sizes its cache at start-up (``num_gpu_blocks`` x ``block_size`` tokens, in each row's
``engine_detail.resolved``); the model's capacity is its usable memory less the weights and the
activations the profile's reserve keeps out (:func:`perfmodel.memory.reserved_activation_bytes`,
at the engine's ``max_num_batched_tokens`` and ``max_num_seqs``), over the KV bytes per token.
Each engine configuration counts once: one GPU, the fused Triton MoE the reserve describes (no
MXFP4 or block-fp8 experts), no speculative decoding, CUDA graphs captured to at most 512
sequences (beyond, vLLM's estimate of its graphs' memory, which the model does not count, grows
to gigabytes), and all of a model's layers attending to the whole context (with windowed or
chunked layers vLLM's hybrid KV-cache manager counts blocks of one group of layers). Held
out: the engines of models the reserve was not fitted on
(``fit.activation_reserve.train_models``).
"""

from __future__ import annotations

from typing import Any, Iterable

#: Schemes whose experts run the fused Triton MoE at the reserve's workspaces (None: unquantized).
RESERVE_SCHEMES = (None, "fp8", "w8a16-experts")

#: Largest max_num_seqs of a configuration checked (its CUDA graphs captured to min(2·seqs, 512)).
MAX_SEQS = 512


def engine_kv_capacity(rows: Iterable[dict[str, Any]], profile, gpu: str,
                       all_held_out: bool = False) -> list[dict[str, Any]]:
    """One entry per engine configuration of the ok one-GPU rows (see the module): model,
    ``overrides``, ``quant``, ``kv_dtype``, ``max_num_seqs``, ``max_num_batched_tokens``, ``split``,
    ``engine_tokens``, ``model_tokens`` and ``rel_error`` (model / engine − 1). Empty for a
    profile without an activation reserve. ``all_held_out``: a profile fitted on another GPU's
    logs, none of these engines."""
    from perfmodel.measuring.compare import row_kv_dtype, row_layout, row_overrides, row_quant, row_speculative
    from perfmodel.memory import one_gpu_reserve
    from perfmodel.prediction import Workload, evaluate, graph_options, reserve_values
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    if profile.activation_reserve is None:
        return []
    train = set() if all_held_out else set(((profile.fit or {}).get("activation_reserve") or {}).get("train_models")
                                           or [])
    gpu_spec = load_gpu(gpu)
    seen, out = set(), []
    for row in rows:
        resolved = (row.get("engine_detail") or {}).get("resolved") or {}
        lay = row_layout(row)
        quant, seqs, budget = row_quant(row), resolved.get("max_num_seqs"), resolved.get("max_num_batched_tokens")
        if (row.get("status") != "ok" or row_speculative(row) or lay["tp"] * lay["pp"] * lay["dp"] != 1
                or not resolved.get("num_gpu_blocks") or not seqs or not budget or seqs > MAX_SEQS
                or quant not in RESERVE_SCHEMES or row.get("model_type") == "gpt_oss"):
            continue
        overrides, kv_dtype = row_overrides(row), row_kv_dtype(row)
        key = (row["model"], tuple(overrides), quant, kv_dtype, seqs, budget)
        if key in seen:
            continue
        seen.add(key)
        spec = load_model(row["model"], overrides)
        if spec.quantization is not None or spec.n_window_layers > 0:
            # windowed or chunked layers: vLLM's hybrid KV-cache manager counts blocks of one
            # group of layers (Llama-4-Scout's 12-layer engines: 1.08 M tokens where 12 layers
            # of full attention hold 0.35 M), not tokens every layer holds
            continue
        workload = Workload(batch=1, input_len=1024, output_len=1024, quant=quant, kv_dtype=kv_dtype)
        m = evaluate(spec, gpu_spec, profile, workload, "request").metrics
        options = graph_options(profile, workload, spec, gpu_spec.name)
        reserve = one_gpu_reserve(spec, options, workload.scheme, budget, seqs)
        free = m["memory_capacity_bytes"] - m["weights_bytes"] - float(reserve.subs(reserve_values(profile)))
        tokens = free / (m["kv_cache_bytes"] / 2048)
        engine = int(resolved["num_gpu_blocks"]) * int(resolved.get("block_size") or 16)
        out.append({"model": row["model"], "overrides": list(overrides), "quant": quant or "none",
                    "kv_dtype": kv_dtype or "model", "max_num_seqs": seqs,
                    "max_num_batched_tokens": budget, "split": "train" if row["model"] in train else "held-out",
                    "engine_tokens": engine, "model_tokens": int(tokens), "rel_error": tokens / engine - 1.0})
    return out


def kv_capacity_sentence(entries: list[dict[str, Any]]) -> str:
    """One line for the report's source: per split, configurations, mean and largest |error|."""
    if not entries:
        return ""
    parts = []
    for split in ("held-out", "train"):
        errors = [abs(e["rel_error"]) * 100 for e in entries if e["split"] == split]
        if errors:
            models = sorted({e["model"] for e in entries if e["split"] == split})
            parts.append(f"{split} {len(errors)} ({', '.join(models)}): mean |error| "
                         f"{sum(errors) / len(errors):.2f}%, largest {max(errors):.2f}%")
    return ("the model's KV cache (usable memory less the weights and the activations vLLM reserves at "
            "start-up, over the KV bytes per token) against the tokens each one-GPU engine of the rows "
            "allocated (num_gpu_blocks x block_size; fused Triton MoE, graphs to ≤ 512 sequences; "
            "perfmodel.validate.offline_memory), per engine configuration: " + "; ".join(parts))
