"""The vllm profile is fitted end to end from the committed vLLM runs, reproducibly and honestly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perfmodel.calibration.fit import TRAIN_MODELS, profile_differences
from perfmodel.calibration.fit_tiles import TILE_TRAIN
from perfmodel.calibration.fit_vllm import SCHEME_TRAIN, fit_vllm_profile
from perfmodel.paths import PROFILES_DIR
from perfmodel.profile import load_profile


def test_committed_vllm_profile_is_what_the_data_fits():
    fitted = fit_vllm_profile("h200-sxm")
    committed = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    assert profile_differences(committed, fitted) == []
    # the band is stated from held-out points only, and the training fit is tight
    residuals = fitted["fit"]["residuals"]
    assert set(fitted["fit"]["train_models"]) == set(TRAIN_MODELS)
    assert residuals["held-out"]["decode_step"]["n"] > 0
    # (the training points hold the training models' profiled steps, to B = 1,024)
    assert residuals["train"]["decode_step"]["mape_pct"] < 6
    # the training points are the rows a parameter was fitted on, by name: the end-to-end rows of
    # the training models, their fp8 rows, the draft pass's and the piecewise-graph prefills'
    named = set(fitted["fit"]["points"])
    assert set(fitted["fit"]["draft_pass"]["points"]) <= named
    assert set(fitted["fit"]["piecewise_layer"]["points"]) <= named
    # (and the profiled steps and launched prefills a tiled MoE kernel's times are fitted on, and the
    # rows of a scheme no training model ran, of those schemes' training models)
    tiled = {p for record in fitted["fit"]["tiles"].values()
             for p in [*record["points"], *record["host"]["points"]]}
    assert tiled and all(p.split("|")[1] in TILE_TRAIN["mxfp4-moe"] and "quant=mxfp4" in p for p in tiled)
    assert tiled <= named
    marlin = {p for p in named if "moe_backend=marlin|quant=mxfp4" in p}
    assert marlin and {p.split("|")[1] for p in marlin} == set(SCHEME_TRAIN["mxfp4-moe-marlin"])
    assert all(p.split("|")[1] in TRAIN_MODELS or "spec=" in p for p in named - tiled - marlin)
    kernel_profile = fitted["fit"]["kernel_profile"]
    assert set(kernel_profile) == {"attention", "expert_gemm"}
    for category in kernel_profile.values():
        assert category["points"] and set(category["points"]) <= named
        assert set(category["models"]) <= set(TRAIN_MODELS)
    # a training model's row that no fit took is held out: its profiled decode of a prefill chunked
    # over several steps (OLMoE at B = 1,024, S = 256) holds the decodes riding along the chunks
    assert not any("|olmoe-1b-7b|" in p and "|B=1024|S=256|" in p for p in named)
    # the band: held-out points only, less those of the groups measured at collapsed routing
    # (gpt-oss: a router bias under dummy weights; gpt-oss-20b's steps never beat the floor)
    assert fitted["fit"]["band_excludes"] == ["deepseek-v2-lite bf16", "gpt-oss-120b mxfp4-moe",
                                              "gpt-oss-20b mxfp4-moe", "phi-3.5-moe bf16", "qwen3-30b-a3b fp8"]
    assert fitted["error_band"]["decode_step"] < residuals["held-out"]["decode_step"]["p90_abs_pct"] / 100
    # models whose measured decode beat the HBM floor of uniform routing are named
    # (DeepSeek-V2-Lite and Phi-3.5-MoE in bf16, Qwen3-30B-A3B in fp8 at B = 64, gpt-oss-120b)
    assert set(fitted["fit"]["faster_than_uniform_routing_floor"]) == {
        "deepseek-v2-lite", "gpt-oss-120b", "phi-3.5-moe", "qwen3-30b-a3b"}
    # the fp8 kernels' multipliers come from the training models' fp8 rows, inside their bounds:
    # per tensor (Mixtral's), one compute multiplier for the dense and the expert GEMMs, the dense
    # GEMMs' memory multiplier timed alone (the GEMM microbenchmark's fp8 rows over its bf16 rows);
    # in 128x128 blocks (Mixtral's, OLMoE's and Qwen1.5-MoE's), the expert GEMMs' alone, their
    # compute slower (vLLM's Triton fused MoE with block scales), the dense GEMMs' held at per-tensor
    # fp8's (DENSE_AS: both run fp8 tensor-core GEMMs)
    for scheme, models in (("fp8", {"mixtral-8x7b"}), ("fp8-block", set(TRAIN_MODELS))):
        fp8 = fitted["quantization"][scheme]
        assert fitted["fit"]["quantization_rows"][scheme] >= 6 and all(m in fp8["reason"] for m in models)
        assert all(0.3 < fp8[k] < 1.5 for k in ("grouped_gemm_memory", "grouped_gemm_compute"))
    fp8, block = fitted["quantization"]["fp8"], fitted["quantization"]["fp8-block"]
    bench = fitted["fit"]["dense_gemm_memory"]
    assert fp8["gemm_compute"] == fp8["grouped_gemm_compute"] and "microbenchmark" in fp8["reason"]
    assert fp8["gemm_memory"] == pytest.approx(bench["fp8"]["memory"] / fitted["efficiency"]["gemm"]["memory"],
                                               rel=1e-3)
    assert (block["gemm_memory"], block["gemm_compute"]) == (fp8["gemm_memory"], fp8["gemm_compute"])
    assert block["grouped_gemm_compute"] < fp8["grouped_gemm_compute"] and "DENSE_AS" in block["reason"]
    # the draft pass's host time: from the graph-replayed speculative row of the training draft,
    # γ and batch only (the draft's other γ and batches are held out)
    draft = fitted["fit"]["draft_pass"]
    assert (draft["draft"], draft["spec_tokens"], draft["batch"]) == ("qwen3-1.7b", 4, 1) and len(draft["points"]) == 1
    assert "spec=qwen3-1.7b:4" in draft["points"][0] and "|B=1|" in draft["points"][0]
    assert 0 < fitted["latency"]["draft_pass_s"] < 5e-3
    # the per-sequence host time of a launched step: from the traced serving run that filled max_num_seqs
    (run,) = fitted["fit"]["eager_seq"]["runs"]
    assert "olmoe-1b-7b" in run and "rate=44" in run
    assert 1e-6 < fitted["latency"]["eager_seq_s"] < 2e-4


def test_the_band_is_the_p90_of_the_held_out_points_it_names():
    from perfmodel.calibration.fit import HELD_OUT_MODELS, one_gpu_rows
    from perfmodel.measuring.routing_floor import group_name, routing_group
    from perfmodel.measuring.compare import (compare, load_with_what_ifs, row_engine_process, row_routing,
                                             row_speculative, verify_replayed)
    from perfmodel.paths import RESULTS_DIR

    profile = load_profile("vllm", "h200-sxm")
    excluded = set(profile.fit["band_excludes"])
    rows = one_gpu_rows(load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl"))  # one row per point
    kept = [r for r in rows if group_name(*routing_group(r)) not in excluded
            and (not row_speculative(r) or verify_replayed(r))  # speculative rows run without graphs: out
            and not row_engine_process(r)]  # an offline batch admitted while the engine steps: out
    assert "engine core ran in a process of its own" in profile.error_band.source
    # the same models through vLLM's uniform routing simulator are a group of their own, in the band
    simulated = [r for r in kept if row_routing(r) == "uniform_random"]
    assert {"deepseek-v2-lite", "phi-3.5-moe", "qwen3-30b-a3b"} <= {r["model"] for r in simulated}
    # the training points are exactly the rows a parameter was fitted on (fit.points)
    points, _ = compare(kept, engine="vllm", gpu="h200-sxm", train_points=profile.fit["points"])
    checked = points[points["split"] == "held-out"]
    # the band is stated unquantized; a scheme's held-out rows are checked against it, each scheme
    # apart (gpt-oss, measured only in its checkpoint's MXFP4, is checked: on Marlin outside)
    held = checked[(checked["quant"] == "none") & (checked["kv_cache"] == "model") & ~checked["dense"]]
    quantized = checked[checked["quant"] != "none"]
    # dense models, every point held out, are checked apart from the band too (fit.residuals.architecture.dense)
    dense = checked[checked["dense"]]
    assert set(dense["model"]) == {"qwen3-4b", "llama-3.1-8b", "qwen3-8b", "mistral-7b"}
    assert profile.fit["residuals"]["architecture"]["dense"]["points"] == dense["point_id"].nunique()
    # so is a KV cache stored in another dtype (vLLM's fp8 KV cache), weights unquantized
    cached = checked[(checked["quant"] == "none") & (checked["kv_cache"] != "model")]
    assert set(cached["kv_cache"]) == set(profile.fit["residuals"]["kv_cache"]) == {"fp8"}
    assert set(cached["model"]) == {"qwen3-30b-a3b", "deepseek-v2-lite", "phi-3.5-moe"}  # OLMoE-1B-7B: mu_kv
    assert set(quantized["quant"]) == set(profile.fit["residuals"]["quantization"]) == {
        "fp8", "fp8-block", "mxfp4-moe", "mxfp4-moe-marlin", "w4a16", "w8a16-experts"}
    for scheme, check in profile.fit["residuals"]["quantization"].items():  # each scheme's band is its check's
        assert profile.quant_efficiency(scheme).band == check["within"]
    assert not profile.fit["residuals"]["quantization"]["mxfp4-moe-marlin"]["within"]
    assert profile.fit["residuals"]["quantization"]["fp8"]["within"] and profile.quant_efficiency("fp8").band
    assert set(quantized.loc[quantized["quant"] == "mxfp4-moe", "model"]) == {"gpt-oss-20b", "gpt-oss-120b"}
    # held-out models (DeepSeek-V3 too: cut to 6 layers, no fit reads it), and what-if variants
    # (Mixtral skeleton, pruned OLMoE, Qwen1.5-MoE's top-k sweep) of training models
    assert set(held["model"]) <= set(HELD_OUT_MODELS) | {"deepseek-v3", "mixtral-8x7b", "olmoe-1b-7b",
                                                         "qwen1.5-moe-a2.7b"}
    assert "deepseek-v3" in set(held["model"])
    assert set(held[held["model"] == "olmoe-1b-7b"]["variant"]) != {"olmoe-1b-7b"}
    # the draft-pass time's training row is a training point; the other drafts are held out,
    # and no speculative row states the band (their predictions carry none)
    assert "without speculative decoding" in profile.error_band.source
    train = points[points["split"] == "train"]
    assert "spec=qwen3-1.7b:4" in " ".join(train["variant"]) and "spec=qwen3-0.6b" not in " ".join(train["variant"])
    assert "spec=qwen3-1.7b:8" not in " ".join(train["variant"])
    # ITL, E2E and throughput have a band per regime of the decode step, without the speculative
    # rows (whose predictions carry none): GPU-bound, and held to the host's floor
    plain = held[~held["speculative"]]
    for metric in ("decode_step", "e2e", "throughput"):
        part = plain[plain["metric"] == metric]
        steps = {regime: g["rel_error"].abs() for regime, g in part.groupby("decode_regime")}
        assert len(steps["GPU-bound"]) >= 5 and len(steps["host-bound"]) >= 5
        gpu_band, host_band = getattr(profile.error_band, metric), getattr(profile.error_band, f"{metric}_host_bound")
        assert gpu_band == pytest.approx(steps["GPU-bound"].quantile(0.9), rel=2e-3, abs=1e-4)
        assert host_band == pytest.approx(steps["host-bound"].quantile(0.9), rel=2e-3, abs=1e-4)
        assert host_band > gpu_band  # the host's speed moves more from one engine start to the next
    # TTFT has a band per regime of the prefill, without the speculative rows (whose predictions
    # carry none): GPU-bound, held to the host's launch floor, replayed from a captured graph
    ttft = held[(held["metric"] == "ttft") & ~held["speculative"]]
    by = {regime: part["rel_error"].abs() for regime, part in ttft.groupby("prefill_regime")}
    assert len(by["GPU-bound"]) >= 5 and len(by["launch-bound"]) >= 5
    assert profile.error_band.ttft == pytest.approx(by["GPU-bound"].quantile(0.9), rel=2e-3)
    assert profile.error_band.ttft_launch_bound == pytest.approx(by["launch-bound"].quantile(0.9), rel=2e-3)
    # graph-replayed prefills (8 held out: OLMoE, Qwen1.5-MoE, DeepSeek-V2-Lite) have a band of their own
    assert len(by["graph-replayed"]) >= 5
    assert profile.error_band.ttft_graph_replayed == pytest.approx(by["graph-replayed"].quantile(0.9), rel=2e-3)
    assert profile.error_band.ttft_launch_bound > profile.error_band.ttft
    # each regime's own points are recorded beside its band: their MAPE and count
    own = profile.fit["residuals"]["band points"]
    for regime, errors in by.items():
        assert own[f"ttft {regime}"]["n"] == len(errors)
        assert own[f"ttft {regime}"]["mape_pct"] == pytest.approx(100 * errors.mean(), rel=2e-3)
    steps = plain[plain["metric"] == "decode_step"]
    for regime, part in steps.groupby("decode_regime"):
        assert own[f"decode_step {regime}"]["mape_pct"] == pytest.approx(100 * part["rel_error"].abs().mean(), rel=2e-3)


def test_vllm_elsewhere_is_the_h200_fit_transferred():
    fitted = load_profile("vllm", "h200-sxm")
    assert fitted.calibrated and fitted.gpu == "h200-sxm" and fitted.options.prefill_eager
    # a GPU never measured takes the fit of every term (the H200's), not the H100's anchored on it,
    # applied as fractions of its own peaks; the H100 has its own
    assert load_profile("vllm", "b200") == fitted
    assert load_profile("vllm", "h100-sxm").gpu == "h100-sxm"


def test_a_prediction_takes_the_ttft_band_of_its_prefills_regime():
    from perfmodel import predict

    band = load_profile("vllm", "h200-sxm").error_band
    # a long prefill is set by its GPU time; one prompt of 2,048 tokens by the host's launch
    gpu = predict("mixtral-8x7b", engine="vllm", batch=16, input_len=512, output_len=64)
    host = predict("olmoe-1b-7b", engine="vllm", batch=1, input_len=2048, output_len=64)
    # 128 tokens fit the largest captured graph of the default engine: the replayed prefills' band
    graph = predict("olmoe-1b-7b", engine="vllm", batch=1, input_len=128, output_len=64)
    assert gpu.provenance["error_band"]["ttft_regime"] == "GPU-bound"
    assert gpu.provenance["error_band"]["ttft"] == band.ttft
    assert host.provenance["error_band"]["ttft_regime"] == "launch-bound"
    assert host.provenance["error_band"]["ttft"] == band.ttft_launch_bound
    assert host.metrics["ttft_s"] == pytest.approx(host.metrics["prefill_launch_s"]
                                                   + load_profile("vllm", "h200-sxm").latency.request_s)
    assert graph.provenance["error_band"]["ttft_regime"] == "graph-replayed"
    assert band.ttft_graph_replayed is not None
    assert graph.provenance["error_band"]["ttft"] == band.ttft_graph_replayed
    assert "ttft_s" in graph.intervals() and "itl_s" in graph.intervals()


def test_a_prediction_takes_the_decode_band_of_its_steps_regime():
    from perfmodel import predict

    band = load_profile("vllm", "h200-sxm").error_band
    assert band.decode_step_host_bound is not None
    # Mixtral's step at B = 16 is its GPU's; OLMoE's at B = 1,024 the host's time for its sequences
    gpu = predict("mixtral-8x7b", engine="vllm", batch=16, input_len=512, output_len=64)
    host = predict("olmoe-1b-7b", engine="vllm", batch=1024, input_len=16, output_len=32)
    assert gpu.provenance["error_band"]["decode_regime"] == "GPU-bound"
    assert (gpu.provenance["error_band"]["decode_step"], gpu.provenance["error_band"]["throughput"]) == (
        band.decode_step, band.throughput)
    assert host.metrics["decode_host_s"] == pytest.approx(host.metrics["itl_s"])
    assert host.provenance["error_band"]["decode_regime"] == "host-bound"
    assert (host.provenance["error_band"]["decode_step"], host.provenance["error_band"]["e2e"],
            host.provenance["error_band"]["throughput"]) == (
        band.decode_step_host_bound, band.e2e_host_bound, band.throughput_host_bound)
    itl = host.intervals()["itl_s"]
    assert itl == pytest.approx([host.metrics["itl_s"] * (1 - band.decode_step_host_bound),
                                 host.metrics["itl_s"] * (1 + band.decode_step_host_bound)])
    assert "host-bound decode steps'" in host.provenance["error_band_note"]


def test_a_prefill_replayed_from_piecewise_graphs_pays_the_hosts_attention_launches(tmp_path):
    from perfmodel import predict
    from perfmodel.planning.steptime import build_step_times
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    profile = load_profile("vllm", "h200-sxm")
    t = profile.latency.piecewise_layer_s
    assert 5e-5 < t < 1e-3
    # fitted on the training models' graph-replayed prefills only (as built, B·S within the capture sizes)
    points = profile.fit["piecewise_layer"]["points"]
    models = {p.split("|")[1] for p in points}
    tokens = [int(p.split("|B=")[1].split("|")[0]) * int(p.split("|S=")[1].split("|")[0]) for p in points]
    assert len(points) >= 3 and models <= set(TRAIN_MODELS) and all("|set=|" in p for p in points)
    assert max(tokens) <= 1024  # within the engines' capture sizes (512 or 1,024 tokens)
    without = _without(tmp_path, "latency", {"piecewise_layer_s": 0.0})
    kw = dict(phase="prefill", gpu="h200-sxm", output_len=2)
    # 128 tokens fit the default capture sizes (512): replayed, + 16 layers · t
    replayed, bare = (predict("olmoe-1b-7b", engine=e, batch=1, input_len=128, **kw) for e in ("vllm", without))
    assert replayed.metrics["ttft_s"] - bare.metrics["ttft_s"] == pytest.approx(16 * t, rel=1e-6)
    # 2,048 tokens are launched from the host: the term does not apply
    launched, bare = (predict("olmoe-1b-7b", engine=e, batch=1, input_len=2048, **kw) for e in ("vllm", without))
    assert launched.metrics["ttft_s"] == pytest.approx(bare.metrics["ttft_s"], rel=1e-9)
    # the serving step tables take the same term from the compiled prefill
    tables = build_step_times(load_model("olmoe-1b-7b"), load_gpu("h200-sxm"), profile, "bf16", Layout(1, 1, 1),
                              max_tokens=8192, max_seqs=256, max_context=2048)
    assert tables.piecewise_s == pytest.approx(16 * t, rel=1e-6)
    assert tables.step(0, 1.0, 100, 0.0) - tables.step(0, 1.0, 0, 0.0) > 16 * t


def test_a_decode_attention_pays_its_context_half_per_sequence(tmp_path):
    """The attention core's memory time counts each sequence's cache read as C + C_half keys: at
    C_half = 0 nothing changes, and the difference is B·L·C_half·(bytes per key)/(BW·η_m)."""
    from perfmodel import predict
    from perfmodel.paths import PROFILES_DIR
    from perfmodel.specs.hardware import load_gpu

    data = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    data["efficiency"]["attention"]["context_half"] = 0.0
    zero = tmp_path / "zero.yaml"
    zero.write_text(yaml.safe_dump(data))
    data["efficiency"]["attention"]["context_half"] = 200.0
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(data))
    kw = dict(gpu="h200-sxm", batch=128, input_len=128, output_len=128)
    itl = {name: predict("olmoe-1b-7b", engine=str(path), **kw).metrics["itl_s"] for name, path in
           (("zero", zero), ("two", two))}
    # OLMoE: 16 layers, 16 KV heads of 128 channels, K and V in bf16: 8,192 bytes per key per layer
    eta = data["efficiency"]["attention"]["memory"]
    expected = 16 * 128 * 200 * 8192 / (load_gpu("h200-sxm").hbm_bandwidth * eta)
    assert itl["two"] - itl["zero"] == pytest.approx(expected, rel=1e-6)
    # the transformers profile fits no context half: its attention is unchanged
    assert load_profile("hf", "h200-sxm").efficiency_of("attention").context_half == 0.0


def test_the_fitted_request_time_matches_the_measured_admission_and_large_batches(tmp_path):
    """``request_s`` is fitted end to end on the training rows (B ≤ 256). Rows at B = 256 and
    1,024, fitted by nothing, check it: the front end's admission of a call's requests, measured
    (``admission_ms``, the spread of their arrival stamps), is 0.08–0.18 ms per request, a part
    of ``request_s`` (the rest returns the outputs); and the prefills of 1,024 prompts of 16
    tokens (one 16,384-token step) come within 30% (the largest, +25%, Qwen3-30B-A3B cut to 12
    layers, launch-bound), where the profile without the term is 31–78% short."""
    from perfmodel.calibration.fit import one_gpu_rows
    from perfmodel.measuring.compare import compare, is_variant, load_measurements, row_engine_process
    from perfmodel.paths import RESULTS_DIR

    profile = load_profile("vllm", "h200-sxm")
    per_request = profile.latency.request_s
    assert 1e-4 < per_request < 4e-4
    rows = [r for name in ("h200-vllm.jsonl", "h200-vllm-whatif.jsonl")
            for r in one_gpu_rows(load_measurements(RESULTS_DIR / name))
            if r.get("admission_ms") is not None and r["batch"] >= 256]
    assert len(rows) >= 20
    admitted = [r["admission_ms"] * 1e-3 / (r["batch"] - 1) for r in rows]
    assert all(0.3 * per_request < a < per_request for a in admitted)
    large = [r for r in rows if r["batch"] == 1024 and r["input_len"] == 16
             and r["point_id"] not in profile.fit["points"]]  # held out
    # the models as built, in this process; the OLMoE cut to 4-16 layers (the host's time alone,
    # two machines) apart, below (cut to 1 layer, it is the host-speed fit's: not held out)
    built = [r for r in large if not is_variant(r) or r["model"] != "olmoe-1b-7b"]
    cut = [r for r in large if r not in built and not row_engine_process(r)]
    assert len(built) >= 5 and {r["layers"] for r in cut} >= {4, 8, 16}
    assert not any(r["layers"] == 1 for r in cut)
    without = _without(tmp_path, "latency", {"request_s": 0.0})
    errors = {}
    for engine in ("vllm", without):
        points, _ = compare([r for r in built if not row_engine_process(r)], engine=engine, gpu="h200-sxm")
        errors[engine] = points[points["metric"] == "ttft"]["rel_error"]
    assert errors["vllm"].abs().max() < 0.3
    assert errors[without].max() < -0.25
    # the truncated OLMoE's host-paced prefills: within 60% (1 layer: +57%, its machine's host
    # admitted and returned requests faster than request_s says)
    points, _ = compare(cut, engine="vllm", gpu="h200-sxm")
    ttft = points[points["metric"] == "ttft"]["rel_error"]
    assert ttft.abs().max() < 0.6


def test_the_fitted_context_half_matches_the_profiled_attention_kernels(tmp_path):
    """C_half is fitted with the other parameters, on the training rows and on the attention
    kernels of OLMoE-1B-7B's profiled decode steps at B ≥ 64 (``fit.kernel_profile``). The
    other models' profiled steps at B ≥ 64 (Qwen1.5-MoE, Mixtral, Qwen3-30B-A3B, Phi-3.5-MoE;
    contexts of 25–265 tokens), held out, check it kernel by kernel: FlashAttention's time per
    step is 0.85–1.74× the model's attention at the profiled context (median 1.10; the GQA models at B = 64
    the most), where the model without the term is 1.62–8.9× short. MLA's decode (DeepSeek-V2-Lite's
    and DeepSeek-V3's) is apart, and so is gpt-oss's attention with sinks and a 128-token window on every other layer
    (FlashAttention 3 takes as long on its windowed layers as on its full ones at these
    contexts: about twice the model, which counts the window's keys)."""
    from perfmodel.calibration.fit import one_gpu_rows
    from perfmodel.measuring.compare import compare, load_measurements
    from perfmodel.paths import RESULTS_DIR

    profile = load_profile("vllm", "h200-sxm")
    assert 50 < profile.efficiency_of("attention").context_half < 1000
    fitted = set(profile.fit["kernel_profile"]["attention"]["points"])
    assert len(fitted) >= 6 and all("|olmoe-1b-7b|" in p for p in fitted)
    rows = [r for name in ("h200-vllm.jsonl", "h200-vllm-whatif.jsonl")
            for r in one_gpu_rows(load_measurements(RESULTS_DIR / name))
            if ((r.get("decode_profile") or {}).get("split_ms") or {}).get("attention") and r["batch"] >= 64
            and r["model"] not in ("deepseek-v2-lite", "deepseek-v3", "gpt-oss-20b", "gpt-oss-120b")
            and r["batch"] * r["input_len"] <= 16384]  # a chunked prefill's decode profile holds riding decodes
    held_out = [r for r in rows if r["point_id"] not in profile.fit["points"]]
    assert len(held_out) >= 20 and {r["model"] for r in held_out} >= {"qwen1.5-moe-a2.7b", "mixtral-8x7b",
                                                                    "qwen3-30b-a3b", "phi-3.5-moe"}
    without = _without(tmp_path, "efficiency", {"attention": {"context_half": 0.0}})
    ratios = {}
    for engine in ("vllm", without):
        _, ops = compare(held_out, engine=engine, gpu="h200-sxm")
        attention = ops[ops["category"] == "attention"]
        ratios[engine] = attention["measured_s"] / attention["predicted_s"]
    assert len(ratios["vllm"]) == len(held_out)
    assert ratios["vllm"].between(0.8, 1.8).all() and 0.95 < ratios["vllm"].median() < 1.3
    assert ratios[without].min() > 1.5


def _without(tmp_path, section: str, values: dict) -> str:
    """The committed vllm profile with some of one section's values replaced, as a file."""
    data = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    for key, value in values.items():
        if isinstance(value, dict):
            data[section][key].update(value)
        else:
            data[section][key] = value
    path = tmp_path / "without.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _held_out_one_gpu_rows(keep, every_row: bool = False) -> list[dict]:
    """Held-out one-GPU rows that ``keep`` accepts: one per point (the one validation reads),
    or with ``every_row`` every measurement of it (a point measured again without the profiler
    keeps its profiled rows)."""
    from perfmodel.calibration.fit import one_gpu_rows
    from perfmodel.measuring.compare import row_speculative
    from perfmodel.measuring.results import read_rows
    from perfmodel.paths import RESULTS_DIR

    fitted = set(load_profile("vllm", "h200-sxm").fit["points"])
    return [r for name in ("h200-vllm.jsonl", "h200-vllm-whatif.jsonl")
            for r in one_gpu_rows(read_rows(RESULTS_DIR / name, unique=not every_row, warn=False).rows)
            if r.get("status") == "ok" and not row_speculative(r) and r["point_id"] not in fitted and keep(r)]


def test_the_fused_moe_kernels_leave_part_of_the_shorter_bound_exposed(tmp_path):
    """The fused-MoE kernel's exposed fraction (t = max(t_c, t_m) + a·min(t_c, t_m)) is fitted
    with the other parameters, on the training rows and on the fused-MoE kernels of the training
    models' profiled decode steps at B ≥ 16 (``fit.kernel_profile``). The held-out models'
    profiled steps (DeepSeek-V2-Lite, Phi-3.5-MoE, Qwen3-30B-A3B, Qwen1.5-MoE's top-k variants and
    Mixtral at 8 layers: 63 steps whose prefill was one engine step) check it kernel by kernel: the
    kernels are 0.91–1.28× the model (median 1.01, 4.0% MAPE); the same profile with a = 0 is
    1.00–1.35× short (median 1.11, 10.5%)."""
    from perfmodel.measuring.compare import compare

    profile = load_profile("vllm", "h200-sxm")
    assert 0.1 < profile.efficiency_of("grouped_gemm").exposed < 0.5
    assert profile.efficiency_of("gemm").exposed == 0.0  # not fitted: the plain roofline
    held_out = _held_out_one_gpu_rows(
        lambda r: ((r.get("decode_profile") or {}).get("split_ms") or {}).get("expert_gemm")
        and r["batch"] >= 16 and r["batch"] * r["input_len"] <= 16384, every_row=True)
    assert len(held_out) >= 60 and {r["model"] for r in held_out} >= {
        "deepseek-v2-lite", "phi-3.5-moe", "qwen3-30b-a3b", "qwen1.5-moe-a2.7b"}
    errors = {}
    for engine in ("vllm", _without(tmp_path, "efficiency", {"grouped_gemm": {"exposed": 0.0}})):
        _, ops = compare(held_out, engine=engine, gpu="h200-sxm")
        experts = ops[ops["category"] == "expert_gemm"]
        assert len(experts) == len(held_out)
        errors[engine] = (experts["predicted_s"] / experts["measured_s"] - 1).abs()
    assert errors["vllm"].mean() < 0.06 and errors["vllm"].max() < 0.3
    assert errors["vllm"].mean() < 0.6 * errors[next(e for e in errors if e != "vllm")].mean()


def test_a_graph_replayed_decode_step_takes_at_least_the_hosts_time(tmp_path):
    """A decode step takes max(GPU, t_host_step + B·t_host_seq): with asynchronous scheduling
    the host prepares the next step while the GPU runs this one. Fitted on the training rows,
    where only the profiled OLMoE-1B-7B steps at B = 768–1,024 show it; held out, the 21 steps of
    8-layer DeepSeek-V2-Lite (B = 1–1,024, GPU steps of 1–6 ms) are 13.1% off with the floor and
    28.8% without it (throughput 12.7% and 36.6%)."""
    from perfmodel import predict
    from perfmodel.measuring.compare import compare

    latency = load_profile("vllm", "h200-sxm").latency
    assert 5e-4 < latency.host_step_s < 5e-3 and 5e-6 < latency.host_seq_s < 5e-5
    floor = latency.host_step_s + 1024 * latency.host_seq_s
    big = predict("olmoe-1b-7b", batch=1024, input_len=16, output_len=32)
    assert big.metrics["decode_step_s"] >= floor * (1 - 1e-9)
    assert big.metrics["decode_host_s"] == pytest.approx(floor)  # reported beside the step
    gpu_bound = predict("mixtral-8x7b", batch=16).metrics
    assert gpu_bound["decode_step_s"] > 2 * gpu_bound["decode_host_s"] > 2 * latency.host_step_s
    held_out = _held_out_one_gpu_rows(
        lambda r: r["model"] == "deepseek-v2-lite" and (r.get("layers") == 8 or "num_hidden_layers=8" in r.get(
            "overrides", [])))
    assert len(held_out) >= 20
    errors = {}
    for engine in ("vllm", _without(tmp_path, "latency", {"host_step_s": 0.0, "host_seq_s": 0.0})):
        points, _ = compare(held_out, engine=engine, gpu="h200-sxm")
        errors[engine] = points[points["metric"] == "decode_step"]["rel_error"].abs().mean()
    assert errors["vllm"] < 0.2 and errors["vllm"] < 0.7 * errors[next(e for e in errors if e != "vllm")]


def test_a_quantization_scheme_has_the_band_where_its_held_out_rows_lie_within_it_and_their_own_beyond():
    from perfmodel import predict

    profile = load_profile("vllm", "h200-sxm")
    check = profile.fit["residuals"]["quantization"]["fp8"]
    # the fp8 rows held out (the Mixtral skeleton, the 8-layer Mixtral, Qwen3-30B-A3B at the
    # simulator) were checked regime by regime: the scheme has the band exactly where each
    # regime's 90th percentile lies within the band's half-width for it
    band = profile.error_band
    limits = {"decode_step GPU-bound": band.decode_step, "throughput GPU-bound": band.throughput,
              "e2e GPU-bound": band.e2e, "decode_step host-bound": band.decode_step_host_bound,
              "e2e host-bound": band.e2e_host_bound, "throughput host-bound": band.throughput_host_bound,
              "ttft GPU-bound": band.ttft, "ttft launch-bound": band.ttft_launch_bound,
              "ttft graph-replayed": band.ttft_graph_replayed}
    assert set(check["p90_abs_pct"]) <= set(limits) and check["points"] >= 10
    within = all(p90 <= 100 * limits[name] for name, p90 in check["p90_abs_pct"].items())
    assert check["within"] == within == profile.quantization["fp8"].band
    for kwargs in (dict(quant="fp8"), dict(dtype="fp8")):  # --dtype fp8 is --quant fp8
        p = predict("mixtral-8x7b", engine="vllm", batch=16, input_len=512, output_len=512, **kwargs)
        _assert_band_or_own(p, check, band, "fp8")
    # fp8 in 128x128 blocks was checked the same way, on its own held-out rows (Qwen3-30B-A3B
    # and Phi-3.5-MoE at the simulator): a checkpoint's config.json in that format takes its band
    blocks = profile.fit["residuals"]["quantization"]["fp8-block"]
    assert blocks["points"] >= 6 and blocks["within"] == profile.quantization["fp8-block"].band
    assert blocks["within"] == all(p90 <= 100 * limits[name] for name, p90 in blocks["p90_abs_pct"].items())
    p = predict("qwen3-30b-a3b", engine="vllm", batch=16, input_len=512, output_len=512, quant="fp8-block")
    _assert_band_or_own(p, blocks, band, "fp8-block")
    # a scheme never measured has none, and neither has fp8 on a profile that did not check it
    p = predict("mixtral-8x7b", engine="vllm", batch=16, input_len=512, output_len=512, quant="fp8-channel")
    assert p.provenance["error_band"] is None and "not measured with fp8-channel quantization" in p.provenance["error_band_note"]
    assert predict("mixtral-8x7b", engine="hf", batch=16, dtype="fp8").provenance["error_band"] is None


def _assert_band_or_own(p, check, band, scheme):
    """A GPU-bound prediction in ``scheme`` takes the profile's band where its held-out points
    lie within it (``check``, the profile's fit.residuals.quantization entry); where they lie
    outside it, each metric takes the wider of the band and their own 90th percentile |error|,
    computed from those points by the fit (own_band: the regimes with at least 5 of them); a
    regime with fewer keeps the band if they lie within it, else has none."""
    note, got = p.provenance["error_band_note"], p.provenance["error_band"]
    assert got["decode_regime"] == "GPU-bound" and got["ttft_regime"] == "GPU-bound"
    if check["within"]:
        assert got["decode_step"] == band.decode_step and p.intervals()
        assert f"its held-out {scheme} points within it" in note
        return
    own = check["own_band"]
    assert check["counts"]["decode_step GPU-bound"] >= 5
    assert own["decode_step GPU-bound"] == pytest.approx(check["p90_abs_pct"]["decode_step GPU-bound"] / 100, rel=1e-3)
    for metric, limit in (("decode_step", band.decode_step), ("e2e", band.e2e), ("throughput", band.throughput)):
        assert got[metric] == max(limit, own[f"{metric} GPU-bound"])
    few_within = check["p90_abs_pct"].get("ttft GPU-bound", float("inf")) <= 100 * band.ttft
    assert got["ttft"] == (max(band.ttft, own["ttft GPU-bound"]) if "ttft GPU-bound" in own
                           else band.ttft if few_within else None)
    assert f"widened to its held-out {scheme} points' own 90th percentile" in note and p.intervals()

def test_the_weight_only_schemes_kernels_are_fitted_on_training_models_and_checked_on_the_others():
    """int4 (GPTQ on Marlin) and int8 (vLLM's experts_int8 on Triton) weight-only: the memory and
    compute multipliers and the dequantization work n_dq of each are fitted on the training
    models' rows at the scheme (``fit.quantization_rows``), within their bounds; the held-out
    models' rows (Qwen3-30B-A3B and Phi-3.5-MoE at the routing simulator) are checked against
    the band; no quantized row enters the bf16 fit's kernel profile."""
    from perfmodel.calibration.fit_vllm import DEQUANT_SHARE, QUANT_MEMORY_HALF, QUANT_MULTIPLIERS
    from perfmodel.quantization import load_schemes

    profile = load_profile("vllm", "h200-sxm")
    fit = profile.fit
    for scheme, method in (("w4a16", "gptq"), ("w8a16-experts", "experts_int8")):
        kernels = profile.quantization[scheme]
        assert fit["quantization_rows"][scheme] >= 12 and f"--quantization {method}" in kernels.reason
        fitted = [p for p in fit["points"] if f"quant={method}" in p]
        assert len(fitted) == fit["quantization_rows"][scheme]
        assert {p.split("|")[1] for p in fitted} <= set(TRAIN_MODELS)
        (_, low, high, _), (_, c_low, c_high, _) = QUANT_MULTIPLIERS
        assert low <= kernels.grouped_gemm_memory <= high and c_low <= kernels.grouped_gemm_compute <= c_high
        estimate = load_schemes()[scheme].dequant_flops_per_weight
        assert DEQUANT_SHARE[1] * estimate <= kernels.dequant_flops_per_weight <= DEQUANT_SHARE[2] * estimate
        assert QUANT_MEMORY_HALF[1] * 1e8 <= kernels.memory_half <= QUANT_MEMORY_HALF[2] * 1e8
        check = fit["residuals"]["quantization"][scheme]
        assert check["points"] >= 8 and check["within"] == kernels.band
    # (int4's kernels hide most of the estimated dequantization behind their loads)
    assert profile.quantization["w4a16"].dequant_flops_per_weight < 0.5 * load_schemes()["w4a16"].dequant_flops_per_weight
    assert all("quant=none" in p for record in fit["kernel_profile"].values() for p in record["points"])


def test_a_fitted_dequantization_work_replaces_the_schemes_estimate(roofline_with):
    from perfmodel import predict
    from perfmodel.quantization import load_schemes

    def experts(engine: str) -> dict:
        p = predict("mixtral-8x7b", engine=engine, phase="decode", batch=16, input_len=64, context=64,
                    quant="w4a16")
        return next(op for op in p.ops if op["name"] == "moe.experts")

    def fitted(n_dq: float, half: float | None = None) -> str:  # a file of its own (cached by path)
        entry = {"dequant_flops_per_weight": n_dq} | ({} if half is None else {"memory_half": half})
        path = Path(roofline_with(quantization={"w4a16": entry}))
        return str(path.rename(path.with_name(f"dequant-{n_dq}-{half}.yaml")))

    estimate = load_schemes()["w4a16"].dequant_flops_per_weight
    none, half = experts(fitted(0.0)), experts(fitted(estimate / 2))
    as_estimated = experts("roofline")
    assert none["compute_s"] < half["compute_s"] < as_estimated["compute_s"]
    dequant = as_estimated["compute_s"] - none["compute_s"]  # linear in n_dq, the matmul part apart
    assert half["compute_s"] - none["compute_s"] == pytest.approx(dequant / 2, rel=1e-6)
    assert none["memory_s"] == as_estimated["memory_s"]
    # a fitted memory half: each quantized kernel pays that many bytes' time more, at its own rate
    halved = experts(fitted(0.0, 1e8))  # (bytes + half)/rate per layer, 32 layers
    per_byte = none["memory_s"] / none["bytes"]
    assert halved["memory_s"] - none["memory_s"] == pytest.approx(32 * 1e8 * per_byte, rel=1e-6)
    assert halved["compute_s"] == none["compute_s"]


def test_the_band_check_of_a_scheme():
    import pandas as pd

    from perfmodel.calibration.fit import band_check

    band = {"ttft": 0.2, "decode_step": 0.1, "e2e": 0.1, "throughput": 0.1,
            "decode_step_host_bound": 0.4, "e2e_host_bound": 0.4, "throughput_host_bound": 0.4}

    def points(gpu_err, host_err, n=6):
        rows = []
        for regime, err in (("GPU-bound", gpu_err), ("host-bound", host_err)):
            for metric in ("decode_step", "e2e", "throughput", "ttft"):
                rows += [{"metric": metric, "decode_regime": regime, "prefill_regime": "GPU-bound",
                          "rel_error": err if metric != "ttft" else 0.05} for _ in range(n)]
        return pd.DataFrame(rows)

    assert band_check(points(0.08, 0.30), band)["within"]
    assert not band_check(points(0.15, 0.30), band)["within"]  # GPU-bound steps outside ±10%
    assert not band_check(points(0.08, 0.50), band)["within"]  # host-bound steps outside ±40%
    assert not band_check(points(0.08, 0.30, n=2), band)["within"]  # too few GPU-bound steps to say
    assert band_check(points(0.08, 0.30), band)["points"] == 12


def test_the_end_to_end_fit_leaves_out_rows_whose_decodes_ride_along_their_prefill_chunks():
    """ITL = (E2E − TTFT)/(O − 1) is the model's decode step only where few of the O − 1 steps
    ride along the prefill's later chunks: the seed study's grid (S = O) keeps that share under 1%,
    a short output after a long chunked batch of prompts does not, and such rows are held out."""
    from perfmodel.calibration.fit import MAX_RIDING_SHARE, riding_share
    from perfmodel.calibration.fit_vllm import VLLM_OPTIONS
    from perfmodel.measuring.compare import load_measurements, row_kv_dtype
    from perfmodel.paths import RESULTS_DIR

    chunk = VLLM_OPTIONS["prefill_chunk_tokens"]
    assert riding_share({"batch": 1, "input_len": 16384, "output_len": 64}, chunk) == 0.0  # one step
    assert riding_share({"batch": 128, "input_len": 2048, "output_len": 2048}, chunk) == pytest.approx(15 / 4094)
    assert riding_share({"batch": 64, "input_len": 2048, "output_len": 64}, chunk) == pytest.approx(7 / 126)
    profile = load_profile("vllm", "h200-sxm")
    rows = {r["point_id"]: r for r in load_measurements(RESULTS_DIR / "h200-vllm.jsonl")}
    fitted = [rows[p] for p in profile.fit["points"] if p in rows and row_kv_dtype(rows[p]) is None
              and "quant=none" in p]
    assert fitted and max(riding_share(r, chunk) for r in fitted) <= MAX_RIDING_SHARE
    riders = [r for r in rows.values() if r["model"] in profile.fit["train_models"] and r.get("status") == "ok"
              and row_kv_dtype(r) is None and riding_share(r, chunk) > MAX_RIDING_SHARE]
    assert {r["model"] for r in riders} >= {"olmoe-1b-7b"}  # the bf16 side of the fp8 KV-cache pairs
    assert not {r["point_id"] for r in riders} & set(profile.fit["points"])


def test_the_draft_pass_is_fitted_at_the_reference_host_whatever_host_its_rows_probed():
    """A training-draft row measured on a host three times slower than the reference, with the
    ITL the profile predicts there: the fit gives back the profile's draft-pass time, not the
    slower host's (the row's residual is divided by its host factor)."""
    from perfmodel.calibration.fit_vllm import TRAIN_DRAFT, fit_draft_pass
    from perfmodel.measuring.compare import compare, row_speculative
    from perfmodel.measuring.results import read_rows
    from perfmodel.paths import RESULTS_DIR

    base = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    ref = base["latency"]["host_probe_ref_ms"]
    rows = read_rows(RESULTS_DIR / "h200-vllm-whatif.jsonl", unique=False).rows
    draft, tokens, batch = TRAIN_DRAFT
    row = next(r for r in rows if r.get("status") == "ok" and r["batch"] == batch and row_speculative(r)
               and (row_speculative(r)["spec_draft"], row_speculative(r)["spec_tokens"]) == (draft, tokens))
    slow = {**row, "host_probe_ms": [3 * ref, 3 * ref]}
    points, _ = compare([slow], engine="vllm", gpu="h200-sxm")
    step = float(points[points["metric"] == "decode_step"]["predicted"].iloc[0])
    fitted, ids = fit_draft_pass([{**slow, "itl_ms": step * 1e3}], base, "h200-sxm")
    assert ids == [row["point_id"]]
    assert fitted == pytest.approx(base["latency"]["draft_pass_s"], rel=0.01)
