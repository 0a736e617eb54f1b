"""The kernel-efficiency fit: determinism, recovery of known η from tables timed by the model's
own roofline, held-out models, bad data, and its accuracy on the committed H200 microbenchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp
import yaml

from perfmodel.calibration.bench_shapes import (
    D_IN, D_OUT, ELEMENTWISE_KERNELS, EXPERTS_HIT, BenchCall, gemm_call, grouped_gemm_call,
    memory_calls, sdpa_decode_call, sdpa_prefill_call,
)
from perfmodel.calibration.fit import FIT_RTOL, profile_differences
from perfmodel.calibration.fit_kernels import (
    PARAM_KEYS, PROFILE_CLASSES, TABLES, fit_kernel_efficiencies, kernel_fit_to_profile_dict,
    models_in,
)
from perfmodel.errors import SpecError
from perfmodel.roofline import op_time
from perfmodel.specs.hardware import load_gpu
from perfmodel.symbols import (
    B, H, I_d, L, S, T, bw, d_h, efficiency_symbols, mu_kv, n_h, n_kv, peak, peak_attn, t_kernel, t_kernel_small,
)

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
TRUE_MASKED = {**TRUE["attention"], "memory": 0.85, "memory_half": 3e7}
TRUE_COPY = {"compute": 1.0, "compute_half": 0.0, "memory": 0.25, "memory_half": 0.0}
TRUE_BY_CLASS = {**TRUE, "attention_masked": TRUE_MASKED, "copy": TRUE_COPY}


def roofline_time(call: BenchCall, sizes: dict[sp.Symbol, np.ndarray], dtype: str = "bfloat16",
                  f_peak: float = F_BF16, present: list[np.ndarray] | None = None,
                  t_small: float = T_KERNEL) -> np.ndarray:
    """Time per row, s, of a benchmarked call: the sum of :func:`perfmodel.roofline.op_time`
    of its ops with the true η of their classes and the small kernels' cost ``t_small``,
    evaluated by sympy for each row."""
    n = len(next(iter(sizes.values())))
    total = np.zeros(n)
    for i, op in enumerate(call.ops):
        truth = TRUE_BY_CLASS[op.op_class.value]
        eta = efficiency_symbols(op.op_class)
        numbers = {peak: f_peak, peak_attn: F_BF16, bw: BW, mu_kv: 1.0, t_kernel: T_KERNEL, t_kernel_small: t_small,
                   eta["context_half"]: 0.0,
                   eta["exposed"]: 0.0,
                   **{eta[key]: value for key, value in truth.items()}}
        expr = op_time(op, call.substitutions(dtype)).total.subs(numbers)
        for row in range(n):
            if present is None or present[i][row]:
                total[row] += float(expr.subs({s: float(v[row]) for s, v in sizes.items()}))
    return total


def _ok(df: pd.DataFrame, t_s) -> pd.DataFrame:
    df["median_ms"] = np.asarray(t_s) * 1e3
    df["status"] = "ok"
    df["error"] = ""
    return df


#: GEMM rows M and (N, K) shapes: small to large, so that each class has rows on both sides
#: of its roofline's ridge.
GEMM_M = 2.0 ** np.arange(0, 15, 2)
GEMM_NK = ((64, 64), (512, 2048), (4096, 4096), (14336, 4096))


def write_synthetic(path: Path, t_small: float = T_KERNEL) -> dict[str, int]:
    """Tables timed by the model's roofline with :data:`TRUE`, the memory-bound classes' kernels
    at ``t_small`` each. Models 'alpha' and 'beta' own some rows, others are shared or from the
    grid. Returns rows per owner for the checks."""
    path.mkdir(parents=True, exist_ok=True)
    m, nk = np.meshgrid(GEMM_M, np.arange(len(GEMM_NK)), indexing="ij")
    m, nk = m.ravel(), nk.ravel()
    n_out = np.array([GEMM_NK[i][0] for i in nk], dtype=float)
    k_in = np.array([GEMM_NK[i][1] for i in nk], dtype=float)
    rows = len(m)
    owners = np.array(["alpha:q_proj", "beta:o_proj", "alpha:k_proj;beta:k_proj"] * rows)[:rows]
    sizes = {T: m, D_IN: k_in, D_OUT: n_out}
    gemm = pd.DataFrame({"m": m, "n": n_out, "k": k_in, "roles": owners, "dtype": "bfloat16"})
    _ok(gemm, roofline_time(gemm_call(), sizes))
    f_fp8 = GPU.peak("fp8")
    fp8 = _ok(gemm.assign(dtype="float8_e4m3fn"),
              roofline_time(gemm_call(), sizes, "float8_e4m3fn", f_fp8))
    pd.concat([gemm, fp8], ignore_index=True).to_csv(path / "gemm.csv", index=False)

    hit = np.minimum(m, np.array([1, 4, 8, 64] * rows)[:rows])
    sources = np.array(["alpha", "seed_grid", "beta"] * rows)[:rows]
    sizes = {T: m * 4, D_IN: k_in, D_OUT: n_out, EXPERTS_HIT: hit}
    grouped = pd.DataFrame({"source": sources, "routing": "uniform", "routed_rows": m * 4, "n": n_out,
                            "k": k_in, "experts_hit": hit, "dtype": "bfloat16"})
    _ok(grouped, roofline_time(grouped_gemm_call(), sizes))
    grouped_fp8 = _ok(grouped.assign(dtype="float8_e4m3fn"),
                      roofline_time(grouped_gemm_call(), sizes, "float8_e4m3fn", f_fp8))
    pd.concat([grouped, grouped_fp8], ignore_index=True).to_csv(path / "grouped_gemm.csv", index=False)

    # prefill: B×S causal queries; alpha owns the small heads, alpha and beta share the large
    pre = []
    for b in (1, 4, 16):
        for s in 2.0 ** np.arange(2, 13):
            for h, kv, d, models in ((4, 4, 32, "alpha"), (32, 8, 128, "alpha;beta")):
                pre.append({"batch": b, "seq": s, "alloc_len": 2 * s, "context_len": s, "heads": h,
                            "kv_heads": kv, "head_dim": d, "models": models, "model": "",
                            "op": "sdpa_prefill", "dtype": "bfloat16"})
    pre = pd.DataFrame(pre)
    col = lambda c: pre[c].to_numpy(float)  # noqa: E731
    _ok(pre, roofline_time(sdpa_prefill_call(), {B: col("batch"), S: col("seq"), n_h: col("heads"),
                                                  n_kv: col("kv_heads"), d_h: col("head_dim")}))
    # masked decode over A slots, MHA (h = kv: no copy) and GQA (the K/V expansion first)
    dec = pd.DataFrame([{"batch": b, "seq": 1, "alloc_len": a, "context_len": a // 2, "heads": h,
                         "kv_heads": kv, "head_dim": 128, "models": "beta", "model": "",
                         "op": "sdpa_decode", "dtype": "bfloat16"}
                        for b in (1, 8, 64) for a in (256, 1024, 4096) for h, kv in ((16, 16), (32, 8))])
    col = lambda c: dec[c].to_numpy(float)  # noqa: E731
    call = sdpa_decode_call()
    grouped_heads = col("kv_heads") < col("heads")
    present = [grouped_heads if op.op_class == "copy" else np.ones(len(dec), bool) for op in call.ops]
    _ok(dec, roofline_time(call, {B: col("batch"), L: col("alloc_len"), n_h: col("heads"),
                                  n_kv: col("kv_heads"), d_h: col("head_dim")}, present=present,
                           t_small=t_small))
    module = pre.iloc[:2].assign(op="attn_module", models="", model="alpha")
    pd.concat([pre, dec, module], ignore_index=True).to_csv(path / "attention.csv", index=False)

    mem = []
    calls = memory_calls()
    for op in ELEMENTWISE_KERNELS:
        for e in 2.0 ** np.arange(10, 28, 2):
            if op == "copy":
                cols, sizes = {"size_bytes": 2 * e}, {T: [e]}
            elif op == "silu_and_mul":
                cols, sizes = {"rows": e / 1024, "ffn": 1024}, {T: [e / 1024], I_d: [1024]}
            else:
                cols, sizes = {"tokens": e / 1024, "hidden": 1024}, {T: [e / 1024], H: [1024]}
            t = roofline_time(calls[op], sizes, t_small=t_small)[0]
            mem.append({**cols, "op": op, "dtype": "bfloat16", "median_ms": t * 1e3, "status": "ok"})
    for k in (100, 1000):  # replay of k nodes = 3 µs + k · T_KERNEL, per kernel
        mem.append({"kernels": k, "op": "graph_tiny_kernel", "dtype": "float32",
                    "median_ms": (3e-6 + k * T_KERNEL) / k * 1e3, "status": "ok"})
    pd.DataFrame(mem).to_csv(path / "memory.csv", index=False)
    return {"gemm_alpha_only": int(sum(models_in(r) == {"alpha"} for r in owners)),
            "grouped_alpha_only": int((sources == "alpha").sum()),
            "prefill_alpha_only": int((pre["models"] == "alpha").sum())}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    counts = write_synthetic(path)
    return path, counts


@pytest.fixture(scope="module")
def synthetic_fit(synthetic):
    return fit_kernel_efficiencies(synthetic[0], GPU)


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


def test_parameters_on_a_bound_are_exactly_the_bound(synthetic_fit):
    """A weakly identified parameter ends on its bound exactly, not a rounding-noise distance
    from it: a half of 0 is 0.0 and an efficiency at the datasheet is 1.0."""
    assert synthetic_fit.efficiency["gemm"]["memory_half"] == 0.0
    assert synthetic_fit.efficiency["elementwise"]["compute_half"] == 0.0
    real = fit_kernel_efficiencies(H200_DATA, GPU, per_kernel="gemm_intercept")
    at_one = [(c, k) for c, p in {**real.efficiency, **real.extra}.items() for k in ("compute", "memory")
              if abs(p[k] - 1.0) < 1e-5]
    assert at_one and all({**real.efficiency, **real.extra}[c][k] == 1.0 for c, k in at_one)


def test_recovers_efficiencies_from_times_of_the_models_roofline(synthetic_fit):
    """Tables timed by perfmodel.roofline itself (sympy, the true η substituted) give back
    the true η of every class: the fitter times a row exactly as the model does."""
    fit = synthetic_fit
    assert fit.per_kernel_s == pytest.approx(T_KERNEL, rel=1e-6)
    for cls, truth in TRUE.items():
        got = fit.efficiency[cls]
        for key in PARAM_KEYS:
            if key.endswith("_half") and truth[key] == 0:
                assert got[key] == 0.0, (cls, key, got)
            else:
                assert got[key] == pytest.approx(truth[key], rel=0.03), (cls, key, got)
        assert fit.stats[cls].median_abs_rel_err < 1e-3, cls
    masked, copy = fit.extra["attention_masked"], fit.extra["copy"]
    assert masked["memory"] == pytest.approx(TRUE_MASKED["memory"], rel=0.03)
    assert masked["memory_half"] == pytest.approx(TRUE_MASKED["memory_half"], rel=0.05)
    assert copy["memory"] == pytest.approx(TRUE_COPY["memory"], rel=0.03)
    assert fit.stats["attention_masked"].median_abs_rel_err < 1e-3


def test_gemm_intercept_fits_a_small_kernels_cost_apart(tmp_path):
    """With ``per_kernel="gemm_intercept"`` a GEMM kernel's fixed cost comes from the gemm fit
    and a small kernel's from the elementwise fit: tables whose memory-bound kernels cost 1.2 µs
    and GEMMs 2 µs give back both, and the elementwise η with them (its ops launch 1, 2 and 8
    kernels, which tells the per-kernel cost from the memory curve's half)."""
    write_synthetic(tmp_path, t_small=1.2e-6)
    fit = fit_kernel_efficiencies(tmp_path, GPU, per_kernel="gemm_intercept")
    assert fit.per_kernel_s == pytest.approx(T_KERNEL, rel=1e-3)
    assert fit.per_small_kernel_s == pytest.approx(1.2e-6, rel=1e-3)
    for key in ("memory", "memory_half"):
        assert fit.efficiency["elementwise"][key] == pytest.approx(TRUE["elementwise"][key], rel=0.03)
    assert fit.stats["elementwise"].median_abs_rel_err < 1e-3
    assert fit.extra["copy"]["memory"] == pytest.approx(TRUE_COPY["memory"], rel=0.03)
    assert fit.summary()["per_small_kernel_s"] == pytest.approx(1.2e-6, rel=1e-3)
    # the default (one CUDA-graph node cost for every kernel) gives no separate small-kernel cost
    assert fit_kernel_efficiencies(tmp_path, GPU).per_small_kernel_s is None


def test_fp8_uses_fp8_rows_and_peak(synthetic):
    path, _ = synthetic
    fit = fit_kernel_efficiencies(path, GPU, dtype="float8_e4m3fn")
    for cls in ("gemm", "grouped_gemm"):
        assert fit.efficiency[cls]["compute"] == pytest.approx(TRUE[cls]["compute"], rel=0.03)
        assert list(fit.stats[cls].excluded) == ["dtype not float8_e4m3fn"]
    with pytest.raises(SpecError, match="gemm.csv"):  # no e5m2 rows in the tables
        fit_kernel_efficiencies(path, GPU, dtype="float8_e5m2")


def test_exclude_model_drops_exactly_its_rows(synthetic, synthetic_fit):
    path, counts = synthetic
    base = synthetic_fit
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
    only = gemm[(gemm["dtype"] == "bfloat16") & gemm["roles"].map(lambda r: models_in(r) == {"mixtral-8x7b"})]
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
