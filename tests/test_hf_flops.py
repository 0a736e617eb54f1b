"""Forward-pass matmul FLOPs against transformers' eager implementations, on tiny configs.

What is compared
----------------
transformers' side: ``torch.utils.flop_counter.FlopCounterMode`` around one forward pass of
a randomly initialized float32 model on CPU, built with ``attn_implementation="eager"`` and
``experts_implementation="eager"``. FlopCounterMode counts 2 FLOPs per multiply-add of the
matmul family (mm, addmm, bmm, baddbmm, and the matmuls ``F.linear`` and ``@`` lower to), per
module; elementwise work (norms, activations, softmax, RoPE rotations, bias adds of
``x @ W + b``, routing top-k) is not counted.

- prefill: ``model(ids, logits_to_keep=1, use_cache=False)`` on B×S tokens. The eager
  attention computes the full S×S score matrix and masks it, so our side uses
  ``prefill_substitutions(causal=False)`` (S² query-key pairs on every layer, windowed or not).
  ``logits_to_keep=1``: lm_head runs on the last position only, as our ``lm_head`` op says.
- decode: after a prefill of S tokens into the model's own DynamicCache, one new token per
  sequence: every full-attention layer attends L = S + 1 keys. A sliding-window (or Llama 4
  chunked) layer's DynamicSlidingWindowLayer keeps the last W − 1 tokens and attends them
  plus the new one, min(L, W) keys, which is what ``decode_substitutions()`` says. The
  windowed variants of ``hf_tiny.CASES`` (W = 3 < L) check that, and which layers slide.

Our side: ``build_graph(...).total("flops")``, i.e. QKV/O projections (MLA: q or q_a/q_b,
kv_a, kv_b, o), QKᵀ and PV, router logits, the routed experts (2·T·k·3·H·I: eager experts
run only the rows routed to each expert, whichever experts those are), shared experts and the
Qwen2-MoE shared-expert gate, dense MLPs, lm_head of the last token.

Known differences, asserted exactly
-----------------------------------
- Rotary tables: transformers' rotary embedding builds its angles as a matmul of the
  inverse frequencies (d_rot/2) by the position ids (1×S_new), 2·(d_rot/2)·S_new = d_rot·S_new
  FLOPs once per forward pass (module ``*.rotary_emb``). Not a model matmul; subtracted.
- Llama 4: ``Llama4TextMoe`` sends every token through every expert (the router scores of
  unselected experts are zero, not skipped), so its expert GEMMs cost E/k times the routed
  work we count: an extra 2·T·(E − k)·3·H·I per MoE layer. (Engines run only routed rows.)
- MLA (DeepSeek-V2/V3): transformers 5.x caches the compressed latent (kv_lora_rank +
  qk_rope_head_dim per token, one head) and re-expands it through kv_b_proj for every cached
  token at every step. That is our ``GraphOptions(mla_cache="latent",
  mla_absorb_decode=False)``, which matches exactly; the "expanded" cache option (per-head
  K/V stored, only new tokens expanded) is cheaper by exactly that re-expansion:
  2·B·(L − 1)·r_kv·n_h·(d_nope + d_v) per layer in a decode step.
"""

from __future__ import annotations

from functools import cache

import pytest
import sympy as sp
import torch
from torch.utils.flop_counter import FlopCounterMode

from perfmodel.graph import GraphOptions, build_graph
from perfmodel.phases import decode_substitutions, prefill_substitutions
from perfmodel.specs.model import ModelSpec, model_from_config

try:
    from tests import hf_tiny
except ImportError:  # tests/ on sys.path (pytest's default rootdir-less import mode)
    import hf_tiny

B, S = hf_tiny.B, hf_tiny.S
L = S + 1
HF_MLA = GraphOptions(mla_cache="latent", mla_absorb_decode=False)

CASES = hf_tiny.CASES
MOE_CASES = [c for c, cfg in CASES.items() if model_from_config(cfg).is_moe]


def _by_module(counter: FlopCounterMode) -> dict[str, int]:
    return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}


@cache
def hf_flops(case: str) -> tuple[dict[str, int], dict[str, int]]:
    """FLOPs per module of (a prefill of B×S tokens, a decode step after it)."""
    cfg = CASES[case]
    model = hf_tiny.build(cfg)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab_size"], (B, S), generator=gen)
    new = torch.randint(0, cfg["vocab_size"], (B, 1), generator=gen)
    with torch.no_grad(), hf_tiny.quiet():
        with FlopCounterMode(display=False) as prefill:
            model(ids, logits_to_keep=1, use_cache=False)
        cache_ = model(ids, logits_to_keep=1, use_cache=True).past_key_values
        assert cache_.get_seq_length() == S
        with FlopCounterMode(display=False) as decode:
            model(new, past_key_values=cache_, logits_to_keep=1, use_cache=True)
    return _by_module(prefill), _by_module(decode)


def _modules(flops: dict[str, int], suffix: str) -> int:
    return sum(v for name, v in flops.items() if name.endswith(suffix))


def _ours(model: ModelSpec, decode: bool, options: GraphOptions = HF_MLA,
          causal: bool = False, ops: tuple[str, ...] | None = None) -> sp.Expr:
    graph = build_graph(model, decode=decode, options=options)
    phase = decode_substitutions() if decode else prefill_substitutions(causal=causal)
    expr = sp.Add(*[count * op.flops for count, op in graph.all_ops()
                    if ops is None or op.name in ops])
    return hf_tiny.evaluate(expr.subs(phase), hf_tiny.values(model, B=B, S=S, L=L))


