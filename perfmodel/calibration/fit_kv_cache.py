"""Fitting the attention kernels' memory efficiency with the KV cache in another dtype.

vLLM stores the KV cache in fp8 with ``kv_cache_dtype="fp8"`` (rows measured with ``perfmodel
measure --kv-cache-dtype fp8``, point ids ``kv=fp8``; predicted with ``--kv-dtype fp8``). A decode
step's attention then reads half the bytes, and FlashAttention-3's fp8 path does not read them as
fast as its bf16 path reads its own: in OLMoE-1B-7B's profiled steps the attention kernels take
0.83-0.86 of their bf16 time, not 0.5. The multiplier μ_kv of the attention classes' η_m
(``kv_cache.<dtype>.attention_memory``, :mod:`perfmodel.roofline`) is fitted by least squares
on log(model/measured) decode step (ITL) of the training models' rows at that dtype (weights
unquantized, one GPU, as built, no speculative decoding), every other parameter held at the bf16
fit's value. Every other model's rows at that dtype are held out, and their ITL and TTFT
residuals are reported beside the fit (``fit.kv_cache.<dtype>``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perfmodel.calibration.fit import _predict_many, _profile, _sig, on_bounds, one_gpu_rows

#: (start, lower, upper) of μ_kv.
KV_BOUNDS = (1.0, 0.05, 2.0)


def kv_cache_rows(rows: list[dict[str, Any]], kv_dtype: str) -> list[dict[str, Any]]:
    """The ok one-GPU rows of models as built whose KV cache was stored in ``kv_dtype``, weights
    unquantized, fused MoE, no speculative decoding: the latest row of each point id."""
    from perfmodel.measuring.compare import is_variant, row_kv_dtype, row_moe_impl, row_quant, row_speculative

    latest = {r["point_id"]: r for r in one_gpu_rows(rows)
              if r.get("status") == "ok" and not is_variant(r) and row_kv_dtype(r) == kv_dtype
              and row_quant(r) is None and not row_speculative(r) and row_moe_impl(r) == "fused"}
    return list(latest.values())


def kv_dtypes(rows: list[dict[str, Any]]) -> list[str]:
    """The KV-cache dtypes other than the model's that some ok row was measured with."""
    from perfmodel.measuring.compare import row_kv_dtype

    return sorted({kv for r in rows if r.get("status") == "ok" and (kv := row_kv_dtype(r)) is not None})


def _errors(rows: list[dict[str, Any]], profile, gpu_spec) -> np.ndarray:
    """predicted/measured − 1 of (TTFT, decode step) of each row under a profile object."""
    measured = np.array([(r["ttft_ms"] * 1e-3, r["itl_ms"] * 1e-3) for r in rows])
    return _predict_many(rows, profile, gpu_spec) / measured - 1.0


def fit_kv_cache(every_row: list[dict[str, Any]], base: dict[str, Any], gpu: str, kv_dtype: str,
                 train_models: tuple[str, ...]) -> tuple[float | None, list[str], dict[str, Any]]:
    """μ_kv of the attention kernels with the KV cache in ``kv_dtype``, the point ids it comes
    from and the record of the fit (training and held-out rows, their residuals in %).
    (None, [], {}) when no training model has such rows."""
    from scipy.optimize import least_squares

    from perfmodel.specs.hardware import load_gpu

    gpu_spec = load_gpu(gpu)
    rows = kv_cache_rows(every_row, kv_dtype)
    train = [r for r in rows if r["model"] in train_models]
    held = [r for r in rows if r["model"] not in train_models]
    if not train:
        return None, [], {}
    start, lower, upper = KV_BOUNDS

    def with_mu(mu: float) -> dict[str, Any]:
        return {**base, "kv_cache": {**base.get("kv_cache", {}), kv_dtype: {"attention_memory": float(mu)}}}

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log1p(_errors(train, _profile(with_mu(x[0])), gpu_spec)[:, 1])

    result = least_squares(residuals, np.array([start]), bounds=([lower], [upper]), method="trf")
    mu = _sig(float(on_bounds(result.x[0], lower, upper)))  # the bounds are 4-digit numbers already
    fitted = _profile(with_mu(mu))
    record: dict[str, Any] = {"models": sorted({r["model"] for r in train}),
                              "points": sorted(r["point_id"] for r in train)}
    for name, part in (("train", train), ("held_out", held)):
        if part:
            errors = 100 * _errors(part, fitted, gpu_spec)
            record[name] = {
                "itl_mape_pct": _sig(float(np.mean(np.abs(errors[:, 1]))), 3),
                "ttft_mape_pct": _sig(float(np.mean(np.abs(errors[:, 0]))), 3),
                "errors_pct": {r["point_id"]: {"ttft": _sig(float(e[0]), 3), "itl": _sig(float(e[1]), 3)}
                               for r, e in zip(part, errors)},
            }
    return mu, [r["point_id"] for r in train], record
