"""The vllm backend's translation (no vLLM needed) and its not-installed error."""

from __future__ import annotations

import json
import sys

import pytest

from perfmodel.errors import InputError
from perfmodel.measuring import compare, vllm_backend as vb
from perfmodel.measuring.cli import VLLM_MISSING, measure
from perfmodel.measuring.measure import main
from perfmodel.measuring.points import build_points, parse_phases

pytestmark = pytest.mark.skipif(vb.vllm_available(), reason="vllm is installed here")


def _points(**kw):
    settings = vb.point_settings(tp=2, expert_parallel=True, quantization="fp8", moe_backend="triton")
    return build_points(["mixtral"], [1, 16, 64], parse_phases("128,512"), backend="vllm",
                        settings=settings, experts_impl="vllm_fused_moe", **kw)


def test_engine_kwargs_cover_the_group(tmp_path):
    points = _points(overrides=["num_experts=16", "top_k=4"])
    kw = vb.engine_kwargs(points, tmp_path)
    assert kw["model"] == str(tmp_path)
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] is True
    assert kw["dtype"] == "bfloat16" and kw["enforce_eager"] is False
    assert kw["tensor_parallel_size"] == 2 and kw["enable_expert_parallel"] is True
    assert kw["quantization"] == "fp8"
    assert kw["max_num_seqs"] == 64
    assert kw["max_model_len"] == 1024
    assert "max_num_batched_tokens" not in kw  # vLLM's own default chunk (recorded per row)
    assert kw["compilation_config"]["cudagraph_capture_sizes"][-1] == 64
    assert kw["enable_prefix_caching"] is False and kw["disable_log_stats"] is False
    assert kw["hf_overrides"] == {"num_local_experts": 16, "num_experts_per_tok": 4}
    assert kw["moe_backend"] == "triton"
    small = vb.engine_kwargs([p for p in points if p.batch == 1 and p.input_len == 128], tmp_path)
    assert small["max_num_seqs"] == 1 and small["max_model_len"] == 256
    assert small["compilation_config"]["cudagraph_capture_sizes"] == [1]
    chunked = vb.engine_kwargs(points[:1], tmp_path, max_batched_tokens=128)
    assert chunked["max_num_batched_tokens"] == 256  # at least one full sequence
    # an older vLLM without the optional arguments
    old = vb.engine_kwargs(points, tmp_path, accepted={"model", "dtype"})
    assert "moe_backend" not in old and "enable_prefix_caching" not in old


def test_engine_arguments_given_to_the_backend_are_set_over_the_points_where_vllm_takes_them(monkeypatch):
    """``VLLMBackend(engine_args=...)`` (a script's own engine: asynchronous scheduling off, a
    longer context) overrides the points' arguments where this vLLM has them, drops those it has
    not, and builds the engine as a measured row's is."""
    import dataclasses
    import sys
    import types

    built = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = lambda **kwargs: built.append(kwargs) or types.SimpleNamespace()
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    names = ("model", "load_format", "dtype", "max_num_seqs", "max_model_len", "async_scheduling")
    arg_utils.EngineArgs = dataclasses.make_dataclass("EngineArgs", [(n, object, None) for n in names])
    for name, module in (("vllm", vllm), ("vllm.engine", types.ModuleType("vllm.engine")),
                         ("vllm.engine.arg_utils", arg_utils)):
        monkeypatch.setitem(sys.modules, name, module)
    point = build_points(["olmoe"], [16], [[128]], backend="vllm", settings=vb.point_settings())[0]
    backend = vb.VLLMBackend(log=lambda msg: None,
                             engine_args={"async_scheduling": False, "max_model_len": 4096, "no_such": 1})
    handle = backend.prepare([point])
    (kwargs,) = built
    assert kwargs["async_scheduling"] is False and kwargs["max_model_len"] == 4096 and "no_such" not in kwargs
    assert kwargs["load_format"] == "dummy" and kwargs["max_num_seqs"] == 16 and handle["vocab"] > 0
    backend.release(handle)


