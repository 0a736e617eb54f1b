"""Benchmark shapes derived from the model zoo (and the seed study's sweep grid).

All sizes are element counts; GEMMs are ``y[M, N] = x[M, K] @ W[N, K]^T`` as ``nn.Linear`` runs
them. Shapes are read from ``specs/models/*.yaml`` through :func:`perfmodel.specs.zoo.load_hf_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perfmodel.specs.zoo import load_hf_config

#: The zoo models the seed study measured (the benchmark's default set).
BENCH_MODELS = (
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "olmoe-1b-7b",
    "deepseek-v2-lite",
    "phi-3.5-moe",
    "qwen1.5-moe-a2.7b",
)

#: GEMM row counts M (tokens), in measuring priority: a coarse sweep first, then the fill-in.
GEMM_M = (1, 16, 64, 256, 1024, 4096, 16384, 2, 4, 8, 32, 128, 512, 2048, 8192)

#: lm_head runs on B rows only (``logits_to_keep=1``): its M is capped.
LM_HEAD_MAX_M = 256

#: The seed study's Mixtral-skeleton sweep: H = 4096, expert FFN widths, expert counts, top-k.
SEED_H = 4096
SEED_FFN = (1792, 3584, 7168, 14336)
SEED_E = (8, 16, 32, 64)
SEED_TOPK = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters a benchmark needs from one model config."""

    name: str
    model_type: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    moe_ffn: int
    dense_ffn: int | None  # dense-MLP layers (DeepSeek layer 0); None when every layer is MoE
    shared_ffn: int | None  # total shared-expert width
    vocab: int
    mla: dict[str, int] | None


def model_shape(name: str) -> ModelShape:
    cfg = load_hf_config(name)
    mt = cfg["model_type"]
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0)
    if mt in ("mixtral", "phimoe", "olmoe", "gpt_oss", "llama4_text"):
        moe_ffn = int(cfg["intermediate_size"])
    else:
        moe_ffn = int(cfg["moe_intermediate_size"])
    dense = int(cfg["intermediate_size"]) if mt.startswith("deepseek") and cfg.get("first_k_dense_replace") else None
    shared = None
    if cfg.get("n_shared_experts"):
        shared = int(cfg["n_shared_experts"]) * moe_ffn
    elif cfg.get("shared_expert_intermediate_size"):
        shared = int(cfg["shared_expert_intermediate_size"])
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = {k: int(cfg[k]) for k in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")}
        mla["q_lora_rank"] = int(cfg.get("q_lora_rank") or 0)
    return ModelShape(name, mt, h, heads, kv, head_dim, experts, top_k, moe_ffn, dense, shared,
                      int(cfg["vocab_size"]), mla)


def gemm_shapes(models: tuple[str, ...] = BENCH_MODELS) -> list[dict[str, Any]]:
    """Deduplicated dense projections (N, K) of the models, each with the roles that use it.

    Roles: q, k/v, fused qkv (vLLM), o, MLA projections, dense and shared-expert MLP
    (gate, up, down; fused gate_up for vLLM), one expert's gate_up/down (per-expert loops),
    lm_head.
    """
    table: dict[tuple[int, int], set[str]] = {}

    def add(n: int, k: int, role: str) -> None:
        table.setdefault((n, k), set()).add(role)

    for name in models:
        m = model_shape(name)
        h = m.hidden
        if m.mla:
            qk = m.mla["qk_nope_head_dim"] + m.mla["qk_rope_head_dim"]
            add(m.heads * qk, h, f"{name}:q_proj")
            add(m.mla["kv_lora_rank"] + m.mla["qk_rope_head_dim"], h, f"{name}:kv_a_proj")
            add(m.heads * (m.mla["qk_nope_head_dim"] + m.mla["v_head_dim"]), m.mla["kv_lora_rank"], f"{name}:kv_b_proj")
            add(h, m.heads * m.mla["v_head_dim"], f"{name}:o_proj")
        else:
            add(m.heads * m.head_dim, h, f"{name}:q_proj")
            add(m.kv_heads * m.head_dim, h, f"{name}:k_proj/v_proj")
            add((m.heads + 2 * m.kv_heads) * m.head_dim, h, f"{name}:qkv_fused")
            add(h, m.heads * m.head_dim, f"{name}:o_proj")
        for label, width in (("dense_mlp", m.dense_ffn), ("shared_mlp", m.shared_ffn)):
            if width:
                add(width, h, f"{name}:{label}.gate/up")
                add(2 * width, h, f"{name}:{label}.gate_up_fused")
                add(h, width, f"{name}:{label}.down")
        add(2 * m.moe_ffn, h, f"{name}:expert.gate_up")
        add(h, m.moe_ffn, f"{name}:expert.down")
        add(m.vocab, h, f"{name}:lm_head")
    return [
        {"n": n, "k": k, "roles": ";".join(sorted(roles)), "lm_head": any(r.endswith("lm_head") for r in roles)
         and all(r.endswith("lm_head") for r in roles)}
        for (n, k), roles in sorted(table.items())
    ]


def expert_shapes(models: tuple[str, ...] = BENCH_MODELS) -> list[dict[str, Any]]:
    """Routed-expert shapes of the zoo: (E, H, I, top_k) with their model names."""
    out = []
    for name in models:
        m = model_shape(name)
        out.append({"source": name, "experts": m.experts, "hidden": m.hidden, "ffn": m.moe_ffn, "top_k": m.top_k})
    return out


def seed_expert_shapes() -> list[dict[str, Any]]:
    """The seed study's Mixtral-skeleton grid: H=4096, FFN x E (top-k varies per row)."""
    return [{"source": "seed_grid", "experts": e, "hidden": SEED_H, "ffn": f, "top_k": None}
            for f in SEED_FFN for e in SEED_E]


def attention_heads(models: tuple[str, ...] = BENCH_MODELS) -> list[dict[str, Any]]:
    """Distinct (heads, kv heads, head dim) of the GQA/MHA models (MLA is timed as a module)."""
    seen: dict[tuple[int, int, int], list[str]] = {}
    for name in models:
        m = model_shape(name)
        if m.mla:
            continue
        seen.setdefault((m.heads, m.kv_heads, m.head_dim), []).append(name)
    return [{"heads": h, "kv_heads": kv, "head_dim": d, "models": ";".join(ms)} for (h, kv, d), ms in seen.items()]
