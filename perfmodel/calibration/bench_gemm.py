"""Dense GEMM (bf16 ``F.linear``, fp8 ``torch._scaled_mm``) and grouped expert GEMM benchmarks.

Dense: ``y = F.linear(x[M, K], W[N, K])`` as ``nn.Linear`` calls it; fp8 is e4m3 with per-tensor
scales, ``torch._scaled_mm(x8, W8.t(), scale_a, scale_b, out_dtype=bf16)`` (the activation
quantisation kernel is not included).

Grouped: exactly the calls of transformers 5.17 ``grouped_mm_experts_forward``: tokens sorted by
expert, ``offs = cumsum(tokens per expert)`` (int32), ``F.grouped_mm(x_sorted[R, H],
gate_up_proj.transpose(-2, -1), offs=offs)`` with the stored ``(E, 2I, H)`` layout seen as
``(E, H, 2I)``, and ``F.grouped_mm(h[R, I], down_proj.transpose(-2, -1), offs=offs)`` with
``(E, H, I)`` seen as ``(E, I, H)`` (``torch._grouped_mm`` where ``F.grouped_mm`` is missing).
fp8: ``torch._scaled_grouped_mm`` with row-wise scales, when the build has it. Routing: T tokens
each pick k distinct experts, uniformly or Zipf-skewed (s = 1.2 over a random expert order).

FLOPs and bytes are the model's counts of the same call (:func:`perfmodel.calibration.bench_shapes.gemm_call`,
:func:`~perfmodel.calibration.bench_shapes.grouped_gemm_call`): x + W + y (the hit experts'
weights for a grouped GEMM), activations at 2 bytes as perfmodel counts them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from perfmodel.calibration.bench_io import CsvTable, Stage, run_case
from perfmodel.calibration.bench_plan import Plan
from perfmodel.calibration.bench_shapes import D_IN, D_OUT, EXPERTS_HIT, call_cost, gemm_call, grouped_gemm_call
from perfmodel.measuring.timing import l2_bytes, rotation_count
from perfmodel.symbols import T

GEMM_COLUMNS = ["m", "n", "k", "roles"]
GROUPED_COLUMNS = ["api", "source", "experts", "hidden", "ffn", "proj", "n", "k", "tokens", "top_k",
                   "routed_rows", "routing", "experts_hit", "max_tokens_per_expert",
                   "mean_tokens_per_hit_expert"]

ZIPF_S = 1.2


def grouped_mm_fn():
    """The grouped GEMM transformers would call: (name, function)."""
    if hasattr(F, "grouped_mm"):
        return "F.grouped_mm", F.grouped_mm
    return "torch._grouped_mm", torch._grouped_mm


def _randn(shape, device, dtype=torch.bfloat16, gen=None) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype, generator=gen)


# --------------------------------------------------------------------------- dense GEMM


def bench_gemm(plan: Plan, device: torch.device, table: CsvTable, stage: Stage, log) -> None:
    """bf16 then fp8 (CUDA only) over M x (N, K); coarse M values first (plan.gemm_m order)."""
    dtypes = ["bfloat16"] + (["float8_e4m3fn"] if plan.fp8 and device.type == "cuda" else [])
    for dtype in dtypes:
        for m in plan.gemm_m:
            for shape in plan.gemm_shapes:
                if shape["lm_head"] and m > plan.lm_head_max_m:
                    continue
                if not stage.ok():
                    return
                _gemm_case(m, shape, dtype, device, table, plan)
        log(f"gemm {dtype}: {table.rows} rows")


def make_gemm_call(m: int, n: int, k: int, dtype: str, device: torch.device, rot: int = 1):
    """(fn, flops, bytes) of one dense GEMM case; ``fn(i)`` uses input copy ``i % rot``."""
    size = 1 if dtype.startswith("float8") else 2
    xs = [_randn((m, k), device) for _ in range(rot)]
    ws = [_randn((n, k), device).mul_(0.02) for _ in range(rot)]
    if size == 1:
        xs = [x.to(torch.float8_e4m3fn) for x in xs]
        ws = [w.to(torch.float8_e4m3fn) for w in ws]
        one = torch.ones((), device=device, dtype=torch.float32)

        def fn(i: int):
            return torch._scaled_mm(xs[i % rot], ws[i % rot].t(), scale_a=one, scale_b=one,
                                    out_dtype=torch.bfloat16)
    else:
        def fn(i: int):
            return F.linear(xs[i % rot], ws[i % rot])
    flops, nbytes = call_cost(gemm_call(), {T: m, D_IN: k, D_OUT: n}, dtype)
    return fn, flops, nbytes


def _gemm_case(m: int, shape: dict[str, Any], dtype: str, device: torch.device, table: CsvTable, plan: Plan) -> None:
    n, k = shape["n"], shape["k"]
    size = 1 if dtype.startswith("float8") else 2
    rot = rotation_count(n * k * size + m * k * size + m * n * 2, max_copies=16) if device.type == "cuda" else 1
    row = {"family": "gemm", "op": "scaled_mm" if size == 1 else "linear", "dtype": dtype,
           "m": m, "n": n, "k": k, "roles": shape["roles"], "rotate": rot}
    fn, flops, nbytes = make_gemm_call(m, n, k, dtype, device, rot)
    run_case(table, row, fn, flops, nbytes, device, graph=True, target_ms=plan.target_ms)
    del fn


# --------------------------------------------------------------------------- routing


def route(tokens: int, experts: int, top_k: int, routing: str, gen: torch.Generator) -> torch.Tensor:
    """Expert ids (tokens, top_k), k distinct experts per token (CPU tensor)."""
    if routing == "uniform":
        keys = torch.rand(tokens, experts, generator=gen)
    elif routing == "zipf":
        order = torch.randperm(experts, generator=gen)
        logp = -ZIPF_S * torch.log(torch.arange(1, experts + 1, dtype=torch.float64))[order]
        gumbel = -torch.log(-torch.log(torch.rand(tokens, experts, generator=gen, dtype=torch.float64).clamp_min(1e-12)))
        keys = logp + gumbel  # Gumbel top-k = sampling k experts without replacement, p ~ 1/rank^s
    else:
        raise ValueError(f"unknown routing {routing!r}")
    return keys.topk(top_k, dim=-1).indices


def tokens_per_expert(ids: torch.Tensor, experts: int) -> torch.Tensor:
    return torch.bincount(ids.reshape(-1), minlength=experts)


# --------------------------------------------------------------------------- grouped GEMM


def bench_grouped(plan: Plan, device: torch.device, table: CsvTable, stage: Stage, log, fp8: bool = False) -> None:
    """Grouped GEMM rows: zoo expert shapes (their own top-k, uniform and Zipf routing), then the
    seed study's grid (top-k in plan.seed_topk, uniform). ``fp8``: the scaled variant, zoo only."""
    if fp8 and (device.type != "cuda" or not hasattr(torch, "_scaled_grouped_mm")):
        log("grouped fp8: torch._scaled_grouped_mm not available here, skipped")
        return
    cases = []
    for shape in plan.grouped_shapes:
        tokens = plan.grouped_fp8_tokens if fp8 else plan.grouped_tokens
        routings = ("uniform",) if fp8 else plan.grouped_routings
        cases.append((shape, (shape["top_k"],), tokens, routings))
    if not fp8:
        for shape in plan.seed_shapes:
            cases.append((shape, plan.seed_topk, plan.seed_tokens, ("uniform",)))
    gen = torch.Generator().manual_seed(0)
    for shape, topks, tokens, routings in cases:
        if not stage.ok():
            return
        e, h, ffn = shape["experts"], shape["hidden"], shape["ffn"]
        w_gu = _randn((e, 2 * ffn, h), device).mul_(0.02)
        w_dn = _randn((e, h, ffn), device).mul_(0.02)
        if fp8:
            w_gu = w_gu.to(torch.float8_e4m3fn)
            w_dn = w_dn.to(torch.float8_e4m3fn)
        try:
            for k in topks:
                for t in tokens:
                    for routing in routings:
                        if t * k > plan.max_routed_rows:
                            continue
                        if not stage.ok():
                            return
                        _grouped_case(shape, k, t, routing, w_gu, w_dn, fp8, device, table, plan, gen)
        finally:
            del w_gu, w_dn
            if device.type == "cuda":
                torch.cuda.empty_cache()
    log(f"grouped{' fp8' if fp8 else ''}: {table.rows} rows")


