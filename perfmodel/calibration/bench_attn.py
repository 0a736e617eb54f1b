"""SDPA attention as transformers 5.17 calls it (``sdpa_attention_forward``), bf16.

- ``sdpa_prefill``: B x S queries into an empty StaticCache of 2S slots: the mask is None, so
  transformers slices K/V to the first S positions and calls SDPA with ``is_causal=True`` and
  ``enable_gqa`` (flash-attention eligible).
- ``sdpa_decode``: one query per sequence against a StaticCache of A slots: the StaticCache path
  materialises a boolean (B, 1, 1, A) mask, so transformers repeats K/V to all heads
  (``repeat_kv``, a copy) and SDPA runs the masked kernel over all A slots whatever the context.
  The mask marks the first A/2 slots valid.

FLOPs and bytes are the model's counts of the same calls (:func:`perfmodel.calibration.bench_shapes.sdpa_prefill_call`,
:func:`~perfmodel.calibration.bench_shapes.sdpa_decode_call` at L = A): the S(S+1)/2 causal
pairs of a prefill; a decode's key/value expansion and the masked kernel over all A slots.

Inputs are laid out as the model produces them: q from a (B, S, h, d) projection transposed to
(B, h, S, d); K/V cache tensors contiguous (B, kv, A, d).
"""

from __future__ import annotations

import torch

from perfmodel.calibration.bench_io import CsvTable, Stage, run_case
from perfmodel.calibration.bench_plan import Plan
from perfmodel.calibration.bench_shapes import call_cost, sdpa_decode_call, sdpa_prefill_call
from perfmodel.measuring.timing import rotation_count
from perfmodel.symbols import B, L, S, d_h, n_h, n_kv

ATTN_COLUMNS = ["batch", "seq", "alloc_len", "context_len", "heads", "kv_heads", "head_dim", "gqa", "models"]


class _AttnStub(torch.nn.Module):
    """What ``sdpa_attention_forward`` reads from the attention module."""

    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True


def bench_sdpa(plan: Plan, device: torch.device, table: CsvTable, stage: Stage, log) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bf16 = torch.bfloat16
    for hd in plan.attn_heads:
        h, kv, d = hd["heads"], hd["kv_heads"], hd["head_dim"]
        stub = _AttnStub(h, kv)
        scale = d ** -0.5
        common = {"family": "attention", "dtype": "bfloat16", "heads": h, "kv_heads": kv, "head_dim": d,
                  "gqa": h // kv, "models": hd["models"]}
        with torch.inference_mode():
            for b, s in plan.prefill_bs:
                if not stage.ok():
                    return
                alloc = 2 * s
                q = torch.randn(b, s, h, d, device=device, dtype=bf16).transpose(1, 2)
                k = torch.randn(b, kv, alloc, d, device=device, dtype=bf16)
                v = torch.randn(b, kv, alloc, d, device=device, dtype=bf16)

                def fn(i: int, q=q, k=k, v=v):
                    return sdpa_attention_forward(stub, q, k, v, None, dropout=0.0, scaling=scale)[0]

                flops, nbytes = call_cost(sdpa_prefill_call(), {B: b, S: s, n_h: h, n_kv: kv, d_h: d})
                run_case(table, {**common, "op": "sdpa_prefill", "batch": b, "seq": s, "alloc_len": alloc,
                                 "context_len": s, "rotate": 1}, fn, flops, nbytes, device,
                         graph=True, target_ms=plan.target_ms)
                del q, k, v
            for b in plan.decode_b:
                for alloc in plan.decode_alloc:
                    if not stage.ok():
                        return
                    cache_bytes = 2 * b * kv * alloc * d * 2
                    rot = rotation_count(cache_bytes, max_copies=16) if device.type == "cuda" else 1
                    qs = [torch.randn(b, 1, h, d, device=device, dtype=bf16).transpose(1, 2) for _ in range(rot)]
                    ks = [torch.randn(b, kv, alloc, d, device=device, dtype=bf16) for _ in range(rot)]
                    vs = [torch.randn(b, kv, alloc, d, device=device, dtype=bf16) for _ in range(rot)]
                    mask = (torch.arange(alloc, device=device) < alloc // 2).view(1, 1, 1, alloc).expand(b, 1, 1, alloc)

                    def fn(i: int, qs=qs, ks=ks, vs=vs, mask=mask, rot=rot):
                        j = i % rot
                        return sdpa_attention_forward(stub, qs[j], ks[j], vs[j], mask, dropout=0.0, scaling=scale)[0]

                    flops, nbytes = call_cost(sdpa_decode_call(),
                                              {B: b, L: alloc, n_h: h, n_kv: kv, d_h: d})
                    run_case(table, {**common, "op": "sdpa_decode", "batch": b, "seq": 1, "alloc_len": alloc,
                                     "context_len": alloc // 2, "rotate": rot}, fn, flops, nbytes, device,
                             graph=True, target_ms=plan.target_ms)
                    del qs, ks, vs, mask
    log(f"attention sdpa: {table.rows} rows")
