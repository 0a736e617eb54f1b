"""Where the host time of transformers' ``eager`` MoE experts loop goes, as tokens grow.

transformers' eager experts implementation (``OlmoeExperts.forward`` and its copies in other
models) loops in Python over every expert that received a token. Each iteration runs a few small
GPU kernels and several host/device synchronisations (``nonzero`` inside ``torch.where``, the
``expert_idx == num_experts`` check, indexing the weight stacks with a 0-dim CUDA tensor), so its
wall time is mostly host time. This script measures one OLMoE-1B-7B-sized experts module
(64 experts, top-8, hidden 2048, expert FFN 1024, bf16, random N(0, 0.02) weights) on CUDA for a
few token counts T and breaks the time down:

1. ``module``: wall ms/call of transformers' own ``OlmoeExperts`` (``eager``), with
   ``torch.cuda.synchronize`` + ``time.perf_counter`` around each call, and CUDA-event ms/call.
2. ``host``: an instrumented copy of the loop (same ops, same order) that adds up
   ``time.perf_counter`` deltas per statement with no extra synchronisation, so the time of a
   statement includes any wait for the GPU that the statement forces.
3. ``synced``: the same copy with ``torch.cuda.synchronize()`` after every statement, so each
   statement's time is its host work plus its own GPU work plus one sync round trip.
4. ``profiled``: the same copy under ``torch.profiler`` with one ``record_function`` range per
   statement, giving each statement's CPU time and the GPU kernel time it launched.
5. ``torch.profiler`` over one plain module call: top CPU ops by self CPU time, top CUDA
   kernels, and the GPU busy time (union of kernel/memcpy/memset intervals) vs. the call's span.
6. Variants of the loop, timed like (1): ``contiguous_mask`` (``expert_mask`` made contiguous
   after the permute), ``tolist`` (iterate over ``expert_hit.tolist()``, Python ints), and both.
7. The whole OLMoE-1B-7B model (16 layers, random weights, SDPA, eager experts): prefill of
   B x S tokens timed like (1), the host time per loop statement summed over all layers (the
   ``host`` copy patched into every experts module), and ``torch.profiler`` over one prefill.

Timings (1), (6), (7) and a host-speed probe (us per small kernel launch, per ``bool()`` sync,
per Python add) are repeated for several rounds interleaved over T (or B), so a drift of the
host's speed shows up as spread across rounds rather than as a trend in T.

Routing is random: per token, 8 distinct experts from ``torch.rand(T, 64).topk(8)`` and softmax
weights over random logits (cast to bf16). Hidden states are N(0, 1) bf16.

Usage (on a CUDA machine with transformers installed)::

    python3 scripts/profile_eager_moe.py --out OUTDIR [--tokens 128 2048 8192] [--batches 1 16 64]

Writes OUTDIR/eager_moe_profile.json and OUTDIR/eager_moe_profile.txt and prints the text.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: its perfmodel
from perfmodel.measuring.profiler_split import is_kernel_event  # noqa: E402
from perfmodel.measuring.vllm_kernels import busy_ms  # noqa: E402

HIDDEN = 2048
FFN = 1024
NUM_EXPERTS = 64
TOP_K = 8

# Statement labels of the instrumented loop, in execution order.
STATEMENTS = [
    "zeros_like",
    "one_hot+permute+sum+nonzero",
    "for-iter + expert_idx[0]",
    "if expert_idx == num_experts",
    "torch.where(expert_mask[expert_idx])",
    "hidden_states[token_idx]",
    "gate_up_proj[expert_idx]",
    "linear(gate_up)+chunk",
    "act(gate)*up",
    "down_proj[expert_idx]",
    "linear(down)",
    "top_k_weights[token_idx,top_k_pos,None] mul",
    "index_add_",
]
PER_CALL = {"zeros_like", "one_hot+permute+sum+nonzero"}


def build_experts(device: torch.device) -> torch.nn.Module:
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeExperts

    cfg = OlmoeConfig(
        hidden_size=HIDDEN, intermediate_size=FFN, num_experts=NUM_EXPERTS, num_experts_per_tok=TOP_K
    )
    cfg._experts_implementation = "eager"
    experts = OlmoeExperts(cfg)
    with torch.no_grad():
        experts.gate_up_proj.normal_(0.0, 0.02)
        experts.down_proj.normal_(0.0, 0.02)
    experts = experts.to(device=device, dtype=torch.bfloat16).eval()
    assert experts.gate_up_proj.abs().sum().item() > 0 and experts.down_proj.abs().sum().item() > 0
    return experts


def make_inputs(tokens: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed + tokens)
    hidden = torch.randn(tokens, HIDDEN, generator=g).to(device=device, dtype=torch.bfloat16)
    top_k_index = torch.rand(tokens, NUM_EXPERTS, generator=g).topk(TOP_K, dim=-1).indices
    top_k_weights = torch.softmax(torch.randn(tokens, TOP_K, generator=g), dim=-1)
    return hidden, top_k_index.to(device), top_k_weights.to(device=device, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Loop copies. All follow OlmoeExperts.forward (transformers 5.17) op for op.


class _Laps:
    """Accumulates perf_counter deltas per label; optional sync before each reading."""

    def __init__(self, sync: bool, profiled: bool = False):
        self.sync = sync
        self.profiled = profiled
        self.total = OrderedDict((s, 0.0) for s in STATEMENTS)
        self.iterations = 0
        self._rf = None

    def start(self, label: str | None = None) -> float:
        if self.profiled and label is not None:
            self._open(label)
        return time.perf_counter()

    def _open(self, label):
        self._rf = torch.profiler.record_function(label)
        self._rf.__enter__()

    def lap(self, label: str, t0: float, next_label: str | None = None) -> float:
        if self.sync:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        self.total[label] += t1 - t0
        if self.profiled:
            self._rf.__exit__(None, None, None)
            self._rf = None
            if next_label is not None:
                self._open(next_label)
            return time.perf_counter()
        return t1


def instrumented_forward(m, hidden_states, top_k_index, top_k_weights, laps: _Laps):
    S = STATEMENTS
    t = laps.start(S[0])
    final_hidden_states = torch.zeros_like(hidden_states)
    t = laps.lap(S[0], t, S[1])
    with torch.no_grad():
        expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=m.num_experts)
        expert_mask = expert_mask.permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    t = laps.lap(S[1], t, S[2])
    it = iter(expert_hit)
    while True:
        try:
            expert_idx = next(it)
        except StopIteration:
            if laps.profiled and laps._rf is not None:
                laps._rf.__exit__(None, None, None)
                laps._rf = None
            laps.total[S[2]] += time.perf_counter() - t
            break
        expert_idx = expert_idx[0]
        t = laps.lap(S[2], t, S[3])
        laps.iterations += 1
        skip = expert_idx == m.num_experts
        if skip:
            t = laps.lap(S[3], t, S[2])
            continue
        t = laps.lap(S[3], t, S[4])
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        t = laps.lap(S[4], t, S[5])
        current_state = hidden_states[token_idx]
        t = laps.lap(S[5], t, S[6])
        w_gate_up = m.gate_up_proj[expert_idx]
        t = laps.lap(S[6], t, S[7])
        gate, up = torch.nn.functional.linear(current_state, w_gate_up).chunk(2, dim=-1)
        t = laps.lap(S[7], t, S[8])
        current_hidden_states = m.act_fn(gate) * up
        t = laps.lap(S[8], t, S[9])
        w_down = m.down_proj[expert_idx]
        t = laps.lap(S[9], t, S[10])
        current_hidden_states = torch.nn.functional.linear(current_hidden_states, w_down)
        t = laps.lap(S[10], t, S[11])
        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
        t = laps.lap(S[11], t, S[12])
        final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
        t = laps.lap(S[12], t, S[2])
    return final_hidden_states


def variant_forward(m, hidden_states, top_k_index, top_k_weights, contiguous_mask=False, use_tolist=False):
    final_hidden_states = torch.zeros_like(hidden_states)
    with torch.no_grad():
        expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=m.num_experts)
        expert_mask = expert_mask.permute(2, 1, 0)
        if contiguous_mask:
            expert_mask = expert_mask.contiguous()
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    hits = [row[0] for row in expert_hit.tolist()] if use_tolist else expert_hit
    for expert_idx in hits:
        if not use_tolist:
            expert_idx = expert_idx[0]
        if expert_idx == m.num_experts:
            continue
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        current_state = hidden_states[token_idx]
        gate, up = torch.nn.functional.linear(current_state, m.gate_up_proj[expert_idx]).chunk(2, dim=-1)
        current_hidden_states = m.act_fn(gate) * up
        current_hidden_states = torch.nn.functional.linear(current_hidden_states, m.down_proj[expert_idx])
        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
        final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
    return final_hidden_states


# ---------------------------------------------------------------------------------------------
# Timing helpers.


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, device, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    walls, evs = [], []
    for _ in range(iters):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        t0 = time.perf_counter()
        if device.type == "cuda":
            e0.record()
        fn()
        if device.type == "cuda":
            e1.record()
        _sync(device)
        walls.append((time.perf_counter() - t0) * 1e3)
        if device.type == "cuda":
            evs.append(e0.elapsed_time(e1))
    out = {
        "wall_ms_mean": statistics.fmean(walls),
        "wall_ms_median": statistics.median(walls),
        "wall_ms_min": min(walls),
    }
    if evs:
        out.update(event_ms_mean=statistics.fmean(evs), event_ms_median=statistics.median(evs))
    return out


def _device_us(e, own: bool = False) -> float:
    """An averaged profiler event's device time, us: its own (``own``) or with its children's
    (the attribute names differ across torch versions)."""
    prefix = "self_" if own else ""
    for name in (f"{prefix}device_time_total", f"{prefix}cuda_time_total"):
        v = getattr(e, name, None)
        if v is not None:
            return float(v)
    return 0.0


def _is_device_event(e) -> bool:
    dt = getattr(e, "device_type", None)
    return dt is not None and dt != torch.autograd.DeviceType.CPU


def _table(ka, sort_keys, row_limit):
    for key in sort_keys:
        try:
            return ka.table(sort_by=key, row_limit=row_limit, max_name_column_width=60)
        except Exception:  # noqa: BLE001 - sort key names differ across torch versions
            continue
    return ka.table(row_limit=row_limit)


def _activities(device):
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def profile_module_call(fn, device) -> dict:
    fn()
    _sync(device)
    with torch.profiler.profile(activities=_activities(device)) as prof:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    ka = prof.key_averages()
    cpu_rows = sorted(ka, key=lambda e: -float(e.self_cpu_time_total))[:15]
    dev_rows = sorted((e for e in ka if _is_device_event(e)), key=lambda e: -_device_us(e, own=True))[:10]
    # GPU busy time = union of the kernel, memcpy and memset intervals
    events = [ev for ev in prof.events() if is_kernel_event(ev)]
    span = (max(ev.time_range.end for ev in events) - min(ev.time_range.start for ev in events)) if events else 0.0
    n_kernels = len(events)
    return {
        "wall_ms_under_profiler": wall_ms,
        "gpu_busy_ms": busy_ms(events),
        "gpu_span_ms": span / 1e3,
        "device_events": n_kernels,
        "top_cpu_ops": [
            {
                "name": e.key,
                "count": int(e.count),
                "self_cpu_ms": float(e.self_cpu_time_total) / 1e3,
                "cpu_total_ms": float(e.cpu_time_total) / 1e3,
            }
            for e in cpu_rows
        ],
        "top_device_events": [
            {"name": e.key, "count": int(e.count), "device_ms": _device_us(e, own=True) / 1e3} for e in dev_rows
        ],
        "cpu_table": _table(ka, ["self_cpu_time_total"], 15),
        "device_table": _table(ka, ["self_device_time_total", "self_cuda_time_total"], 10),
    }


def _statement_rows(laps_list) -> tuple[int, OrderedDict]:
    """(loop iterations per call, statement -> {ms_per_call, us_per_iter}) averaged over the
    calls' laps."""
    n_iter = laps_list[0].iterations
    rows = OrderedDict()
    for s in STATEMENTS:
        tot_ms = statistics.fmean(laps.total[s] for laps in laps_list) * 1e3
        rows[s] = {"ms_per_call": tot_ms, "us_per_iter": tot_ms * 1e3 / max(n_iter, 1)}
    return n_iter, rows


