"""Self-attention: projections and the attention core, for GQA/MHA and MLA.

The attention core of one layer sees B sequences, ``P`` query-key pairs and ``C`` cached
tokens read per sequence (``P_w``/``K_w`` on sliding-window layers); phases say what those
are (:mod:`perfmodel.phases`). QKᵀ and PV each cost 2 FLOPs per pair per channel.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import sympy as sp

from perfmodel.minmax import Min
from perfmodel.ops.base import Op, OpClass, Quantized
from perfmodel.ops.elementwise import norm, qk_norm, rope
from perfmodel.ops.quant import weight_bytes
from perfmodel.symbols import (
    B, C, Cw, H, Pw, T, P, b_a, b_kv, b_q, b_w, d_h, d_nope, d_rope, d_v, n_h, n_kv, r_kv, r_q, t_mla_split, tp,
)

if TYPE_CHECKING:  # the specs need pydantic; the ops read only their fields
    from perfmodel.specs.model import AttentionSpec


def kv_heads_per_gpu() -> sp.Expr:
    """KV heads one GPU holds: n_kv/tp, and one replicated head once tp exceeds n_kv (vLLM
    replicates each KV head over tp/n_kv GPUs): ⌈n_kv/tp⌉."""
    return sp.ceiling(n_kv / tp)


def projection(name: str, d_in: sp.Expr, d_out: sp.Expr, *, bias: bool = False,
               sharded: bool = True, rows: sp.Expr = T, d_out_local: sp.Expr | None = None,
               quantized: bool = False) -> Op:
    """A linear layer applied to ``rows`` rows (default: all T tokens): rows×d_in by d_in×d_out
    (column/row sharded by tp). ``d_out_local``: the output columns one GPU holds when they
    are not simply d_out/tp (replicated KV heads). ``quantized``: its weights are stored by a
    quantization scheme (b_q per element plus scales, :mod:`perfmodel.ops.quant`; a bias
    stays at b_w)."""
    shard = tp if sharded else 1
    local = d_out / shard if d_out_local is None else d_out_local
    params = d_in * d_out + (d_out if bias else 0)
    op = Op(
        name=name,
        op_class=OpClass.GEMM,
        flops=2 * rows * d_in * local,
        weight_bytes=d_in * local * b_w,
        act_bytes=rows * (d_in / shard + local) * b_a,
        params=params,
        stored_bytes=(d_in + (1 if bias else 0)) * local * b_w,
        efficiency_size=rows,
    )
    if quantized:
        weights = weight_bytes(d_in * local, local, b_q)
        op = replace(op, weight_bytes=weights, stored_bytes=weights + (local * b_w if bias else 0),
                     quantized=Quantized(weights=d_in * local, inputs=((rows, d_in / shard),)))
    return op


def per_head_projection(name: str, d_in: sp.Expr, d_out: sp.Expr) -> Op:
    """A separate d_in×d_out matrix per query head (MLA's absorbed up-projections), sharded by tp."""
    params = n_h * d_in * d_out
    return Op(
        name=name,
        op_class=OpClass.GEMM,
        flops=2 * T * params / tp,
        weight_bytes=params * b_w / tp,
        act_bytes=T * n_h * (d_in + d_out) * b_a / tp,
        params=params,
        stored_bytes=params * b_w / tp,
        efficiency_size=T,
    )


def attention_core(name: str, *, qk_dim: sp.Expr, v_dim: sp.Expr, heads: sp.Expr,
                   cache_per_token: sp.Expr, windowed: bool, sinks: bool,
                   read_per_token: sp.Expr | None = None, masked: bool = False,
                   cache_write: bool = True) -> Op:
    """Softmax(QKᵀ)V over the cache: FLOPs per pair 2·heads·(qk_dim + v_dim).

    Bytes: Q read and O written once; the cache read once per sequence (C tokens) and the
    T new tokens written to it. ``cache_per_token`` is elements per token on one GPU;
    ``read_per_token`` what the kernel reads per cached token when that differs (keys and
    values re-expanded per head before the kernel). ``masked``: the kernel scores the whole
    cache under an explicit mask (its own efficiency class). ``cache_write=False``: the
    attention kernel alone, the cache already written (one kernel, no write). Its memory time
    counts each sequence's cache read as C + C_half keys (``context_bytes`` = B·read·b_kv per
    key; C_half the class's ``context_half``, 0 unless a profile fits it): a decode kernel's
    work per sequence and head that a short context does not hide.
    """
    pairs, keys = (Pw, Cw) if windowed else (P, C)
    read = cache_per_token if read_per_token is None else read_per_token
    written = T * cache_per_token if cache_write else 0
    return Op(
        name=name,
        op_class=OpClass.ATTENTION_MASKED if masked else OpClass.ATTENTION,
        flops=2 * B * pairs * heads * (qk_dim + v_dim) / tp,
        act_bytes=T * heads * (qk_dim + v_dim) * b_a / tp,
        kv_bytes=(B * keys * read + written) * b_kv,
        params=n_h if sinks else 0,
        stored_bytes=(n_h * b_w / tp) if sinks else 0,
        kv_bytes_per_token=cache_per_token * b_kv,
        efficiency_size=B * keys,
        kernels=2 if cache_write else 1,  # cache write + attention kernel
        windowed=windowed,
        context_bytes=B * read * b_kv,
    )


def kv_expand(name: str, read: sp.Expr, write: sp.Expr, windowed: bool,
              width: sp.Expr) -> Op:
    """Materializing per-head keys/values from the cache before the attention kernel.

    ``read`` and ``write`` are elements moved per cached token (B·C cached tokens per pass);
    ``width`` the per-token width of the result (its efficiency size is B·C·width elements).
    """
    keys = Cw if windowed else C
    return Op(name=name, op_class=OpClass.COPY, kv_bytes=B * keys * (read + write) * b_kv,
              efficiency_size=B * keys * width, kernels=2, windowed=windowed)


def gqa_ops(spec: AttentionSpec, *, windowed: bool, norm_kind: str,
            expand_kv: bool = False, cache_write: bool = True, quantized: bool = False) -> list[Op]:
    """Ops of a GQA/MHA attention block (MHA when n_kv = n_h), norm before it included.

    ``expand_kv``: the cached keys and values are repeated to every query head before the
    kernel (an attention call with an explicit mask cannot use grouped heads), a copy of
    2·n_h·d_h per cached token whenever n_h > n_kv; the kernel then reads n_h heads.
    ``cache_write=False``: the attention core without the cache write (the kernel alone).
    ``quantized``: the QKV and O projections are quantized linear layers.
    """
    q_w, kv_w = n_h * d_h, n_kv * d_h
    kv_local = kv_heads_per_gpu() * d_h  # K (or V) columns on one GPU
    ops = [
        norm("attn.norm", H, norm_kind),
        projection("attn.qkv_proj", H, q_w + 2 * kv_w, bias=spec.qkv_bias,
                   d_out_local=q_w / tp + 2 * kv_local, quantized=quantized),
    ]
    if spec.qk_norm == "per_head":
        ops.append(qk_norm("attn.qk_norm", q_w + kv_w, 2 * d_h))
    elif spec.qk_norm == "full_width":
        ops.append(qk_norm("attn.qk_norm", q_w + kv_w, q_w + kv_w))
    elif spec.qk_norm == "weightless":
        ops.append(qk_norm("attn.qk_norm", q_w + kv_w, sp.Integer(0)))
    ops.append(rope("attn.rope", q_w / tp + kv_local))
    read = None
    if expand_kv:
        repeats = Min(1, n_h - n_kv)  # 1 when heads are grouped, 0 for MHA
        ops.append(kv_expand("attn.kv_expand", 2 * kv_local * repeats, 2 * q_w / tp * repeats,
                             windowed, width=2 * q_w / tp))
        read = 2 * q_w / tp
    ops += [
        attention_core("attn.core", qk_dim=d_h, v_dim=d_h, heads=n_h,
                       cache_per_token=2 * kv_local, windowed=windowed, sinks=spec.sinks,
                       read_per_token=read, masked=expand_kv, cache_write=cache_write),
        projection("attn.o_proj", q_w, H, bias=spec.o_bias, quantized=quantized),
    ]
    return ops


def mla_ops(spec: AttentionSpec, *, windowed: bool, norm_kind: str, latent_cache: bool,
            absorbed: bool, expand_kv: bool = False, decode: bool = False,
            quantized: bool = False, split: bool = False) -> list[Op]:
    """Ops of multi-head latent attention (DeepSeek-V2/V3).

    ``latent_cache``: the cache keeps the compressed latent (r_kv + d_rope per token, not
    split by tp) instead of the expanded per-head keys and values. ``absorbed``: the decode
    formulation that folds the key/value up-projections into the query and output sides, so
    attention runs over the latent (needs ``latent_cache``). ``expand_kv`` (latent cache,
    not absorbed): the re-expanded per-head keys are assembled from their non-rotary part and
    the shared rotary part (a copy per cached token), and the kernel reads per-head keys and
    values. ``quantized``: the projections are quantized linear layers (the absorbed per-head
    matrices stay at b_w: vLLM dequantizes them when it absorbs them). ``split`` (a prompt's
    pass, on an engine that absorbs its decodes): a step that holds decodes beside the prompt
    tokens runs them through the absorbed path, a second attention launched from the host beside
    the prompts' (vLLM's MLA backends order a step's decodes first and run the two apart; its
    kernel profiles show four kernels more per layer), t_mla_split of host time per layer
    (:attr:`Op.split_host`); a step of prompts alone pays none (:mod:`perfmodel.planning.steptime`).
    """
    qk = d_nope + d_rope
    ops = [norm("attn.norm", H, norm_kind)]
    if spec.q_lora_rank:
        ops += [
            projection("attn.q_a_proj", H, r_q, bias=spec.qkv_bias, sharded=False,
                       quantized=quantized),
            norm("attn.q_a_norm", r_q, "rms", residual=False),
            projection("attn.q_b_proj", r_q, n_h * qk, quantized=quantized),
        ]
    else:
        ops.append(projection("attn.q_proj", H, n_h * qk, quantized=quantized))
    ops += [
        projection("attn.kv_a_proj", H, r_kv + d_rope, bias=spec.qkv_bias, sharded=False,
                   quantized=quantized),
        norm("attn.kv_a_norm", r_kv, "rms", residual=False),
        rope("attn.rope", n_h * d_rope / tp + d_rope),
    ]
    if absorbed:
        ops += [
            per_head_projection("attn.q_absorb", d_nope, r_kv),
            attention_core("attn.core", qk_dim=r_kv + d_rope, v_dim=r_kv, heads=n_h,
                           cache_per_token=r_kv + d_rope, windowed=windowed, sinks=False),
            per_head_projection("attn.v_up", r_kv, d_v),
        ]
    else:
        cache = (r_kv + d_rope) if latent_cache else n_h * (qk + d_v) / tp
        # A latent cache is re-expanded to per-head keys and values for every cached token
        # read (B·C rows; = T in a prefill); an expanded cache only expands the new T tokens.
        expand_rows = B * (Cw if windowed else C) if latent_cache else T
        ops.append(projection("attn.kv_b_proj", r_kv, n_h * (d_nope + d_v), rows=expand_rows,
                              quantized=quantized))
        read = None
        if expand_kv and latent_cache:
            ops.append(kv_expand("attn.kv_expand", (n_h * d_nope + d_rope) / tp, n_h * qk / tp,
                                 windowed, width=n_h * qk / tp))
            read = n_h * (qk + d_v) / tp
        core = attention_core("attn.core", qk_dim=qk, v_dim=d_v, heads=n_h,
                              cache_per_token=cache, windowed=windowed, sinks=False,
                              read_per_token=read, masked=expand_kv and decode)
        ops.append(replace(core, split_host=t_mla_split) if split else core)
    ops.append(projection("attn.o_proj", n_h * d_v, H, bias=spec.o_bias, quantized=quantized))
    return ops
