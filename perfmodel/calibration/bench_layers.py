"""One-layer benchmarks of transformers modules: the MoE block per experts implementation, and the
attention module (projections, rotary, StaticCache write, SDPA; MLA for DeepSeek-V2) per model.

Each model is built with one decoder layer (DeepSeek with ``first_k_dense_replace=0`` so the
layer is MoE) and a 256-token vocabulary, random weights, bf16, on the device.

- ``moe_block``: ``layer.mlp(x)`` for x of shape (1, T, H); experts implementation switched with
  ``model.set_experts_implementation`` (``grouped_mm``, ``batched_mm``, ``eager``). ``grouped_mm``
  and ``batched_mm`` are CUDA-graph replayed; ``eager`` is not capturable (``nonzero``) and is
  timed with CUDA events, CPU launch gaps included. ``batched_mm`` gathers one weight copy per
  routed row and is skipped when that exceeds the plan's byte limit.
- ``attn_module``: ``layer.self_attn`` with a StaticCache of the allocated length, the mask from
  ``transformers.masking_utils.create_causal_mask`` (a boolean (B, 1, 1, A) mask at decode: the
  StaticCache path materialises it, so SDPA runs without GQA over all A slots) and rotary
  embeddings computed outside the timed region (they are shared by all layers). Decode: one
  token per sequence, write position reset before every replay (untimed). Prefill: B x S tokens
  into an empty cache of 2S.
"""

from __future__ import annotations

import gc
import torch

from perfmodel.calibration.bench_io import CsvTable, Stage, error_fields, run_case, timing_fields
from perfmodel.calibration.bench_plan import Plan
from perfmodel.measuring.timing import call_times, capture_step, is_cuda, summarize, time_wall

MOE_COLUMNS = ["model", "impl", "tokens", "hidden", "experts", "top_k", "ffn", "shared_ffn", "experts_hit"]
MODULE_COLUMNS = ["model", "model_type", "phase", "batch", "seq", "alloc_len", "context_len", "heads",
                  "kv_heads", "head_dim", "mla", "mask"]


def one_layer_model(name: str, overrides: list[str], device: torch.device, impl: str = "grouped_mm"):
    """(model, config, info) with one MoE decoder layer and a small vocabulary."""
    from perfmodel.measuring.hf_build import build_model, make_config

    extra = ["vocab_size=256"] if not any(o.startswith("vocab_size=") for o in overrides) else []
    cfg, _ = make_config(name, overrides)
    if cfg["model_type"].startswith("deepseek"):
        extra.append("first_k_dense=0")
    _, config = make_config(name, list(overrides) + extra, layers=1)
    torch.manual_seed(0)
    model, info = build_model(config, device.type, experts_impl=impl)
    return model, config, info


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- MoE block


def _built(models, device: torch.device, table: CsvTable, stage: Stage, family: str, op: str):
    """(name, model, config, info) of each one-layer model of ``models`` ((name, overrides)
    pairs) while the stage has time; a model that does not build becomes an error row."""
    for name, overrides in models:
        if not stage.ok():
            return
        try:
            model, config, info = one_layer_model(name, overrides, device)
        except Exception as exc:  # noqa: BLE001
            table.add({"family": family, "op": op, "model": name, **error_fields(exc)})
            _free(device)
            continue
        yield name, model, config, info
        del model, config, info  # this frame's references too, before the next model is built
        _free(device)


def bench_moe_block(plan: Plan, device: torch.device, table: CsvTable, stage: Stage, log) -> None:
    from perfmodel.measuring.hf_routing import RoutingRecorder

    for name, model, config, info in _built(plan.moe_models, device, table, stage, "moe_block", "moe_block"):
        block = model.model.layers[0].mlp
        e, k = info.num_experts, info.top_k
        h = int(config.hidden_size)
        ffn = int(getattr(config, "moe_intermediate_size", None) or config.intermediate_size)
        shared = None
        if getattr(config, "n_shared_experts", None):
            shared = int(config.n_shared_experts) * ffn
        elif getattr(config, "shared_expert_intermediate_size", None):
            shared = int(config.shared_expert_intermediate_size)
        with torch.inference_mode():
            for impl in plan.moe_impls:
                try:
                    model.set_experts_implementation(impl)
                except Exception as exc:  # noqa: BLE001
                    table.add({"family": "moe_block", "op": "moe_block", "model": name, "impl": impl,
                               **error_fields(exc)})
                    continue
                for t in plan.moe_tokens:
                    if not stage.ok():
                        break
                    rows = t * (k or 1)
                    base = {"family": "moe_block", "op": "moe_block", "dtype": "bfloat16", "model": name,
                            "impl": impl, "tokens": t, "hidden": h, "experts": e, "top_k": k, "ffn": ffn,
                            "shared_ffn": shared}
                    if impl == "batched_mm" and rows * 3 * ffn * h * 2 > plan.batched_mm_max_bytes:
                        table.add({**base, "status": "skipped", "error": "gathered weights exceed the limit"})
                        continue
                    rot = 4 if is_cuda(device) and t <= 64 else 1
                    xs = [torch.randn(1, t, h, device=device, dtype=torch.bfloat16) for _ in range(rot)]
                    rec = RoutingRecorder(block)
                    with rec:
                        block(xs[0])
                    hit = rec.mean_experts_hit()
                    act = 2.0 * t * (k or 1) * 3 * ffn * h + (2.0 * t * 3 * shared * h if shared else 0.0)
                    w_bytes = 2.0 * (hit or 0) * 3 * ffn * h + (2.0 * 3 * shared * h if shared else 0.0)
                    nbytes = w_bytes + 2.0 * 2 * t * h

                    def fn(i: int, xs=xs):
                        return block(xs[i % rot])

                    run_case(table, {**base, "experts_hit": hit, "rotate": rot}, fn, act, nbytes, device,
                             graph=(impl != "eager"), target_ms=plan.target_ms)
                    del xs
        del model, block
        _free(device)
    log(f"moe_block: {table.rows} rows")


