"""Ops an engine runs uncompiled (vLLM's shared experts, inside its opaque fused-MoE op) cost a
launched prefill's host a time each; a CUDA-graph replay, prefill or decode, none."""

from __future__ import annotations

import pytest
import yaml

from perfmodel.graph import build_graph, model_values
from perfmodel.paths import PROFILES_DIR
from perfmodel.prediction import predict, uncompiled_ops
from perfmodel.profile import load_profile
from perfmodel.specs.model import load_model

NO_SHARED = ["shared_expert_intermediate_size=0"]


def _profile_without_term(tmp_path) -> str:
    """The committed vllm profile with ``uncompiled_op_s`` set to 0, as a file path."""
    data = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    data["latency"]["uncompiled_op_s"] = 0.0
    path = tmp_path / "h200-sxm-vllm.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("model, expected", [("qwen1.5-moe-a2.7b", 24), ("deepseek-v2-lite", 26),
                                             ("mixtral-8x7b", 0), ("olmoe-1b-7b", 0)])
def test_each_moe_layer_with_shared_experts_runs_one_op_uncompiled(model, expected):
    """One per MoE layer that has shared experts: DeepSeek-V2-Lite's first layer is dense, and
    its two shared experts are one FFN."""
    spec = load_model(model)
    graph = build_graph(spec, decode=False)
    assert float(uncompiled_ops(graph, {}).subs(model_values(spec))) == expected
    assert [op.name for _, op in graph.all_ops() if op.uncompiled] == (["moe.shared"] if expected else [])


def test_a_launched_prefill_pays_each_uncompiled_op_and_nothing_else_does(tmp_path):
    fitted = load_profile("vllm", "h200-sxm").latency.uncompiled_op_s
    assert fitted > 0  # fitted from Qwen1.5-MoE-A2.7B's launch-bound training rows
    without = _profile_without_term(tmp_path)

    def run(engine, phase, graph_tokens=None, overrides=None):
        return predict("qwen1.5-moe-a2.7b", gpu="h200", engine=engine, phase=phase, batch=1, input_len=1024,
                       graph_tokens=graph_tokens, overrides=overrides).metrics

    # launched (no graph holds 1,024 tokens): 24 MoE layers, each with its shared experts
    launched, launched_without = run("vllm", "prefill"), run(without, "prefill")
    assert launched["ttft_s"] - launched_without["ttft_s"] == pytest.approx(24 * fitted, rel=1e-6)
    # replayed from a captured graph, and a decode step: the term is no part of them
    assert run("vllm", "prefill", graph_tokens=1024)["ttft_s"] == pytest.approx(
        run(without, "prefill", graph_tokens=1024)["ttft_s"], rel=1e-12)
    assert run("vllm", "decode")["itl_s"] == pytest.approx(run(without, "decode")["itl_s"], rel=1e-12)
    # the model without its shared expert has no uncompiled op: the two profiles agree
    assert run("vllm", "prefill", overrides=NO_SHARED)["ttft_s"] == pytest.approx(
        run(without, "prefill", overrides=NO_SHARED)["ttft_s"], rel=1e-12)


def test_the_prediction_reports_the_launch_and_its_uncompiled_part():
    """``prefill_uncompiled_s`` is the part of the launch floor (``prefill_launch_s``) spent on
    the ops run uncompiled, and the terminal report prints both under TTFT."""
    from rich.console import Console

    from perfmodel.report_terminal import print_prediction

    fitted = load_profile("vllm", "h200-sxm").latency.uncompiled_op_s
    shared = predict("qwen1.5-moe-a2.7b", gpu="h200", phase="prefill", batch=1, input_len=1024)
    plain = predict("mixtral-8x7b", gpu="h200", phase="prefill", batch=1, input_len=1024)
    assert shared.metrics["prefill_uncompiled_s"] == pytest.approx(24 * fitted, rel=1e-6)
    assert 0 < shared.metrics["prefill_uncompiled_s"] < shared.metrics["prefill_launch_s"]
    assert plain.metrics["prefill_uncompiled_s"] == 0.0 and plain.metrics["prefill_launch_s"] > 0

    def printed(prediction) -> str:
        console = Console(width=200, record=True)
        print_prediction(prediction, console)
        return console.export_text()

    text = printed(shared)
    assert "the host's launch of the prefill, which sets it" in text
    assert "of it, what the engine launches from Python" in text
    assert "the ops the engine runs uncompiled" not in printed(plain)
    replayed = predict("qwen1.5-moe-a2.7b", gpu="h200", phase="prefill", batch=1, input_len=128)
    assert "the host's launch of the prefill" not in printed(replayed)  # a captured graph: no launch
