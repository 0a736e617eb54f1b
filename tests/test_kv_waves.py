"""A fixed batch whose KV cache does not fit runs as vLLM's scheduler runs it (perfmodel.waves,
perfmodel.kv_schedule): B_run sequences hold their whole cache at once, W = ⌈B / B_run⌉, and E2E
composes the predictions at one sequence, B_run and the most at once over the schedule's steps."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from perfmodel import predict, sweep
from perfmodel.commands import main
from perfmodel.errors import InputError
from perfmodel.kv_schedule import schedule
from perfmodel.paths import PROFILES_DIR
from perfmodel.prediction import METRICS, Workload, evaluate
from perfmodel.profile import VLLM_MAX_NUM_SEQS, load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.model import load_model
from perfmodel.validate.paper.compute import Computed, judge
from perfmodel.validate.paper.effects import load_study

REL = 1e-9
#: Mixtral in fp8 on one 80 GB H100 at B=128, S=O=2048 (the seed study's largest batch): the KV
#: cache holds 49 sequences, so 49 + 49 + 30.
WAVED = dict(gpu="h100-sxm", dtype="fp8", batch=128, input_len=2048, output_len=2048)


def close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel)


def one_wave(model: str, gpu: str = "h200-sxm", engine: str = "vllm", **workload):
    """The batch as one pass, all sequences at once (what predict reported before waves)."""
    gpu_spec = load_gpu(gpu)
    return evaluate(load_model(model), gpu_spec, load_profile(engine, gpu_spec.name), Workload(**workload))


def test_a_batch_that_fits_is_one_wave_with_the_numbers_of_one_pass():
    p = predict("mixtral", batch=16, input_len=2048, output_len=2048)
    m, before = p.metrics, one_wave("mixtral-8x7b", batch=16, input_len=2048, output_len=2048).metrics
    assert m["kv_waves"] == 1 and m["concurrent_sequences"] == 16 and m["fits_in_memory"]
    assert {k: m[k] for k in METRICS} == {k: before[k] for k in METRICS}  # identical, not close


def test_a_batch_that_outgrows_the_cache_runs_as_vllms_scheduler_runs_it():
    m = predict("mixtral", **WAVED).metrics
    # 46 sequences of 4,096 tokens at once, as vLLM's engine allocated Mixtral-8x7B in fp8 on the
    # H100: 23.34 GiB of KV cache (validate/results/h100-vllm-engine-logs/h1c3-engine-mixtral-8x7b-x1.log)
    assert (m["concurrent_sequences"], m["kv_waves"]) == (46, 3)
    # B_run is the most sequences whose KV cache fits beside the weights and the activations the engine reserves
    whole = one_wave("mixtral-8x7b", gpu="h100-sxm", dtype="fp8", batch=128, input_len=2048, output_len=2048).metrics
    free = whole["memory_capacity_bytes"] - whole["weights_bytes"] - whole["activation_bytes"]
    per_sequence = whole["kv_cache_bytes"] / 128
    assert 46 * per_sequence <= free < 47 * per_sequence
    assert not whole["fits_in_memory"]
    full, last = (predict("mixtral", **{**WAVED, "batch": b}).metrics for b in (46, 36))
    assert full["kv_waves"] == last["kv_waves"] == 1
    # the schedule on the cache in tokens: 46.x whole sequences of 4,096
    run = schedule(128, 2048, 2048, math.floor(free / per_sequence * 4096), VLLM_MAX_NUM_SEQS)
    assert run.max_running == math.floor(free / per_sequence * 4096) // 2048 < 128
    assert m["kv_preemptions"] == run.preemptions > 0
    knots = tuple(sorted({46, run.max_running, 1, 4, 16, 64}))  # B_run, the most, powers of four below it
    at = {b: one_wave("mixtral-8x7b", gpu="h100-sxm", dtype="fp8", batch=b, input_len=2048,
                      output_len=2048).metrics["itl_s"] for b in knots}  # each one pass
    decode = sum(w * at[k] for w, k in zip(run.knot_weights(knots), knots))
    assert close(m["ttft_s"], whole["ttft_s"]) and close(m["prefill_s"], full["prefill_s"])
    assert close(m["e2e_s"], whole["ttft_s"] * run.prefill_tokens / (128 * 2048) + decode)
    assert close(m["itl_s"], (m["e2e_s"] - m["ttft_s"]) / 2047)
    assert m["e2e_s"] < 2 * full["e2e_s"] + last["e2e_s"]  # waves of 46 one after another
    assert close(m["throughput_tok_s"], 128 * 4096 / m["e2e_s"])
    assert close(m["output_throughput_tok_s"], 128 * 2048 / m["e2e_s"])
    # what is on the GPU at once: B_run's memory, within the usable capacity
    assert close(m["kv_cache_bytes"], 46 * per_sequence) and m["fits_in_memory"]
    assert m["memory_bytes"] <= m["memory_capacity_bytes"] < whole["memory_bytes"]


def test_the_engines_memory_share_sets_the_sequences_at_once(capsys):
    """--gpu-memory-utilization (vLLM's flag) sets the usable memory, HBM × share less what CUDA
    holds outside torch: at 0.95 the waved batch of WAVED runs more sequences at once than at
    vLLM's default 0.9, each as many as that memory holds, in predict and sweep alike; a share
    outside (0, 1] is refused."""
    gpu, profile = load_gpu("h100-sxm"), load_profile("vllm", "h100-sxm")
    outside = profile.activation_reserve.non_torch_bytes
    base, more = (predict("mixtral", **WAVED, gpu_memory_utilization=share).metrics for share in (None, 0.95))
    assert base["memory_capacity_bytes"] == pytest.approx(gpu.hbm_capacity_bytes * 0.9 - outside, rel=REL)
    assert more["memory_capacity_bytes"] == pytest.approx(gpu.hbm_capacity_bytes * 0.95 - outside, rel=REL)
    per_sequence = base["kv_cache_bytes"] / base["concurrent_sequences"]
    for m in (base, more):
        free = m["memory_capacity_bytes"] - m["weights_bytes"] - m["activation_bytes"]
        assert m["concurrent_sequences"] == math.floor(free / per_sequence)
    assert more["concurrent_sequences"] > base["concurrent_sequences"] and more["e2e_s"] < base["e2e_s"]
    table = sweep("mixtral", {"batch": [128]}, gpu_memory_utilization=0.95,
                  **{k: v for k, v in WAVED.items() if k not in ("batch", "gpu")}, gpu="h100-sxm")
    assert int(table["concurrent_sequences"].iloc[0]) == more["concurrent_sequences"]
    assert table["e2e_s"].iloc[0] == pytest.approx(more["e2e_s"], rel=1e-6)
    for bad in (0, 1.5, True, "0.9"):
        with pytest.raises(InputError, match=r"gpu-memory-utilization must be in \(0, 1\]"):
            predict("mixtral", **WAVED, gpu_memory_utilization=bad)
    with pytest.raises(InputError, match=r"gpu-memory-utilization must be in \(0, 1\]"):
        sweep("mixtral", {"batch": [1]}, gpu_memory_utilization=0)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "mixtral", "--gpu", "h100", "--gpu-memory-utilization", "1.5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "perfmodel: error: gpu-memory-utilization must be in (0, 1], got 1.5"


def test_the_engine_limits_the_sequences_at_once(tmp_path):
    small = dict(batch=2500, input_len=16, output_len=16)  # the KV cache would hold them all
    vllm = predict("mixtral", **small).metrics
    assert (vllm["concurrent_sequences"], vllm["kv_waves"]) == (VLLM_MAX_NUM_SEQS, 3)
    assert load_profile("hf", "h200-sxm").max_sequences is None  # no limit but the KV cache
    profile = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    profile["options"]["max_num_seqs"] = 1000
    path = tmp_path / "vllm-1000.yaml"
    path.write_text(yaml.safe_dump(profile))
    limited = predict("mixtral", engine=str(path), **small).metrics
    assert (limited["concurrent_sequences"], limited["kv_waves"]) == (1000, 3)
    # the cache holds them all: 1,000, 1,000 and 500 run 15 decode steps each, none preempted; a
    # step of 500 is taken between those of 256 (a power of four) and 1,000 sequences, linear
    low, first = (predict("mixtral", engine=str(path), **{**small, "batch": b}).metrics for b in (256, 1000))
    half = low["itl_s"] + (first["itl_s"] - low["itl_s"]) * (500 - 256) / (1000 - 256)
    assert limited["kv_preemptions"] == 0
    assert close(limited["e2e_s"], limited["ttft_s"] + 30 * first["itl_s"] + 15 * half)


def test_a_batch_far_above_the_engines_limit_runs_waves_as_large_as_a_smaller_ones():
    """No wave holds more than max_num_seqs sequences, and the activations the engine keeps out of
    its cache are reserved at start-up whatever the batch: a batch of 10⁶ (whose whole-batch
    decode logits alone would be 94 GiB) runs waves of as many sequences as a batch of 1,024 that
    needs waves, in predict and in a sweep alike."""
    shape = dict(input_len=2048, output_len=16)
    runs = [predict("olmoe-1b-7b", batch=b, **shape).metrics for b in (1024, 10**6)]
    assert runs[0]["kv_waves"] > 1 and runs[1]["concurrent_sequences"] == runs[0]["concurrent_sequences"]
    reserved = [one_wave("olmoe-1b-7b", batch=b, **shape).metrics["activation_bytes"] for b in (1024, 10**6)]
    assert reserved[0] == reserved[1] < 4 * 2**30
    table = sweep("olmoe-1b-7b", {"batch": [1024, 10**6]}, **shape)
    assert list(table["concurrent_sequences"]) == [runs[0]["concurrent_sequences"]] * 2


def test_an_mla_prefill_chunk_reads_one_chunks_context():
    """A chunked prefill's activation peak is one chunk's, MLA's re-expanded context (B·C rows of
    attn.kv_b_proj) included: a larger batch of long prompts never runs fewer sequences at once
    (DeepSeek-V2-Lite at 32,768-token prompts had run 26 at B = 256 against 64 at B = 64, and none
    at B = 512)."""
    runs = [predict("deepseek-v2-lite", batch=b, input_len=32768, output_len=128).metrics for b in (64, 128, 512)]
    assert all(m["fits_in_memory"] for m in runs)
    assert len({m["activation_bytes"] for m in runs}) == 1  # one chunk's, whatever B
    assert runs[1]["concurrent_sequences"] == runs[2]["concurrent_sequences"] >= runs[0]["concurrent_sequences"]


def test_not_even_one_sequence_keeps_the_whole_batch_result():
    long = dict(batch=4, input_len=327680, output_len=8192)  # one sequence's KV cache > what is left
    m, before = predict("mixtral", **long).metrics, one_wave("mixtral-8x7b", **long).metrics
    assert not m["fits_in_memory"] and m["concurrent_sequences"] == 0 and m["kv_waves"] == 0
    assert {k: m[k] for k in METRICS} == {k: before[k] for k in METRICS}
    weights = predict("mixtral", gpu="l40s", batch=1, input_len=128, output_len=128).metrics  # 87 GiB on 48 GB
    assert not weights["fits_in_memory"] and weights["kv_waves"] == 0


def test_speculative_decoding_runs_in_waves_too():
    spec = dict(WAVED, dtype="bf16", gpu="h200-sxm", batch=256, spec_draft="qwen3-0.6b", spec_tokens=3,
                spec_accept=0.7)
    p = predict("qwen3-30b-a3b", **spec)
    m = p.metrics
    assert m["kv_waves"] > 1
    b, waves = m["concurrent_sequences"], m["kv_waves"]
    full, last = (predict("qwen3-30b-a3b", **{**spec, "batch": n}) for n in (b, 256 - (waves - 1) * b))
    assert close(m["e2e_s"], m["ttft_s"] + (spec["output_len"] - 1) * m["itl_s"]) and m["kv_preemptions"] > 0
    assert m["e2e_s"] < (waves - 1) * full.metrics["e2e_s"] + last.metrics["e2e_s"]
    assert p.speculative == full.speculative  # the step split is B_run's


def test_sweep_rows_carry_the_waves_of_predict():
    table = sweep("mixtral", {"batch": [16, 128], "input_len": [2048, 327680]}, gpu="h100-sxm", dtype="fp8",
                  output_len=2048)
    assert table["concurrent_sequences"].dtype == "int64" and table["kv_waves"].dtype == "int64"
    for row in table.itertuples():
        p = predict("mixtral", gpu="h100-sxm", dtype="fp8", batch=row.batch, input_len=row.input_len,
                    output_len=2048).metrics
        assert (row.concurrent_sequences, row.kv_waves, row.fits_in_memory) == (
            p["concurrent_sequences"], p["kv_waves"], p["fits_in_memory"])
        assert close(row.e2e_s, p["e2e_s"], 1e-9) and close(row.itl_s, p["itl_s"], 1e-9)
    waved = table[(table["batch"] == 128) & (table["input_len"] == 2048)].iloc[0]
    assert (waved["concurrent_sequences"], waved["kv_waves"]) == (46, 3)
    decode = sweep("mixtral", {"batch": [16, 4096]}, phase="decode", context=2048)
    assert decode["kv_waves"].tolist() == [1, 0] and decode["concurrent_sequences"].tolist() == [16, 0]


def test_predict_and_sweep_outputs_show_the_waves(capsys):
    argv = ["predict", "mixtral", "--gpu", "h100-sxm", "--dtype", "fp8", "-b", "128", "-s", "2048", "-o", "2048"]
    assert main(argv + ["--json"]) is None
    data = json.loads(capsys.readouterr().out)
    assert (data["concurrent_sequences"], data["kv_waves"], data["fits_in_memory"]) == (46, 3, True)
    main(argv)
    out, err = capsys.readouterr()
    assert "KV-cache schedule" in out and err == ""
    assert "46 of 128 sequences hold their whole cache at once" in out
    assert f"{data['kv_preemptions']} preempted and recomputed" in out
    main(["sweep", "mixtral", "--grid", "batch=16,128", "-s", "2048", "-o", "2048", "--gpu", "h100-sxm",
          "--dtype", "fp8", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["concurrent_sequences"], r["kv_waves"]) for r in rows] == [(16, 1), (46, 3)]


def test_paper_points_in_waves_count_and_are_named():
    effect = load_study().effect("E6")
    values = pd.DataFrame({"model": ["a", "b"], "batch": [64, 64], "pct": [20.0, 25.0], "fits": [True, True],
                           "waves": [1, 3], "quantity": "short_vs_long"})
    result = judge(effect, Computed(values, pd.DataFrame(), ""), 10)
    assert result.claims[0].values == (25.0,)  # the point that outgrows its cache is judged (largest over models)
    assert result.notes == ["E6a: 1 of 2 points outgrow the KV cache, their batch's sequences not holding their "
                            "whole cache at once (vLLM's schedule, with preemptions) (model=b batch=64: W = 3)"]


@pytest.mark.parametrize("bad", [0, -3, "many"])
def test_a_bad_max_num_seqs_is_one_line_and_exit_2(bad, tmp_path, capsys):
    profile = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    profile["options"]["max_num_seqs"] = bad
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "mixtral", "--engine", str(path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("perfmodel: error: ") and "max_num_seqs" in err
    assert len(err.splitlines()) == 1


def test_a_whole_number_of_waves_is_not_rounded_up_by_a_float():
    """630 sequences in waves of 210 are 3 waves: B/B_run printed as B·(1/B_run) gave
    3.0000000000000004, rounded up to a fourth wave of none."""
    m = predict("mixtral", engine="roofline", gpu="h100-sxm", batch=630, input_len=71, output_len=894, ep=2).metrics
    assert (m["concurrent_sequences"], m["kv_waves"]) == (210, 3)
