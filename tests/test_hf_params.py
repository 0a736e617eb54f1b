"""Parameter counts against Hugging Face transformers, for every zoo model.

Our side: ``parameter_count(build_graph(model, decode=False))`` with the model's symbol values,
the sum of each op's ``params`` over the layer groups, the embedding and the head.

Transformers' side: the same config dict built into the ``*ForCausalLM`` class on the ``meta``
device (no memory, no initialization) and ``sum(p.numel() for p in model.parameters())``:
parameters only (rotary tables and other buffers excluded), each tied weight once.

The two must agree exactly: every weight matrix, bias, norm scale, router, shared-expert gate,
attention sink and QK-norm weight of the architecture is in the formulas, and nothing else.
"""

from __future__ import annotations

import time

import pytest

from perfmodel.graph import build_graph, model_values
from perfmodel.memory import parameter_count
from perfmodel.specs.model import load_model, model_from_config
from perfmodel.specs.zoo import load_hf_config, zoo_names

try:
    from tests import hf_tiny
except ImportError:  # tests/ on sys.path (pytest's default rootdir-less import mode)
    import hf_tiny

#: Overridden variants that reach the branches the published configs do not: dense layers
#: between MoE layers, biases, tied embeddings, changed expert counts and widths.
VARIANTS: list[tuple[str, dict]] = [
    ("mixtral-8x7b", {"num_experts": 16, "top_k": 4, "ffn": 1792}),
    ("mixtral-8x7b", {"tie_word_embeddings": True}),
    ("deepseek-v2-lite", {"num_layers": 4}),
    ("deepseek-v2-lite", {"num_layers": 3, "attention_bias": True}),
    ("deepseek-v3", {"num_layers": 5, "first_k_dense": 2, "num_experts": 32}),
    ("deepseek-v3", {"num_layers": 4, "attention_bias": True}),
    ("qwen1.5-moe-a2.7b", {"decoder_sparse_step": 2, "num_layers": 5}),
    ("qwen2-57b-a14b", {"num_layers": 4, "mlp_only_layers": [0, 3], "qkv_bias": False}),
    ("qwen3-30b-a3b", {"num_layers": 6, "mlp_only_layers": [1], "tie_word_embeddings": True}),
    ("llama-4-scout-17b-16e", {"num_layers": 4, "interleave_moe_layer_step": 2}),
    ("llama-4-scout-17b-16e", {"num_layers": 3, "use_qk_norm": False, "attention_bias": True}),
    ("gpt-oss-20b", {"num_layers": 3, "num_experts": 8}),
    ("olmoe-1b-7b", {"num_kv_heads": 4, "num_layers": 3}),
    ("phi-3.5-moe", {"lm_head_bias": False, "num_layers": 2}),
    ("llama-3.1-8b", {"num_layers": 2, "mlp_bias": True, "attention_bias": True}),
]


def _ours(model) -> int:
    total = parameter_count(build_graph(model, decode=False)).subs(model_values(model))
    assert total.is_Integer, total
    return int(total)


def _hf(cfg: dict) -> tuple[int, float]:
    start = time.perf_counter()
    model = hf_tiny.build(cfg, device="meta")
    n = sum(p.numel() for p in model.parameters())
    return n, time.perf_counter() - start


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_parameter_count_matches_transformers(name: str) -> None:
    hf, seconds = _hf(load_hf_config(name))
    assert seconds < 10, f"building {name} on the meta device took {seconds:.1f} s"
    assert _ours(load_model(name)) == hf


@pytest.mark.parametrize(("name", "overrides"), VARIANTS,
                         ids=[f"{n}-{'-'.join(map(str, o))}" for n, o in VARIANTS])
def test_overridden_parameter_count_matches_transformers(name: str, overrides: dict) -> None:
    cfg = load_hf_config(name, overrides)
    hf, _ = _hf(cfg)
    assert _ours(load_model(name, overrides)) == hf


@pytest.mark.parametrize("family", sorted(hf_tiny.TINY))
def test_tiny_parameter_count_matches_transformers(family: str) -> None:
    """The tiny configs of the FLOP and cache tests are the architectures we think they are."""
    cfg = hf_tiny.tiny(family)
    hf, _ = _hf(cfg)
    assert _ours(model_from_config(cfg)) == hf


def test_llama4_dense_layers_use_intermediate_size_mlp() -> None:
    """Interleaved dense layers of Llama 4 have their own width; the count sees it."""
    base = {"num_layers": 4, "interleave_moe_layer_step": 2}
    narrow = load_model("llama-4-scout-17b-16e", {**base, "intermediate_size_mlp": 1024})
    wide = load_model("llama-4-scout-17b-16e", {**base, "intermediate_size_mlp": 2048})
    # 2 dense layers × 3 matrices × H × (2048 − 1024)
    assert _ours(wide) - _ours(narrow) == 2 * 3 * 5120 * 1024
