"""GPU kernel time of a vLLM engine's work, from a torch.profiler trace (ms), per kernel and by
the categories of :mod:`perfmodel.measuring.profiler_split`.

vLLM launches most of its kernels outside aten ops (Triton and inductor launchers, custom ops,
CUDA-graph replays), so a kernel is classified by its name alone (:func:`kernel_category`):

- ``attention``: FlashAttention / FlashMLA / FlashInfer kernels and vLLM's Triton attention
  (``flash``, ``fmha``, ``mla``, ``attn``, ``_fwd_*kernel_stage``);
- ``expert_gemm``: the fused-MoE GEMMs (``fused_moe_kernel``, CUTLASS / DeepGEMM grouped GEMMs,
  the MXFP4 experts' ``matmul_ogs`` and ``marlin_moe_wna16`` kernels);
- ``router_topk``: routing and the experts' token permutation (``topk``, ``moe_align_block_size``,
  ``count_and_sort_expert_tokens``, ``grouped_topk``, triton_kernels' ``pack_bitmatrix``, sorts
  and scans);
- ``copy``: KV-cache writes (``reshape_and_cache``, ``concat_and_cache``), memcpy / memset,
  copies, fills, embedding gathers;
- ``dense_gemm``: every other GEMM (``nvjet``, ``gemm``, ``cutlass``, ``xmma``, ``gemv``);
- ``norm_elementwise``: norms, activations, rotary, ``moe_sum``, inductor's fused pointwise and
  reduction kernels (``triton_poi_`` / ``triton_red_`` / ``triton_per_``), fp8 quantization;
- ``other``: the sampler's kernels and anything unmatched.

A profile is a callable's run under the profiler (:func:`profile_run`): its kernel table (name
-> [count, total ms]), the GPU's busy time (the union of the kernels' intervals) and the wall
time; a decode step's is the difference of a run of n + 1 tokens and a run of one token,
divided by n (:func:`decode_step`). Wall − busy is the time the GPU waited on the host.
:func:`summary` turns a profile into the row schema's profile dict (``kernel_ms``, ``split_ms``,
``n_kernels``, ``unit``, ``unlinked_ms``, ``top_kernels`` as [name, ms, count], ``busy_ms``,
``wall_ms``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from perfmodel.measuring.profiler_split import CATEGORIES, is_kernel_event

#: (pattern on the kernel name, category), first match wins.
KERNEL_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), category) for pattern, category in (
        (r"reshape_and_cache|concat_and_cache|memcpy|memset|copy|fill|cat_?array|embedding|"
         r"index_select|gather_cache", "copy"),
        (r"fused_moe|moe_gemm|grouped_gemm|deep_?gemm.*group|moe_mm|cutlass_moe|"
         r"triton_kernel_moe|matmul_ogs|marlin_moe", "expert_gemm"),
        (r"topk|moe_align|align_block|count_and_sort|expert_tokens|sort|radix|scan|histogram|"
         r"cumsum|route|routing|bitmatrix", "router_topk"),
        (r"flash|fmha|mla|attn|attention|_fwd_.*kernel_stage|paged|merge_states", "attention"),
        (r"nvjet|gemm|cutlass|xmma|gemv|cublas|splitk|matmul|wgmma|marlin|machete", "dense_gemm"),
        (r"norm|act_and_mul|silu|gelu|rotary|rope|moe_sum|triton_(poi|red|per)_|quant|scale|"
         r"elementwise|vectorized|unrolled|reduce|add|mul", "norm_elementwise"),
    )
)

#: Kernels listed per profile (the rest are in the totals only).
TOP_KERNELS = 40


def kernel_category(name: str) -> str:
    """The category of a kernel, by its name (see the module docstring)."""
    for pattern, category in KERNEL_RULES:
        if pattern.search(name or ""):
            return category
    return "other"


def kernel_table(events: Any) -> dict[str, list[float]]:
    """Kernel name -> [launches, total GPU time in ms] over a profiler's device events."""
    table: dict[str, list[float]] = {}
    for ev in events:
        if not is_kernel_event(ev):
            continue
        entry = table.setdefault(ev.name, [0, 0.0])
        entry[0] += 1
        entry[1] += (ev.time_range.end - ev.time_range.start) / 1e3
    return table


def busy_ms(events: Any) -> float:
    """Time the GPU ran at least one kernel (ms): the union of the device events' intervals
    (kernels of concurrent streams count once)."""
    spans = sorted((ev.time_range.start, ev.time_range.end) for ev in events if is_kernel_event(ev))
    total, start, end = 0.0, None, None
    for a, b in spans:
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    if end is not None:
        total += end - start
    return total / 1e3


@dataclass
class KernelProfile:
    """One profiled run: its kernel table (:func:`kernel_table`), the GPU's busy time
    (:func:`busy_ms`) and the run's wall time, ms."""

    table: dict[str, list[float]]
    busy_ms: float
    wall_ms: float


def profile_run(fn: Callable[[], Any]) -> KernelProfile:
    """Run ``fn()`` once under torch.profiler (CUDA activity alone, so the host is hardly
    slowed) and return its kernels, busy time and wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    events = prof.events()
    return KernelProfile(kernel_table(events), busy_ms(events), wall)


def decode_step(whole: KernelProfile, prefill: KernelProfile, steps: int) -> KernelProfile:
    """One decode step: (a run of ``steps`` + 1 tokens − a run of one token)/``steps``, per
    kernel name (a kernel that ran less in the longer run counts zero), busy and wall time."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    step: dict[str, list[float]] = {}
    for name, (count, ms) in whole.table.items():
        c0, ms0 = prefill.table.get(name, (0, 0.0))
        if ms - ms0 > 0 and count - c0 > 0:
            step[name] = [(count - c0) / steps, (ms - ms0) / steps]
    return KernelProfile(step, (whole.busy_ms - prefill.busy_ms) / steps,
                         (whole.wall_ms - prefill.wall_ms) / steps)


def summary(profile: KernelProfile) -> dict[str, Any]:
    """The row schema's profile dict of a profiled run (ms; ``unit`` ``gpu_kernel``), with its
    ``busy_ms`` and ``wall_ms``."""
    table = profile.table
    split = {c: 0.0 for c in CATEGORIES}
    for name, (_, ms) in table.items():
        split[kernel_category(name)] += ms
    total = sum(split.values())
    top = sorted(table.items(), key=lambda kv: -kv[1][1])[:TOP_KERNELS]
    return {
        "kernel_ms": round(total, 6),
        "split_ms": {c: round(v, 6) for c, v in split.items()},
        "n_kernels": round(sum(count for count, _ in table.values()), 3),
        "unit": "gpu_kernel",
        "unlinked_ms": 0.0,
        "top_kernels": [[name[:160], round(ms, 6), round(count, 3)] for name, (count, ms) in top],
        "busy_ms": round(profile.busy_ms, 6),
        "wall_ms": round(profile.wall_ms, 6),
    }
