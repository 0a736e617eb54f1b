"""A launched prefill's host floor, layer by layer: a dense layer's launch (``latency.dense_layer_s``)
beside an MoE layer's (``eager_layer_s``), which the dense models measured on the H100 tell apart."""

from __future__ import annotations

import pytest
import yaml

from perfmodel import predict
from perfmodel.paths import PROFILES_DIR
from perfmodel.profile import load_profile
from perfmodel.specs.model import load_model


def _profile(tmp_path, name: str, edit) -> str:
    data = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_dense_layer_launches_at_its_own_host_time_and_an_moe_layer_at_eager_layer_s(tmp_path):
    """The launch floor of a prefill: (N − N_dense)·eager_layer_s + N_dense·dense_layer_s + eager_step_s
    + B·eager_seq_s, and what it runs uncompiled (``prefill_uncompiled_s``: DeepSeek-V2-Lite's shared
    experts). DeepSeek-V2-Lite has 1 dense layer of 27; Llama-3.1-8B is dense throughout. A
    profile that states no dense_layer_s (transformers', which launches every layer op by op)
    costs a dense layer at eager_layer_s."""
    latency = load_profile("vllm", "h200-sxm").latency
    assert latency.dense_layer_s == latency.piecewise_layer_s < latency.eager_layer_s

    def floor(model: str, engine: str = "vllm") -> float:
        m = predict(model, engine=engine, phase="prefill", gpu="h200-sxm", batch=1, input_len=2048,
                    graph_tokens=0).metrics
        return m["prefill_launch_s"] - m["prefill_uncompiled_s"]

    for model in ("deepseek-v2-lite", "llama-3.1-8b"):
        spec = load_model(model)
        moe_layers, dense_layers = spec.n_layers - spec.n_dense_layers, spec.n_dense_layers
        want = (moe_layers * latency.eager_layer_s + dense_layers * latency.dense_layer_s + latency.eager_step_s
                + latency.eager_seq_s)
        assert floor(model) == pytest.approx(want, rel=1e-9), model
    unstated = _profile(tmp_path, "unstated", lambda data: data["latency"].pop("dense_layer_s"))
    llama = load_model("llama-3.1-8b")
    assert floor("llama-3.1-8b", unstated) == pytest.approx(
        llama.n_layers * latency.eager_layer_s + latency.eager_step_s + latency.eager_seq_s, rel=1e-9)
    assert load_profile("hf", "h200-sxm").latency.dense_layer_s is None
