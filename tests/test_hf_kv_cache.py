"""KV-cache bytes against the cache tensors transformers allocates, on tiny bf16 models.

Our side: ``kv_cache_bytes(graph, tokens)`` with B sequences and b_kv = 2 (bf16): per layer
group, the ops' ``kv_bytes_per_token`` times the tokens kept, min(tokens, W) on windowed
(sliding or chunked) layers.

transformers' side (5.17), for the model's own caches:

- ``DynamicCache``: full layers (``DynamicLayer``) hold every token. Windowed layers
  (``DynamicSlidingWindowLayer``, used for sliding *and* Llama 4 chunked layers) hold only the
  last W − 1 tokens between steps, the new token making W during a step. The held slice is a
  view: after the prefill it still pins the storage of the whole prefill's K/V (S tokens);
  after a decode step its storage is the W-token tensor of that step. So we check:
  * tensor bytes (numel × element size) = our formula with the window W − 1;
  * allocated bytes (the distinct storages) = our formula, exactly, after a decode step at
    L = S + 1 tokens; after the prefill, every layer's storage holds S tokens.
- ``StaticCache(max_cache_len=N)``: full layers allocate N tokens, windowed layers
  min(N, W): our formula at ``tokens=N``, exactly.
- MLA (DeepSeek-V2/V3): transformers 5.x caches the compressed latent, ``keys`` the
  normalized kv_lora_rank part and ``values`` the qk_rope_head_dim part, one head, not
  per-head expanded K/V (and no padding of V). That is our ``mla_cache="latent"``,
  r_kv + d_rope elements per token per layer; ``"expanded"`` would be n_h·(d_nope + d_rope + d_v).

Which layers are windowed, and the window, must agree too: the cache layer types transformers
derives from the config (``get_layer_types_and_kwargs``) against the spec's ``window`` and
``n_window_layers``.
"""

from __future__ import annotations

import pytest
import sympy as sp
import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from perfmodel import symbols as s
from perfmodel.graph import GraphOptions, build_graph
from perfmodel.memory import kv_cache_bytes
from perfmodel.specs.model import ModelSpec, model_from_config
from perfmodel.specs.zoo import load_hf_config

try:
    from tests import hf_tiny
except ImportError:  # tests/ on sys.path (pytest's default rootdir-less import mode)
    import hf_tiny

B, S = hf_tiny.B, hf_tiny.S
L = S + 1
N_STATIC = S + 3
HF_MLA = GraphOptions(mla_cache="latent", mla_absorb_decode=False)
CASES = hf_tiny.CASES
KV_CASES = sorted(c for c in CASES if c != "llama")  # llama: same cache as mixtral


def _ours(model: ModelSpec, tokens: int, window: sp.Expr = s.W,
          options: GraphOptions = HF_MLA) -> sp.Expr:
    expr = kv_cache_bytes(build_graph(model, decode=True, options=options), sp.Integer(tokens))
    return hf_tiny.evaluate(expr.subs(s.W, window), hf_tiny.values(model, B=B))


def _tensors(cache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _held(cache) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(cache))


def _allocated(cache) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors(cache)}
    return sum(storages.values())


def _prefill(case: str, cache=None):
    cfg = CASES[case]
    model = hf_tiny.build(cfg, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, cfg["vocab_size"], (B, S), generator=gen)
    with torch.no_grad(), hf_tiny.quiet():
        out = model(ids, past_key_values=cache, logits_to_keep=1, use_cache=True)
    return model, out.past_key_values, gen


@pytest.mark.parametrize("case", KV_CASES)
def test_dynamic_cache_bytes_match_transformers(case: str) -> None:
    model = model_from_config(CASES[case])
    hf_model, cache, gen = _prefill(case)
    assert isinstance(cache, DynamicCache)
    assert all(t.dtype == torch.bfloat16 for t in _tensors(cache))
    windowed = [layer for layer in cache.layers if isinstance(layer, DynamicSlidingWindowLayer)]
    assert len(windowed) == model.n_window_layers
    assert {layer.sliding_window for layer in windowed} <= {model.window}

    # after the prefill: W − 1 tokens held on windowed layers, S tokens of storage everywhere
    assert _held(cache) == _ours(model, S, window=s.W - 1)
    assert _allocated(cache) == _ours(model, S, window=S)

    new = torch.randint(0, CASES[case]["vocab_size"], (B, 1), generator=gen)
    with torch.no_grad(), hf_tiny.quiet():
        hf_model(new, past_key_values=cache, logits_to_keep=1, use_cache=True)
    assert cache.get_seq_length() == L
    assert _held(cache) == _ours(model, L, window=s.W - 1)
    assert _allocated(cache) == _ours(model, L)