# --------------------------------------------------------------------------- attention module


def bench_attn_module(plan: Plan, device: torch.device, table: CsvTable, stage: Stage, log) -> None:
    from transformers import StaticCache
    from transformers.masking_utils import create_causal_mask

    for name, model, config, info in _built(plan.module_models, device, table, stage, "attention", "attn_module"):
        attn = model.model.layers[0].self_attn
        rotary = model.model.rotary_emb
        h = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        mla = bool(getattr(config, "kv_lora_rank", None))
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        cases = [("decode", b, 1, a) for b, a in plan.module_decode] + \
                [("prefill", b, s, 2 * s) for b, s in plan.module_prefill]
        with torch.inference_mode():
            for phase, b, s, alloc in cases:
                if not stage.ok():
                    break
                base = {"family": "attention", "op": "attn_module", "dtype": "bfloat16", "model": name,
                        "model_type": info.model_type, "phase": phase, "batch": b, "seq": s,
                        "alloc_len": alloc, "heads": heads, "kv_heads": kv, "head_dim": head_dim, "mla": mla}
                try:
                    row = _module_case(attn, rotary, config, create_causal_mask, StaticCache, phase, b, s,
                                       alloc, h, device, plan)
                    table.add({**base, **row})
                except Exception as exc:  # noqa: BLE001
                    table.add({**base, **error_fields(exc)})
                    if "illegal memory access" in str(exc).lower():
                        raise
                    _free(device)
        del model, attn, rotary
        _free(device)
    log(f"attention modules: {table.rows} rows")


def _module_case(attn, rotary, config, create_causal_mask, StaticCache, phase, b, s, alloc, h, device, plan):
    cache = StaticCache(config=config, max_cache_len=alloc)
    x = torch.randn(b, s, h, device=device, dtype=torch.bfloat16)
    layer = None
    # initialise the cache (lazy) with one token, then aim the write position
    pos0 = torch.zeros(1, 1, dtype=torch.long, device=device)
    x1 = torch.randn(b, 1, h, device=device, dtype=torch.bfloat16)
    attn(hidden_states=x1, position_embeddings=rotary(x1, pos0), attention_mask=None, past_key_values=cache)
    layer = cache.layers[0]
    context = alloc // 2 if phase == "decode" else 0
    layer.cumulative_length.fill_(context)
    position_ids = (torch.arange(s, device=device) + context).unsqueeze(0)
    mask = create_causal_mask(config=config, inputs_embeds=x, attention_mask=None, past_key_values=cache,
                              position_ids=position_ids)
    pe = rotary(x, position_ids)

    def call():
        return attn(hidden_states=x, position_embeddings=pe, attention_mask=mask, past_key_values=cache)

    def reset():
        layer.cumulative_length.fill_(context)

    stats = _time_with_reset(call, reset, device, plan)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    flops = 4.0 * b * heads * s * (alloc if phase == "decode" else s) * head_dim
    cache_bytes = sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    nbytes = float(cache_bytes + 2 * x.numel() * 2)
    out = timing_fields(stats, flops, nbytes)
    out["context_len"] = context + s
    out["mask"] = "none" if mask is None else str(tuple(mask.shape))
    del cache, x, x1, mask, pe
    return out


def _time_with_reset(call, reset, device, plan):
    """Time ``call`` with ``reset`` (untimed) before each run: graph replay on CUDA (events
    around each replay), falling back to eager events; wall clock on CPU."""
    if not is_cuda(device):
        return time_wall(lambda i: (reset(), call()), reps=3, device=device)
    reset()
    call()
    torch.cuda.synchronize()
    graph = None
    try:
        graph = capture_step(call, reset)
        run, method = graph.replay, "cuda_graph"
    except RuntimeError:
        torch.cuda.synchronize()
        graph = None
        run, method = call, "cuda_events"
    try:
        reset()
        run()
        torch.cuda.synchronize()
        times = call_times(run, True, 10 if plan.mode == "full" else 5, before=reset)
        return summarize(times, method)
    finally:
        if graph is not None:
            graph.reset()
