"""Quantization schemes: bytes, FLOPs and peaks of each scheme against hand-computed numbers
for one small config; the layers a scheme leaves alone; the --dtype alias; the profile's
efficiency multipliers; bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from perfmodel import predict
from perfmodel.cli import main
from perfmodel.errors import InputError, SpecError
from perfmodel.prediction import Workload, error_band
from perfmodel.profile import load_profile, load_profile_file
from perfmodel.specs.hardware import load_gpu
from perfmodel.quantization import load_schemes, resolve, scheme_names
from perfmodel.sweeps import sweep

ROOT = Path(__file__).resolve().parent.parent

#: A small Mixtral-shaped config: H = 512, 8 query heads and 2 KV heads of 64, experts of
#: width 1024, top-2 of 8, two layers.
SMALL = {"hidden_size": 512, "num_heads": 8, "num_kv_heads": 2, "head_dim": 64, "ffn": 1024,
         "num_experts": 8, "top_k": 2, "num_layers": 2, "vocab_size": 1000}
LAYERS, H, I, E, K = 2, 512, 1024, 8, 2
B = 4  # decode batch: T = 4 tokens
QKV_IN, QKV_OUT = H, 8 * 64 + 2 * 2 * 64  # 512 → 768 (q 512, k and v 128 each)
H200_BF16, H200_FP8 = 989.5e12, 1979e12  # specs/hardware/h200-sxm.yaml, FLOP/s


def _ops(quant: str | None = None, engine: str = "roofline") -> dict[str, dict]:
    p = predict("mixtral", engine=engine, phase="decode", batch=B, input_len=64, context=64,
                quant=quant, overrides=SMALL)
    return {op["name"]: op for op in p.ops}


def _weight_bytes(elements: float, channels: float, quant: str) -> float:
    """Hand-written storage of one scheme: bits, plus its scales (from the YAML's numbers)."""
    return {
        "none": elements * 2,
        "fp8": elements * 1,  # one per-tensor scale: negligible
        "fp8-channel": elements * 1 + channels * 4,  # fp32 per output channel
        "fp8-block": elements * 1 + elements / (128 * 128) * 4,  # fp32 per 128x128 block
        "w8a16": elements * 1 + channels * 2,  # bf16 per output channel
        "w4a16": elements * 0.5 + elements / 128 * 2,  # a bf16 scale per 128 (symmetric GPTQ)
    }[quant]


SCHEMES = ("none", "fp8", "fp8-channel", "fp8-block", "w8a16", "w4a16")


@pytest.mark.parametrize("quant", SCHEMES)
def test_projection_bytes_and_flops_per_scheme(quant):
    ops = _ops(quant)
    qkv = ops["attn.qkv_proj"]
    elements = QKV_IN * QKV_OUT
    act = B * (QKV_IN + QKV_OUT) * 2  # bf16 rows in and out
    assert qkv["bytes"] == pytest.approx(LAYERS * (_weight_bytes(elements, QKV_OUT, quant) + act), rel=1e-12)
    assert qkv["flops"] == pytest.approx(LAYERS * 2 * B * QKV_IN * QKV_OUT, rel=1e-12)  # FLOPs stay


@pytest.mark.parametrize("quant", SCHEMES)
def test_routed_expert_bytes_per_scheme(quant):
    experts = _ops(quant)["moe.experts"]
    touched = E * (1 - (1 - K / E) ** B)  # distinct experts of B tokens, top-2 of 8
    elements = touched * (H * 2 * I + I * H)
    channels = touched * (2 * I + H)
    act = B * K * (2 * H + 3 * I) * 2
    assert experts["bytes"] == pytest.approx(LAYERS * (_weight_bytes(elements, channels, quant) + act), rel=1e-12)
    assert experts["flops"] == pytest.approx(LAYERS * 2 * B * K * 3 * H * I, rel=1e-12)  # no padding on roofline


@pytest.mark.parametrize("quant, per_row", [("fp8", 3 * H + 4), ("fp8-block", H * (3 + 4 / 128))])
def test_w8a8_quantizes_each_gemm_input_on_the_fly(quant, per_row):
    """Read bf16 (2 B), write fp8 (1 B) and the scales: fp32 per token, or per 1x128 group."""
    ops = _ops(quant)
    assert ops["attn.qkv_proj.act_quant"]["bytes"] == pytest.approx(LAYERS * B * per_row, rel=1e-12)
    assert {"attn.o_proj.act_quant", "moe.experts.act_quant"} <= set(ops)


@pytest.mark.parametrize("quant", ["none", "w8a16", "w4a16"])
def test_no_activation_pass_without_activation_quantization(quant):
    assert not [name for name in _ops(quant) if name.endswith(".act_quant")]


def test_embedding_lm_head_router_and_norms_are_not_quantized():
    plain, fp8 = _ops("none"), _ops("fp8")
    for name in ("embed", "lm_head", "moe.router", "attn.norm", "mlp.norm", "final_norm"):
        assert fp8[name]["bytes"] == plain[name]["bytes"], name
        assert fp8[name]["compute_s"] == plain[name]["compute_s"], name


def test_quantized_gemms_run_at_the_schemes_peak_and_efficiency():
    """roofline profile: gemm η_c = 0.80; fp8 kernels × 0.90 (its quantization key)."""
    fp8, w4 = _ops("fp8"), _ops("w4a16")
    qkv_flops = LAYERS * 2 * B * QKV_IN * QKV_OUT
    assert fp8["attn.qkv_proj"]["compute_s"] == pytest.approx(qkv_flops / (H200_FP8 * 0.8 * 0.9), rel=1e-12)
    head = fp8["lm_head"]  # unquantized: the bf16 peak
    assert head["compute_s"] == pytest.approx(head["flops"] / (H200_BF16 * 0.8), rel=1e-12)
    # weight-only: bf16 peak, plus 64 FLOP-equivalents of dequantization per weight read
    dequant = 64 * LAYERS * QKV_IN * QKV_OUT
    assert w4["attn.qkv_proj"]["compute_s"] == pytest.approx((qkv_flops + dequant) / (H200_BF16 * 0.8), rel=1e-12)


def test_weights_in_memory_follow_the_scheme():
    def weights(quant: str) -> float:
        return predict("mixtral-8x7b", engine="roofline", phase="decode", quant=quant).metrics["weights_bytes"]

    plain, fp8, w4 = weights("none"), weights("fp8"), weights("w4a16")
    embed_and_head = 2 * 32000 * 4096 * 2  # stay bf16
    assert fp8 - embed_and_head == pytest.approx((plain - embed_and_head) / 2, rel=1e-3)
    assert w4 - embed_and_head == pytest.approx((plain - embed_and_head) / 4 * (0.5 + 2 / 128) / 0.5, rel=1e-3)


def test_dtype_fp8_is_an_alias_of_the_fp8_scheme():
    by_dtype = predict("mixtral", engine="roofline", phase="decode", dtype="fp8", batch=4, overrides=SMALL)
    by_quant = predict("mixtral", engine="roofline", phase="decode", quant="fp8", batch=4, overrides=SMALL)
    same = {name: value for name, value in by_quant.metrics.items() if value == value}  # not NaN
    assert {name: by_dtype.metrics[name] for name in same} == same and "itl_s" in same
    w = Workload(dtype="fp8")
    assert w.scheme.name == "fp8" and w.base_dtype == "bf16" and w.kv_dtype_used == "bf16"
    assert Workload(dtype="fp16", quant="w4a16").kv_dtype_used == "fp16"
    assert resolve("int4", "bf16").name == "w4a16"  # an alias
    assert by_dtype.to_dict()["workload"]["quant"] == "fp8"


def test_an_unchecked_quantization_or_an_unfused_prediction_has_no_error_band():
    profile, gpu = load_profile("vllm", "h200-sxm"), load_gpu("h200-sxm")
    assert error_band(profile, gpu, Workload())[0] is not None
    # fp8's held-out rows were checked against the band (quantization.fp8.band says whether they
    # lie within it, regime by regime); w8a16's were never measured
    checked = profile.quantization["fp8"].band
    assert (error_band(profile, gpu, Workload(quant="fp8"))[0] is not None) == checked
    band, note = error_band(profile, gpu, Workload(quant="w8a16"))
    assert band is None and "not measured with w8a16 quantization" in note
    within, outside = (profile.model_copy(update={"quantization": {
        "fp8": profile.quantization["fp8"].model_copy(update={"band": flag})}}) for flag in (True, False))
    assert error_band(within, gpu, Workload(quant="fp8"))[0] is not None
    band, note = error_band(outside, gpu, Workload(quant="fp8"))
    assert band is None and "its held-out fp8 points do not carry the band" in note
    # outside, with enough of its held-out points in some regime: each metric the wider of the
    # band and their own 90th percentile there; where a regime has too few of them for their
    # own, the band if those few lie within it, else none
    residuals = profile.fit["residuals"]

    def scattered(ttft_p90_pct):
        own = {"decode_step GPU-bound": 0.2, "e2e GPU-bound": 0.01, "throughput GPU-bound": 0.15}
        p90 = {**{key: 100 * value for key, value in own.items()}, "ttft GPU-bound": ttft_p90_pct}
        fp8 = {**residuals["quantization"]["fp8"], "within": False, "own_band": own, "p90_abs_pct": p90}
        return outside.model_copy(update={"fit": {**profile.fit, "residuals": {
            **residuals, "quantization": {**residuals["quantization"], "fp8": fp8}}}})

    limits = profile.error_band
    band, note = error_band(scattered(50.0), gpu, Workload(quant="fp8"))
    assert band["decode_step"] == 0.2 and band["throughput"] == max(0.15, limits.throughput)
    assert band["e2e"] == limits.e2e and band["ttft"] is None  # e2e: the band is wider; ttft: few, outside
    assert "widened to its held-out fp8 points' own 90th percentile" in note
    assert "no ttft band: too few of those points at its regime" in note
    band, note = error_band(scattered(1.0), gpu, Workload(quant="fp8"))
    assert band["ttft"] == limits.ttft and band["decode_step"] == 0.2  # ttft: few, within the band
    band, note = error_band(scattered(1.0), gpu, Workload(quant="fp8"), decode="host-bound")
    assert band is None and "its held-out fp8 points do not carry the band" in note  # none host-bound
    unmeasured = outside.model_copy(update={"fit": {}})
    band, note = error_band(unmeasured, gpu, Workload(quant="fp8"))
    assert band is None and "not measured with fp8 quantization" in note
    band, note = error_band(profile, gpu, Workload(moe_impl="unfused"))
    assert band is None and "the band is the fused MoE's, not the unfused one's" in note


def test_profile_quantization_multipliers(tmp_path):
    data = yaml.safe_load((ROOT / "calibration/profiles/roofline.yaml").read_text())
    data["quantization"] = {"fp8": {"gemm_compute": 0.5, "gemm_memory": 0.25}}
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump(data))
    profile = load_profile_file(path)
    assert profile.quant_efficiency("fp8").gemm_compute == 0.5
    assert profile.quant_efficiency("w4a16").grouped_gemm_memory == 1.0  # not listed: 1.0
    base, half = _ops("fp8"), _ops("fp8", engine=str(path))
    assert half["attn.qkv_proj"]["compute_s"] == pytest.approx(base["attn.qkv_proj"]["compute_s"] * 0.9 / 0.5)
    assert half["attn.qkv_proj"]["memory_s"] == pytest.approx(base["attn.qkv_proj"]["memory_s"] * 4)
    assert half["lm_head"]["compute_s"] == base["lm_head"]["compute_s"]  # not a quantized layer
    data["quantization"] = {"nope": {"gemm_compute": 0.5}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="unknown scheme 'nope'"):
        load_profile_file(path)


