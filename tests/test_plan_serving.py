"""The serving model behind ``perfmodel plan``: step tables, the closed form and the simulation.

Mixtral-8x7B on one H200 under the vllm profile, 1024 prompt and 256 output tokens; every
simulation is seeded. Tolerances are stated where a closed form meets a simulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from perfmodel.planning.serving import serving_curve
from perfmodel.planning.simulate import EngineLimits, Requests, arrival_requests, simulate
from perfmodel.planning.steptime import build_step_times
from perfmodel.prediction import predict
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import load_model

S, O = 1024, 256
#: Closed form vs simulation at low load: mean TTFT and mean ITL within this relative error.
LOW_LOAD_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def steps():
    gpu = load_gpu("h200")
    return build_step_times(load_model("mixtral"), gpu, load_profile("vllm", gpu.name), "bf16", Layout(),
                            max_tokens=8192, max_seqs=256, max_context=S + O)


@pytest.fixture(scope="module")
def limits(steps):
    return EngineLimits(256, 8192, steps.kv_tokens)


def _fixed(rate: float, n: int, seed: int = 0) -> Requests:
    return arrival_requests(rate, np.full(n, S), np.full(n, O), seed=seed)


def test_step_tables_reproduce_predict(steps):
    """A decode-only step is predict's decode step; a prefill-only step its prefill pass, and a
    launched one the host's work its kernels do not overlap beside (launch_serial_s)."""
    for batch, context in ((1, 1024), (64, 1100), (200, 1200)):
        want = predict("mixtral", gpu="h200", phase="decode", batch=batch, context=context).metrics["decode_step_s"]
        assert steps.step(batch, context, 0, 0) == pytest.approx(want, rel=1e-3)
    assert steps.serial_s > 0
    assert steps.serial_s == pytest.approx(load_profile("vllm", "h200-sxm").latency.launch_serial_s)
    for prompts, length in ((1, 1024), (4, 1024), (1, 4096)):
        want = predict("mixtral", gpu="h200", phase="prefill", batch=prompts, input_len=length).metrics["prefill_s"]
        tokens = prompts * length
        gpu, host, launched = steps.step_parts(0, 1, tokens, tokens * steps.prefill_rate(length))
        assert launched and max(gpu - steps.serial_s, host) == pytest.approx(want, rel=0.01)
        assert steps.step(0, 1, tokens, tokens * steps.prefill_rate(length)) == pytest.approx(max(gpu, host))
    assert "attn.core" in steps.sequence_ops and "moe.experts" in steps.token_ops
    # a step holding prompt tokens takes at least the host floor of a prefill, unless all its
    # tokens fit the largest captured CUDA graph (vLLM replays it)
    assert steps.graph_tokens == load_profile("vllm", "h200-sxm").options.cudagraph_max_tokens > 0
    big = steps.graph_tokens + 1 - 4
    assert steps.step(4, 1000, big, 1e-9) >= steps.floor_s > steps.step(4, 1000, 0, 0)
    assert steps.step(4, 1000, 1, 1e-9) < steps.floor_s


@pytest.mark.parametrize("model, dtype", [("gpt-oss-20b", "mxfp4-moe"), ("deepseek-v2-lite", "bf16")])
def test_step_tables_count_every_layer_group(model, dtype):
    """A model of two layer groups (gpt-oss: windowed and full-attention layers; DeepSeek-V2-Lite:
    a dense layer before its MoE layers) names its ops alike in each: the tables sum them, so a
    decode-only step is predict's at any batch and context, not one group's ops beside the
    other's frozen at the tables' probe."""
    gpu = load_gpu("h100-sxm")
    tables = build_step_times(load_model(model), gpu, load_profile("vllm", gpu.name), dtype, Layout(),
                              max_tokens=4096, max_seqs=128, max_context=2048)
    for batch, context in ((1, 200), (16, 768), (64, 1500)):
        want = predict(model, gpu="h100-sxm", phase="decode", batch=batch, context=context,
                       dtype="bf16" if dtype == "mxfp4-moe" else dtype).metrics["decode_step_s"]
        assert tables.step(batch, context, 0, 0) == pytest.approx(want, rel=1e-3)


def test_vectorized_steps_match_scalar(steps):
    n = np.array([0.5, 1, 2, 7, 33, 100, 255.5])
    for p in (0.0, 500.0):
        want = [steps.step(x, 1100.0, p, p * 1e-5) for x in n]
        assert np.allclose(steps.steps(n, 1100.0, p, p * 1e-5), want, rtol=1e-9)


@pytest.mark.parametrize("rate", [0.5, 1.0, 2.0])
def test_closed_form_agrees_with_simulation_at_low_load(steps, limits, rate):
    curve = serving_curve(steps, limits, S, O)
    state = curve.at(rate)
    result = simulate(steps, limits, _fixed(rate, 500), warmup=100)
    sim = result.summary()
    assert state.stable and not result.overloaded
    for metric in ("ttft", "itl"):
        assert state.metrics()[metric]["mean"] == pytest.approx(sim[metric]["mean"], rel=LOW_LOAD_TOLERANCE), metric