@pytest.mark.parametrize("case", KV_CASES)
def test_static_cache_bytes_match_transformers(case: str) -> None:
    model = model_from_config(CASES[case])
    cache = StaticCache(config=hf_tiny.hf_config(CASES[case]), max_cache_len=N_STATIC)
    _, cache, _ = _prefill(case, cache)
    assert _held(cache) == _allocated(cache) == _ours(model, N_STATIC)


@pytest.mark.parametrize("case", ["deepseek_v2", "deepseek_v3"])
def test_mla_cache_holds_the_latent_not_expanded_heads(case: str) -> None:
    model = model_from_config(CASES[case])
    a = model.attention
    _, cache, _ = _prefill(case)
    for layer in cache.layers:
        assert tuple(layer.keys.shape) == (B, 1, S, a.kv_lora_rank)
        assert tuple(layer.values.shape) == (B, 1, S, a.qk_rope_head_dim)
    positions = model.n_layers * B * S * 2  # layers × sequences × tokens × bf16 bytes
    assert _held(cache) == _ours(model, S) == positions * (a.kv_lora_rank + a.qk_rope_head_dim)
    expanded = _ours(model, S, options=GraphOptions(mla_cache="expanded", mla_absorb_decode=False))
    head_dims = a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim
    assert expanded == positions * a.n_heads * head_dims != _held(cache)


def _raw(name: str, **fields) -> dict:
    """A zoo config with raw fields set (fields ``--set`` does not offer)."""
    return {**load_hf_config(name), **fields}


#: Configs whose windowed layers the spec must count as transformers does (no model built).
WINDOW_CONFIGS: dict[str, dict] = {
    **{case: CASES[case] for case in CASES},
    "mistral-7b": load_hf_config("mistral-7b"),
    "mistral-default-window": {k: v for k, v in load_hf_config("mistral-7b").items()
                               if k != "sliding_window"},
    "mistral-no-window": load_hf_config("mistral-7b", {"sliding_window": None}),
    "mixtral-8x7b": load_hf_config("mixtral-8x7b"),
    "phi-window": load_hf_config("phi-3.5-moe", {"sliding_window": 2047}),
    "gpt-oss-20b": load_hf_config("gpt-oss-20b"),
    "gpt-oss-layer-types": _raw("gpt-oss-20b", num_hidden_layers=4, layer_types=[
        "full_attention", "sliding_attention", "sliding_attention", "full_attention"]),
    "llama-4-scout": load_hf_config("llama-4-scout-17b-16e"),
    "llama-4-no-rope-layers": _raw("llama-4-scout-17b-16e", num_hidden_layers=5,
                                   no_rope_layers=[1, 0, 1, 1, 0]),
    "qwen3-30b-a3b": load_hf_config("qwen3-30b-a3b"),
    "qwen3-30b-a3b-sliding": _raw("qwen3-30b-a3b", use_sliding_window=True, sliding_window=4096,
                                  max_window_layers=40),
    "qwen1.5-moe-sliding": _raw("qwen1.5-moe-a2.7b", use_sliding_window=True,
                                sliding_window=4096, max_window_layers=9),
    "qwen2-7b-sliding-default-layers": _raw("qwen2-7b", num_hidden_layers=40,
                                            use_sliding_window=True, sliding_window=4096),
    "qwen3-8b-sliding": _raw("qwen3-8b", use_sliding_window=True, sliding_window=4096,
                             max_window_layers=30),
    "qwen3-8b-sliding-layer-types": _raw("qwen3-8b", num_hidden_layers=3, use_sliding_window=True,
                                         sliding_window=64, layer_types=[
                                             "sliding_attention", "full_attention",
                                             "sliding_attention"]),
}


@pytest.mark.parametrize("name", sorted(WINDOW_CONFIGS))
def test_windowed_layers_match_transformers_cache_layout(name: str) -> None:
    cfg = WINDOW_CONFIGS[name]
    model = model_from_config(cfg)
    types, kwargs = get_layer_types_and_kwargs(hf_tiny.hf_config(cfg))
    windowed = [t for t in types if t in ("sliding_attention", "chunked_attention")]
    assert len(types) == model.n_layers
    assert len(windowed) == model.n_window_layers
    if windowed:
        assert kwargs["sliding_window"] == model.window
