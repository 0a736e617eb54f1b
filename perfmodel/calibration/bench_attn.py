"""SDPA attention as transformers 5.17 calls it (``sdpa_attention_forward``), bf16.

- ``sdpa_prefill``: B x S queries into an empty StaticCache of 2S slots: the mask is None, so
  transformers slices K/V to the first S positions and calls SDPA with ``is_causal=True`` and
  ``enable_gqa`` (flash-attention eligible). FLOPs count the causal half: 2 B h S^2 d.
- ``sdpa_decode``: one query per sequence against a StaticCache of A slots: the StaticCache path
  materialises a boolean (B, 1, 1, A) mask, so transformers repeats K/V to all heads
  (``repeat_kv``, a copy) and SDPA runs the masked kernel over all A slots whatever the context.
  The mask marks the first A/2 slots valid. FLOPs 4 B h A d; minimal bytes = the K/V cache + q + out.

Inputs are laid out as the model produces them: q from a (B, S, h, d) projection transposed to
(B, h, S, d); K/V cache tensors contiguous (B, kv, A, d).
"""

from __future__ import annotations

import torch

from perfmodel.calibration.bench_io import CsvTable, Stage, run_case
from perfmodel.calibration.bench_plan import Plan
from perfmodel.measuring.timing import rotation_count

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

                flops = 2.0 * b * h * s * s * d
                nbytes = 2.0 * (q.numel() * 2 + 2 * b * kv * s * d)
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

                    flops = 4.0 * b * h * alloc * d
                    nbytes = float(cache_bytes + 2 * 2 * b * h * d)
                    run_case(table, {**common, "op": "sdpa_decode", "batch": b, "seq": 1, "alloc_len": alloc,
                                     "context_len": alloc // 2, "rotate": rot}, fn, flops, nbytes, device,
                             graph=True, target_ms=plan.target_ms)
                    del qs, ks, vs, mask
    log(f"attention sdpa: {table.rows} rows")