def test_saturation_is_where_the_simulation_queues(steps, limits):
    curve = serving_curve(steps, limits, S, O)
    sat = curve.saturation_rate
    assert 1.0 < sat < 100.0
    assert not curve.at(1.05 * sat).stable
    below = simulate(steps, limits, _fixed(0.5 * sat, 300), warmup=50, abort_wait_s=30)
    above = simulate(steps, limits, _fixed(2.0 * sat, 300), warmup=50, abort_wait_s=30)
    assert below.summary()["ttft"]["p90"] < 1.0
    assert above.summary()["ttft"]["p90"] > 10 * below.summary()["ttft"]["p90"]


def test_littles_law_holds_in_the_simulation(steps, limits):
    """Run to empty: the area under the number in the system equals the summed sojourn times,
    and L = λ·W over the run."""
    result = simulate(steps, limits, _fixed(4.0, 200, seed=7), warmup=0)
    assert result.completed == result.finished_all == result.arrived_all == 200
    assert result.area == pytest.approx(result.sojourn_sum, rel=1e-9)
    mean_in_system = result.area / result.horizon_s
    arrival_rate = result.arrived_all / result.horizon_s
    assert mean_in_system == pytest.approx(arrival_rate * result.e2e.mean(), rel=1e-9)


def test_littles_law_and_token_counts_under_preemption(steps):
    """A KV cache for a handful of requests: requests are preempted and recomputed, every one
    still finishes, and Little's law still balances."""
    rng = np.random.default_rng(3)
    small = EngineLimits(64, 8192, 6000)
    requests = arrival_requests(3.0, rng.integers(200, 2000, 150), rng.integers(20, 300, 150), seed=1)
    result = simulate(steps, small, requests, warmup=0)
    assert result.preemptions > 0
    assert result.completed == 150 and not result.overloaded
    assert result.area == pytest.approx(result.sojourn_sum, rel=1e-9)
    assert result.peak_kv_fraction <= 1.0
    assert np.all(result.e2e >= result.ttft)


def test_a_higher_rate_never_lowers_latency_percentiles(steps, limits):
    rng = np.random.default_rng(11)
    s, o = rng.integers(200, 2000, 300), rng.integers(20, 300, 300)
    previous = None
    for rate in (1.0, 2.0, 4.0, 6.0, 8.0):
        summary = simulate(steps, limits, arrival_requests(rate, s, o, seed=0), warmup=50).summary()
        row = {f"{m}_{q}": summary[m][q] for m in ("ttft", "itl", "e2e") for q in ("p50", "p90", "p99")}
        if previous is not None:
            lower = {k: (previous[k], v) for k, v in row.items() if v < previous[k]}
            assert not lower, f"rate {rate}: latencies fell: {lower}"
        previous = row


def test_overload_is_cut_short_and_reported(steps, limits):
    result = simulate(steps, limits, _fixed(60.0, 400), warmup=50, abort_wait_s=5.0)
    assert result.overloaded and "waited" in result.reason
    assert math.isinf(result.summary()["e2e"]["p99"])


def test_decode_pool_has_no_prefill_steps(steps, limits):
    """Requests that arrive with their prompt computed (a decode pool) see decode steps only."""
    plain = simulate(steps, limits, _fixed(4.0, 200), warmup=50).summary()
    prefilled = Requests(*[getattr(_fixed(4.0, 200), f) for f in ("arrival", "input_len", "output_len")], True)
    decode = simulate(steps, limits, prefilled, warmup=50).summary()
    assert decode["itl"]["p99"] < steps.floor_s <= plain["itl"]["p99"]


def test_a_request_larger_than_the_cache_ends_the_run(steps):
    """A prompt that cannot fit even alone is reported (overloaded), not retried forever."""
    requests = arrival_requests(1.0, np.array([2000, 100]), np.array([10, 10]), seed=0)
    result = simulate(steps, EngineLimits(8, 512, 1500), requests)
    assert result.overloaded and "does not fit" in result.reason


def test_step_tables_follow_the_dtype():
    """fp8 weights: the tables hold predict's fp8 weights and decode step, not bf16's."""
    gpu = load_gpu("h100")
    fp8 = build_step_times(load_model("mixtral"), gpu, load_profile("vllm", gpu.name), "fp8", Layout(),
                           max_tokens=1024, max_seqs=64, max_context=2048)
    want = predict("mixtral", gpu="h100", dtype="fp8", phase="decode", batch=16, context=1500)
    assert fp8.weights_bytes == pytest.approx(want.metrics["weights_bytes"], rel=1e-9)
    assert fp8.step(16, 1500, 0, 0) == pytest.approx(want.metrics["decode_step_s"], rel=1e-3)


