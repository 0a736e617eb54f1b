"""Config fields read as transformers reads them: which families take their attention biases
from ``attention_bias``, per-layer lists (``moe_layers``, ``mlp_only_layers``) counted by
layer, per-layer overrides kept when the layer count changes, and ``--set`` keys a family does
not read refused. Parameter counts are checked against the transformers model built on the
``meta`` device."""

from __future__ import annotations

import pytest

from perfmodel.errors import InputError
from perfmodel.graph import build_graph, model_values
from perfmodel.memory import parameter_count
from perfmodel.specs.model import load_model, model_from_config
from perfmodel.specs.zoo import apply_overrides

try:
    from tests import hf_tiny
except ImportError:  # tests/ on sys.path (pytest's default rootdir-less import mode)
    import hf_tiny


def _ours(cfg: dict) -> int:
    model = model_from_config(cfg)
    return int(parameter_count(build_graph(model, decode=False)).subs(model_values(model)))


def _hf(cfg: dict) -> int:
    return sum(p.numel() for p in hf_tiny.build(cfg, device="meta").parameters())


@pytest.mark.parametrize("family, fields", [
    ("mixtral", {"attention_bias": True}),  # Mixtral's projections have no biases, whatever the field
    ("gpt_oss", {"attention_bias": False}),  # gpt-oss takes them from the field
    ("gpt_oss", {"attention_bias": None}),  # ... which defaults to biases
    ("qwen2_moe", {"attention_bias": True, "qkv_bias": False}),
    ("llama4_text", {"num_hidden_layers": 4, "moe_layers": [0, 2]}),
    ("llama4_text", {"num_hidden_layers": 4, "moe_layers": []}),
    ("qwen3_moe", {"num_hidden_layers": 4, "mlp_only_layers": [3, 0]}),
])
def test_parameter_count_matches_transformers(family, fields):
    cfg = {k: v for k, v in hf_tiny.tiny(family, **fields).items() if v is not None}
    assert _ours(cfg) == _hf(cfg)


@pytest.mark.parametrize("order", ["layers-first", "list-first"])
def test_per_layer_override_survives_a_layer_count_override(order):
    items = [("num_layers", 4), ("mlp_only_layers", [1])]
    model = load_model("qwen3-30b-a3b", dict(items if order == "layers-first" else items[::-1]))
    assert (model.n_layers, model.n_dense_layers) == (4, 1)


def test_layer_count_override_drops_the_configs_own_per_layer_lists():
    cfg = {**hf_tiny.tiny("qwen3_moe"), "num_hidden_layers": 4, "mlp_only_layers": [0, 3]}
    assert "mlp_only_layers" not in apply_overrides(cfg, {"num_layers": 2})
    assert apply_overrides(cfg, {"num_layers": 2, "mlp_only_layers": [1]})["mlp_only_layers"] == [1]


@pytest.mark.parametrize("name, override", [
    ("mixtral-8x7b", {"num_shared_experts": 2}),
    ("olmoe-1b-7b", {"sliding_window": 256}),
    ("deepseek-v2-lite", {"head_dim": 64}),
    ("qwen3-30b-a3b", {"sliding_window": 512}),  # sliding is off in this config
])
def test_override_the_family_does_not_read_is_refused(name, override):
    with pytest.raises(InputError, match="does not use"):
        load_model(name, override)


def test_override_read_only_under_another_field_is_accepted_with_it():
    model = load_model("qwen3-30b-a3b", {"use_sliding_window": True, "sliding_window": 512})
    assert (model.window, model.n_window_layers) == (512, model.n_layers)
