"""Benchmark shapes derived from the model zoo (and the seed study's sweep grid), and each
benchmarked call as the model's own ops.

All sizes are element counts; GEMMs are ``y[M, N] = x[M, K] @ W[N, K]^T`` as ``nn.Linear`` runs
them. Shapes are read from ``specs/models/*.yaml`` through :func:`perfmodel.specs.zoo.load_hf_config`.

Benchmark ops. A benchmarked call is built with the op constructors the model uses
(:mod:`perfmodel.ops`), in the model's symbols, with the benchmark's sizes substituted
(:class:`BenchCall`): its FLOPs and bytes are the model's counts, and the kernel fit
(:mod:`perfmodel.calibration.fit_kernels`) times it with :func:`perfmodel.roofline.op_time`.
A call's sizes are numbers for :data:`D_IN`, :data:`D_OUT`, :data:`EXPERTS_HIT` and the
model's symbols (T: GEMM rows or tokens; B, S, L, n_h, n_kv, d_h: attention), on one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Callable

import numpy as np
import sympy as sp

from perfmodel.errors import InputError
from perfmodel.ops import Op, OpClass
from perfmodel.ops.attention import gqa_ops, projection
from perfmodel.ops.elementwise import norm, residual_add, streaming
from perfmodel.ops.moe import activation, gemm
from perfmodel.phases import decode_substitutions, prefill_substitutions
from perfmodel.specs.families import family
from perfmodel.specs.zoo import load_hf_config
from perfmodel.symbols import H, I_d, T, b_a, b_e, b_kv, b_w, ep, tp

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
    """The shape of a zoo model with routed experts; its family's adapter
    (:mod:`perfmodel.specs.families`) says where the experts, dense and shared MLPs are."""
    cfg = load_hf_config(name)
    mt = cfg["model_type"]
    adapter = family(mt)
    moe = adapter.moe_shape(cfg)
    if moe is None:
        raise InputError(f"{name} has no routed experts to benchmark")
    layers = adapter.spec_fields(cfg)
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    experts, top_k, moe_ffn = moe.experts or 0, moe.top_k or 0, int(moe.expert_width or 0)
    dense = layers["dense_intermediate"] if layers["n_dense_layers"] else None
    n_shared = layers["moe"].get("n_shared", 0)
    shared = n_shared * layers["moe"]["shared_intermediate"] if n_shared else None
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


# --------------------------------------------------------------------------- benchmark ops

#: Input width K of a benchmarked GEMM (elements).
D_IN = sp.Symbol("d_in", positive=True)
#: Output width N of a benchmarked GEMM (elements).
D_OUT = sp.Symbol("d_out", positive=True)
#: Experts a grouped GEMM's routed rows touch (weight matrices read).
EXPERTS_HIT = sp.Symbol("D_hit", positive=True)

#: Kernels the benchmarked eager implementations launch per call.
#: MixtralRMSNorm: to(fp32), pow, mean, +eps, rsqrt, mul, to(bf16), mul weight.
ELEMENTWISE_KERNELS = {"rmsnorm": 8, "residual_add": 1, "silu_and_mul": 2, "copy": 1}

#: Bytes per element: torch dtype → the model's b_w/b_e (weights) and b_a/b_kv (activations
#: and the KV cache, bf16), as perfmodel counts a workload of that dtype.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


@dataclass(frozen=True, eq=False)
class BenchCall:
    """One kind of benchmarked call as model ops: ``ops`` run one after the other, under the
    phase substitutions ``subs`` (attention) on one GPU (tp = ep = 1)."""

    ops: tuple[Op, ...]
    subs: dict[sp.Symbol, sp.Expr] | None = None

    def substitutions(self, dtype: str = "bfloat16") -> dict[sp.Symbol, sp.Expr]:
        """``subs`` plus one GPU and the bytes per element of ``dtype`` (weights; activations
        and the KV cache stay bf16)."""
        size = DTYPE_BYTES[dtype]
        return {**(self.subs or {}), tp: 1, ep: 1, b_w: size, b_e: size, b_a: 2, b_kv: 2}


@cache
def gemm_call() -> BenchCall:
    """``F.linear(x[M, K], W[N, K])``: the model's dense projection, M = T rows, K → N."""
    return BenchCall((projection("gemm", D_IN, D_OUT, sharded=False),))