def test_step_tables_take_a_quantization_scheme_as_the_weights_choice():
    """A plan may weigh int4 weight-only (w4a16) beside bf16 and fp8: its tables hold predict's
    w4a16 weights and decode step (the scheme over bf16 layers); an unknown choice names both
    lists."""
    from perfmodel.errors import InputError
    from perfmodel.planning.steptime import weight_choice

    assert weight_choice("fp8") == {"dtype": "fp8", "quant": None}  # fp8: its scheme's alias
    assert weight_choice("w4a16") == {"dtype": "bf16", "quant": "w4a16"}
    with pytest.raises(InputError, match=r"unknown dtype 'int3' \(known: fp32, .*; or a quantization scheme: .*w4a16"):
        weight_choice("int3")
    # none: the model unquantized, where bf16 runs a quantized checkpoint in its own scheme
    assert weight_choice("none") == {"dtype": "bf16", "quant": "none"}
    cut = load_model("deepseek-v3", {"num_hidden_layers": 4})
    gpu_ = load_gpu("h200")
    stored, plain = (build_step_times(cut, gpu_, load_profile("vllm", gpu_.name), d, Layout(), max_tokens=256,
                                      max_seqs=16, max_context=512) for d in ("bf16", "none"))
    assert plain.weights_bytes > 1.5 * stored.weights_bytes  # bf16 experts, not fp8 blocks
    gpu = load_gpu("h200")
    profile = load_profile("vllm", gpu.name)
    tables = {d: build_step_times(load_model("mixtral"), gpu, profile, d, Layout(), max_tokens=1024,
                                  max_seqs=64, max_context=2048) for d in ("bf16", "w4a16")}
    want = predict("mixtral", gpu="h200", quant="w4a16", phase="decode", batch=16, context=1500)
    assert tables["w4a16"].weights_bytes == pytest.approx(want.metrics["weights_bytes"], rel=1e-9)
    assert tables["w4a16"].step(16, 1500, 0, 0) == pytest.approx(want.metrics["decode_step_s"], rel=1e-3)
    assert tables["w4a16"].weights_bytes < tables["bf16"].weights_bytes / 3
    assert tables["w4a16"].kv_tokens > tables["bf16"].kv_tokens


def test_a_plan_over_int4_weights_names_the_scheme_and_its_bands(capsys):
    """``--dtype w4a16``: the candidate is labelled with the scheme; its offline band follows the
    scheme's check (``quantization.w4a16.band``: with it where its held-out rows lie within it,
    else none and the note says why), and the serving band follows the check of its serving runs
    (``serving_error_band.schemes.w4a16``: a GPTQ Qwen3-30B-A3B served on vLLM)."""
    import json

    from perfmodel.commands import main

    within = load_profile("vllm", "h200-sxm").quantization["w4a16"].band

    main(["plan", "mixtral-8x7b", "--rate", "2", "--input-len", "1024", "--output-len", "64", "--gpu", "h200",
          "--max-gpus", "1", "--no-disagg", "--requests", "40", "--dtype", "w4a16", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert " w4a16 " in data["chosen"]["label"] and data["chosen"]["dtype"] == "w4a16"
    provenance = data["profile"][0]
    assert (provenance["error_band"] is not None) == within
    assert ("its held-out w4a16 points within it" if within else
            "its held-out w4a16 points do not carry the band") in provenance["error_band_note"]
    served = load_profile("vllm", "h200-sxm").serving_error_band.schemes["w4a16"]
    assert (provenance["serving_error_band"] is not None) == served.within
    assert f"its {served.runs} w4a16 runs lie {'within' if served.within else 'outside'} it" in \
        provenance["serving_error_band_note"]


def test_step_tables_follow_the_kv_cache_dtype():
    """An fp8 KV cache: half the bytes per cached token, so about twice the tokens fit beside the
    same weights, and a long-context decode step as predict gives it at that cache dtype."""
    gpu, model = load_gpu("h200"), load_model("qwen3-30b-a3b")
    profile = load_profile("vllm", gpu.name)
    tables = {kv: build_step_times(model, gpu, profile, "bf16", Layout(), max_tokens=8192, max_seqs=64,
                                   max_context=16384, kv_dtype=kv) for kv in (None, "fp8")}
    assert tables["fp8"].kv_bytes_per_token == pytest.approx(tables[None].kv_bytes_per_token / 2, rel=1e-9)
    assert tables["fp8"].kv_tokens == pytest.approx(2 * tables[None].kv_tokens, rel=1e-3)
    want = predict("qwen3-30b-a3b", gpu="h200", kv_dtype="fp8", phase="decode", batch=16, context=8192)
    assert tables["fp8"].step(16, 8192, 0, 0) == pytest.approx(want.metrics["decode_step_s"], rel=1e-3)
    assert tables["fp8"].step(16, 8192, 0, 0) < tables[None].step(16, 8192, 0, 0)


def test_a_plan_with_an_fp8_kv_cache_says_the_serving_band_was_measured_at_bf16(capsys):
    from perfmodel.commands import main

    args = ["plan", "qwen3-30b-a3b", "--rate", "2", "--input-len", "1024", "--output-len", "64", "--gpu", "h200",
            "--max-gpus", "1", "--no-disagg", "--requests", "40", "--kv-dtype", "fp8", "--json"]
    main(args)
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["question"]["search"]["kv_dtype"] == "fp8"
    assert " kv-fp8 " in data["chosen"]["label"] and data["chosen"]["pools"][0]["kv_dtype"] == "fp8"
    note = data["profile"][0]["serving_error_band_note"]
    assert data["profile"][0]["serving_error_band"] is None and "measured with a bf16 KV cache, not fp8" in note
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:-3], "--kv-dtype", "fp6"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "perfmodel: error: unknown kv-dtype 'fp6' (known: fp32, bf16, fp16, fp8, int8, fp4)"]