def test_config_json_and_requests():
    point = _points(layers=4)[0]
    cfg = vb.vllm_config_json(point)
    assert cfg["architectures"] == ["MixtralForCausalLM"]
    assert cfg["num_hidden_layers"] == 4
    json.dumps(cfg)  # serialisable
    reqs = vb.make_requests(3, 17, vocab_size=32000, seed=1)
    assert len(reqs) == 3 and all(len(r["prompt_token_ids"]) == 17 for r in reqs)
    assert all(10 <= t < 32000 - 10 for r in reqs for t in r["prompt_token_ids"])
    assert reqs == vb.make_requests(3, 17, vocab_size=32000, seed=1)
    assert vb.sampling_kwargs(128) == {"max_tokens": 128, "min_tokens": 128, "ignore_eos": True,
                                       "temperature": 0.0, "detokenize": False}
    assert vb.sampling_kwargs(128, "random")["temperature"] == 1.0
    with pytest.raises(ValueError, match="unknown sampling"):
        vb.sampling_kwargs(128, "beam")


def test_a_checkpoint_quantization_goes_into_config_json_not_the_engine_arguments(tmp_path):
    settings = vb.point_settings(quantization="mxfp4")
    points = build_points(["gpt-oss-20b"], [1, 16], parse_phases("128"), backend="vllm",
                          settings=settings, experts_impl="vllm_fused_moe")
    cfg = vb.vllm_config_json(points[0])
    assert cfg["architectures"] == ["GptOssForCausalLM"]
    assert cfg["quantization_config"] == {"quant_method": "mxfp4"}
    kw = vb.engine_kwargs(points, tmp_path)
    assert kw["quantization"] is None  # vLLM reads the method from config.json
    assert "quant=mxfp4" in points[0].point_id
    fp8 = _points()[0]  # quantized by vLLM on load: the engine argument, a plain config.json
    assert vb.checkpoint_quantization(fp8) is None and "quantization_config" not in vb.vllm_config_json(fp8)


def test_a_gptq_point_quantizes_attention_and_experts_but_not_the_router(tmp_path):
    settings = vb.point_settings(quantization="gptq", moe_backend="marlin")
    points = build_points(["qwen3-30b-a3b"], [16], parse_phases("128"), backend="vllm",
                          settings=settings, experts_impl="vllm_fused_moe")
    block = vb.vllm_config_json(points[0])["quantization_config"]
    assert (block["quant_method"], block["bits"], block["group_size"], block["sym"], block["desc_act"]) == (
        "gptq", 4, 128, True, False)
    kw = vb.engine_kwargs(points, tmp_path)
    assert kw["quantization"] is None and kw["moe_backend"] == "marlin"

    def quantized(prefix: str) -> bool:  # vLLM's rule: a listed name is a substring of the layer's
        return any(name in prefix for name in block["modules_in_block_to_quantize"])

    for layer in ("self_attn.q_proj", "self_attn.o_proj", "mlp.shared_expert.down_proj",
                  "mlp.shared_experts.gate_proj", "mlp.gate_up_proj", "mlp.down_proj"):
        assert quantized(f"model.layers.3.{layer}"), layer
    for layer in ("mlp.gate", "block_sparse_moe.gate", "mlp.shared_expert_gate"):
        assert not quantized(f"model.layers.3.{layer}"), layer
    assert compare.row_quant({"engine": {"quantization": "gptq"}}) == "w4a16"
    assert compare.row_quant({"engine": {"quantization": "fp8-block"}}) == "fp8-block"
    assert compare.row_quant({"engine": {"quantization": "experts_int8"}}) == "w8a16-experts"  # an alias


def test_a_block_fp8_point_is_a_checkpoint_with_128_by_128_weight_blocks(tmp_path):
    settings = vb.point_settings(quantization="fp8-block")
    points = build_points(["qwen3-30b-a3b"], [16], parse_phases("128"), backend="vllm",
                          settings=settings, experts_impl="vllm_fused_moe")
    block = vb.vllm_config_json(points[0])["quantization_config"]
    assert (block["quant_method"], block["weight_block_size"], block["activation_scheme"]) == (
        "fp8", [128, 128], "dynamic")
    kw = vb.engine_kwargs(points, tmp_path)
    assert kw["quantization"] is None and kw["moe_backend"] == "triton"  # vLLM reads it from config.json
    assert "quant=fp8-block" in points[0].point_id
    name = vb.fused_moe_config_name(128, 768, "NVIDIA H200", "fp8_w8a8", block["weight_block_size"])
    assert name == "E=128,N=768,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json"