@cache
def grouped_gemm_call() -> BenchCall:
    """One ``grouped_mm`` of T routed rows, K → N, over the :data:`EXPERTS_HIT` experts
    touched: the model's expert GEMM (:func:`perfmodel.ops.moe.gemm`)."""
    return BenchCall((gemm("grouped_gemm", OpClass.GROUPED_GEMM, rows=T, d_in=D_IN, d_out=D_OUT,
                           matrices=EXPERTS_HIT, param_bytes=b_e),))


@dataclass(frozen=True)
class _KernelOnly:
    """The options of an attention block (the fields of an ``AttentionSpec`` that
    :func:`~perfmodel.ops.attention.gqa_ops` reads) that a bare SDPA call has none of. Not the
    spec itself: it needs pydantic, which the GPU image lacks."""

    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str = "none"
    sinks: bool = False


def _gqa_core_ops(expand_kv: bool) -> list[Op]:
    """The model's GQA attention ops after the projections, without the cache write: the
    attention kernel and (``expand_kv``) the key/value expansion before it."""
    spec = _KernelOnly()
    kernel = (OpClass.ATTENTION, OpClass.ATTENTION_MASKED, OpClass.COPY)
    return [op for op in gqa_ops(spec, windowed=False, norm_kind="rms", expand_kv=expand_kv,  # type: ignore[arg-type]
                                 cache_write=False) if op.op_class in kernel]


@cache
def sdpa_prefill_call() -> BenchCall:
    """SDPA over B×S causal queries and the S cached keys (no mask): the model's attention
    core in a prefill (S(S+1)/2 pairs per sequence)."""
    return BenchCall(tuple(_gqa_core_ops(expand_kv=False)), prefill_substitutions())


@cache
def sdpa_decode_call() -> BenchCall:
    """One query per sequence against a StaticCache of L allocated slots under a mask: the
    model's decode with the key/value expansion (``copy``) before the masked kernel
    (``attention_masked``), in that order. With one KV head per query head transformers
    copies nothing (the ``copy`` op is absent from those rows)."""
    return BenchCall(tuple(_gqa_core_ops(expand_kv=True)), decode_substitutions())


@cache
def memory_calls() -> dict[str, BenchCall]:
    """The memory.csv ops as model ops, with the kernels their eager implementations launch:
    ``rmsnorm`` (T tokens × H), ``residual_add`` (T × H), ``silu_and_mul`` (T rows × I_d)
    and ``copy`` (T elements)."""
    k = ELEMENTWISE_KERNELS
    ops = {"rmsnorm": norm("rmsnorm", H, "rms", residual=False),
           "residual_add": residual_add("residual_add", H),
           "silu_and_mul": activation("silu_and_mul", T, I_d, shard=1),
           "copy": streaming("copy", T, passes=2)}
    return {name: BenchCall((replace(op, kernels=k[name]),)) for name, op in ops.items()}


@cache
def residual_norm_call() -> BenchCall:
    """The model's fused norm op (residual add + RMSNorm over T × H, 2 kernels)."""
    return BenchCall((norm("residual_norm", H, "rms", residual=True),))


@cache
def _cost_function(call: BenchCall, dtype: str) -> tuple[tuple[sp.Symbol, ...], Callable]:
    subs = call.substitutions(dtype)
    exprs = [sp.Add(*[op.flops.subs(subs) for op in call.ops]),
             sp.Add(*[op.bytes.subs(subs) for op in call.ops])]
    symbols = tuple(sorted(set().union(*(e.free_symbols for e in exprs)), key=lambda x: x.name))
    return symbols, sp.lambdify(symbols, exprs, modules="numpy")


def call_cost(call: BenchCall, sizes: dict[sp.Symbol, float], dtype: str = "bfloat16") -> tuple[float, float]:
    """(FLOPs, bytes) of one benchmarked call with the sizes ``sizes``, as the model counts them."""
    symbols, fn = _cost_function(call, dtype)
    flops, nbytes = fn(*[np.float64(sizes[x]) for x in symbols])
    return float(flops), float(nbytes)
