"""Memory-bound ops and launch costs.

- ``rmsnorm``: the models' own RMSNorm module (``MixtralRMSNorm``) on (T, H); bytes = in + out + weight.
- ``silu_and_mul``: transformers' gated activation on (R, 2I) -> (R, I): ``act(gate) * up`` after
  ``chunk(2)``; bytes = in + out.
- ``residual_add``: ``a + b`` on (T, H); bytes = 2 in + out.
- ``copy``: ``dst.copy_(src)`` device to device; bytes = read + write (2 x size).
- ``graph_tiny_kernel``: N one-element ``add_`` kernels captured in one CUDA graph; per-kernel time
  = replay time / N (the cost of a kernel node). ``eager_tiny_kernel``: the same N launches eager,
  timed by CUDA events (launch-bound).
"""

from __future__ import annotations

import torch

from perfmodel.calibration.bench_io import CsvTable, Stage, run_case
from perfmodel.calibration.bench_plan import Plan
from perfmodel.measuring.timing import rotation_count, summarize, time_graph

MEM_COLUMNS = ["tokens", "hidden", "rows", "ffn", "size_bytes", "kernels"]


def bench_memory(plan: Plan, device: torch.device, table: CsvTable, stage: Stage, log) -> None:
    from transformers.activations import ACT2FN
    from transformers.models.mixtral.modeling_mixtral import MixtralRMSNorm

    bf16 = torch.bfloat16
    act = ACT2FN["silu"]
    with torch.inference_mode():
        for hidden in plan.norm_hidden:
            norm = MixtralRMSNorm(hidden, eps=1e-5).to(device=device, dtype=bf16)
            norm.weight.data.normal_(1.0, 0.02)
            for t in plan.norm_tokens:
                if not stage.ok():
                    return
                size = t * hidden * 2
                rot = rotation_count(3 * size) if device.type == "cuda" else 1
                xs = [torch.randn(t, hidden, device=device, dtype=bf16) for _ in range(rot)]
                ys = [torch.randn(t, hidden, device=device, dtype=bf16) for _ in range(rot)]
                base = {"family": "memory", "dtype": "bfloat16", "tokens": t, "hidden": hidden, "rotate": rot}
                run_case(table, {**base, "op": "rmsnorm"}, lambda i, xs=xs: norm(xs[i % rot]),
                         5.0 * t * hidden, float(2 * size + hidden * 2), device, target_ms=plan.target_ms)
                run_case(table, {**base, "op": "residual_add"}, lambda i, xs=xs, ys=ys: xs[i % rot] + ys[i % rot],
                         float(t * hidden), float(3 * size), device, target_ms=plan.target_ms)
                del xs, ys
        for ffn in plan.act_ffn:
            for r in plan.act_rows:
                if not stage.ok():
                    return
                size = r * ffn * 2
                rot = rotation_count(3 * size) if device.type == "cuda" else 1
                xs = [torch.randn(r, 2 * ffn, device=device, dtype=bf16) for _ in range(rot)]

                def fn(i: int, xs=xs):
                    gate, up = xs[i % rot].chunk(2, dim=-1)
                    return act(gate) * up

                run_case(table, {"family": "memory", "op": "silu_and_mul", "dtype": "bfloat16", "rows": r,
                                 "ffn": ffn, "rotate": rot}, fn, 5.0 * r * ffn, float(3 * size), device,
                         target_ms=plan.target_ms)
                del xs
        for nbytes in plan.copy_bytes:
            if not stage.ok():
                return
            src = torch.empty(nbytes // 2, device=device, dtype=bf16).normal_()
            dst = torch.empty_like(src)
            run_case(table, {"family": "memory", "op": "copy", "dtype": "bfloat16", "size_bytes": nbytes,
                             "rotate": 1}, lambda i: dst.copy_(src), 0.0, float(2 * nbytes), device,
                     graph=nbytes <= 2**26, target_ms=plan.target_ms)
            del src, dst
        if device.type == "cuda":
            _launch_costs(plan, device, table)
    log(f"memory: {table.rows} rows")


def _launch_costs(plan: Plan, device: torch.device, table: CsvTable) -> None:
    x = torch.zeros(1, device=device)
    for n in plan.tiny_kernels:
        stats = time_graph(lambda i: x.add_(1.0), inner=n, reps=20)
        table.add({"family": "memory", "op": "graph_tiny_kernel", "dtype": "float32", "kernels": n,
                   **stats.as_dict(), "flops": 0.0, "bytes": 0.0, "status": "ok", "error": "", "rotate": 1})
        pairs = []
        for _ in range(5):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                x.add_(1.0)
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        ev = summarize([a.elapsed_time(z) / n for a, z in pairs], "cuda_events", inner=n)
        table.add({"family": "memory", "op": "eager_tiny_kernel", "dtype": "float32", "kernels": n,
                   **ev.as_dict(), "flops": 0.0, "bytes": 0.0, "status": "ok", "error": "", "rotate": 1})
