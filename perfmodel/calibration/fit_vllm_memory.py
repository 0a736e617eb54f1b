"""The memory vLLM keeps out of its KV cache at start-up, fitted on its own logs.

At start-up vLLM 0.26 runs one pass of ``max_num_batched_tokens`` tokens and a sampler pass over
``max_num_seqs`` rows, takes the framework allocator's peak during them as the activations to
reserve, and logs what it found::

    Free memory on device (78.66/79.18 GiB) on startup. Desired GPU memory utilization is (0.9,
    71.26 GiB). Actual usage is 54.53 GiB for weight, 4.95 GiB for peak activation, 0.22 GiB for
    non-torch memory, and 0.34 GiB for CUDAGraph memory. ...

Every committed engine log (``validate/results/<gpu>-vllm-engine-logs/*.log``, one per measured
engine) holds that line and, from the measuring runner, the engine's arguments
(``vllm engine: {...}``: the config overrides, quantization, max_num_seqs) and its resolved
settings (``vllm engine ready in ...: {...}``: max_num_batched_tokens). :func:`engine_memory_logs`
reads them; :func:`fit_activation_reserve` fits the coefficients of
:func:`perfmodel.memory.reserved_activation_bytes` (a_res, b_res, c_res, s_logit) by least squares
on the peaks of the training models' engines, every other model's engines held out, and takes
the median non-torch memory of the training engines. Engines left out: speculative decoding (a
draft model's memory beside the target's), several GPUs, and experts that vLLM runs in another
kernel than its fused Triton MoE (MXFP4, block-fp8 checkpoints: their workspaces differ).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np

GIB = 2.0**30

_MEMORY = re.compile(
    r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup\. Desired GPU memory utilization is "
    r"\(([\d.]+), ([\d.]+) GiB\)\. Actual usage is ([\d.]+) GiB for weight, ([\d.]+) GiB for peak "
    r"activation, ([\d.]+) GiB for non-torch memory")
_KV = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
_ARGS = re.compile(r"^vllm engine: (\{.*\})$", re.M)
_READY = re.compile(r"^vllm engine ready in [\d.]+ s: (\{.*\})$", re.M)
_MODEL = re.compile(r"^[^-]+-engine-(.+?)(?:-x\d+)?\.log$")

#: vLLM --quantization values whose routed experts run in the fused Triton MoE kernel at the
#: workspaces :func:`perfmodel.memory.reserved_activation_bytes` writes (None: unquantized).
FUSED_TRITON_QUANT = (None, "fp8", "experts_int8")


def logs_dir(results: Path) -> Path:
    """The engine logs beside a results file (``<gpu>-vllm.jsonl`` -> ``<gpu>-vllm-engine-logs``)."""
    return results.with_name(f"{results.stem}-engine-logs")


def _literal(text: str) -> dict[str, Any]:
    """A dict the runner printed with repr (enum members as ``<...>`` become None)."""
    try:
        value = ast.literal_eval(re.sub(r"<[^<>]*>", "None", text))
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def read_engine_log(path: Path) -> dict[str, Any] | None:
    """One engine's start-up memory (GiB) and settings from its log; None where the log lacks the
    memory line or the runner's lines."""
    text = path.read_text(errors="replace")
    memory, args, ready, name = _MEMORY.search(text), _ARGS.search(text), _READY.search(text), _MODEL.match(path.name)
    if memory is None or args is None or ready is None or name is None:
        return None
    engine, resolved = _literal(args[1]), _literal(ready[1])
    kv = _KV.search(text)
    return {"log": path.name, "model": name[1], "overrides": dict(engine.get("hf_overrides") or {}),
            "quantization": engine.get("quantization"), "speculative": bool(engine.get("speculative_config")),
            "gpus": int(engine.get("tensor_parallel_size") or 1) * int(engine.get("pipeline_parallel_size") or 1)
            * int(engine.get("data_parallel_size") or 1),
            "max_num_batched_tokens": resolved.get("max_num_batched_tokens"),
            "max_num_seqs": resolved.get("max_num_seqs") or engine.get("max_num_seqs"),
            "total_gib": float(memory[2]), "utilization": float(memory[3]), "weights_gib": float(memory[5]),
            "peak_gib": float(memory[6]), "non_torch_gib": float(memory[7]),
            "kv_gib": float(kv[1]) if kv else None}


def engine_memory_logs(results: Path) -> list[dict[str, Any]]:
    """The start-up memory of every distinct one-GPU engine in the logs beside ``results`` whose
    experts run in the fused Triton MoE, without speculative decoding (see the module), each with
    its model spec (``spec``) and whether its experts quantize their inputs (``w8a8``)."""
    from perfmodel.errors import InputError
    from perfmodel.specs.model import load_model

    seen, out = set(), []
    folder = logs_dir(results)
    for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
        entry = read_engine_log(path)
        if (entry is None or entry["speculative"] or entry["gpus"] != 1 or entry["max_num_batched_tokens"] is None
                or entry["quantization"] not in FUSED_TRITON_QUANT):
            continue
        try:
            spec = load_model(entry["model"], [f"{k}={v}" for k, v in sorted(entry["overrides"].items())])
        except InputError:
            continue
        if not spec.is_moe or spec.quantization is not None or spec.model_type == "gpt_oss":
            continue
        # the depth does not change a pass's peak: engines that differ in it alone count once
        shape = tuple(sorted((k, v) for k, v in entry["overrides"].items() if k != "num_hidden_layers"))
        key = (entry["model"], shape, entry["quantization"], entry["max_num_batched_tokens"],
               entry["max_num_seqs"], entry["peak_gib"])
        if key in seen:
            continue
        seen.add(key)
        out.append({**entry, "spec": spec, "w8a8": entry["quantization"] == "fp8"})
    return out