def _rotary_dim(model: ModelSpec) -> int:
    a = model.attention
    return a.qk_rope_head_dim if a.kind == "mla" else a.head_dim


def _llama4_dense_expert_extra(model: ModelSpec, tokens: int) -> int:
    """Expert FLOPs Llama4TextMoe spends on the E − k experts a token was not routed to."""
    if model.model_type != "llama4_text":
        return 0
    m = model.moe
    return model.n_moe_layers * 2 * tokens * (m.n_experts - m.top_k) * 3 * model.hidden * m.expert_intermediate


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_flops_match_transformers(case: str) -> None:
    model = model_from_config(CASES[case])
    flops, _ = hf_flops(case)
    rotary = _modules(flops, "rotary_emb")
    assert rotary == _rotary_dim(model) * S
    assert _modules(flops, "lm_head") == 2 * B * model.hidden * model.vocab
    extra = _llama4_dense_expert_extra(model, B * S)
    assert flops["Global"] - rotary - extra == _ours(model, decode=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_flops_match_transformers(case: str) -> None:
    model = model_from_config(CASES[case])
    _, flops = hf_flops(case)
    rotary = _modules(flops, "rotary_emb")
    assert rotary == _rotary_dim(model) * 1
    assert _modules(flops, "lm_head") == 2 * B * model.hidden * model.vocab
    extra = _llama4_dense_expert_extra(model, B)
    assert flops["Global"] - rotary - extra == _ours(model, decode=True)


@pytest.mark.parametrize("case", sorted(MOE_CASES))
@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
def test_routed_expert_flops_are_2_T_k_3HI(case: str, decode: bool) -> None:
    """The routed experts alone: HF's ``*.experts`` modules against our ``moe.experts`` op."""
    model = model_from_config(CASES[case])
    flops = hf_flops(case)[decode]
    ours = _ours(model, decode=decode, ops=("moe.experts",))
    m = model.moe
    tokens = B if decode else B * S
    assert ours == model.n_moe_layers * 2 * tokens * m.top_k * 3 * model.hidden * m.expert_intermediate
    hf = _modules(flops, ".experts")
    if model.model_type == "llama4_text":  # every token through every expert
        assert hf * m.top_k == ours * m.n_experts
    else:
        assert hf == ours


def test_expert_flops_do_not_depend_on_which_experts_are_hit() -> None:
    """Eager experts run only routed rows: tokens spread over all experts (random router) and
    all tokens on the same k experts (zero router, equal logits) cost the same expert FLOPs."""
    cfg = CASES["mixtral"]
    ids = torch.randint(0, cfg["vocab_size"], (B, S), generator=torch.Generator().manual_seed(1))
    hits, expert_flops = [], []
    for skewed in (False, True):
        model = hf_tiny.build(cfg)
        if skewed:
            for layer in model.model.layers:
                torch.nn.init.zeros_(layer.mlp.gate.weight)
        hit: set[int] = set()
        hook = model.model.layers[0].mlp.gate.register_forward_hook(
            lambda mod, inp, out: hit.update(out[-1].flatten().tolist()))  # out: (logits, scores, indices)
        with torch.no_grad(), hf_tiny.quiet(), FlopCounterMode(display=False) as counter:
            model(ids, logits_to_keep=1, use_cache=False)
        hook.remove()
        hits.append(len(hit))
        expert_flops.append(_modules(_by_module(counter), ".experts"))
    k, n_experts = cfg["num_experts_per_tok"], cfg["num_local_experts"]
    assert hits == [n_experts, k]
    assert expert_flops[0] == expert_flops[1] == _ours(model_from_config(cfg), False,
                                                       ops=("moe.experts",))


@pytest.mark.parametrize("case", ["deepseek_v2", "deepseek_v3"])
def test_mla_expanded_cache_saves_exactly_the_reexpansion(case: str) -> None:
    model = model_from_config(CASES[case])
    a = model.attention
    reexpansion = model.n_layers * 2 * B * (L - 1) * a.kv_lora_rank * a.n_heads * (
        a.qk_nope_head_dim + a.v_head_dim)
    _, flops = hf_flops(case)
    hf = flops["Global"] - _modules(flops, "rotary_emb")
    expanded = GraphOptions(mla_cache="expanded", mla_absorb_decode=False)
    assert hf - _ours(model, decode=True, options=expanded) == reexpansion
    # Prefill is the same either way: the latent of the S new tokens is expanded once.
    assert _ours(model, decode=False, options=expanded) == _ours(model, decode=False)


@pytest.mark.parametrize("case", ["llama", "gpt_oss", "deepseek_v3"])
def test_causal_prefill_counts_only_the_unmasked_pairs(case: str) -> None:
    """HF's eager prefill scores S² pairs; the causal count keeps S(S+1)/2 of them."""
    model = model_from_config(CASES[case])
    a = model.attention
    qk, v = (a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim) if a.kind == "mla" else (
        a.head_dim, a.head_dim)
    masked = S * S - S * (S + 1) // 2
    per_pair = 2 * a.n_heads * (qk + v)
    expected = model.n_layers * B * masked * per_pair
    assert _ours(model, False) - _ours(model, False, causal=True) == expected