def test_scheme_file_names_the_required_schemes():
    assert {"none", "fp8", "fp8-channel", "fp8-block", "w8a16", "w4a16"} <= set(scheme_names())
    schemes = load_schemes()
    assert schemes["fp8"].quantizes_activations and not schemes["w4a16"].quantizes_activations
    assert {s.dtype_alias for s in schemes.values()} >= {"fp8", "int8", "fp4"}


def test_sweep_over_schemes_equals_predict():
    table = sweep("mixtral", {"quant": ["none", "fp8-block", "w4a16"], "batch": [1, 8]}, phase="decode",
                  engine="roofline", input_len=64, overrides=SMALL)
    for row in table.itertuples():
        p = predict("mixtral", engine="roofline", phase="decode", batch=row.batch, input_len=64,
                    quant=row.quant, overrides=SMALL)
        assert row.itl_s == pytest.approx(p.metrics["itl_s"], rel=1e-9)
        assert row.weights_bytes == round(p.metrics["weights_bytes"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(quant="nope"), "unknown quant 'nope'"),
    (dict(quant=8), "unknown quant 8"),
    (dict(dtype="fp8", quant="w4a16"), "--dtype fp8 means --quant fp8"),
    (dict(gpu="a100", quant="fp8"), "has no fp8 peak"),
])
def test_bad_quant_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        predict("olmoe-1b-7b", engine="roofline", **kwargs)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``perfmodel ARGS`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_quant_and_moe_impl(capsys):
    code, out, err = _cli(capsys, "predict", "mixtral", "--quant", "fp8-block", "--moe-impl", "unfused", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["workload"]["quant"] == "fp8-block" and data["workload"]["moe_impl"] == "unfused"
    assert math.isfinite(data["throughput_tok_s"]) and data["throughput_tok_s"] > 0
    code, out, err = _cli(capsys, "sweep", "mixtral", "--grid", "moe_impl=fused,unfused", "--quant", "w4a16",
                          "--phase", "decode", "-b", "16", "--engine", "roofline", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [r["moe_impl"] for r in rows] == ["fused", "unfused"] and rows[1]["itl_s"] > rows[0]["itl_s"]
    for args, message in ((("predict", "mixtral", "--quant", "nope"), "unknown quant 'nope'"),
                          (("predict", "mixtral", "--moe-impl", "x"), "unknown moe-impl 'x'"),
                          (("predict", "mixtral", "--dtype", "fp8", "--quant", "fp8-block"), "means --quant fp8"),
                          (("sweep", "mixtral", "--grid", "quant=fp8,nope"), "unknown quant 'nope'"),
                          (("sweep", "mixtral", "--grid", "batch=1", "--moe-impl", "x"), "unknown moe-impl 'x'")):
        code, out, err = _cli(capsys, *args)
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.count("\n") == 1 and err.startswith("perfmodel: error: ") and message in err, err
    code, out, _ = _cli(capsys, "formula", "mixtral", "--op", "moe.experts", "--quantity", "flops")
    assert code == 0 and "FLOP per layer" in out


def test_mxfp4_moe_stores_the_routed_experts_alone_at_four_bits_and_a_scale_per_32():
    plain, mx = _ops("none"), _ops("mxfp4-moe")
    touched = E * (1 - (1 - K / E) ** B)
    elements = touched * 3 * H * I
    act = B * K * (2 * H + 3 * I) * 2
    assert mx["moe.experts"]["bytes"] == pytest.approx(LAYERS * (elements * (0.5 + 1 / 32) + act), rel=1e-12)
    for name in ("attn.qkv_proj", "attn.o_proj", "lm_head", "embed", "moe.router"):
        assert mx[name]["bytes"] == plain[name]["bytes"], name  # bf16, as the checkpoint keeps them
    assert not [name for name in mx if name.endswith(".act_quant")]  # weight-only: bf16 activations
    dequant = 64 * LAYERS * elements  # dequantized in the kernel, multiplied at the bf16 peak
    flops = plain["moe.experts"]["flops"]
    assert mx["moe.experts"]["compute_s"] == pytest.approx(
        plain["moe.experts"]["compute_s"] * (flops + dequant) / flops, rel=1e-9)


def test_a_checkpoints_quantization_is_the_default_and_quant_none_undoes_it(tmp_path):
    """gpt-oss's config.json stores its experts in MXFP4 (quantization_config.quant_method):
    predicted so unless --quant or an alias --dtype says otherwise."""
    from perfmodel.specs.model import load_model
    from perfmodel.specs.zoo import load_hf_config

    assert load_model("gpt-oss-120b").quantization == "mxfp4-moe"
    assert load_model("mixtral-8x7b").quantization is None
    assert load_model("deepseek-v3").quantization == "fp8-block"  # its published fp8 blocks
    native = predict("gpt-oss-120b", engine="roofline", batch=16)
    assert native.workload.quant == "mxfp4-moe"
    assert native.metrics["weights_bytes"] / 2**30 == pytest.approx(60.8, abs=0.1)  # the published ~61 GiB
    plain = predict("gpt-oss-120b", engine="roofline", batch=16, quant="none")
    assert plain.workload.quant == "none" and plain.metrics["weights_bytes"] > 3 * native.metrics["weights_bytes"]
    assert predict("gpt-oss-120b", engine="roofline", dtype="fp8").workload.quant is None  # the alias: W8A8
    table = sweep("gpt-oss-20b", {"batch": [1, 16]}, engine="roofline")
    assert table["itl_s"].iloc[1] == pytest.approx(predict("gpt-oss-20b", engine="roofline", batch=16).metrics["itl_s"])
    cfg = dict(load_hf_config("gpt-oss-20b"))
    cfg["quantization_config"] = {"quant_method": "bitsandbytes"}  # a method no scheme describes: --dtype's
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert load_model(str(path)).quantization is None
    for method, bits, scheme in (("gptq", 4, "w4a16"), ("gptq", 8, None), ("awq", 4, "w4a16")):
        cfg["quantization_config"] = {"quant_method": method, "bits": bits, "group_size": 128}
        path.write_text(json.dumps(cfg))  # GPTQ and AWQ at 4 bits are w4a16; GPTQ at 8 no scheme's
        assert load_model(str(path)).quantization == scheme
    # llm-compressor's compressed-tensors checkpoints, by their first config group
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False}
    token = {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}
    for weights, activations, scheme in (
            ({**fp8, "strategy": "channel"}, token, "fp8-channel"),  # FP8_DYNAMIC
            ({**fp8, "strategy": "tensor"}, token, "fp8"),
            ({**fp8, "strategy": "block", "block_structure": [128, 128]},
             {**token, "strategy": "group", "group_size": 128}, "fp8-block"),  # FP8_BLOCK
            ({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}, None, "w4a16"),  # W4A16
            ({"num_bits": 8, "type": "int", "strategy": "channel"}, None, "w8a16"),
            ({"num_bits": 8, "type": "int", "strategy": "channel"}, {**token, "type": "int"}, "int8-w8a8"),
            ({"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
             {"num_bits": 4, "type": "float"}, None)):  # NVFP4: no scheme's
        cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized",
                                      "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                                                    "input_activations": activations}},
                                      "ignore": ["lm_head"]}
        path.write_text(json.dumps(cfg))
        assert load_model(str(path)).quantization == scheme, weights
    for block, scheme in (([128, 128], "fp8-block"), (None, "fp8"), ([64, 64], None)):
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
        if block is not None:  # Qwen3-FP8's and DeepSeek-V3's blocks; without: per tensor
            cfg["quantization_config"]["weight_block_size"] = block
        path.write_text(json.dumps(cfg))
        assert load_model(str(path)).quantization == scheme


def test_a_checkpoint_format_no_scheme_describes_is_predicted_unquantized_and_said(tmp_path, capsys):
    from perfmodel.specs.model import load_model
    from perfmodel.specs.zoo import load_hf_config

    cfg = dict(load_hf_config("mixtral-8x7b"))
    path = tmp_path / "config.json"
    for block, unread in (({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
                          ([], "?"), ({"quant_method": "fp8", "weight_block_size": [128, 128]}, None)):
        cfg["quantization_config"] = block
        path.write_text(json.dumps(cfg))
        assert load_model(str(path)).unread_quantization == unread
    assert load_model("mixtral-8x7b").unread_quantization is None
    cfg["quantization_config"] = {"quant_method": "bitsandbytes"}
    path.write_text(json.dumps(cfg))
    code, out, err = _cli(capsys, "predict", str(path), "--json")
    data = json.loads(out)
    assert code == 0 and data["workload"]["quant"] == "none"
    assert data["provenance"]["unread_quantization"] == "bitsandbytes"
    assert "quant_method 'bitsandbytes') is no scheme's: predicted unquantized" in err
    for chosen in (["--quant", "w4a16"], ["--dtype", "fp8"]):  # a scheme the user picked: nothing to say
        code, out, err = _cli(capsys, "predict", str(path), "--json", *chosen)
        assert code == 0 and json.loads(out)["provenance"]["unread_quantization"] is None and not err
    # sweep says so for its rows at a plain dtype, and plan among its caveats
    code, out, err = _cli(capsys, "sweep", str(path), "--grid", "dtype=bf16,fp8", "--json")
    assert code == 0 and "its rows at --dtype bf16 predicted unquantized" in err
    code, out, err = _cli(capsys, "sweep", str(path), "--grid", "quant=none,w4a16", "--json")
    assert code == 0 and "bitsandbytes" not in err
    from perfmodel.commands import main as perfmodel

    perfmodel(["plan", str(path), "--rate", "1", "--input-len", "512", "--output-len", "64", "--gpu", "h200",
               "--max-gpus", "1", "--no-disagg", "--requests", "20", "--json"])
    assert any("quant_method 'bitsandbytes'" in c for c in json.loads(capsys.readouterr().out)["caveats"])
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 3}  # a method read, in another form
    path.write_text(json.dumps(cfg))
    code, out, err = _cli(capsys, "predict", str(path), "--json")
    assert code == 0 and "(the schemes read gptq as w4a16 (bits=4): its other fields differ)" in err


def test_a_checkpoint_names_one_scheme(schemes_file):
    from perfmodel import quantization

    scheme = quantization.checkpoint_scheme
    assert scheme({"quant_method": "mxfp4"}) == "mxfp4-moe" and scheme({"quant_method": "nope"}) is None
    assert scheme({"quant_method": "fp8", "weight_block_size": [128, 128]}) == "fp8-block"
    assert scheme({"quant_method": "fp8", "weight_block_size": None}) == "fp8" and scheme("fp8") is None
    data = schemes_file.original
    data["schemes"]["fp8"]["checkpoints"] = [{"quant_method": "fp8", "weight_block_size": [128, 128]}]
    schemes_file.write(data)
    with pytest.raises(SpecError, match=r"given twice: checkpoint quant_method=fp8, weight_block_size=\[128, 128\]"):
        quantization.load_schemes()
    data["schemes"]["fp8"]["checkpoints"] = [{"weight_block_size": [64, 64]}]
    schemes_file.write(data)
    with pytest.raises(SpecError, match="invalid scheme 'fp8'.*quant_method"):
        quantization.load_schemes()
    # two schemes that describe one block alike (as many fields each): neither
    data["schemes"]["fp8"]["checkpoints"] = [{"quant_method": "fp8", "fmt": "e4m3"}]
    schemes_file.write(data)
    assert scheme({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}) is None
    data = schemes_file.original
    data["schemes"]["w4a16"]["checkpoints"] = [{"quant_method": "mxfp4"}]
    schemes_file.write(data)
    with pytest.raises(SpecError, match="given twice: checkpoint quant_method=mxfp4"):
        quantization.load_schemes()
    data["schemes"]["w4a16"].pop("checkpoints")
    data["schemes"]["w4a16"]["layers"] = ["experts", "router"]
    schemes_file.write(data)
    with pytest.raises(SpecError, match="invalid scheme 'w4a16'.*layers"):
        quantization.load_schemes()
    data["schemes"]["w4a16"]["layers"] = ["experts"]
    data["schemes"]["w4a16"]["moe_row_blocks"] = [[28.8, 32], [14.4, 16], [None, 64]]  # bounds must rise
    schemes_file.write(data)
    with pytest.raises(SpecError, match="invalid scheme 'w4a16'.*moe_row_blocks"):
        quantization.load_schemes()


def test_a_measured_mxfp4_row_is_compared_with_the_mxfp4_moe_scheme():
    from perfmodel.measuring.compare import row_quant

    assert row_quant({"engine": {"quantization": "mxfp4"}}) == "mxfp4-moe"
    assert row_quant({"engine": {"quantization": "fp8"}}) == "fp8"
    assert row_quant({"engine": {"quantization": "none"}}) is None and row_quant({}) is None


def test_marlins_row_block_follows_the_mean_rows_per_expert():
    """int4's MoE kernel (Marlin) pads each expert's rows to a block picked by the mean rows per
    expert T·k/E (at least 16), not by the pass's tokens as vLLM's Triton defaults do: Qwen3's 64
    decoding sequences give 4 rows per expert, a block of 16 rows where Triton's is 32, so half
    the computed rows (every touched expert computing one block); Mixtral's 16 rows per expert
    take 32 either way. A scheme without its own blocks (int8 experts on Triton) keeps the
    engine's."""
    def computed_flops(model: str, quant: str | None) -> float:
        p = predict(model, engine="vllm", gpu="h200", phase="decode", batch=64, context=64, quant=quant)
        return next(op for op in p.ops if op["name"] == "moe.experts")["flops"]

    assert computed_flops("qwen3-30b-a3b", "w4a16") == pytest.approx(computed_flops("qwen3-30b-a3b", None) / 2,
                                                                      rel=1e-9)
    assert computed_flops("mixtral-8x7b", "w4a16") == pytest.approx(computed_flops("mixtral-8x7b", None), rel=1e-9)
    assert computed_flops("qwen3-30b-a3b", "w8a16-experts") == pytest.approx(computed_flops("qwen3-30b-a3b", None),
                                                                              rel=1e-9)
