"""The vllm profile's kernels timed rather than fitted: the dense GEMMs' memory curve and a dense
MLP's whole curve (the GEMM microbenchmark), and a small kernel's duration (the training models'
profiled decode steps)."""

from __future__ import annotations

import numpy as np
import pytest

from perfmodel.calibration.fit import HELD_OUT_MODELS, TRAIN_MODELS, one_gpu_rows
from perfmodel.calibration.fit_kernels import fit_gemm_class
from perfmodel.calibration.fit_small_kernels import (MAX_BATCH, fit_small_kernel, small_kernel_rows,
                                                     weighted_median)
from perfmodel.calibration.fit_vllm import (category_op_names, dense_gemm_bench, graph_node_cost,
                                            kernel_profile_rows, profiled_kernels_s)
from perfmodel.measuring.compare import load_with_what_ifs
from perfmodel.paths import CALIBRATION_DATA_DIR, RESULTS_DIR
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu

GPUS = ("h200-sxm", "h100-sxm")


@pytest.mark.parametrize("gpu", GPUS)
def test_dense_gemms_stream_their_weights_below_the_datasheet_bandwidth(gpu):
    """The committed profile's dense GEMM memory curve is the GEMM microbenchmark's: a fraction
    of the datasheet bandwidth (fitted end to end it had run to its bound, 1.2) with a fixed
    cost of a few MB per kernel; the benchmark's rows are matched within 10% at the median."""
    curve, schemes, record = dense_gemm_bench(gpu, graph_node_cost(gpu)[0])
    gemm = load_profile("vllm", gpu).efficiency["gemm"]
    assert gemm.memory == pytest.approx(curve["memory"]) and gemm.memory_half == pytest.approx(curve["memory_half"])
    assert 0.7 < gemm.memory < 1.0 and 1e6 < gemm.memory_half < 5e7
    assert record["bf16"]["median_abs_rel_err"] < 0.1 and not record["bf16"]["at_bound"]
    # per-tensor fp8 GEMMs stream their (half as many) bytes about as fast
    assert 0.8 < schemes["fp8"] <= 1.05
    assert load_profile("vllm", gpu).quantization["fp8"].gemm_memory == pytest.approx(schemes["fp8"])


@pytest.mark.parametrize("gpu", GPUS)
def test_a_dense_mlp_runs_at_the_gemm_microbenchmarks_curve(gpu):
    """A dense MLP's GEMMs (no training model has one, so the end-to-end fit cannot speak to
    them) take the benchmark's whole curve: its compute, well above the projections' fitted
    η_c, which holds a prefill's other work besides; its memory curve is the projections'."""
    curve, _, _ = dense_gemm_bench(gpu, graph_node_cost(gpu)[0])
    profile = load_profile("vllm", gpu)
    mlp, gemm = profile.efficiency_of("dense_mlp"), profile.efficiency_of("gemm")
    assert mlp.compute == pytest.approx(curve["compute"]) and mlp.compute_half == pytest.approx(curve["compute_half"])
    assert (mlp.memory, mlp.memory_half) == (gemm.memory, gemm.memory_half)
    assert 0.6 < mlp.compute < 0.8 and mlp.compute > gemm.compute + 0.1
    # a scheme's kernels scale it as they scale the projections
    fp8 = profile.quantization["fp8"]
    assert fp8.multiplier("dense_mlp", "compute") == fp8.multiplier("gemm", "compute") != 1.0


def test_a_profile_without_a_dense_mlp_entry_runs_it_as_its_gemms():
    """The hf profile (its GEMMs are the microbenchmark's already) and the roofline state none."""
    for engine in ("hf", "roofline"):
        profile = load_profile(engine, "h200-sxm")
        assert "dense_mlp" not in profile.efficiency
        assert profile.efficiency_of("dense_mlp") == profile.efficiency_of("gemm")


def test_a_gemm_fit_leaves_out_the_held_out_models_shapes():
    """Rows of the held-out models' shapes alone do not inform the curve: excluding them drops
    rows, and a model excluded that shares every shape with a kept one drops none."""
    data, gpu = CALIBRATION_DATA_DIR / "h100-sxm", load_gpu("h100-sxm")
    node = graph_node_cost("h100-sxm")[0]
    _, kept = fit_gemm_class(data, gpu, node, set(HELD_OUT_MODELS))
    _, every = fit_gemm_class(data, gpu, node)
    assert kept.n_rows < every.n_rows
    assert sum(len(v) for v in kept.excluded.values()) > sum(len(v) for v in every.excluded.values())


