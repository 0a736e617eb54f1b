"""Fitting an engine profile: kernel efficiencies from microbenchmarks, overheads end to end.

``perfmodel calibrate fit`` regenerates ``calibration/profiles/<gpu>-hf.yaml`` from the
committed data, deterministically:

1. η curves per op class from the microbenchmark tables (:mod:`perfmodel.calibration.fit_kernels`),
   excluding every shape that only a held-out model uses;
   (the masked decode attention and the per-head key/value copies of the engine's decode
   included, from the benchmarked calls the engine makes);
2. the engine's fixed costs — per layer and per step of a decode step replayed from a CUDA
   graph, per layer and per pass of host launch time of an eager prefill — by least squares on
   log(predicted/measured) of the training models' decode steps and TTFTs;
3. the residuals on the held-out models, which become the profile's error band (the 90th
   percentile of |relative error| per metric).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from perfmodel.errors import SpecError
from perfmodel.paths import CALIBRATION_DATA_DIR, PROFILES_DIR, RESULTS_DIR, ROOT

#: The default split: end-to-end fits use these models only; the others are held out.
TRAIN_MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b", "mixtral-8x7b")
HELD_OUT_MODELS = ("qwen3-30b-a3b", "phi-3.5-moe", "deepseek-v2-lite")

#: Options of the hf engine (transformers + StaticCache + CUDA-graph decode, eager prefill).
HF_OPTIONS = {
    "decode_attention_span": "allocated",
    "mla_cache": "latent",
    "mla_absorb_decode": False,
    "decode_kv_expand": True,
    "prefill_eager": True,
    "memory_usable_fraction": 0.95,
}
_LATENCY_KEYS = ("per_layer_s", "per_step_s", "eager_layer_s", "eager_step_s")


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _profile(base: dict[str, Any]):
    from perfmodel.profile import EngineProfile

    return EngineProfile(**base)


def _rows(results: Path, models: tuple[str, ...]) -> list[dict[str, Any]]:
    from perfmodel.validate.compare import is_variant, load_measurements

    if not results.exists():
        raise SpecError(f"no measurements at {results}: run perfmodel measure first")
    rows = [r for r in load_measurements(results)
            if r.get("status") == "ok" and r["model"] in models and not is_variant(r)]
    if not rows:
        raise SpecError(f"{results} holds no ok rows of the training models {', '.join(models)}")
    return rows


_TEMP_PROFILES: dict[str, Path] = {}


def _write_temp(base: dict[str, Any]) -> str:
    """A profile dict as a YAML file the predictor can load (kept per content)."""
    import hashlib
    import tempfile

    text = yaml.safe_dump(base, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    if key not in _TEMP_PROFILES:
        path = Path(tempfile.gettempdir()) / f"perfmodel-fit-{key}.yaml"
        path.write_text(text)
        _TEMP_PROFILES[key] = path
    return str(_TEMP_PROFILES[key])


def _predict_many(rows, profile, gpu_spec):
    """Predicted (TTFT, decode step) in s for each row under a profile object."""
    from perfmodel.prediction import Workload, evaluate
    from perfmodel.specs.model import load_model
    from perfmodel.validate.compare import row_overrides

    out = []
    for row in rows:
        model = load_model(row["model"], row_overrides(row))
        w = Workload(batch=row["batch"], input_len=row["input_len"], output_len=row["output_len"])
        m = evaluate(model, gpu_spec, profile, w, "request").metrics
        out.append((m["ttft_s"], m["itl_s"]))
    return np.array(out)


def fit_overheads(rows: list[dict[str, Any]], base: dict[str, Any], gpu: str) -> dict[str, Any]:
    """Fixed costs of graph decode and eager prefill (s), and the engine's elementwise η.

    Least squares on log(predicted/measured) TTFT and decode step of the training rows. The
    elementwise efficiency starts from the microbenchmark fit and is refined here: the
    engine's unfused norms, casts, routing glue and scatter kernels run at an efficiency no
    single benchmarked kernel shows. Returns {"latency": {...}, "elementwise_memory": η}.
    """
    from scipy.optimize import least_squares

    from perfmodel.specs.hardware import load_gpu

    gpu_spec = load_gpu(gpu)
    measured = np.array([(r["ttft_ms"] * 1e-3, r["itl_ms"] * 1e-3) for r in rows])
    scale = np.array([1e-4, 1e-3, 1e-3, 1e-2, 0.1])  # typical sizes: a well-scaled problem
    eta0 = base["efficiency"]["elementwise"]["memory"]

    def variant(x: np.ndarray) -> dict[str, Any]:
        values = x * scale
        latency = {**base["latency"], **dict(zip(_LATENCY_KEYS, map(float, values[:4])))}
        elementwise = {**base["efficiency"]["elementwise"], "memory": float(values[4]),
                       "memory_half": 0.0}
        return {**base, "latency": latency,
                "efficiency": {**base["efficiency"], "elementwise": elementwise}}

    def residuals(x: np.ndarray) -> np.ndarray:
        predicted = _predict_many(rows, _profile(variant(x)), gpu_spec)
        return np.log(predicted / measured).ravel()

    start = np.array([1.0, 0.0, 1.0, 0.0, eta0 / scale[4]])
    lower = np.array([0.0, 0.0, 0.0, 0.0, 0.01 / scale[4]])
    upper = np.array([np.inf, np.inf, np.inf, np.inf, 1.0 / scale[4]])
    result = least_squares(residuals, start, bounds=(lower, upper), method="trf")
    values = result.x * scale
    return {"latency": {key: _sig(float(v)) for key, v in zip(_LATENCY_KEYS, values[:4])},
            "elementwise_memory": _sig(float(values[4]))}


def fit_profile(gpu: str = "h200-sxm", *, data_dir: Path | None = None,
                results: Path | None = None, train: tuple[str, ...] = TRAIN_MODELS,
                held_out: tuple[str, ...] = HELD_OUT_MODELS) -> dict[str, Any]:
    """The fitted hf profile of a GPU as a YAML-ready dict (same data → same dict)."""
    from perfmodel.calibration.fit_kernels import fit_kernel_efficiencies, kernel_fit_to_profile_dict
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.validate.compare import compare, load_measurements, what_if_file

    data_dir = data_dir or CALIBRATION_DATA_DIR / gpu
    results = results or RESULTS_DIR / f"{gpu.split('-')[0]}-hf.jsonl"
    gpu_spec = load_gpu(gpu)
    kernels = fit_kernel_efficiencies(data_dir, gpu_spec, exclude_models=set(held_out),
                                      per_kernel="gemm_intercept")
    efficiency = kernel_fit_to_profile_dict(kernels, include_extra=True)
    efficiency["comm"] = {"compute": 1.0, "memory": 0.8, "compute_half": 0.0, "memory_half": 0.0}
    base: dict[str, Any] = {
        "name": f"{gpu}-hf", "engine": "hf", "gpu": gpu, "calibrated": True,
        "peaks": "datasheet", "efficiency": efficiency,
        "latency": {"per_kernel_s": _sig(kernels.per_kernel_s), "per_layer_s": 0.0,
                    "per_step_s": 0.0, "eager_layer_s": 0.0, "eager_step_s": 0.0},
        "options": dict(HF_OPTIONS),
    }
    rows = _rows(results, train)
    overheads = fit_overheads(rows, base, gpu)
    base["latency"].update(overheads["latency"])
    base["efficiency"]["elementwise"].update(memory=overheads["elementwise_memory"], memory_half=0.0)
    # held-out residuals → error band
    profile_path = _write_temp(base)
    all_rows = load_measurements(results)
    if what_if_file(results).exists():  # hypothetical variants: held out by construction
        all_rows += load_measurements(what_if_file(results))
    points, _ = compare(all_rows, engine=profile_path, gpu=gpu, train_models=train)
    stats: dict[str, Any] = {}
    for split in ("train", "held-out"):
        sub = points[points["split"] == split]
        stats[split] = {
            metric: {"mape_pct": _sig(float(g["rel_error"].abs().mean() * 100)),
                     "p90_abs_pct": _sig(float(g["rel_error"].abs().quantile(0.9) * 100)),
                     "bias_pct": _sig(float(g["rel_error"].mean() * 100)), "n": int(len(g))}
            for metric, g in sub.groupby("metric")
        }
    held = stats["held-out"]
    base["error_band"] = {
        "ttft": _sig(held["ttft"]["p90_abs_pct"] / 100), "decode_step": _sig(held["decode_step"]["p90_abs_pct"] / 100),
        "e2e": _sig(held["e2e"]["p90_abs_pct"] / 100), "throughput": _sig(held["throughput"]["p90_abs_pct"] / 100),
        "source": (f"90th percentile of |relative error| on held-out models ({', '.join(held_out)}) "
                   "and on hypothetical variants (what-if results)"),
    }
    meta = _metadata(data_dir)
    base["description"] = (
        "transformers (SDPA, StaticCache, grouped_mm experts) with CUDA-graph decode and eager "
        f"prefill on {gpu}; fitted by perfmodel calibrate fit")
    base["fitted_from"] = (f"{data_dir.relative_to(ROOT)} (microbenchmarks, {meta}) and "
                           f"{results.relative_to(ROOT)} (end-to-end, training models only)")
    base["fit"] = {
        "train_models": list(train), "held_out_models": list(held_out),
        "kernel_fit": kernels.summary(),
        "residuals": stats,
    }
    return base


def _metadata(data_dir: Path) -> str:
    import json

    path = data_dir / "metadata.json"
    if not path.exists():
        raise SpecError(f"missing {path}: the microbenchmark tables need their metadata")
    meta = json.loads(path.read_text())
    return (f"{meta.get('gpu_name')}, torch {meta.get('torch')}, transformers "
            f"{meta.get('transformers')}, {str(meta.get('date'))[:10]}, commit {meta.get('git_commit')}")


def write_profile(profile: dict[str, Any], path: Path | None = None) -> Path:
    """Write a fitted profile YAML (stable key order) and return its path."""
    path = path or PROFILES_DIR / f"{profile['gpu']}-{profile['engine']}.yaml"
    header = "# Fitted by `perfmodel calibrate fit` from committed data; regenerate, do not edit.\n"
    path.write_text(header + yaml.safe_dump(profile, sort_keys=False, width=100))
    return path