def test_fused_moe_tiles_are_the_ones_vllm_picks_at_each_pass_size(monkeypatch):
    """Asked of vLLM's own lookup (a stand-in here) with one GPU's expert shapes, the scheme's
    kernel dtype and block shape, once per distinct pass size."""
    import sys
    import types

    calls = []

    def pick(w1_shape, w2_shape, top_k, dtype, M, block_shape=None):
        calls.append((w1_shape, w2_shape, top_k, dtype, M, block_shape))
        return {"BLOCK_SIZE_M": 16 if M <= 32 else 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128}

    names = ["vllm", "vllm.model_executor", "vllm.model_executor.layers", "vllm.model_executor.layers.fused_moe"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("vllm.model_executor.layers.fused_moe.fused_moe")
    module.try_get_optimal_moe_config = pick
    monkeypatch.setitem(sys.modules, module.__name__, module)
    cfg = vb.load_hf_config("phi-3.5-moe")
    point = build_points(["phi-3.5-moe"], [1], parse_phases("128"), backend="vllm",
                         settings=vb.point_settings(quantization="fp8"), experts_impl="vllm_fused_moe")[0]
    tiles = vb.fused_moe_tiles(cfg, point, 1, [1, 128, 1, 2048])["fused_moe_tiles"]
    assert list(tiles) == ["1", "128", "2048"] and tiles["1"]["BLOCK_SIZE_M"] == 16 and tiles["2048"]["BLOCK_SIZE_M"] == 64
    assert calls[0] == ((16, 2 * 6400, 4096), (16, 4096, 6400), 2, "fp8_w8a8", 1, None)
    tp2 = vb.fused_moe_tiles(cfg, point, 2, [16])  # one GPU's shard: half the width under TP
    assert calls[-1][:2] == ((16, 6400, 4096), (16, 4096, 3200)) and "fused_moe_tiles" in tp2
    monkeypatch.setattr(module, "try_get_optimal_moe_config", lambda *a: 1 / 0)
    assert "fused_moe_tiles_error" in vb.fused_moe_tiles(cfg, point, 1, [1])  # recorded, never fatal
    assert vb.fused_moe_tiles(vb.load_hf_config("qwen3-0.6b"), point, 1, [1]) == {}  # no routed experts


def test_dummy_integer_parameters_are_random_codes_and_small_finite_scales():
    torch = pytest.importorskip("torch")
    from perfmodel.measuring.vllm_dummy import FP8_WEIGHT_RANGE, SCALE_EXPONENT_BYTES, fill_quantized_parameters

    layer = torch.nn.Module()
    layer.w13_weight = torch.nn.Parameter(torch.zeros(64, 256, dtype=torch.uint8), requires_grad=False)
    layer.w13_weight_scale = torch.nn.Parameter(torch.full((64, 16), 255, dtype=torch.uint8),
                                                requires_grad=False)
    layer.w13_bias = torch.nn.Parameter(torch.zeros(64))
    layer.child = torch.nn.Module()
    layer.child.other = torch.nn.Parameter(torch.zeros(8, dtype=torch.uint8), requires_grad=False)
    assert fill_quantized_parameters(layer) == 2  # its own integer parameters, not its children's
    codes = layer.w13_weight
    assert len(torch.unique(codes)) > 200  # every byte value, i.e. random E2M1 nibbles
    scales = layer.w13_weight_scale
    low, high = SCALE_EXPONENT_BYTES
    assert int(scales.min()) >= low and int(scales.max()) < high  # no 0xFF (E8M0 NaN), no huge exponent
    assert 2.0 ** (high - 1 - 127) * 6 < 2e-3  # largest weight: the bf16 dummy weights' size
    assert not layer.w13_bias.any() and not layer.child.other.any()

    gptq = torch.nn.Module()  # int4 codes packed eight to an int32; g_idx is no code
    gptq.w13_qweight = torch.nn.Parameter(torch.zeros(4, 64, dtype=torch.int32), requires_grad=False)
    gptq.qzeros = torch.nn.Parameter(torch.zeros(4, 8, dtype=torch.int32), requires_grad=False)
    gptq.g_idx = torch.nn.Parameter(torch.zeros(64, dtype=torch.int32), requires_grad=False)
    assert fill_quantized_parameters(gptq) == 2
    nibbles = torch.stack([(gptq.w13_qweight >> (4 * i)) & 0xF for i in range(8)])
    assert len(torch.unique(nibbles)) == 16 and (gptq.w13_qweight < 0).any()  # every code, sign bit too
    assert gptq.qzeros.any() and not gptq.g_idx.any()

    fp8 = torch.nn.Module()  # block fp8: e4m3 weights; vLLM draws its fp32 block scales itself
    fp8.weight = torch.nn.Parameter(torch.zeros(256, 256, dtype=torch.float8_e4m3fn), requires_grad=False)
    fp8.weight_scale_inv = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)
    assert fill_quantized_parameters(fp8) == 1
    weights = fp8.weight.float()
    assert (weights != 0).float().mean() > 0.99  # vLLM's ±1e-3 would round nearly all to zero
    assert weights.abs().max() <= FP8_WEIGHT_RANGE[1] and len(torch.unique(weights)) > 100
    assert torch.isfinite(weights).all() and not fp8.weight_scale_inv.any()


