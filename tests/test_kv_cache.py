"""The KV cache in another dtype: the attention kernels' η_m multiplier μ_kv, its fit, its band."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfmodel import predict
from perfmodel.calibration.fit_kv_cache import kv_cache_rows
from perfmodel.errors import SpecError
from perfmodel.measuring.compare import load_with_what_ifs, row_kv_dtype
from perfmodel.paths import RESULTS_DIR
from perfmodel.profile import load_profile, load_profile_file


def _decode_ops(engine: str, kv_dtype: str | None) -> dict[str, dict]:
    p = predict("olmoe-1b-7b", engine=engine, phase="decode", batch=64, input_len=4096, context=4096,
                kv_dtype=kv_dtype)
    return {op["name"]: op for op in p.ops}


def test_mu_kv_scales_the_attention_kernels_memory_time_and_nothing_else(roofline_with):
    plain = _decode_ops("roofline", None)
    fp8 = _decode_ops("roofline", "fp8")  # no kv_cache section: μ_kv = 1, half the bytes, half the time
    slowed = _decode_ops(roofline_with(kv_cache={"fp8": {"attention_memory": 0.5}}), "fp8")
    core = "attn.core"
    assert fp8[core]["memory_s"] == pytest.approx(plain[core]["memory_s"] / 2, rel=0.02)
    # at μ_kv = 0.5 the fp8 kernel reads its half of the bytes at half the rate: the bf16 time again
    assert slowed[core]["memory_s"] == pytest.approx(plain[core]["memory_s"], rel=0.02)
    for name, op in slowed.items():
        if name != core:
            assert op["time_s"] == pytest.approx(fp8[name]["time_s"], rel=1e-9), name


def test_mu_kv_is_one_at_the_models_own_dtype(roofline_with):
    listed = roofline_with(kv_cache={"fp8": {"attention_memory": 0.5}, "bf16": {"attention_memory": 0.5}})
    assert load_profile_file(Path(listed)).kv_cache_multiplier("bf16", "bf16") == 1.0
    assert load_profile_file(Path(listed)).kv_cache_multiplier("fp8", "bf16") == 0.5
    assert _decode_ops(listed, None)["attn.core"]["time_s"] == _decode_ops("roofline", None)["attn.core"]["time_s"]


def test_an_unknown_kv_cache_dtype_in_a_profile_is_refused(roofline_with):
    with pytest.raises(SpecError, match="kv_cache: unknown dtype 'fp6'"):
        load_profile_file(Path(roofline_with(kv_cache={"fp6": {"attention_memory": 0.5}})))


def test_mu_kv_comes_from_the_training_models_fp8_cache_rows_and_the_rest_are_held_out():
    rows = load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl")
    fp8 = kv_cache_rows(rows, "fp8")
    assert fp8 and all(row_kv_dtype(r) == "fp8" and "kv=fp8" in r["point_id"] for r in fp8)
    profile = load_profile("vllm", "h200-sxm")
    record = profile.fit["kv_cache"]["fp8"]
    train = set(profile.fit["train_models"])
    assert set(record["points"]) == {r["point_id"] for r in fp8 if r["model"] in train}
    assert set(record["points"]) <= set(profile.fit["points"])
    assert set(record["held_out"]["errors_pct"]) == {r["point_id"] for r in fp8 if r["model"] not in train}
    # FlashAttention-3's fp8 path reads half the bytes, slower than its bf16 path reads its own
    mu = profile.kv_cache["fp8"].attention_memory
    assert 0.5 < mu < 1.0
    assert record["held_out"]["itl_mape_pct"] < 15


def test_an_fp8_cache_prediction_says_where_its_band_stands():
    profile = load_profile("vllm", "h200-sxm")
    check = profile.fit["residuals"]["kv_cache"]["fp8"]
    p = predict("qwen3-30b-a3b", engine="vllm", batch=16, input_len=8192, output_len=64, kv_dtype="fp8")
    note = p.provenance["error_band_note"]
    assert "not measured at bf16 weights with a fp8 KV cache" not in note
    if profile.kv_cache["fp8"].band:
        assert check["within"] and p.provenance["error_band"] is not None
        assert "its held-out fp8 KV-cache points within it" in note
    else:  # outside the band: each metric takes the wider of it and those points' own p90
        got, band, own = p.provenance["error_band"], profile.error_band, check["own_band"]
        assert not check["within"] and got["decode_regime"] == "GPU-bound"
        for metric in ("decode_step", "e2e", "throughput"):
            assert got[metric] == max(getattr(band, metric), own[f"{metric} GPU-bound"])
        assert "widened to its held-out fp8 KV-cache points' own 90th percentile" in note
    # a dtype no row was measured with stays outside the band
    other = predict("qwen3-30b-a3b", engine="vllm", batch=16, input_len=8192, output_len=64, kv_dtype="int8")
    assert other.provenance["error_band"] is None
    assert "not measured at bf16 weights with a int8 KV cache" in other.provenance["error_band_note"]