def test_a_plan_searches_several_kv_cache_dtypes_and_keeps_to_its_gpu_limit(capsys):
    """--kv-dtype bf16,fp8 searches both caches beside each other (each candidate says which),
    and no candidate, colocated or disaggregated, uses more GPUs than --max-gpus: at a long
    prompt the two pools that first meet TTFT and ITL apart would need three of two."""
    import json

    from perfmodel.commands import main

    args = ["plan", "qwen3-30b-a3b", "--rate", "8", "--input-len", "8192", "--output-len", "256",
            "--ttft-p90", "3", "--itl-p90", "0.05", "--gpu", "h200", "--requests", "40", "--json"]
    main([*args, "--max-gpus", "4", "--no-disagg", "--kv-dtype", "bf16,fp8"])
    data = json.loads(capsys.readouterr().out)
    assert data["question"]["search"]["kv_dtype"] == ["bf16", "fp8"]
    labels = {point["label"] for point in data["points"]}
    for kv in ("bf16", "fp8"):
        assert any(f" kv-{kv} " in label for label in labels), kv
    assert data["chosen"]["pools"][0]["kv_dtype"] in ("bf16", "fp8")
    with pytest.raises(SystemExit):  # nothing meets the SLOs within two GPUs (exit 1)
        main([*args, "--max-gpus", "2", "--kv-dtype", "fp8"])
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"] is None and all(point["gpus"] <= 2 for point in data["points"])