def _grouped_case(shape, k, t, routing, w_gu, w_dn, fp8, device, table, plan, gen) -> None:
    e, h, ffn = shape["experts"], shape["hidden"], shape["ffn"]
    rows = t * k
    size = 1 if fp8 else 2
    api, _ = grouped_mm_fn()
    # distinct routings rotate the experts touched, so small calls do not sit in L2
    hit_guess = min(e, rows)
    touched = hit_guess * 3 * ffn * h * size + rows * (h + 2 * ffn) * 2
    rot = int(min(8, max(1, math.ceil(2 * l2_bytes() / max(touched, 1))))) if device.type == "cuda" else 1
    ids = [route(t, e, k, routing, gen) for _ in range(rot)]
    counts = [tokens_per_expert(i, e) for i in ids]
    offs = [torch.cumsum(c, 0).to(device=device, dtype=torch.int32) for c in counts]
    hit = sum(int((c > 0).sum()) for c in counts) / rot
    max_tpe = sum(int(c.max()) for c in counts) / rot
    base = {"family": "grouped_gemm", "api": "torch._scaled_grouped_mm" if fp8 else api,
            "op": "scaled_grouped_mm" if fp8 else "grouped_mm",
            "dtype": "float8_e4m3fn" if fp8 else "bfloat16", "source": shape["source"], "experts": e,
            "hidden": h, "ffn": ffn, "tokens": t, "top_k": k, "routed_rows": rows, "routing": routing,
            "experts_hit": hit, "max_tokens_per_expert": max_tpe,
            "mean_tokens_per_hit_expert": rows / hit if hit else 0.0, "rotate": rot}
    for proj, w, n, kk in (("gate_up", w_gu, 2 * ffn, h), ("down", w_dn, h, ffn)):
        fn = make_grouped_call(w, offs, rows, fp8, device)
        flops, nbytes = call_cost(grouped_gemm_call(), {T: rows, D_IN: kk, D_OUT: n, EXPERTS_HIT: hit},
                                  base["dtype"])
        run_case(table, {**base, "proj": proj, "n": n, "k": kk}, fn, flops, nbytes, device,
                 graph=True, target_ms=plan.target_ms)
        del fn


def make_grouped_call(w: torch.Tensor, offs: list[torch.Tensor], rows: int, fp8: bool, device: torch.device):
    """``fn(i)``: one grouped GEMM over stored expert weights ``w`` (E, N, K) as transformers calls
    it (``w.transpose(-2, -1)``, offsets ``offs[i % len(offs)]``), with fresh inputs (rows, K)."""
    e, n, kk = w.shape
    rot = len(offs)
    _, gmm = grouped_mm_fn()
    wt = w.transpose(-2, -1)
    xs = [_randn((rows, kk), device) for _ in range(rot)]
    if fp8:
        xs = [x.to(torch.float8_e4m3fn) for x in xs]
        sa = torch.ones(rows, device=device, dtype=torch.float32)
        sb = torch.ones(e, n, device=device, dtype=torch.float32)

        def fn(i: int):
            return torch._scaled_grouped_mm(xs[i % rot], wt, sa, sb, offs=offs[i % rot], out_dtype=torch.bfloat16)
    else:
        def fn(i: int):
            return gmm(xs[i % rot], wt, offs=offs[i % rot])
    return fn
