"""The kernel-efficiency fit: determinism, recovery of known η, held-out models, bad data, and
its accuracy on the committed H200 microbenchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from perfmodel.calibration.fit_kernels import (
    ELEMENTWISE_KERNELS, PARAM_KEYS, PROFILE_CLASSES, TABLES, _models, fit_kernel_efficiencies,
    kernel_fit_to_profile_dict,
)
from perfmodel.calibration.fit import FIT_RTOL, profile_differences
from perfmodel.errors import SpecError
from perfmodel.specs.hardware import load_gpu

H200_DATA = Path(__file__).resolve().parents[1] / "calibration" / "data" / "h200-sxm"
GPU = load_gpu("h200-sxm")
F_BF16, BW = GPU.peak("bf16"), GPU.hbm_bandwidth

#: The known truth of the synthetic tables (compute halves in the class's size unit, memory
#: halves in bytes).
T_KERNEL = 2e-6
TRUE = {
    "gemm": {"compute": 0.7, "compute_half": 64.0, "memory": 0.8, "memory_half": 0.0},
    "grouped_gemm": {"compute": 0.6, "compute_half": 100.0, "memory": 0.55, "memory_half": 2e6},
    "attention": {"compute": 0.5, "compute_half": 1000.0, "memory": 0.7, "memory_half": 5e6},
    "elementwise": {"compute": 1.0, "compute_half": 0.0, "memory": 0.75, "memory_half": 1e6},
}
TRUE_MASKED = {"memory": 0.85, "memory_half": 3e7}
TRUE_COPY = 0.25


def _eta(p: dict, which: str, u):
    return p[which] * u / (u + p[f"{which}_half"])


def _time(p: dict, flops, nbytes, x, kernels=1, f_peak=F_BF16):
    """The roofline time: η_c over the size x, η_m over the bytes (no time without bytes)."""
    tc = np.asarray(flops, float) / (f_peak * _eta(p, "compute", x))
    nbytes = np.asarray(nbytes, float)
    tm = np.where(nbytes > 0, nbytes / (BW * _eta(p, "memory", np.maximum(nbytes, 1.0))), 0.0)
    return np.maximum(tc, tm) + kernels * T_KERNEL


def _ok(df: pd.DataFrame, t_s) -> pd.DataFrame:
    df["median_ms"] = np.asarray(t_s) * 1e3
    df["status"] = "ok"
    df["error"] = ""
    return df


def _sizes():
    """x values, each with a compute-heavy and a memory-heavy row."""
    return np.repeat(2.0 ** np.arange(0, 15), 2), np.tile([0, 1], 15)


def write_synthetic(path: Path) -> dict[str, int]:
    """Tables generated from :data:`TRUE` with the roofline formula. Models 'alpha' and 'beta'
    own some rows, others are shared or from the grid. Returns rows per owner for the checks."""
    path.mkdir(parents=True, exist_ok=True)
    x, heavy = _sizes()
    n = len(x)
    owners = np.array(["alpha:q_proj", "beta:o_proj", "alpha:k_proj;beta:k_proj"] * n)[:n]
    flops = np.where(heavy == 0, 1e6 * x * 1e3, 1e3 * x)
    nbytes = np.where(heavy == 0, 1e4 * x, 1e6 * (1 + x))
    gemm = pd.DataFrame({"m": x, "n": 4096, "k": 4096, "roles": owners, "dtype": "bfloat16",
                         "flops": flops, "bytes": nbytes})
    _ok(gemm, _time(TRUE["gemm"], flops, nbytes, x))
    fp8 = gemm.copy()
    fp8["dtype"] = "float8_e4m3fn"
    _ok(fp8, _time(TRUE["gemm"], flops, nbytes, x, f_peak=GPU.peak("fp8")))
    pd.concat([gemm, fp8], ignore_index=True).to_csv(path / "gemm.csv", index=False)

    sources = np.array(["alpha", "seed_grid", "beta"] * n)[:n]
    grouped = pd.DataFrame({"source": sources, "routing": "uniform", "routed_rows": x * 4,
                            "experts_hit": 4, "mean_tokens_per_hit_expert": x,
                            "dtype": "bfloat16", "flops": flops, "bytes": nbytes})
    _ok(grouped, _time(TRUE["grouped_gemm"], flops, nbytes, x))
    grouped_fp8 = _ok(grouped.assign(dtype="float8_e4m3fn"),
                      _time(TRUE["grouped_gemm"], flops, nbytes, x, f_peak=GPU.peak("fp8")))
    pd.concat([grouped, grouped_fp8], ignore_index=True).to_csv(path / "grouped_gemm.csv", index=False)

    # prefill: x = B·S; the bench writes the causal count as S²/2 pairs (FLOPs × S/(S+1))
    b = np.tile([1, 4, 16], 10)[:n]
    s = np.maximum(x / b, 1)
    kx = b * s
    p_flops = np.where(heavy == 0, 1e6 * kx * 1e2, 1e3 * kx)
    p_bytes = np.where(heavy == 0, 1e3 * kx, 1e6 * (1 + kx))
    pre = pd.DataFrame({"batch": b, "seq": s, "alloc_len": 2 * s, "context_len": s, "heads": 32,
                        "kv_heads": 8, "head_dim": 128, "models": np.where(heavy == 0, "alpha", "alpha;beta"),
                        "model": "", "op": "sdpa_prefill", "dtype": "bfloat16",
                        "flops": p_flops * s / (s + 1), "bytes": p_bytes})
    _ok(pre, _time(TRUE["attention"], p_flops, p_bytes, kx))
    # masked decode, MHA (h = kv) and GQA (copy first): bytes as the bench counts them
    rows = []
    for bb in (1, 8, 64):
        for a in (256, 1024, 4096):
            for h, kv in ((16, 16), (32, 8)):
                d = 128
                cache, per_head, qo = 4.0 * bb * kv * a * d, 4.0 * bb * h * a * d, 4.0 * bb * h * d
                masked = {**TRUE["attention"], **TRUE_MASKED}
                t = _time(masked, 4.0 * bb * h * a * d, per_head + qo, bb * a)
                if kv < h:
                    copy_p = {"compute": 1.0, "compute_half": 0.0, "memory": TRUE_COPY, "memory_half": 0.0}
                    t = t + _time(copy_p, 0.0, cache + per_head, 1.0, kernels=2)
                rows.append({"batch": bb, "seq": 1, "alloc_len": a, "context_len": a // 2, "heads": h,
                             "kv_heads": kv, "head_dim": d, "models": "beta", "model": "",
                             "op": "sdpa_decode", "dtype": "bfloat16", "flops": 4.0 * bb * h * a * d,
                             "bytes": cache + qo, "median_ms": float(t) * 1e3, "status": "ok", "error": ""})
    module = pre.iloc[:2].assign(op="attn_module", models="", model="alpha")
    pd.concat([pre, pd.DataFrame(rows), module], ignore_index=True).to_csv(path / "attention.csv",
                                                                           index=False)

    mem = []
    for op, k in ELEMENTWISE_KERNELS.items():
        for e in 2.0 ** np.arange(10, 28, 2):
            nb = 3.0 * e * 2
            t = _time(TRUE["elementwise"], 0.0, nb, e, kernels=k)
            cols = ({"size_bytes": 2 * e} if op == "copy" else {"rows": e / 1024, "ffn": 1024}
                    if op == "silu_and_mul" else {"tokens": e / 1024, "hidden": 1024})
            mem.append({**cols, "op": op, "dtype": "bfloat16", "flops": 0.0, "bytes": nb,
                        "median_ms": float(t) * 1e3, "status": "ok"})
    for k in (100, 1000):  # replay of k nodes = 3 µs + k · T_KERNEL, per kernel
        mem.append({"kernels": k, "op": "graph_tiny_kernel", "dtype": "float32", "flops": 0.0,
                    "bytes": 0.0, "median_ms": (3e-6 + k * T_KERNEL) / k * 1e3, "status": "ok"})
    pd.DataFrame(mem).to_csv(path / "memory.csv", index=False)
    return {"gemm_alpha_only": int(sum(_models(r) == {"alpha"} for r in owners)),
            "grouped_alpha_only": int((sources == "alpha").sum()),
            "prefill_alpha_only": int((heavy == 0).sum())}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    counts = write_synthetic(path)
    return path, counts


@pytest.fixture(scope="module")
def real_fit():
    return fit_kernel_efficiencies(H200_DATA, GPU)


def test_deterministic(real_fit):
    """The same tables give the same fit, up to rounding (never compared bit for bit)."""
    again = fit_kernel_efficiencies(H200_DATA, GPU)
    assert again.per_kernel_s == pytest.approx(real_fit.per_kernel_s, rel=FIT_RTOL)
    for a, b in ((kernel_fit_to_profile_dict(again, include_extra=True),
                  kernel_fit_to_profile_dict(real_fit, include_extra=True)),
                 (again.summary(), real_fit.summary())):
        assert yaml.safe_dump(a, sort_keys=False).splitlines()[0] == \
            yaml.safe_dump(b, sort_keys=False).splitlines()[0]  # same keys, same order
        assert profile_differences(a, b) == []


def test_parameters_on_a_bound_are_exactly_the_bound(synthetic):
    """A weakly identified parameter ends on its bound exactly, not a rounding-noise distance
    from it: a half of 0 is 0.0 and an efficiency at the datasheet is 1.0."""
    path, _ = synthetic
    fit = fit_kernel_efficiencies(path, GPU)
    assert fit.efficiency["gemm"]["memory_half"] == 0.0
    assert fit.efficiency["elementwise"]["compute_half"] == 0.0
    real = fit_kernel_efficiencies(H200_DATA, GPU, per_kernel="gemm_intercept")
    at_one = [(c, k) for c, p in {**real.efficiency, **real.extra}.items() for k in ("compute", "memory")
              if abs(p[k] - 1.0) < 1e-5]
    assert at_one and all({**real.efficiency, **real.extra}[c][k] == 1.0 for c, k in at_one)


def test_recovers_known_efficiencies(synthetic):
    path, _ = synthetic
    fit = fit_kernel_efficiencies(path, GPU)
    assert fit.per_kernel_s == pytest.approx(T_KERNEL, rel=1e-6)
    for cls, truth in TRUE.items():
        got = fit.efficiency[cls]
        for key in PARAM_KEYS:
            if key.endswith("_half") and truth[key] == 0:
                assert got[key] == 0.0, (cls, key, got)
            else:
                assert got[key] == pytest.approx(truth[key], rel=0.03), (cls, key, got)
        assert fit.stats[cls].median_abs_rel_err < 0.01, cls
    masked, copy = fit.extra["attention_masked"], fit.extra["copy"]
    assert masked["memory"] == pytest.approx(TRUE_MASKED["memory"], rel=0.03)
    assert masked["memory_half"] == pytest.approx(TRUE_MASKED["memory_half"], rel=0.05)
    assert copy["memory"] == pytest.approx(TRUE_COPY, rel=0.03)
    # prefill FLOPs were rescaled from the bench's S²/2 pairs to S(S+1)/2
    assert fit.stats["attention"].median_abs_rel_err < 1e-3


def test_fp8_uses_fp8_rows_and_peak(synthetic):
    path, _ = synthetic
    fit = fit_kernel_efficiencies(path, GPU, dtype="float8_e4m3fn")
    for cls in ("gemm", "grouped_gemm"):
        assert fit.efficiency[cls]["compute"] == pytest.approx(TRUE[cls]["compute"], rel=0.03)
        assert list(fit.stats[cls].excluded) == ["dtype not float8_e4m3fn"]
    with pytest.raises(SpecError, match="gemm.csv"):  # no e5m2 rows in the tables
        fit_kernel_efficiencies(path, GPU, dtype="float8_e5m2")


def test_exclude_model_drops_exactly_its_rows(synthetic):
    path, counts = synthetic
    base = fit_kernel_efficiencies(path, GPU)
    held = fit_kernel_efficiencies(path, GPU, exclude_models={"alpha"})
    for cls, key in (("gemm", "gemm_alpha_only"), ("grouped_gemm", "grouped_alpha_only"),
                     ("attention", "prefill_alpha_only")):
        dropped = held.stats[cls].excluded["held-out model(s) only"]
        assert len(dropped) == counts[key] > 0
        assert base.stats[cls].n_rows - held.stats[cls].n_rows == counts[key]
        others = {k: v for k, v in held.stats[cls].excluded.items() if k != "held-out model(s) only"}
        assert others == base.stats[cls].excluded
    # shared rows ('alpha;beta') and grid rows stay; memory.csv has no model column
    assert held.efficiency["elementwise"] == base.efficiency["elementwise"]
    assert held.stats["elementwise"] == base.stats["elementwise"]
    assert held.per_kernel_s == base.per_kernel_s


def test_exclude_model_on_real_data(real_fit):
    held = fit_kernel_efficiencies(H200_DATA, GPU, exclude_models={"mixtral-8x7b"})
    gemm = pd.read_csv(H200_DATA / "gemm.csv")
    only = gemm[(gemm["dtype"] == "bfloat16") & gemm["roles"].map(lambda r: _models(r) == {"mixtral-8x7b"})]
    assert len(held.stats["gemm"].excluded["held-out model(s) only"]) == len(only) > 0
    assert real_fit.stats["gemm"].n_rows - held.stats["gemm"].n_rows == len(only)
    grouped = pd.read_csv(H200_DATA / "grouped_gemm.csv")
    n_grouped = int(((grouped["dtype"] == "bfloat16") & (grouped["source"] == "mixtral-8x7b")).sum())
    assert real_fit.stats["grouped_gemm"].n_rows - held.stats["grouped_gemm"].n_rows == n_grouped
    # attention shapes of Mixtral are shared with Phi-3.5-MoE: none dropped
    assert real_fit.stats["attention"].n_rows == held.stats["attention"].n_rows


@pytest.mark.parametrize("missing", sorted(TABLES.values()))
def test_missing_table_is_a_spec_error(synthetic, tmp_path, missing):
    path, _ = synthetic
    copy = tmp_path / "data"
    shutil.copytree(path, copy)
    (copy / missing).unlink()
    with pytest.raises(SpecError) as err:
        fit_kernel_efficiencies(copy, GPU)
    message = str(err.value)
    assert missing in message and "\n" not in message


def test_real_h200_fit_quality(real_fit):
    # median |relative error| observed on the committed data: gemm 0.07, grouped 0.06,
    # attention 0.13, elementwise 0.58 (rmsnorm vs residual_add differ ~13x in η), masked 0.03
    bounds = {"gemm": 0.25, "grouped_gemm": 0.12, "attention": 0.2, "elementwise": 0.7,
              "attention_masked": 0.08}
    for cls, bound in bounds.items():
        assert real_fit.stats[cls].median_abs_rel_err < bound, (cls, real_fit.stats[cls])
    for cls, params in {**real_fit.efficiency, **real_fit.extra}.items():
        assert 0 < params["compute"] <= 1.2 and 0 < params["memory"] <= 1.2, (cls, params)
        assert params["compute_half"] >= 0 and params["memory_half"] >= 0
    assert 0.5e-6 < real_fit.per_kernel_s < 3e-6
    prof = kernel_fit_to_profile_dict(real_fit)
    assert tuple(prof) == PROFILE_CLASSES
    for params in prof.values():
        assert tuple(params) == PARAM_KEYS
        assert all(float(f"{v:.4g}") == v for v in params.values())
    # the profile mapping validates as perfmodel's Efficiency
    from perfmodel.profile import Efficiency
    for params in kernel_fit_to_profile_dict(real_fit, include_extra=True).values():
        Efficiency(**params)
