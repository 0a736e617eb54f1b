"""Shared helpers for the tests that check the symbolic model against Hugging Face transformers.

- :func:`hf_config` turns one of our config dicts (what :func:`load_hf_config` returns) into the
  transformers configuration object, with the eager attention and eager experts
  implementations (the ones whose work FlopCounterMode sees as plain matmuls).
- :func:`build` builds a randomly initialized model from it (``meta`` device or CPU).
- :data:`TINY` holds tiny configs of every supported family, sized so a forward pass of a few
  tokens takes milliseconds. Widths are chosen pairwise different (n_h·d_h ≠ H, I ≠ H,
  V ≠ everything) so a formula that mixes up two sizes cannot pass by coincidence.
- :func:`values` is the full substitution for the symbolic model: architecture values, the
  workload, one GPU (tp = ep = pp = dp = 1), uniform routing (σ = 0) and bf16 bytes per element.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sympy as sp
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers import Llama4ForCausalLM, Llama4TextConfig

from perfmodel import symbols as s
from perfmodel.graph import model_values
from perfmodel.specs.model import ModelSpec

#: Batch and prompt length of the tiny forward passes.
B, S = 2, 5

_BASE: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=24, vocab_size=97, max_position_embeddings=256, tie_word_embeddings=False,
)

#: One tiny config per architecture family. MLA configs keep num_key_value_heads equal to the
#: head count (MLA expands keys and values per head) and head_dim equal to qk_rope_head_dim
#: (the rotary width transformers reads from head_dim).
TINY: dict[str, dict[str, Any]] = {
    "mixtral": dict(model_type="mixtral", intermediate_size=48, num_local_experts=4,
                    num_experts_per_tok=2),
    "qwen2_moe": dict(model_type="qwen2_moe", intermediate_size=80, moe_intermediate_size=40,
                      shared_expert_intermediate_size=56, num_experts=6, num_experts_per_tok=2),
    "qwen3_moe": dict(model_type="qwen3_moe", intermediate_size=80, moe_intermediate_size=40,
                      num_experts=6, num_experts_per_tok=2),
    # OLMoE's QK-norm weights are sized from hidden_size, so its heads must tile H exactly.
    "olmoe": dict(model_type="olmoe", intermediate_size=40, num_experts=6, num_experts_per_tok=2,
                  head_dim=16),
    "phimoe": dict(model_type="phimoe", intermediate_size=40, num_local_experts=4,
                   num_experts_per_tok=2, attention_bias=True, lm_head_bias=True),
    "gpt_oss": dict(model_type="gpt_oss", intermediate_size=40, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=64, attention_bias=True,
                    num_hidden_layers=3),
    "llama4_text": dict(model_type="llama4_text", intermediate_size=40, intermediate_size_mlp=72,
                        num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
                        attention_chunk_size=64),
    "llama": dict(model_type="llama", intermediate_size=72),
    "qwen3": dict(model_type="qwen3", intermediate_size=72),
    "deepseek_v2": dict(model_type="deepseek_v2", intermediate_size=72, moe_intermediate_size=24,
                        n_routed_experts=6, n_shared_experts=2, num_experts_per_tok=2,
                        first_k_dense_replace=1, num_hidden_layers=3, kv_lora_rank=20,
                        q_lora_rank=None, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
                        head_dim=8, num_key_value_heads=4, topk_method="greedy", n_group=1,
                        topk_group=1),
    "deepseek_v3": dict(model_type="deepseek_v3", intermediate_size=72, moe_intermediate_size=24,
                        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                        first_k_dense_replace=1, num_hidden_layers=3, kv_lora_rank=20,
                        q_lora_rank=28, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
                        head_dim=8, num_key_value_heads=4, n_group=2, topk_group=1),
}


def tiny(family: str, **overrides: Any) -> dict[str, Any]:
    """The tiny config dict of one family, with raw-field overrides."""
    return {**_BASE, **TINY[family], **overrides}


#: Every family's tiny config, plus windowed variants whose window (3) is below S, so the
#: windowed layers' caches and decode attention are capped by it.
CASES: dict[str, dict[str, Any]] = {family: tiny(family) for family in TINY}
CASES.update({
    "gpt_oss-window3": tiny("gpt_oss", sliding_window=3),  # layers 0 and 2 slide
    "mixtral-window3": tiny("mixtral", sliding_window=3),  # every layer slides
    # transformers 5.17: Qwen3-MoE slides every layer; Qwen2-MoE the even layers below
    # max_window_layers (here 0 and 2); Qwen3 the layers from max_window_layers on (1 and 2).
    "qwen3_moe-window3": tiny("qwen3_moe", use_sliding_window=True, sliding_window=3,
                              num_hidden_layers=3),
    "qwen2_moe-window3": tiny("qwen2_moe", use_sliding_window=True, sliding_window=3,
                              max_window_layers=3, num_hidden_layers=4),
    "qwen3-window3": tiny("qwen3", use_sliding_window=True, sliding_window=3,
                          max_window_layers=1, num_hidden_layers=3),
    # chunked layers 0-2 (RoPE layers), MoE layers 1 and 3, dense layers 0 and 2
    "llama4_text-chunk3-interleaved": tiny("llama4_text", attention_chunk_size=3,
                                           num_hidden_layers=4, interleave_moe_layer_step=2),
})


@contextmanager
def quiet() -> Iterator[None]:
    """One torch thread (the matmuls are tiny; threads only contend on a busy 2-core machine)
    and no transformers warnings (tiny configs trip its token-id checks); both restored after."""
    threads = torch.get_num_threads()
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    torch.set_num_threads(1)
    hf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logger.setLevel(level)
        torch.set_num_threads(threads)


def hf_config(cfg: dict[str, Any], *, eager: bool = True):
    """The transformers configuration object of a config dict."""
    impl = dict(attn_implementation="eager", experts_implementation="eager") if eager else {}
    with quiet():
        if cfg["model_type"] == "llama4_text":
            fields = {k: v for k, v in cfg.items() if k != "model_type"}
            return Llama4TextConfig(**fields, **impl)
        return AutoConfig.for_model(**cfg, **impl)


def build(cfg: dict[str, Any], *, device: str = "cpu", dtype: torch.dtype = torch.float32,
          seed: int = 0) -> torch.nn.Module:
    """A randomly initialized transformers causal LM of the config, in eval mode."""
    config = hf_config(cfg, eager=device != "meta")
    torch.manual_seed(seed)
    with quiet(), torch.device(device):
        if cfg["model_type"] == "llama4_text":
            model = Llama4ForCausalLM(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype) if device != "meta" else model
    if device != "meta":
        assert model.config._attn_implementation == "eager"
        assert model.config._experts_implementation == "eager"
    return model.eval()


def values(model: ModelSpec, **workload: int) -> dict[sp.Symbol, Any]:
    """Every symbol the FLOP, parameter and cache formulas use, for one GPU in bf16."""
    out: dict[sp.Symbol, Any] = dict(model_values(model))
    out.update({s.tp: 1, s.ep: 1, s.pp: 1, s.dp: 1, s.x_ep: 0, s.z_busy: 0, s.sigma: 0,
                s.b_w: 2, s.b_e: 2, s.b_a: 2, s.b_kv: 2})
    out.update({getattr(s, name): value for name, value in workload.items()})
    return out


def evaluate(expr: sp.Expr, subs: dict[sp.Symbol, Any]) -> sp.Expr:
    """``expr`` with the substitutions applied until no free symbols remain (exact, not floats)."""
    result = sp.sympify(expr)
    for _ in range(3):  # phase substitutions introduce B, S, L, W, which values() then fills
        result = result.subs(subs)
    assert not result.free_symbols, f"unsubstituted symbols: {result.free_symbols}"
    assert result.is_Rational, f"not an exact number: {result}"
    return result
