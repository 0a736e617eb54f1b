"""The routed experts' activation quantization, launched from Python inside vLLM's fused-MoE op:
a W8A8 scheme's host time per layer in a launched prefill (``quantization.<scheme>.host_layer_s``)."""

from __future__ import annotations

import pytest
import sympy as sp

from perfmodel import predict
from perfmodel.graph import GraphOptions, build_graph
from perfmodel.profile import load_profile
from perfmodel.specs.model import load_model
from perfmodel.symbols import t_moe_host

LAYERS = 16  # OLMoE-1B-7B: every layer an MoE layer


def _launch_hosts(options: GraphOptions) -> dict[str, sp.Expr]:
    graph = build_graph(load_model("olmoe-1b-7b"), decode=False, options=options)
    return {op.name: sp.sympify(op.launch_host) for _, op in graph.all_ops()}


def test_only_the_routed_experts_input_quantization_is_launched_from_python():
    hosts = _launch_hosts(GraphOptions(quantized=True, quantized_activations=True))
    assert hosts["moe.experts.act_quant"] == t_moe_host
    assert all(v == 0 for name, v in hosts.items() if name != "moe.experts.act_quant")
    weight_only = _launch_hosts(GraphOptions(quantized=True, quantized_activations=False))
    assert all(v == 0 for v in weight_only.values())  # no input quantized: nothing launched from Python


def _launched(profile: str, quant: str, input_len: int = 128) -> dict[str, float]:
    return predict("olmoe-1b-7b", engine=profile, batch=1, input_len=input_len, output_len=16, quant=quant).metrics


def test_a_launched_fp8_prefill_pays_the_host_time_per_moe_layer(launch_profiles):
    """host_layer_s per MoE layer joins the launch floor of an fp8 prefill the host launches; a
    prefill replayed from a captured graph pays none of it, nor does bf16."""
    host = 2e-4
    plain, paid_profile = launch_profiles({"fp8": {"host_layer_s": host}})
    base, paid = _launched(plain, "fp8"), _launched(paid_profile, "fp8")
    assert paid["prefill_launch_s"] - base["prefill_launch_s"] == pytest.approx(LAYERS * host, rel=1e-9)
    assert _launched(paid_profile, "fp8", input_len=32)["prefill_launch_s"] == 0  # fits the 64-token graph
    assert _launched(paid_profile, "none")["prefill_launch_s"] == pytest.approx(
        _launched(plain, "none")["prefill_launch_s"], rel=1e-12)


def test_the_host_time_is_fitted_on_the_training_models_launched_prefills():
    """The H200's fp8 and fp8-block host times come from the training models' launch-bound
    prefills at the scheme (Mixtral-8x7B's, and OLMoE-1B-7B's and Qwen1.5-MoE-A2.7B's in
    fp8-block); every other model's such rows are held out, their errors recorded."""
    from perfmodel.calibration.fit import TRAIN_MODELS

    profile = load_profile("vllm", "h200-sxm")
    for scheme in ("fp8", "fp8-block"):
        record = profile.fit["quantization_host"][scheme]
        assert profile.quant_efficiency(scheme).host_layer_s > 0
        assert record["points"] and all(p.split("|")[1] in TRAIN_MODELS for p in record["points"])
        assert all(f"quant={scheme}|" in p for p in record["points"])
        held = (record.get("held_out") or {}).get("errors_pct", {})
        assert all(p.split("|")[1] not in TRAIN_MODELS for p in held)
    assert "host_layer_s" not in profile.quantization["w4a16"].model_fields_set  # weight-only: none fitted


def test_an_anchored_fit_takes_the_host_time_of_its_anchor():
    """The H100's fit takes its host times from the H200's: fp8's host_layer_s among them."""
    h100, h200 = load_profile("vllm", "h100-sxm"), load_profile("vllm", "h200-sxm")
    assert h100.quant_efficiency("fp8").host_layer_s == h200.quant_efficiency("fp8").host_layer_s