def test_an_engine_whose_loader_filled_no_quantized_tensor_is_refused(monkeypatch):
    from types import SimpleNamespace as NS

    from perfmodel.measuring import vllm_dummy

    assert vllm_dummy.checked_fill_count([7, 7]) == 7 and vllm_dummy.checked_fill_count(3) == 3
    for counts in ([], [0], [5, 0]):
        with pytest.raises(RuntimeError, match="filled no quantized tensor"):
            vllm_dummy.checked_fill_count(counts)
    calls = []
    llm = NS(collective_rpc=lambda method: calls.append(method) or [4])
    assert vb.dummy_filled(llm, engine_process=True) == 4 and calls == [vllm_dummy.FILLED_METHOD]
    monkeypatch.setattr(vllm_dummy, "_FILLED", [9])  # in this process: the patched loader's own count
    assert vb.dummy_filled(llm, engine_process=False) == 9 and len(calls) == 1
    monkeypatch.setattr(vllm_dummy, "_FILLED", [0])
    with pytest.raises(RuntimeError):
        vb.dummy_filled(llm, engine_process=False)


def test_routing_simulation_is_part_of_the_point_id_and_sets_vllms_variable(monkeypatch):
    import os

    assert "routing" not in vb.point_settings()  # the model's own router: ids as before
    assert vb.point_settings(routing="uniform_random")["routing"] == "uniform_random"
    with pytest.raises(ValueError, match="unknown routing"):
        vb.point_settings(routing="zipf")
    simulated = build_points(["olmoe"], [1], [[128]], backend="vllm",
                             settings=vb.point_settings(routing="uniform_random"))[0]
    assert "routing=uniform_random" in simulated.point_id
    monkeypatch.delenv("VLLM_MOE_ROUTING_SIMULATION_STRATEGY", raising=False)
    assert vb.apply_routing(simulated) == "uniform_random"
    assert os.environ["VLLM_MOE_ROUTING_SIMULATION_STRATEGY"] == "uniform_random"
    own = build_points(["olmoe"], [1], [[128]], backend="vllm", settings=vb.point_settings())[0]
    assert vb.apply_routing(own) == "model" and "VLLM_MOE_ROUTING_SIMULATION_STRATEGY" not in os.environ


def test_sampling_is_part_of_the_point_id_and_defaults_to_random():
    assert vb.point_settings()["sampling"] == "random"
    greedy = build_points(["olmoe"], [1], [[128]], backend="vllm",
                          settings=vb.point_settings(sampling="greedy"))[0]
    random_ = build_points(["olmoe"], [1], [[128]], backend="vllm", settings=vb.point_settings())[0]
    assert "sampling=greedy" in greedy.point_id and "sampling=random" in random_.point_id