def test_held_out_models_dense_gemms_match_their_profiled_kernels():
    """Held out: the dense-GEMM kernels of the H200's profiled decode steps of the models no
    parameter was fitted on (the H100's profiled steps are the training models' and one variant's). The measured category also holds each layer's router GEMM (cuBLAS, a few µs),
    which the model books with the router, so the model's share sits a little under it: within
    0.7–1.05 of the measured at every step (0.37–0.50 with the end-to-end fit's 1.2)."""
    profile = load_profile("vllm", "h200-sxm")
    rows = one_gpu_rows(load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl"))
    held = [r for r in kernel_profile_rows(rows, "dense_gemm", HELD_OUT_MODELS, 1) if r["batch"] <= MAX_BATCH]
    assert {r["model"] for r in held} == set(HELD_OUT_MODELS)
    model = profiled_kernels_s(held, category_op_names(held, profile, "dense_gemm"), profile,
                               load_gpu("h200-sxm"))
    measured = np.array([r["decode_profile"]["split_ms"]["dense_gemm"] * 1e-3 for r in held])
    assert ((model / measured > 0.7) & (model / measured < 1.05)).all(), model / measured


def test_weighted_median():
    values, weights = np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 5.0])
    assert weighted_median(values, weights) == 2.0
    assert weighted_median(np.array([1.0, 9.0]), np.array([3.0, 1.0])) == 1.0


def _row(model, batch, kernels, **extra):
    return {"status": "ok", "model": model, "batch": batch, "point_id": f"{model}|B={batch}",
            "gpu_count": 1, "decode_profile": {"top_kernels": kernels}, **extra}


def test_small_kernel_floor_reads_the_training_models_small_steps_alone():
    """The median is over the small kernels' launches (a GEMM's or a fused MoE's are not small),
    of the training models as built at B ≤ 64: a held-out model's step, a larger batch's and a
    variant's are not read."""
    small = [["triton_red_fused_add_rms_norm_0", 0.02, 10], ["reshape_and_cache_flash_kernel", 0.03, 10],
             ["topkGating", 0.003, 1], ["nvjet_sm90_gemm", 1.0, 10], ["fused_moe_kernel", 2.0, 20]]
    rows = [_row("olmoe-1b-7b", 16, small),
            _row("qwen3-30b-a3b", 16, [["rms_norm_kernel", 1.0, 1]]),
            _row("olmoe-1b-7b", 256, [["rms_norm_kernel", 1.0, 1]]),
            _row("olmoe-1b-7b", 1, [["rms_norm_kernel", 1.0, 1]], layers=4)]
    assert [r["point_id"] for r in small_kernel_rows(rows, TRAIN_MODELS)] == ["olmoe-1b-7b|B=16"]
    value, record = fit_small_kernel(rows, TRAIN_MODELS)
    # 10 launches of 2 µs, 10 of 3 µs, 1 of 3 µs: the median launch takes 3 µs
    assert value == pytest.approx(3e-6) and record["kernels_per_step"] == [21]
    assert fit_small_kernel(rows[1:], TRAIN_MODELS) == (None, {})


@pytest.mark.parametrize("gpu", GPUS)
def test_committed_small_kernel_is_the_profiled_steps_median(gpu):
    """The committed ``per_small_kernel_s`` is what the committed profiled steps give: about
    2 µs, twice a graph node between empty kernels, from each GPU's own training steps."""
    rows = load_with_what_ifs(RESULTS_DIR / f"{gpu.split('-')[0]}-vllm.jsonl")
    value, record = fit_small_kernel(one_gpu_rows(rows), TRAIN_MODELS)
    latency = load_profile("vllm", gpu).latency
    assert latency.per_small_kernel_s == pytest.approx(value)
    assert latency.per_kernel_s < value < 3e-6
    assert all(p.split("|")[1] in TRAIN_MODELS for p in record["points"])