def test_a_plan_takes_the_engines_memory_flags(capsys):
    """--gpu-memory-utilization sets the share of each GPU the engine fills (vLLM's flag:
    usable memory HBM × share less what CUDA holds outside torch), and --kv-cache-memory the KV
    cache itself (GiB per GPU), whatever the weights leave: the plan's memory_per_gpu says
    both, and its cache's tokens are the given bytes over the KV bytes per token. A cache the
    GPU cannot hold beside the weights and activations does not fit; bad values are refused."""
    import json

    from perfmodel.commands import main

    args = ["plan", "olmoe-1b-7b", "--rate", "2", "--input-len", "512", "--output-len", "32", "--gpu", "h200",
            "--max-gpus", "1", "--no-disagg", "--requests", "40", "--json"]
    memory, warned = {}, {}
    for name, extra in (("default", []), ("share", ["--gpu-memory-utilization", "0.5"]),
                        ("given", ["--kv-cache-memory", "3"]), ("small", ["--gpu-memory-utilization", "0.15"])):
        main([*args, *extra])
        data = json.loads(capsys.readouterr().out)
        memory[name] = data["profile"][0]["memory_per_gpu"]
        warned[name] = any("its CUDA graphs' memory, not counted here" in c for c in data["caveats"])
    # a cache of a few GiB that vLLM's estimate of its graphs' memory may cut is said to be so
    assert memory["small"]["kv_cache_gib"] < 8 and warned == {"default": False, "share": False, "given": False,
                                                               "small": True}
    gpu, profile = load_gpu("h200"), load_profile("vllm", "h200-sxm")
    outside = profile.activation_reserve.non_torch_bytes / 2**30
    assert memory["default"]["usable_gib"] == pytest.approx(gpu.hbm_capacity_bytes * 0.9 / 2**30 - outside, rel=1e-9)
    assert memory["share"]["usable_gib"] == pytest.approx(gpu.hbm_capacity_bytes * 0.5 / 2**30 - outside, rel=1e-9)
    for m in memory.values():
        assert m["weights_gib"] == pytest.approx(memory["default"]["weights_gib"], rel=1e-9)
    left = memory["share"]["usable_gib"] - memory["share"]["weights_gib"] - memory["share"]["activations_gib"]
    assert memory["share"]["kv_cache_gib"] == pytest.approx(left, rel=1e-9)
    assert memory["share"]["kv_cache_tokens"] < memory["default"]["kv_cache_tokens"]
    assert memory["given"]["kv_cache_given"] and not memory["default"]["kv_cache_given"]
    assert memory["given"]["kv_cache_gib"] == 3
    per_token = memory["default"]["kv_cache_gib"] / memory["default"]["kv_cache_tokens"]
    assert memory["given"]["kv_cache_tokens"] == pytest.approx(3 / per_token, rel=1e-4)
    main([*args[:-1], "--kv-cache-memory", "3"])  # the terminal answer says it too
    printed = " ".join(capsys.readouterr().out.split())
    assert (f"KV cache 3.0 GiB (given: {memory['given']['kv_cache_tokens']:,} tokens)" in printed
            and "memory per GPU (h200-sxm):" in printed)
    with pytest.raises(SystemExit) as exit_info:  # nothing fits: exit 1, and the reason says why
        main([*args, "--kv-cache-memory", "140"])
    assert exit_info.value.code == 1
    reasons = [r["reason"] for r in json.loads(capsys.readouterr().out)["candidates"]["rejected"]]
    assert reasons and all("the KV cache asked for (140 GiB)" in r for r in reasons)
    for bad in (["--gpu-memory-utilization", "1.5"], ["--gpu-memory-utilization", "0"], ["--kv-cache-memory", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("perfmodel: error:"), bad


# --------------------------------------------------------------------------- replays on hand-built step times

#: Toy step times: a step of n decodes and p prompt tokens takes FIXED + PER_TOKEN·(n + p) s.
FIXED, PER_TOKEN = 0.01, 1e-4


def _toy_steps(fixed=FIXED, per_token=PER_TOKEN, per_ctx=0.0, pre=(0.0, 0.0), floor=0.0):
    """StepTimes built by hand (no calibrated model): token ops linear in the step's tokens,
    decode sequence ops ``per_ctx``·n·L, prefill sequence ops ``pre`` s per prompt token at
    1 and 4096 tokens."""
    from perfmodel.planning.steptime import StepTimes

    n, L = np.array([1.0, 2.0, 4.0, 256.0]), np.array([1.0, 4096.0])
    return StepTimes(token_s=per_token * np.arange(8193, dtype=float), ctx_n=n, ctx_L=L,
                     ctx_s=per_ctx * n[:, None] * L[None, :], pre_len=np.array([1.0, 4096.0]),
                     pre_s_per_token=np.array(pre, dtype=float), fixed_s=fixed, floor_s=floor,
                     weights_bytes=0.0, activation_bytes=0.0, kv_bytes_per_token=1.0, usable_bytes=1e6)


def test_a_replayed_step_takes_at_least_the_hosts_time_per_step_and_sequence():
    """A step the engine replays from a CUDA graph (decodes alone, or prompt tokens within the
    largest graph) takes max(GPU, host_s + sequences·host_seq_s); a launched step keeps its
    launch floor. The vectorized steps agree with step."""
    import dataclasses

    steps = dataclasses.replace(_toy_steps(), host_s=0.02, host_seq_s=1e-5, graph_tokens=512.0)
    assert steps.step(4, 128.0, 0.0, 0.0) == pytest.approx(0.02 + 4e-5)  # the host's 20 ms: GPU 10.4 ms
    assert steps.step(1000, 128.0, 0.0, 0.0) == pytest.approx(FIXED + 1000 * PER_TOKEN)  # GPU 110 ms: host 30 ms
    n = np.array([4.0, 100.0, 200.0, 1000.0])
    assert steps.steps(n, 128.0, 0.0, 0.0) == pytest.approx([steps.step(x, 128.0, 0.0, 0.0) for x in n])
    # a prompt chunk within the graph counts as one more sequence on the host
    assert steps.step(4, 128.0, 10.0, 0.0, prompts=1) == pytest.approx(0.02 + 5e-5)
    assert steps.steps(4.0, 128.0, 10.0, 0.0, 1.0) == pytest.approx(0.02 + 5e-5)
    # a launched step (beyond the largest graph) keeps its launch floor, not the replay's
    launched = dataclasses.replace(steps, floor_s=0.5)
    assert launched.step(4, 128.0, 1000.0, 0.0) == pytest.approx(0.5)  # GPU 110 ms


def _replay(arrival, s, o, limits=EngineLimits(8, 8192, 100_000), **kw):
    requests = Requests(np.array(arrival, dtype=float), np.array(s), np.array(o))
    return simulate(_toy_steps(), limits, requests, record_tokens=True, **kw)


def test_replay_of_one_request_alone():
    """S = 100 at t = 1 s: one prefill step of 100 tokens, then O − 1 = 4 decode steps of one."""
    result = _replay([1.0], [100], [5])
    prefill, decode = FIXED + 100 * PER_TOKEN, FIXED + PER_TOKEN
    (times,) = result.token_times
    assert times == pytest.approx(1.0 + prefill + decode * np.arange(5), abs=1e-12)
    run = result.run_summary()
    assert run["ttft"]["p50"] == pytest.approx(prefill) and run["itl"]["p90"] == pytest.approx(decode)
    assert run["e2e"]["mean"] == pytest.approx(prefill + 4 * decode)
    assert run["tpot"]["p50"] == pytest.approx(decode)
    assert (run["completed"], run["aborted"], run["output_tokens"]) == (1, 0, 5)
    assert run["output_tok_s"] == pytest.approx(5 / (prefill + 4 * decode))
    assert run["completion_rate"] is None  # one completion: no rate


def test_replay_of_two_overlapping_requests():
    """A (S = 100, O = 3) at 0, B (S = 100, O = 3) at 15 ms, inside A's prefill step:

    step 1 [0, 20 ms]: A's prompt -> A's first token; step 2: A decodes, B's prompt (101 tokens)
    -> 20.1 ms, A's second and B's first token; step 3: both decode (2 tokens) -> 10.2 ms, A's
    last token; step 4: B decodes alone -> 10.1 ms, B's last token."""
    result = _replay([0.0, 0.015], [100, 100], [3, 3])
    s1, s2, s3, s4 = FIXED + 100 * PER_TOKEN, FIXED + 101 * PER_TOKEN, FIXED + 2 * PER_TOKEN, FIXED + PER_TOKEN
    a, b = result.token_times
    assert a == pytest.approx([s1, s1 + s2, s1 + s2 + s3], abs=1e-12)
    assert b == pytest.approx([s1 + s2, s1 + s2 + s3, s1 + s2 + s3 + s4], abs=1e-12)
    run = result.run_summary()
    ttfts = sorted([s1, s1 + s2 - 0.015])
    assert [run["ttft"]["p50"], run["ttft"]["p90"]] == pytest.approx(
        [float(np.percentile(ttfts, 50)), float(np.percentile(ttfts, 90))])
    gaps = [s2, s3, s3, s4]  # A: s2, s3; B: s3, s4 (linear-interpolated percentiles, as measured)
    assert run["itl"]["p50"] == pytest.approx(float(np.percentile(gaps, 50)))
    assert run["itl"]["p90"] == pytest.approx(float(np.percentile(gaps, 90)))
    end = s1 + s2 + s3 + s4
    assert run["output_tokens"] == 6 and run["window_s"] == pytest.approx(end)
    assert run["output_tok_s"] == pytest.approx(6 / end)
    assert run["completion_rate"] == pytest.approx(1 / s4)
    assert run["per_request"]["e2e_s"] == pytest.approx([s1 + s2 + s3, end - 0.015])


def test_until_s_aborts_what_still_runs():
    """One sequence at a time (max_num_seqs 1): A (S = 100, O = 50) decodes, B waits behind it and
    is never prefilled, C arrives after the end; at until_s the tokens of the steps that ended
    count, the step in flight's do not."""
    prefill, decode = FIXED + 100 * PER_TOKEN, FIXED + PER_TOKEN
    until = prefill + 10 * decode + 0.005
    result = _replay([0.0, 0.05, 1.0], [100, 100, 100], [50, 50, 50], limits=EngineLimits(1, 8192, 100_000),
                     until_s=until)
    assert result.overloaded and "aborted" in result.reason and result.horizon_s == pytest.approx(until)
    run = result.run_summary()
    assert (run["submitted"], run["completed"], run["aborted"]) == (2, 0, 2)
    assert run["per_request"]["output_tokens"] == [11, 0]
    assert run["per_request"]["ttft_s"] == [pytest.approx(prefill), None]
    assert run["per_request"]["e2e_s"] == [None, None]
    assert math.isnan(run["ttft"]["p50"])  # no completed request: no percentiles
    assert run["output_tok_s"] == pytest.approx(11 / (prefill + 10 * decode))


def test_record_tokens_matches_the_per_request_latencies():
    """Under preemption (a small KV cache), the recorded token times give each request its
    simulated TTFT and E2E and exactly O tokens."""
    rng = np.random.default_rng(2)
    n = 60
    requests = arrival_requests(4.0, rng.integers(100, 1200, n), rng.integers(5, 120, n), seed=3)
    result = simulate(_toy_steps(per_ctx=2e-8, floor=0.012), EngineLimits(16, 1024, 3000), requests,
                      record_tokens=True)
    assert result.preemptions > 0 and result.completed == n
    for i, times in enumerate(result.token_times):
        assert len(times) == requests.output_len[i] and np.all(np.diff(times) > 0)
        assert times[0] - requests.arrival[i] == pytest.approx(result.ttft[i], abs=1e-12)
        assert times[-1] - requests.arrival[i] == pytest.approx(result.e2e[i], abs=1e-12)


#: simulate() on the toy step times below, computed before the replay arguments existed:
#: (limits, rate, keyword arguments) -> ttft p50/p90/mean, itl p50/p90/mean, e2e p50, completed,
#: preemptions, steps, horizon (s), overloaded.
_BEFORE = [
    ((32, 512, 6000), 3.0, {}, [0.04054693934924103, 0.08279286996876815, 0.07724299703911569],
     [0.00816934, 0.00827682, 0.008734318213018585], 1.1240250843115547, 180, 35, 7134, 65.83977544713325, False),
    ((16, 1024, 30000), 25.0, {"abort_wait_s": 1.0}, [math.inf] * 3,
     [0.00879433, 0.021011714285714286, 0.011324212032013904], math.inf, 3, 0, 156, 2.167348935597275, True),
]


@pytest.mark.parametrize("case", range(len(_BEFORE)))
def test_planning_simulation_unchanged_without_the_replay_arguments(case):
    limits, rate, kw, ttft, itl, e2e_p50, completed, preemptions, n_steps, horizon, overloaded = _BEFORE[case]
    steps = _toy_steps(fixed=0.008, per_token=2e-5, per_ctx=3e-8, pre=(1e-6, 4e-6), floor=0.012)
    rng = np.random.default_rng(4)
    s, o = rng.integers(100, 1500, 200), rng.integers(10, 200, 200)
    for record in (False, True):  # recording the token times changes nothing either
        result = simulate(steps, EngineLimits(*limits), arrival_requests(rate, s, o, seed=5), warmup=20,
                          record_tokens=record, **kw)
        summary = result.summary()
        assert [summary["ttft"][q] for q in ("p50", "p90", "mean")] == pytest.approx(ttft, rel=1e-9)
        assert [summary["itl"][q] for q in ("p50", "p90", "mean")] == pytest.approx(itl, rel=1e-9)
        assert summary["e2e"]["p50"] == pytest.approx(e2e_p50, rel=1e-9)
        assert (result.completed, result.preemptions, result.steps, result.overloaded) == \
            (completed, preemptions, n_steps, overloaded)
        assert result.horizon_s == pytest.approx(horizon, rel=1e-9)


def test_predict_serving_replay_arguments_are_checked():
    from perfmodel.errors import InputError
    from perfmodel.planning import predict_serving

    traffic = {"rate": 4.0, "input_len": 128, "output_len": 32}
    for kwargs, expected in (
        ({"arrivals": []}, "at least one time"),
        ({"arrivals": [0.0, -1.0]}, "finite times >= 0"),
        ({"arrivals": [0.0, float("nan")]}, "finite times >= 0"),
        ({"arrivals": ["soon"]}, "list of times"),
        ({"arrivals": [0.0], "until_s": -2.0}, "until_s must be a time > 0"),
        ({"arrivals": [0.0], "kv_tokens": 0}, "kv_tokens must be a whole number"),
        ({"arrivals": [0.0], "replicas": 2}, "one engine stream"),
        ({"until_s": 5.0}, "apply to a replay"),
        ({"arrivals": [0.0, 0.5], "kv_tokens": 100}, "cannot hold the longest request"),
        ({"graph_tokens": -1}, "graph_tokens must be a whole number"),
        ({"graph_tokens": 2.5}, "graph_tokens must be a whole number"),
    ):
        with pytest.raises(InputError, match=expected):
            predict_serving("olmoe-1b-7b", "h200", (1, 1, 1), traffic, **kwargs)


def test_asynchronous_scheduling_delays_a_newcomer_by_one_step():
    """A (S = 100, O = 50) at 0 starts at once; B (S = 100, O = 2) arrives at 5 ms, inside A's
    prefill step (20 ms). Scheduled synchronously, B joins the next step (at 20 ms); scheduled
    asynchronously, that step was planned when A's prefill started, so B joins the one after
    (at 20 ms + one decode step of A)."""
    prefill, decode = FIXED + 100 * PER_TOKEN, FIXED + PER_TOKEN
    mixed = FIXED + 101 * PER_TOKEN  # A's decode and B's prompt in one step
    sync = _replay([0.0, 0.005], [100, 100], [50, 2]).run_summary()["per_request"]["ttft_s"]
    limits = EngineLimits(8, 8192, 100_000, async_scheduling=True)
    later = _replay([0.0, 0.005], [100, 100], [50, 2], limits=limits).run_summary()["per_request"]["ttft_s"]
    assert sync[0] == pytest.approx(prefill) and later[0] == pytest.approx(prefill)  # idle: at once
    assert sync[1] == pytest.approx(prefill + mixed - 0.005)
    assert later[1] == pytest.approx(prefill + decode + mixed - 0.005)
    # an engine with nothing else to run takes a newcomer at once, async or not
    alone = _replay([0.0, 1.0], [100, 100], [2, 2], limits=limits).run_summary()["per_request"]["ttft_s"]
    assert alone == pytest.approx([prefill, prefill])


def test_the_vllm_profile_schedules_asynchronously():
    assert load_profile("vllm", "h200-sxm").options.async_scheduling
    assert not load_profile("hf", "h200-sxm").options.async_scheduling


def test_a_replay_runs_on_the_engines_own_largest_graph():
    """A step of 300 tokens (a 256-token prompt beside decodes) fits a graph of 512 and is
    replayed; under an engine whose largest graph is 256 it is launched from the host."""
    from perfmodel.planning.steptime import build_step_times
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    args = (load_model("qwen3-30b-a3b"), load_gpu("h200"), load_profile("vllm", "h200-sxm"), "bf16", Layout(1, 1, 1))
    kw = dict(max_tokens=1024, max_seqs=64, max_context=2048)
    default, small = build_step_times(*args, **kw), build_step_times(*args, graph_tokens=256, **kw)
    assert default.graph_tokens == 512 and small.graph_tokens == 256
    rate = default.prefill_rate(256.0)
    replayed = default.step(44, 1024.0, 256, 256 * rate)
    launched = small.step(44, 1024.0, 256, 256 * rate)
    assert launched == pytest.approx(max(small.tokens(300) + small.decode_context(44, 1024.0) + 256 * rate
                                         + small.fixed_s, float(small.floor(45))))
    assert launched != pytest.approx(replayed)


def test_an_engines_default_largest_graph_follows_its_sequence_limit():
    """vLLM 0.26 captures graphs up to min(2·max_num_seqs, max_num_batched_tokens, 512) tokens."""
    from perfmodel.planning.steptime import build_step_times, default_graph_tokens
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    vllm = load_profile("vllm", "h200-sxm")
    steps = build_step_times(load_model("olmoe-1b-7b"), load_gpu("h200"), vllm, "bf16", Layout(1, 1, 1),
                             max_tokens=512, max_seqs=64, max_context=1024)
    assert default_graph_tokens(steps, vllm, 64, 8192) == 128
    assert default_graph_tokens(steps, vllm, 256, 8192) == 512
    assert default_graph_tokens(steps, vllm, 1024, 8192) == 512
    assert default_graph_tokens(steps, vllm, 64, 100) == 100
    hf = load_profile("hf", "h200-sxm")
    assert default_graph_tokens(steps, hf, 64, 8192) == steps.graph_tokens  # no padded graphs


def test_short_prompts_under_a_small_sequence_limit_are_launched_from_the_host():
    """200-token prompts: an engine of 64 sequences captures up to 128 tokens, so a step holding a
    prompt is launched from the host and pays its floor; one of 256 replays it from a graph."""
    from perfmodel.planning import predict_serving

    traffic = {"rate": 2.0, "input_len": 200, "output_len": 16}
    small = predict_serving("olmoe-1b-7b", "h200", (1, 1, 1), traffic, max_num_seqs=64, requests=60, warmup=10)
    large = predict_serving("olmoe-1b-7b", "h200", (1, 1, 1), traffic, max_num_seqs=256, requests=60, warmup=10)
    assert small["ttft_s"]["p50"] > 1.5 * large["ttft_s"]["p50"]
    # the same engine told its largest graph explicitly
    told = predict_serving("olmoe-1b-7b", "h200", (1, 1, 1), traffic, max_num_seqs=64, requests=60, warmup=10,
                           graph_tokens=512)
    assert told["ttft_s"]["p50"] == pytest.approx(large["ttft_s"]["p50"], rel=0.05)


@pytest.mark.parametrize("burstiness, share", [(0.25, 1.0), (0.25, 0.25), (4.0, 1.0), (4.0, 0.1), (1.0, 0.5)])
def test_arrival_gaps_keep_their_mean_and_one_streams_share_is_less_bursty(burstiness, share):
    """Gamma gaps of shape k keep a unit mean at squared CV 1/k; a stream that takes each request
    at random with probability p sees gaps of squared CV p/k + 1 − p (toward Poisson's 1); k = 1
    is the exponential draw itself, thinned or not."""
    from perfmodel.planning.simulate import arrival_gaps, arrival_scv

    gaps = arrival_gaps(200_000, seed=7, burstiness=burstiness, share=share)
    assert gaps.mean() == pytest.approx(1.0, rel=0.02)
    assert gaps.var() / gaps.mean() ** 2 == pytest.approx(arrival_scv(burstiness, share), rel=0.05)
    assert arrival_scv(burstiness, 1.0) == pytest.approx(1 / burstiness) and arrival_scv(burstiness, 0.0) == 1.0
    if burstiness == 1.0:
        assert np.array_equal(gaps, np.random.default_rng(7).exponential(1.0, size=200_000))


def test_burstier_arrivals_wait_longer_below_saturation(steps, limits):
    """At 2 req/s (a tenth of the engine's saturation) the same requests arriving in bursts wait
    for each other's prefills: TTFT p90 rises as the gaps' shape k falls (8 → 1 → 0.25), the
    decodes' ITL p50 hardly moves."""
    n = 600
    results = {k: simulate(steps, limits, arrival_requests(2.0, np.full(n, S), np.full(n, O), seed=3,
                                                           burstiness=k), warmup=100).summary()
               for k in (8.0, 1.0, 0.25)}
    assert results[0.25]["ttft"]["p90"] > 1.2 * results[1.0]["ttft"]["p90"]
    assert results[1.0]["ttft"]["p90"] > 1.1 * results[8.0]["ttft"]["p90"]
    assert results[0.25]["itl"]["p50"] == pytest.approx(results[8.0]["itl"]["p50"], rel=0.25)


def test_a_prefill_pools_wait_follows_the_gaps_variation(steps):
    """A prefill pool's closed-form wait is M/D/1's times the arrivals' squared CV (Kingman's
    G/D/1): none for evenly spaced arrivals, twice Poisson's at c_a² = 2."""
    curve = serving_curve(steps, EngineLimits(256, 8192, steps.kv_tokens), S, O, kind="prefill")
    rate = 0.6 * curve.saturation_rate
    m1 = curve.single_prefill_s
    poisson, bursty, even = (curve.at(rate, scv).ttft["mean"] - m1 for scv in (1.0, 2.0, 0.0))
    assert poisson > 0 and bursty == pytest.approx(2 * poisson) and even == pytest.approx(0.0, abs=1e-12)
    assert poisson == pytest.approx(0.6 / (2 * 0.4) * m1)
