"""The vLLM kernel profile: kernel names to categories, a decode step as the difference of two
runs, and the profile dict the row schema takes (no GPU: fake profiler events)."""

from types import SimpleNamespace

import pytest

from perfmodel.measuring import vllm_backend, vllm_kernels
from perfmodel.measuring.profiler_split import CATEGORIES
from perfmodel.measuring.results import _validate_profile


@pytest.mark.parametrize("name, category", [
    ("fused_moe_kernel", "expert_gemm"),
    ("_matmul_ogs_NNT_bf16xbf16xmxfp4_16x256x128x1", "expert_gemm"),
    ("void marlin_moe_wna16::Marlin<1125899906909960l, 128, 1, 8, 4, true, 4, 2, false>(int4 const*)",
     "expert_gemm"),
    ("void marlin::Marlin<__nv_bfloat16, 1125899906909960l, 128, 4, 8, 8, true, 4, 2, false>(int4 const*)",
     "dense_gemm"),  # a GPTQ linear layer's kernel
    ("pack_bitmatrix", "router_topk"),
    ("void vllm::moe::moe_align_block_size_kernel<int>(int const*, int*)", "router_topk"),
    ("void vllm::moe::topkGatingSoftmax<4, 64>(float const*)", "router_topk"),
    ("void flash::FlashAttnFwdSm90<...>", "attention"),
    ("void flash_fwd_splitkv_mla_kernel<...>", "attention"),
    ("_fwd_grouped_kernel_stage1", "attention"),
    ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>", "copy"),
    ("void vllm::concat_and_cache_mla_kernel<...>", "copy"),
    ("Memcpy HtoD (Pageable -> Device)", "copy"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", "dense_gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", "dense_gemm"),
    ("void cutlass::device_kernel<cutlass_scaled_mm>", "dense_gemm"),
    ("triton_poi_fused_add_mul_silu_3", "norm_elementwise"),
    ("triton_red_fused__to_dtype_add_mean_pow_rsqrt_1", "norm_elementwise"),
    ("void vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>", "norm_elementwise"),
    ("void vllm::moe::moe_sum_kernel<c10::BFloat16, 6>", "norm_elementwise"),
    ("void vllm::act_and_mul_kernel<...silu_kernel...>", "norm_elementwise"),
    ("void at::native::(anonymous namespace)::distribution_kernel", "other"),
])
def test_kernel_category(name, category):
    assert vllm_kernels.kernel_category(name) == category


def _event(name, start, end, device="DeviceType.CUDA"):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_kernel_table_counts_device_events_only():
    annotation = _event("execute_model", 0, 900)
    annotation.is_user_annotation = True  # a record_function range as the profiler puts it on the GPU
    events = [_event("fused_moe_kernel", 0, 300), _event("fused_moe_kernel", 400, 600), annotation,
              _event("aten::mm", 0, 5000, device="DeviceType.CPU"), _event("nvjet_x", 700, 800)]
    table = vllm_kernels.kernel_table(events)
    assert table == {"fused_moe_kernel": [2, pytest.approx(0.5)], "nvjet_x": [1, pytest.approx(0.1)]}


def test_busy_time_counts_overlapping_kernels_once():
    events = [_event("a", 0, 1000), _event("b", 500, 1500), _event("c", 3000, 3500),
              _event("aten::mm", 0, 9000, device="DeviceType.CPU")]
    assert vllm_kernels.busy_ms(events) == pytest.approx(2.0)
    assert vllm_kernels.busy_ms([]) == 0.0


def _profile(table, busy=1.0, wall=2.0):
    return vllm_kernels.KernelProfile(table, busy, wall)


def test_decode_step_is_the_difference_per_step():
    prefill = _profile({"fused_moe_kernel": [10, 4.0], "nvjet_x": [5, 2.0], "sampler": [3, 1.0]}, 7.0, 20.0)
    whole = _profile({"fused_moe_kernel": [26, 6.0], "nvjet_x": [21, 2.8], "sampler": [3, 0.9],
                      "flash": [8, 0.4]}, 11.0, 36.0)
    step = vllm_kernels.decode_step(whole, prefill, steps=8)
    assert step.table["fused_moe_kernel"] == [pytest.approx(2.0), pytest.approx(0.25)]
    assert step.table["flash"] == [pytest.approx(1.0), pytest.approx(0.05)]
    assert "sampler" not in step.table  # no more launches, less time: not a decode kernel
    assert (step.busy_ms, step.wall_ms) == (pytest.approx(0.5), pytest.approx(2.0))
    with pytest.raises(ValueError):
        vllm_kernels.decode_step(whole, prefill, steps=0)


def test_summary_is_a_valid_profile():
    table = {"fused_moe_kernel": [2, 0.5], "nvjet_x": [4, 0.25], "triton_poi_fused_add_0": [8, 0.125],
             "flash_fwd": [1, 0.0625], "mystery": [1, 0.0625]}
    prof = vllm_kernels.summary(_profile(table, busy=0.9, wall=1.5))
    assert set(prof["split_ms"]) == set(CATEGORIES)
    assert prof["kernel_ms"] == pytest.approx(1.0)
    assert prof["split_ms"]["expert_gemm"] == pytest.approx(0.5)
    assert prof["split_ms"]["other"] == pytest.approx(0.0625)
    assert prof["n_kernels"] == 16
    assert prof["top_kernels"][0] == ["fused_moe_kernel", 0.5, 2]
    assert (prof["busy_ms"], prof["wall_ms"]) == (0.9, 1.5)
    assert _validate_profile("decode_profile", prof) == []


def test_backend_profiles_prefill_and_one_decode_step(monkeypatch):
    runs = iter([_profile({"fused_moe_kernel": [4, 2.0]}, 2.5, 10.0),
                 _profile({"fused_moe_kernel": [68, 6.0]}, 7.3, 42.0)])
    calls = []
    monkeypatch.setattr(vllm_kernels, "profile_run", lambda fn: (fn(), next(runs))[1])
    out = vllm_backend.VLLMBackend.kernel_profiles(calls.append, output_len=128)
    assert calls == [1, vllm_backend.PROFILE_DECODE_STEPS + 1]
    assert out["prefill_profile"]["kernel_ms"] == pytest.approx(2.0)
    assert out["decode_profile"]["steps"] == 16
    assert out["decode_profile"]["kernel_ms"] == pytest.approx(0.25)
    assert out["decode_profile"]["n_kernels"] == 4
    assert out["decode_profile"]["busy_ms"] == pytest.approx(0.3)
    assert out["decode_profile"]["wall_ms"] == pytest.approx(2.0)


def test_backend_profile_of_a_prefill_only_point(monkeypatch):
    monkeypatch.setattr(vllm_kernels, "profile_run", lambda fn: (fn(), _profile({"nvjet_x": [1, 1.0]}))[1])
    out = vllm_backend.VLLMBackend.kernel_profiles(lambda n: None, output_len=1)
    assert set(out) == {"prefill_profile"}


def test_a_profiled_step_is_predicted_at_the_context_the_profile_measured():
    """A vLLM profile averages n decode steps at contexts S + 1 … S + n: the model's op split
    beside it is one decode step at S + ⌈(n + 1)/2⌉ tokens, not the request's mean step."""
    from perfmodel import predict
    from perfmodel.measuring.compare import compare, profiled_context

    row = {"status": "ok", "model": "olmoe-1b-7b", "batch": 64, "input_len": 128, "output_len": 128,
           "point_id": "vllm|olmoe-1b-7b|set=|layers=all|B=64|S=128|O=128|experts=vllm_fused_moe|tp=1",
           "backend": "vllm", "experts_impl": "vllm_fused_moe", "ttft_ms": 50.0, "itl_ms": 5.0,
           "e2e_ms": 685.0, "throughput_tok_s": 23900.0,
           "decode_profile": {"split_ms": {"attention": 0.8}, "kernel_ms": 0.8, "steps": 16}}
    assert profiled_context(row) == 137
    assert profiled_context({**row, "decode_profile": {"split_ms": {"attention": 1.0}, "context_len": 193}}) == 193
    assert profiled_context({**row, "decode_profile": None}) is None
    _, ops = compare([row], engine="vllm", gpu="h200-sxm")
    step = predict("olmoe-1b-7b", engine="vllm", gpu="h200-sxm", phase="decode", batch=64, context=137)
    attention = sum(op["time_s"] for op in step.ops if op["name"] == "attn.core")
    assert ops[ops["category"] == "attention"]["predicted_s"].item() == pytest.approx(attention, rel=1e-9)