def _reserve_functions(entries: list[dict[str, Any]]):
    """Per engine, the reserve as a function of (a_res, b_res, c_res, s_logit), bytes."""
    import sympy as sp

    from perfmodel import symbols as s
    from perfmodel.graph import GraphOptions
    from perfmodel.memory import one_gpu_reserve
    from perfmodel.quantization import resolve

    params = (s.a_res, s.b_res, s.c_res, s.s_logit)
    out = []
    for e in entries:
        options = GraphOptions(quantized=e["w8a8"], quantized_activations=e["w8a8"])
        scheme = resolve("fp8" if e["w8a8"] else None, "bf16")
        expr = one_gpu_reserve(e["spec"], options, scheme, e["max_num_batched_tokens"], e["max_num_seqs"])
        out.append(sp.lambdify(params, expr, "numpy"))
    return out


def fit_activation_reserve(results: Path, train: tuple[str, ...]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the profile's ``activation_reserve`` entry, its ``fit.activation_reserve`` record) from the
    engine logs beside ``results``: the coefficients by least squares on the peaks of the
    ``train`` models' engines (GiB residuals, each coefficient at least 0), the non-torch memory
    as their median; the record names every engine by split with its measured and fitted peak.
    (None, {"reason": ...}) where no training engine logged its memory."""
    from scipy.optimize import least_squares

    from perfmodel.calibration.fit import _sig
    from perfmodel.paths import ROOT

    entries = engine_memory_logs(results)
    train_set = {m.lower() for m in train}
    train_index = [i for i, e in enumerate(entries) if e["model"].lower() in train_set]
    fitted = [entries[i] for i in train_index]
    if not fitted:
        return None, {"reason": f"no engine log of a training model in {logs_dir(results)}"}
    functions = _reserve_functions(entries)
    measured = np.array([e["peak_gib"] for e in entries])
    scale = np.array([GIB, 1.0, 1.0, 1.0])  # a_res in GiB while fitting

    def peaks(x: np.ndarray, index) -> np.ndarray:
        return np.array([functions[i](*(x * scale)) for i in index]) / GIB

    # the peak is a max of linear parts: start from a few corners and keep the best
    starts = [np.array([a, b, 1.0, sl]) for a in (0.1, 0.5) for b in (2.0, 6.0) for sl in (4.0, 16.0)]
    result = min((least_squares(lambda x: peaks(x, train_index) - measured[train_index], x0=x0,
                                bounds=(np.zeros(4), np.array([8.0, 64.0, 16.0, 256.0]))) for x0 in starts),
                 key=lambda r: r.cost)
    x = result.x * scale
    predicted = peaks(result.x, range(len(entries)))
    non_torch = float(np.median([e["non_torch_gib"] for e in fitted])) * GIB
    engines = [{"log": e["log"], "model": e["model"], "split": "train" if e["model"].lower() in train_set else "held-out",
                "peak_gib": e["peak_gib"], "predicted_gib": round(float(p), 3)} for e, p in zip(entries, predicted)]
    record = {"logs": str(logs_dir(results).relative_to(ROOT)), "train_models": sorted(train_set),
              "residuals": {split: _summary([g for g in engines if g["split"] == split])
                            for split in ("train", "held-out")},
              "engines": {g["log"]: f"{g['split']}: {g['peak_gib']} GiB logged, {g['predicted_gib']} fitted"
                          for g in engines}}
    reserve = {"fixed_bytes": _sig(x[0]), "hidden_copies": _sig(x[1]), "mlp_copies": _sig(x[2]),
               "logit_bytes": _sig(x[3]), "non_torch_bytes": _sig(non_torch),
               "source": (f"fitted on the start-up peaks of {len(fitted)} engines of {', '.join(sorted(train_set))} "
                          f"({record['logs']}); {len(entries) - len(fitted)} engines of other models held out: "
                          "fit.activation_reserve")}
    return reserve, record


def _summary(engines: list[dict[str, Any]]) -> dict[str, Any]:
    """Engines, mean and largest |predicted − measured| peak (GiB), and the models."""
    if not engines:
        return {"engines": 0}
    errors = np.abs([g["predicted_gib"] - g["peak_gib"] for g in engines])
    return {"engines": len(engines), "mean_abs_gib": round(float(errors.mean()), 3),
            "max_abs_gib": round(float(errors.max()), 3), "models": sorted({g["model"] for g in engines})}