def run_instrumented(m, args_, device, mode: str, calls: int) -> dict:
    laps_all = []
    for _ in range(calls):
        laps = _Laps(sync=(mode == "synced" and device.type == "cuda"))
        _sync(device)
        t0 = time.perf_counter()
        instrumented_forward(m, *args_, laps)
        _sync(device)
        laps.call_ms = (time.perf_counter() - t0) * 1e3
        laps_all.append(laps)
    n_iter, rows = _statement_rows(laps_all)
    return {
        "iterations": n_iter,
        "calls_averaged": calls,
        "call_ms": statistics.fmean(l.call_ms for l in laps_all),
        "sum_ms": sum(r["ms_per_call"] for r in rows.values()),
        "statements": rows,
    }


def run_profiled_statements(m, args_, device) -> dict:
    laps = _Laps(sync=False, profiled=True)
    instrumented_forward(m, *args_, _Laps(sync=False, profiled=False))
    _sync(device)
    with torch.profiler.profile(activities=_activities(device)) as prof:
        instrumented_forward(m, *args_, laps)
        _sync(device)
    # Each range appears twice: as a CPU user annotation (CPU time, kernel time of the ops inside)
    # and as a GPU-side annotation whose duration is the range's span on the GPU timeline.
    cpu_rows, gpu_rows = {}, {}
    for e in prof.key_averages():
        (gpu_rows if _is_device_event(e) else cpu_rows)[e.key] = e
    n_iter = max(laps.iterations, 1)
    rows = OrderedDict()
    for s in STATEMENTS:
        e, g = cpu_rows.get(s), gpu_rows.get(s)
        if e is None:
            rows[s] = None
            continue
        span_us = _device_us(g, own=True) if g is not None else float("nan")
        rows[s] = {
            "count": int(e.count),
            "cpu_ms": float(e.cpu_time_total) / 1e3,
            "gpu_kernel_ms": _device_us(e) / 1e3,
            "gpu_span_ms": span_us / 1e3,
            "cpu_us_per_iter": float(e.cpu_time_total) / n_iter,
            "gpu_us_per_iter": _device_us(e) / n_iter,
            "gpu_span_us_per_iter": span_us / n_iter,
        }
    return {"iterations": laps.iterations, "statements": rows}


