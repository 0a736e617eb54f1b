"""What the benchmark measures in each mode: ``full`` (H200, <= 8 min), ``quick`` (~1 min smoke
on a GPU), ``tiny`` (CPU tests: tiny shapes, no fp8 / grouped fp8 / CUDA graphs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perfmodel.calibration.bench_shapes import (
    BENCH_MODELS,
    GEMM_M,
    SEED_TOPK,
    attention_heads,
    expert_shapes,
    gemm_shapes,
    seed_expert_shapes,
)

#: Overrides that shrink a zoo model to a CPU-sized layer (hidden 64, 4 experts).
TINY_OVERRIDES = {
    "mixtral-8x7b": ["hidden_size=64", "num_heads=4", "num_kv_heads=2", "head_dim=16", "num_experts=4",
                     "top_k=2", "moe_intermediate_size=32", "vocab_size=128"],
    "deepseek-v2-lite": ["hidden_size=64", "num_heads=4", "num_kv_heads=4", "num_experts=4", "top_k=2",
                         "moe_intermediate_size=32", "vocab_size=128", "kv_lora_rank=32",
                         "qk_nope_head_dim=16", "qk_rope_head_dim=8", "v_head_dim=16", "head_dim=8",
                         "num_shared_experts=1"],
}


@dataclass
class Plan:
    mode: str
    gemm_m: tuple[int, ...]
    gemm_shapes: list[dict[str, Any]]
    lm_head_max_m: int
    fp8: bool
    grouped_shapes: list[dict[str, Any]]  # zoo experts: top_k fixed
    grouped_tokens: tuple[int, ...]
    grouped_routings: tuple[str, ...]
    seed_shapes: list[dict[str, Any]]
    seed_topk: tuple[int, ...]
    seed_tokens: tuple[int, ...]
    grouped_fp8_tokens: tuple[int, ...]
    max_routed_rows: int
    moe_models: list[tuple[str, list[str]]]  # (model, overrides) built with 1 layer
    moe_tokens: tuple[int, ...]
    moe_impls: tuple[str, ...]
    batched_mm_max_bytes: float
    attn_heads: list[dict[str, Any]]
    prefill_bs: tuple[tuple[int, int], ...]
    decode_b: tuple[int, ...]
    decode_alloc: tuple[int, ...]
    module_models: list[tuple[str, list[str]]]
    module_decode: tuple[tuple[int, int], ...]  # (B, allocated cache length)
    module_prefill: tuple[tuple[int, int], ...]  # (B, S)
    norm_tokens: tuple[int, ...]
    norm_hidden: tuple[int, ...]
    act_rows: tuple[int, ...]
    act_ffn: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    tiny_kernels: tuple[int, ...]
    target_ms: float = 20.0
    shares: dict[str, float] = field(default_factory=dict)


def make_plan(mode: str) -> Plan:
    """The measurement grid of a mode (``full``, ``quick`` or ``tiny``)."""
    shares = {"memory": 0.06, "gemm": 0.30, "grouped": 0.26, "attention": 0.14, "moe_block": 0.14,
              "grouped_fp8": 0.10}
    if mode == "full":
        return Plan(
            mode=mode, gemm_m=GEMM_M, gemm_shapes=gemm_shapes(), lm_head_max_m=256, fp8=True,
            grouped_shapes=expert_shapes(),
            grouped_tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
            grouped_routings=("uniform", "zipf"),
            seed_shapes=seed_expert_shapes(), seed_topk=SEED_TOPK, seed_tokens=(1, 16, 256, 4096, 16384),
            grouped_fp8_tokens=(1, 4, 16, 64, 256, 1024, 4096, 16384), max_routed_rows=131072,
            moe_models=[(m, []) for m in BENCH_MODELS], moe_tokens=(1, 4, 16, 64, 256, 1024, 4096, 16384),
            moe_impls=("grouped_mm", "batched_mm", "eager"), batched_mm_max_bytes=16e9,
            attn_heads=attention_heads(),
            prefill_bs=((1, 128), (1, 512), (1, 2048), (16, 128), (16, 512), (16, 2048), (64, 128),
                        (64, 512), (64, 2048)),
            decode_b=(1, 16, 32, 64), decode_alloc=(256, 1024, 2048, 4096),
            module_models=[(m, []) for m in BENCH_MODELS],
            module_decode=tuple((b, a) for b in (1, 16, 64) for a in (256, 1024, 4096)),
            module_prefill=((1, 512), (16, 512), (16, 2048)),
            norm_tokens=(1, 16, 64, 256, 1024, 4096, 16384, 65536), norm_hidden=(2048, 4096),
            act_rows=(1, 64, 1024, 16384, 131072), act_ffn=(768, 1408, 14336),
            copy_bytes=(2**20, 2**24, 2**28, 2**30, 2**31), tiny_kernels=(100, 1000),
            target_ms=20.0, shares=shares,
        )
    if mode == "quick":
        shapes = [s for s in gemm_shapes() if (s["n"], s["k"]) in {(4096, 4096), (28672, 4096), (1536, 2048), (151936, 2048)}]
        return Plan(
            mode=mode, gemm_m=(1, 64, 1024, 8192), gemm_shapes=shapes, lm_head_max_m=256, fp8=True,
            grouped_shapes=[s for s in expert_shapes() if s["source"] in ("mixtral-8x7b", "qwen3-30b-a3b")],
            grouped_tokens=(1, 64, 4096), grouped_routings=("uniform", "zipf"),
            seed_shapes=[s for s in seed_expert_shapes() if s["ffn"] == 1792 and s["experts"] in (8, 64)],
            seed_topk=(1, 8), seed_tokens=(16, 4096), grouped_fp8_tokens=(16, 4096), max_routed_rows=65536,
            moe_models=[("olmoe-1b-7b", []), ("mixtral-8x7b", [])], moe_tokens=(1, 256),
            moe_impls=("grouped_mm", "batched_mm", "eager"), batched_mm_max_bytes=8e9,
            attn_heads=attention_heads()[:2], prefill_bs=((1, 512), (16, 2048)), decode_b=(1, 64),
            decode_alloc=(1024, 4096), module_models=[("olmoe-1b-7b", []), ("deepseek-v2-lite", [])],
            module_decode=((16, 1024),), module_prefill=((1, 512),),
            norm_tokens=(1, 4096), norm_hidden=(4096,), act_rows=(64, 16384), act_ffn=(1408,),
            copy_bytes=(2**24, 2**30), tiny_kernels=(1000,), target_ms=10.0, shares=shares,
        )
    if mode == "tiny":
        return Plan(
            mode=mode, gemm_m=(1, 8), gemm_shapes=[{"n": 64, "k": 32, "roles": "tiny:a", "lm_head": False},
                                                  {"n": 96, "k": 64, "roles": "tiny:lm_head", "lm_head": True}],
            lm_head_max_m=4, fp8=False,
            grouped_shapes=[{"source": "tiny", "experts": 4, "hidden": 64, "ffn": 32, "top_k": 2}],
            grouped_tokens=(1, 8), grouped_routings=("uniform", "zipf"),
            seed_shapes=[{"source": "seed_grid", "experts": 8, "hidden": 64, "ffn": 16, "top_k": None}],
            seed_topk=(1, 2), seed_tokens=(4,), grouped_fp8_tokens=(), max_routed_rows=4096,
            moe_models=[(m, TINY_OVERRIDES[m]) for m in ("mixtral-8x7b", "deepseek-v2-lite")],
            moe_tokens=(1, 8), moe_impls=("grouped_mm", "batched_mm", "eager"), batched_mm_max_bytes=1e8,
            attn_heads=[{"heads": 4, "kv_heads": 2, "head_dim": 16, "models": "tiny"}],
            prefill_bs=((1, 8),), decode_b=(2,), decode_alloc=(16,),
            module_models=[(m, TINY_OVERRIDES[m]) for m in ("mixtral-8x7b", "deepseek-v2-lite")],
            module_decode=((2, 16),), module_prefill=((1, 8),),
            norm_tokens=(4,), norm_hidden=(64,), act_rows=(4,), act_ffn=(32,), copy_bytes=(2**16,),
            tiny_kernels=(10,), target_ms=1.0, shares=shares,
        )
    raise ValueError(f"unknown bench mode {mode!r}")