def test_settings_are_part_of_point_ids():
    a = _points()[0]
    b = build_points(["mixtral"], [1], [[128]], backend="vllm", settings=vb.point_settings(tp=1))[0]
    assert a.point_id != b.point_id and "tp=2" in a.point_id and "quant=fp8" in a.point_id


def test_describe_reports_the_engine():
    d = vb.VLLMBackend().describe(_points()[0])
    assert d["model_type"] == "mixtral" and d["engine"]["tp"] == 2 and d["moe_backend"] == "triton"


def test_measure_without_vllm_raises_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        measure(model="olmoe", backend="vllm", batch="1", input_len="128", output_len=None, set_=None,
                layers=None, experts_impl="grouped_mm", full_run=None, out=tmp_path / "v.jsonl", budget_s=None,
                cuda_graphs=True, profile=True, tp=1, expert_parallel=False, quantization=None,
                moe_backend="triton", sampling="random", routing="model")
    assert str(err.value) == VLLM_MISSING == "vllm is not installed (pip install 'perfmodel[vllm]')"
    assert not (tmp_path / "v.jsonl").exists()


def test_module_entry_prints_one_line_and_exits_2(tmp_path, capsys):
    rc = main(["olmoe", "--backend", "vllm", "--out", str(tmp_path / "v.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == VLLM_MISSING


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["no-such-model", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["olmoe", "--batch", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["olmoe", "--full-run", "16by128", "--out", str(tmp_path / "x.jsonl")]) == 2


def test_capture_sizes_follow_vllms_default_list():
    assert vb.capture_sizes(1) == [1]
    assert vb.capture_sizes(16) == [1, 2, 4, 8, 16]
    assert vb.capture_sizes(20) == [1, 2, 4, 8, 16, 24]  # the next captured size holds B
    assert vb.capture_sizes(300)[-2:] == [288, 304]


def test_fused_moe_config_names_match_vllms_files():
    # names as shipped in vLLM 0.26's fused_moe/configs folder
    assert vb.fused_moe_config_name(8, 14336, "NVIDIA H200") == "E=8,N=14336,device_name=NVIDIA_H200.json"
    assert (vb.fused_moe_config_name(64, 1280, "NVIDIA H200 NVL", "fp8_w8a8")
            == "E=64,N=1280,device_name=NVIDIA_H200,dtype=fp8_w8a8.json")
    assert vb.fused_moe_config_name(60, 1408, "NVIDIA H100 80GB HBM3").endswith(
        "device_name=NVIDIA_H100_80GB_HBM3.json")


def test_engine_times_from_request_metrics():
    from types import SimpleNamespace as NS

    outs = [NS(metrics=NS(scheduled_ts=10.0, first_token_ts=10.05, last_token_ts=10.05 + 0.01 * 99)),
            NS(metrics=NS(scheduled_ts=10.0, first_token_ts=10.07, last_token_ts=10.07 + 0.012 * 99))]
    t = vb.engine_times(outs, 100)
    assert t["engine_itl_ms"] == pytest.approx(11.0)
    assert t["engine_ttft_ms"] == pytest.approx(60.0)
    assert vb.engine_times([NS(metrics=None)], 100) == {"engine_itl_ms": None, "engine_ttft_ms": None}


def test_admission_is_the_spread_of_the_arrival_stamps():
    from types import SimpleNamespace as NS

    outs = [NS(metrics=NS(arrival_time=t)) for t in (100.004, 100.0, 100.002)]
    assert vb.admission_ms(outs) == pytest.approx(4.0)
    assert vb.admission_ms(outs[:1]) == 0.0
    assert vb.admission_ms([NS(metrics=None), *outs]) is None
    assert vb.admission_ms([]) is None


def test_unknown_routing_is_one_line(capsys):
    from perfmodel.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "olmoe", "--backend", "vllm", "--routing", "zipf"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["perfmodel: error: unknown --routing 'zipf' (model or uniform_random)"]


def test_engine_process_is_part_of_the_point_id_and_sets_vllms_variable(monkeypatch):
    import os

    assert "mp" not in vb.point_settings()  # as the environment says: ids as before
    own = build_points(["olmoe"], [1], [[128]], backend="vllm",
                       settings=vb.point_settings(engine_process=True))[0]
    assert "mp=1" in own.point_id
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as scripts/vllm_setup.sh exports it
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    inproc = build_points(["olmoe"], [1], [[128]], backend="vllm", settings=vb.point_settings())[0]
    assert vb.apply_engine_process(inproc) is False
    assert vb.apply_engine_process(own) is True
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"  # CUDA is initialised here already


def test_a_tile_folder_is_part_of_the_point_id_and_sets_vllms_variable(monkeypatch, tmp_path):
    import os

    assert "moe_cfg" not in vb.point_settings()  # vLLM's own tile files: ids as before
    own = build_points(["phi-3.5-moe"], [1], [[128]], backend="vllm", settings=vb.point_settings())[0]
    tiles = build_points(["phi-3.5-moe"], [1], [[128]], backend="vllm",
                         settings=vb.point_settings(moe_config_dir=str(tmp_path)))[0]
    assert f"moe_cfg={tmp_path.resolve()}" in tiles.point_id and "moe_cfg" not in own.point_id
    monkeypatch.setenv(vb.TILE_FOLDER_ENV, "/left/over")
    assert vb.apply_moe_configs(own) is None and vb.TILE_FOLDER_ENV not in os.environ
    assert vb.apply_moe_configs(tiles) == str(tmp_path.resolve()) == os.environ[vb.TILE_FOLDER_ENV]
    with pytest.raises(ValueError, match="not allowed"):
        vb.point_settings(moe_config_dir="/tmp/a|b")


def test_the_kv_cache_dtype_is_part_of_the_point_id_the_engine_arguments_and_the_workload(tmp_path):
    from perfmodel.measuring.compare import model_workload, row_kv_dtype

    assert "kv" not in vb.point_settings()  # the model's dtype: ids as before
    with pytest.raises(ValueError, match="unknown kv_cache_dtype"):
        vb.point_settings(kv_cache_dtype="int4")
    fp8 = build_points(["qwen3-30b-a3b"], [16], [[8192]], [64], backend="vllm",
                       settings=vb.point_settings(kv_cache_dtype="fp8"), experts_impl="vllm_fused_moe")[0]
    own = build_points(["qwen3-30b-a3b"], [16], [[8192]], [64], backend="vllm",
                       settings=vb.point_settings(), experts_impl="vllm_fused_moe")[0]
    assert "kv=fp8" in fp8.point_id and "kv=" not in own.point_id
    assert vb.engine_kwargs([fp8], tmp_path)["kv_cache_dtype"] == "fp8"
    assert "kv_cache_dtype" not in vb.engine_kwargs([own], tmp_path)  # vLLM's default, auto
    engine = vb.VLLMBackend()
    row = {"point_id": fp8.point_id, "batch": 16, "input_len": 8192, "output_len": 64, **engine.describe(fp8)}
    assert row["engine"]["kv_cache_dtype"] == "fp8"
    assert row_kv_dtype(row) == "fp8" and model_workload(row)["kv_dtype"] == "fp8"
    before = {"point_id": own.point_id, "batch": 16, "input_len": 8192, "output_len": 64,
              "engine": {"quantization": "none"}}  # a row measured before the setting existed
    assert row_kv_dtype(before) is None and "kv_dtype" not in model_workload(before)


@pytest.mark.parametrize("args, message", [
    (["--kv-cache-dtype", "fp8"], "--kv-cache-dtype applies to --backend vllm"),
    (["--backend", "vllm", "--kv-cache-dtype", "int4"],
     "unknown --kv-cache-dtype 'int4' (one of: auto, fp8, fp8_e4m3, fp8_e5m2)"),
    (["--engine-process"], "--engine-process applies to --backend vllm only"),
    (["--backend", "vllm", "--engine-process", "--profile"],
     "--profile sees only this process's kernels: give it without --engine-process"),
    (["--backend", "vllm", "--engine-process", "--serving"],
     "--serving always runs the engine core in a process of its own: drop --engine-process"),
    (["--backend", "vllm", "--passes", "2", "--serving"],
     "--passes must be >= 1, and applies to offline runs (not --serving)"),
    (["--passes", "0"], "--passes must be >= 1, and applies to offline runs (not --serving)"),
    (["--moe-config-dir", "."], "--moe-config-dir applies to offline --backend vllm runs only"),
    (["--backend", "vllm", "--moe-config-dir", ".", "--serving"],
     "--moe-config-dir applies to offline --backend vllm runs only"),
    (["--backend", "vllm", "--moe-config-dir", "no-such-folder"], "--moe-config-dir no-such-folder: no such folder"),
])
def test_engine_setting_refusals_are_one_line(args, message, capsys):
    from perfmodel.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "olmoe", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"perfmodel: error: {message}"]


def test_the_host_probe_times_a_fixed_python_loop():
    from perfmodel.host_speed import probe_ms as host_probe_ms

    small, large = host_probe_ms(loops=20_000), host_probe_ms(loops=200_000)
    assert 0 < small < large  # ten times the loop takes longer


def test_measure_records_the_engine_ttft_of_its_timed_runs(monkeypatch):
    """A row holds the wall clock's TTFT of its O = 1 runs and, beside it, the engine's own
    first-token time in those runs (``ttft_engine_ms``) and in the full runs (``engine_ttft_ms``):
    a stand-in engine whose front end stalls the O = 1 runs only shows the two apart."""
    import types
    from types import SimpleNamespace as NS

    from perfmodel.measuring.points import SweepPoint

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: NS(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vb, "probe_ms", lambda: 35.0)
    clock = {"t": 0.0}
    monkeypatch.setattr(vb, "time", NS(perf_counter=lambda: clock["t"]))  # the backend's clock only

    class Engine:
        def generate(self, prompts, params, use_tqdm=False):
            n = params.max_tokens
            clock["t"] += (0.050 if n == 1 else 0.0) + 0.020 + 0.005 * (n - 1)  # O = 1: a 50 ms stall
            return [NS(outputs=[NS(token_ids=[1] * n)],
                       metrics=NS(arrival_time=100.0, scheduled_ts=10.0, first_token_ts=10.02,
                                  last_token_ts=10.02 + 0.005 * (n - 1))) for _ in prompts]

    handle = {"llm": Engine(), "vocab": 1000, "kwargs": {}, "settings": {}, "moe_backend_applied": True}
    point = SweepPoint(model="olmoe-1b-7b", batch=2, input_len=8, output_len=5, backend="vllm")
    row = vb.VLLMBackend(reps=3).measure(handle, point)
    assert row["ttft_ms"] == pytest.approx(70.0) and row["ttft_reps"] == 3
    assert row["ttft_engine_ms"] == pytest.approx(20.0) and row["engine_ttft_ms"] == pytest.approx(20.0)
    assert row["engine_itl_ms"] == pytest.approx(5.0) and row["host_probe_ms"] == [35.0, 35.0]


def test_request_timeline_orders_requests_by_first_token_and_finds_waves():
    from types import SimpleNamespace as NS

    def req(scheduled, first, last):
        return NS(metrics=NS(scheduled_ts=scheduled, first_token_ts=first, last_token_ts=last))

    # two requests at once, a third scheduled after both finished: a second wave
    outs = [req(50.0, 50.2, 60.0), req(60.1, 60.3, 70.0), req(50.0, 50.1, 59.0)]
    timeline = vb.request_timeline(outs)
    assert timeline == [[0.0, 0.1, 9.0], [0.0, 0.2, 10.0], [10.1, 10.3, 20.0]]
    assert vb.in_waves(timeline)
    assert not vb.in_waves(timeline[:2])
    assert vb.request_timeline([req(1.0, 0.0, 2.0)]) is None  # a missing stamp
    assert vb.request_timeline([]) is None


def test_preemptions_are_read_from_the_engine_counter():
    from types import SimpleNamespace as NS

    llm = NS(get_metrics=lambda: [NS(name="vllm:num_preemptions_total", value=7),
                                  NS(name="vllm:num_requests_running", value=3)])
    assert vb.engine_counters(llm, vb.PREEMPTION_COUNTER) == {"preemptions": 7}
    broken = NS(get_metrics=lambda: (_ for _ in ()).throw(RuntimeError("no stats")))
    assert vb.engine_counters(broken, vb.PREEMPTION_COUNTER) == {"preemptions": 0}