def host_probe(device, n: int = 2000) -> dict:
    """Host speed at this moment: us per small kernel launch and per host<-device sync."""
    x = torch.zeros(16, device=device)
    for _ in range(50):
        x.add_(1)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    _sync(device)
    launch_us = (time.perf_counter() - t0) * 1e6 / n
    t0 = time.perf_counter()
    for _ in range(n // 4):
        bool(x[0] == 0)
    sync_us = (time.perf_counter() - t0) * 1e6 / (n // 4)
    t0 = time.perf_counter()
    acc = 0
    for i in range(200000):
        acc += i
    py_ns = (time.perf_counter() - t0) * 1e9 / 200000
    return {"launch_us": launch_us, "eq_bool_sync_us": sync_us, "python_add_ns": py_ns}


# ---------------------------------------------------------------------------------------------
# Whole OLMoE-1B-7B model (16 layers, random weights), prefill with eager experts.


def build_olmoe_model(device: torch.device, layers: int):
    from transformers import AutoModelForCausalLM, OlmoeConfig

    cfg = OlmoeConfig(
        hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=layers, num_attention_heads=16,
        num_key_value_heads=16, num_experts=NUM_EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=False,
        vocab_size=50304, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            cfg, dtype=torch.bfloat16, attn_implementation="sdpa", experts_implementation="eager")
    model.eval()
    model.requires_grad_(False)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2 and (bool((p == 0).all()) or not bool(torch.isfinite(p).all())):
                p.normal_(0.0, 0.02)
    return model


def full_model_section(model, device, batches, seq, rounds, warmup, iters, instr_calls) -> dict:
    from transformers.models.olmoe.modeling_olmoe import OlmoeExperts

    experts = [mod for mod in model.modules() if isinstance(mod, OlmoeExperts)]
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = {b: torch.randint(0, 50304, (b, seq), generator=g).to(device) for b in batches}

    def prefill(b):
        return model(input_ids=ids[b], use_cache=False, logits_to_keep=1).logits

    out = {"seq": seq, "per_B": {b: {"rounds": []} for b in batches}, "probes": []}
    for _ in range(rounds):
        out["probes"].append(host_probe(device))
        for b in batches:
            out["per_B"][b]["rounds"].append(time_calls(lambda: prefill(b), device, warmup, iters))
        print("full-model round: " + " ".join(
            f"B={b} {out['per_B'][b]['rounds'][-1]['wall_ms_median']:.1f}ms" for b in batches),
            file=sys.stderr, flush=True)
    holder = {}
    for mod in experts:
        mod.forward = (lambda h, i, w, _m=mod: instrumented_forward(_m, h, i, w, holder["laps"]))
    try:
        for b in batches:
            r = out["per_B"][b]
            r["wall_ms_median_of_rounds"] = statistics.median(x["wall_ms_median"] for x in r["rounds"])
            r["event_ms_median_of_rounds"] = _med(x.get("event_ms_median") for x in r["rounds"])
            agg = []
            for k in range(instr_calls + 1):
                laps = _Laps(sync=False)
                holder["laps"] = laps
                _sync(device)
                t0 = time.perf_counter()
                prefill(b)
                _sync(device)
                laps.call_ms = (time.perf_counter() - t0) * 1e3
                if k:
                    agg.append(laps)
            n_iter, rows = _statement_rows(agg)
            loop_ms = sum(v["ms_per_call"] for v in rows.values())
            r["host"] = {"iterations": n_iter, "call_ms": statistics.fmean(l.call_ms for l in agg),
                         "experts_sum_ms": loop_ms, "statements": rows}
    finally:
        for mod in experts:
            del mod.forward
    for b in batches:
        r = out["per_B"][b]
        prof = profile_module_call(lambda: prefill(b), device)
        r["profile"] = prof
        it = r["host"]["iterations"]
        r["idle_us_per_iter"] = (r["wall_ms_median_of_rounds"] - prof["gpu_busy_ms"]) * 1e3 / max(it, 1)
    return out


# ---------------------------------------------------------------------------------------------


def _stmt_table(L, cols, get, per_call_ms=True):
    """Append a statement x column table; get(col, statement) -> row dict."""
    L.append(f"{'statement':<44}" + "".join(f"{c:>11}" for c in cols))
    for st in STATEMENTS:
        cells = []
        for c in cols:
            row = get(c, st)
            cells.append(row["ms_per_call"] if (st in PER_CALL and per_call_ms) else row["us_per_iter"])
        unit = " [ms]" if (st in PER_CALL and per_call_ms) else ""
        L.append(f"{(st + unit):<44}" + "".join(f"{x:>11.2f}" for x in cells))


def _profile_lines(L, title, p):
    L.append(f"== torch.profiler, {title}: wall {p['wall_ms_under_profiler']:.2f} ms, GPU busy "
             f"{p['gpu_busy_ms']:.2f} ms, span {p['gpu_span_ms']:.2f} ms, {p['device_events']} device events ==")
    L.append("top CPU ops by self CPU time:")
    for e in p["top_cpu_ops"]:
        L.append(f"  {e['name'][:48]:<48} n={e['count']:>6} self {e['self_cpu_ms']:>9.3f} ms  "
                 f"total {e['cpu_total_ms']:>9.3f} ms")
    L.append("top device events by time:")
    for e in p["top_device_events"]:
        L.append(f"  {e['name'][:70]:<70} n={e['count']:>6} {e['device_ms']:>8.3f} ms")
    L.append("")


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def fmt_summary(res: dict) -> str:
    L = []
    meta = res["meta"]
    L.append(f"eager MoE experts loop profile  ({meta['device_name']}, torch {meta['torch']}, "
             f"transformers {meta['transformers']}, {meta['cpu']}, {meta['cpu_count']} CPUs)")
    L.append(f"module: OlmoeExperts eager, E={NUM_EXPERTS} top-{TOP_K} hidden={HIDDEN} ffn={FFN} bf16; "
             f"{meta['rounds']} rounds interleaved over T")
    L.append("")
    Ts = list(res["per_T"].keys())
    if Ts:
        L.append("== experts module: ms per call, median over rounds [min..max of round medians] ==")
        L.append(f"{'T':>6} {'iters':>5} {'wall':>20} {'event':>7} {'gpubusy':>7} {'idle/it':>8} "
                 f"{'copy':>7} {'contig':>7} {'tolist':>7} {'both':>7}")
        for T in Ts:
            r = res["per_T"][T]
            walls = [x["wall_ms_median"] for x in r["module_rounds"]]
            wall = _med(walls)
            it = r["host"]["iterations"]
            busy = r["profile"]["gpu_busy_ms"]
            v = {k: _med(x["wall_ms_median"] for x in lst) for k, lst in r["variant_rounds"].items()}
            ev = _med(x.get("event_ms_median") for x in r["module_rounds"])
            L.append(f"{T:>6} {it:>5} {wall:>7.2f} [{min(walls):>5.2f}..{max(walls):>5.2f}] {ev:>7.2f} "
                     f"{busy:>7.2f} {(wall - busy) * 1e3 / max(it, 1):>8.1f} {v['loop_copy']:>7.2f} "
                     f"{v['contiguous_mask']:>7.2f} {v['tolist']:>7.2f} {v['contiguous_mask+tolist']:>7.2f}")
        L.append("(wall: median of per-call sync'd perf_counter; idle/it = (wall - GPU busy) / iterations, us;")
        L.append(" copy = plain copy of the loop, contig = expert_mask.contiguous(), tolist = expert_hit.tolist())")
        L.append("")
        L.append("== experts module: host time per statement, no extra sync, median over rounds "
                 "(us per iteration; [ms] rows: ms/call) ==")
        _stmt_table(L, [f"T={T}" for T in Ts],
                    lambda c, st: res["per_T"][int(c[2:])]["host"]["statements"][st])
        L.append(f"{'call [ms]':<44}" + "".join(f"{res['per_T'][T]['host']['call_ms']:>11.2f}" for T in Ts))
        L.append("")
        L.append("== experts module: time per statement with a sync after each (us per iteration) ==")
        _stmt_table(L, [f"T={T}" for T in Ts],
                    lambda c, st: res["per_T"][int(c[2:])]["synced"]["statements"][st])
        L.append(f"{'call [ms]':<44}" + "".join(f"{res['per_T'][T]['synced']['call_ms']:>11.2f}" for T in Ts))
        L.append("")
        L.append("== experts module under profiler, per statement: CPU | kernel | GPU-span, us per iteration ==")
        L.append(f"{'statement':<44}" + "".join(f"{'T=' + str(T):>22}" for T in Ts))
        for st in STATEMENTS:
            cells = []
            for T in Ts:
                row = res["per_T"][T]["profiled"]["statements"][st]
                cells.append("n/a" if row is None else
                             f"{row['cpu_us_per_iter']:.1f}|{row['gpu_us_per_iter']:.1f}|"
                             f"{row['gpu_span_us_per_iter']:.1f}")
            L.append(f"{st:<44}" + "".join(f"{c:>22}" for c in cells))
        L.append("")
        for T in Ts:
            _profile_lines(L, f"experts module, one call, T={T}", res["per_T"][T]["profile"])
    fm = res.get("full_model")
    if fm:
        Bs = list(fm["per_B"].keys())
        L.append(f"== full OLMoE-1B-7B ({meta['layers']} layers, eager experts, sdpa), prefill B x S={fm['seq']}, "
                 f"ms, median over rounds ==")
        L.append(f"{'B':>4} {'T':>6} {'iters':>6} {'wall':>8} {'event':>8} {'rounds':>30} {'gpubusy':>8} "
                 f"{'idle/it us':>10} {'loop host':>9} {'outside':>8}")
        for b in Bs:
            r = fm["per_B"][b]
            h = r["host"]
            rnds = " ".join(f"{x['wall_ms_median']:.0f}" for x in r["rounds"])
            L.append(f"{b:>4} {b * fm['seq']:>6} {h['iterations']:>6} {r['wall_ms_median_of_rounds']:>8.2f} "
                     f"{r['event_ms_median_of_rounds']:>8.2f} {rnds:>30} {r['profile']['gpu_busy_ms']:>8.2f} "
                     f"{r['idle_us_per_iter']:>10.1f} {h['experts_sum_ms']:>9.2f} "
                     f"{h['call_ms'] - h['experts_sum_ms']:>8.2f}")
        L.append("(loop host = host time inside the experts forwards of the instrumented call; outside = rest)")
        L.append("")
        L.append("== full model: host time per experts statement, no extra sync (us per iteration, all layers) ==")
        _stmt_table(L, [f"B={b}" for b in Bs],
                    lambda c, st: fm["per_B"][int(c[2:])]["host"]["statements"][st], per_call_ms=False)
        L.append("")
        for b in Bs:
            _profile_lines(L, f"full model prefill B={b}", fm["per_B"][b]["profile"])
        L.append("host probes per round (launch us, eq+bool sync us, python add ns): " + "; ".join(
            f"{p['launch_us']:.1f}/{p['eq_bool_sync_us']:.1f}/{p['python_add_ns']:.0f}" for p in fm["probes"]))
    if Ts:
        L.append("experts-module probes per round: " + "; ".join(
            f"{p['launch_us']:.1f}/{p['eq_bool_sync_us']:.1f}/{p['python_add_ns']:.0f}" for p in res["probes"]))
        L.append("allocator (module timing, first round): " + "; ".join(
            f"T={T}: {res['per_T'][T]['allocator']}" for T in Ts))
    return "\n".join(L)


def _median_rows(runs: list[dict]) -> dict:
    rows = OrderedDict()
    for st in STATEMENTS:
        rows[st] = {k: statistics.median(r["statements"][st][k] for r in runs) for k in ("ms_per_call", "us_per_iter")}
    return {"iterations": runs[0]["iterations"], "call_ms": statistics.median(r["call_ms"] for r in runs),
            "rounds": len(runs), "statements": rows}


def _write(res, out_dir, final=False):
    os.makedirs(out_dir, exist_ok=True)
    text = fmt_summary(res)
    tables = res.get("profiler_tables", {})
    with open(os.path.join(out_dir, "eager_moe_profile.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    full = text + "\n\n" + "\n\n".join(
        f"== key_averages {k} (self CPU) ==\n{t['cpu_table']}\n== key_averages {k} (self device) ==\n"
        f"{t['device_table']}" for k, t in tables.items())
    with open(os.path.join(out_dir, "eager_moe_profile.txt"), "w") as f:
        f.write(full + "\n")
    if final:
        print(text)


def _pop_tables(res, key, prof):
    res.setdefault("profiler_tables", {})[key] = {
        "cpu_table": prof.pop("cpu_table"), "device_table": prof.pop("device_table")}


def _git_commit() -> str | None:
    """The checkout's HEAD commit, None outside a git checkout (a copied tree)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tokens", type=int, nargs="*", default=[128, 2048, 8192])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--variant-iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, interleaved over T / B")
    ap.add_argument("--instr-calls", type=int, default=3, help="calls averaged per instrumented mode")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64],
                    help="full-model prefill batch sizes (none: skip the full model)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--full-iters", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available (use --device cpu for a dry run)")
    import platform

    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    torch.manual_seed(0)
    res = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": os.environ.get("PERFMODEL_GIT_COMMIT") or _git_commit(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu": cpu, "cpu_count": os.cpu_count(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "hidden": HIDDEN, "ffn": FFN, "num_experts": NUM_EXPERTS, "top_k": TOP_K,
            "warmup": args.warmup, "iters": args.iters, "variant_iters": args.variant_iters,
            "rounds": args.rounds, "instr_calls": args.instr_calls, "layers": args.layers,
        },
        "per_T": {},
        "probes": [],
    }
    variants = OrderedDict([
        ("loop_copy", {}),
        ("contiguous_mask", {"contiguous_mask": True}),
        ("tolist", {"use_tolist": True}),
        ("contiguous_mask+tolist", {"contiguous_mask": True, "use_tolist": True}),
    ])
    with torch.inference_mode():
        if args.tokens:
            m = build_experts(device)
            inputs = {T: make_inputs(T, device) for T in args.tokens}
            for T, inp in inputs.items():
                r = {"module_rounds": [], "variant_rounds": {k: [] for k in variants}, "host_rounds": []}
                ref = m(*inp)
                chk = instrumented_forward(m, *inp, _Laps(sync=False))
                r["max_abs_diff_instrumented_vs_module"] = float((ref.float() - chk.float()).abs().max())
                r["max_abs_diff_variant_vs_module"] = {
                    k: float((ref.float() - variant_forward(m, *inp, **kw).float()).abs().max())
                    for k, kw in variants.items()}
                res["per_T"][T] = r
            for rnd in range(args.rounds):
                res["probes"].append(host_probe(device))
                for T, inp in inputs.items():
                    r = res["per_T"][T]
                    if device.type == "cuda" and rnd == 0:
                        st0 = torch.cuda.memory_stats(device)
                    r["module_rounds"].append(time_calls(lambda: m(*inp), device, args.warmup, args.iters))
                    if device.type == "cuda" and rnd == 0:
                        st1 = torch.cuda.memory_stats(device)
                        keys = ("segment.all.allocated", "num_alloc_retries", "num_device_alloc",
                                "num_device_free")
                        r["allocator"] = {k: st1.get(k, 0) - st0.get(k, 0) for k in keys if k in st1}
                    elif rnd == 0:
                        r["allocator"] = {}
                    for k, kw in variants.items():
                        r["variant_rounds"][k].append(time_calls(
                            lambda: variant_forward(m, *inp, **kw), device, 1, args.variant_iters))
                    if rnd == 0:
                        run_instrumented(m, inp, device, "host", 1)  # warm the instrumented path
                    r["host_rounds"].append(run_instrumented(m, inp, device, "host", 1))
                print(f"experts round {rnd}: " + " ".join(
                    f"T={T} {res['per_T'][T]['module_rounds'][-1]['wall_ms_median']:.2f}ms" for T in inputs),
                    file=sys.stderr, flush=True)
            for T, inp in inputs.items():
                r = res["per_T"][T]
                r["host"] = _median_rows(r["host_rounds"])
                r["synced"] = run_instrumented(m, inp, device, "synced", args.instr_calls)
                r["profiled"] = run_profiled_statements(m, inp, device)
                r["profile"] = profile_module_call(lambda: m(*inp), device)
                _pop_tables(res, f"experts T={T}", r["profile"])
            del m, inputs
            _write(res, args.out)
        if args.batches:
            t0 = time.perf_counter()
            model = build_olmoe_model(device, args.layers)
            res["meta"]["full_model_build_s"] = time.perf_counter() - t0
            print(f"full model built in {res['meta']['full_model_build_s']:.1f}s", file=sys.stderr, flush=True)
            fm = full_model_section(model, device, args.batches, args.seq, args.rounds, 1,
                                    args.full_iters, args.instr_calls)
            for b in args.batches:
                _pop_tables(res, f"full-model B={b}", fm["per_B"][b]["profile"])
            res["full_model"] = fm
    _write(res, args.out, final=True)


if __name__ == "__main__":
    main()
