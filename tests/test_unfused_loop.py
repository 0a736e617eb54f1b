"""The unfused MoE as transformers' eager experts loop runs it: dense GEMMs per touched expert,
launches in proportion to the touched experts, and one host synchronisation per touched expert
whose host time enters an eager prefill only (never a decode step, a graph replay or the fused
MoE)."""

from __future__ import annotations

import pytest
import sympy as sp

from perfmodel import symbols as s
from perfmodel.ops import OpClass
from perfmodel.ops.moe import (
    UNFUSED_ACT_KERNELS_PER_EXPERT, UNFUSED_COPIES_PER_EXPERT, UNFUSED_DISPATCH_KERNELS_PER_EXPERT,
    UNFUSED_GEMM_KERNELS_PER_EXPERT, expert_split, expert_tokens, local_load, moe_block, routed_experts,
)
from perfmodel.prediction import Workload, evaluate
from perfmodel.profile import load_profile
from perfmodel.roofline import op_time
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.model import load_model

ROWS, D_LOCAL = local_load(expert_tokens(), expert_split()[0])  # the busiest GPU's, of the dp ranks' dp·T tokens


def _ops(impl: str) -> dict:
    return {op.name: op for op in moe_block(load_model("olmoe-1b-7b").moe, "rms", impl=impl)}


def test_unfused_experts_are_dense_gemms_at_the_rows_of_each_expert():
    unfused, fused = routed_experts(False, impl="unfused"), routed_experts(False)
    assert unfused.op_class is OpClass.GEMM and fused.op_class is OpClass.GROUPED_GEMM
    assert unfused.category.value == fused.category.value == "expert_gemm"  # as the profiler sees both
    assert sp.simplify(unfused.efficiency_size - ROWS / D_LOCAL) == 0
    assert unfused.flops == fused.flops and unfused.bytes == fused.bytes
    compute = op_time(unfused, {}).compute.free_symbols
    assert sp.Symbol("eta_c_gemm", positive=True) in compute
    assert not any("grouped_gemm" in x.name for x in compute)


def test_loop_launches_grow_with_the_touched_experts():
    ops, fused = _ops("unfused"), _ops("fused")
    per_expert = {"moe.experts": UNFUSED_GEMM_KERNELS_PER_EXPERT, "moe.experts_act": UNFUSED_ACT_KERNELS_PER_EXPERT,
                  "moe.dispatch": UNFUSED_DISPATCH_KERNELS_PER_EXPERT + UNFUSED_COPIES_PER_EXPERT}
    for name, n in per_expert.items():
        kernels = sp.sympify(ops[name].kernels)
        assert sp.simplify(sp.diff(kernels, s.T) - n * sp.diff(D_LOCAL, s.T)) == 0, name  # n per expert
        assert sp.sympify(fused[name].kernels).free_symbols == set()
    assert (UNFUSED_GEMM_KERNELS_PER_EXPERT, UNFUSED_ACT_KERNELS_PER_EXPERT) == (2, 2)
    at = {s.T: 1, s.E: 64, s.k: 8, s.sigma: 0, s.ep: 1, s.dp: 1, s.z_busy: 0, s.x_ep: 0}  # one token: its k = 8 experts
    assert float(sp.sympify(ops["moe.experts"].kernels).subs(at)) == pytest.approx(2 * 8, rel=1e-9)
    assert float(sp.sympify(ops["moe.experts_act"].kernels).subs(at)) == pytest.approx(2 * 8, rel=1e-9)


def test_only_the_unfused_dispatch_synchronises_once_per_touched_expert():
    ops, fused = _ops("unfused"), _ops("fused")
    assert sp.simplify(sp.sympify(ops["moe.dispatch"].host_syncs) - D_LOCAL) == 0
    assert all(sp.sympify(op.host_syncs) == 0 for name, op in ops.items() if name != "moe.dispatch")
    assert all(sp.sympify(op.host_syncs) == 0 for op in fused.values())


def _with_sync(t_sync: float):
    profile = load_profile("hf", "h200-sxm")
    return profile.model_copy(update={"latency": profile.latency.model_copy(update={"expert_sync_s": t_sync})})


def _metrics(model: str, t_sync: float, phase: str, **workload) -> dict:
    spec = load_model(model)
    return evaluate(spec, load_gpu("h200-sxm"), _with_sync(t_sync), Workload(**workload), phase).metrics


def test_sync_time_is_serial_in_an_eager_unfused_prefill():
    """OLMoE, B = 1, S = 128: 16 MoE layers, each touching D(128) of 64 experts."""
    d = 64 * (1 - (56 / 64) ** 128)
    base = _metrics("olmoe-1b-7b", 0.0, "prefill", batch=1, input_len=128, moe_impl="unfused")
    synced = _metrics("olmoe-1b-7b", 1e-4, "prefill", batch=1, input_len=128, moe_impl="unfused")
    assert synced["prefill_s"] - base["prefill_s"] == pytest.approx(16 * d * 1e-4, rel=1e-9)
    assert synced["prefill_launch_s"] - base["prefill_launch_s"] == pytest.approx(16 * d * 1e-4, rel=1e-9)


def test_sync_time_stays_out_of_decode_steps_the_fused_moe_and_graph_replays():
    for t_sync in (0.0, 1e-4):
        assert _metrics("olmoe-1b-7b", t_sync, "decode", batch=16, moe_impl="unfused")["decode_step_s"] == \
            pytest.approx(_metrics("olmoe-1b-7b", 0.0, "decode", batch=16, moe_impl="unfused")["decode_step_s"],
                          rel=1e-12)
        assert _metrics("olmoe-1b-7b", t_sync, "prefill", batch=4, moe_impl="fused")["prefill_s"] == \
            pytest.approx(_metrics("olmoe-1b-7b", 0.0, "prefill", batch=4, moe_impl="fused")["prefill_s"], rel=1e-12)
    # a prefill the engine replays from a captured CUDA graph (T <= M_graph) holds no sync
    replayed = [_metrics("olmoe-1b-7b", t, "prefill", batch=1, input_len=128, moe_impl="unfused",
                         graph_tokens=512)["prefill_s"] for t in (0.0, 1e-4)]
    assert replayed[1] == pytest.approx(replayed[0], rel=1e-12)


def test_profile_latency_defaults_to_no_sync_and_hf_states_one():
    assert load_profile("vllm", "h200-sxm").latency.expert_sync_s == 0.0
    assert load_profile("roofline", "h200-sxm").latency.expert_sync_s == 0.0
    hf = load_profile("hf", "h200-sxm")
    assert 1e-6 < hf.latency.expert_sync_s < 1e-3
    assert hf.fit["expert_sync"]["points"]


def test_a_fit_without_an_eager_row_has_no_sync_time(tmp_path):
    from perfmodel.calibration.fit import fit_expert_sync
    from perfmodel.paths import RESULTS_DIR

    rows = [line for line in (RESULTS_DIR / "h200-hf.jsonl").read_text().splitlines() if "experts=eager" not in line]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n")
    base = load_profile("hf", "h200-sxm").model_dump(mode="json", exclude_none=True)
    assert fit_expert_sync(base, path, "h200-sxm") is None
    fitted = fit_expert_sync(base, RESULTS_DIR / "h200-hf.jsonl", "h200-sxm")
    assert fitted["expert_sync_s"] == pytest.approx(load_profile("hf", "h200-sxm").latency.expert_sync_s, rel=0.01)


def test_the_loops_small_kernels_pay_a_small_kernels_cost_and_its_gemms_a_gemms():
    """The loop's bookkeeping kernels and copies (``moe.dispatch``) and its activations are
    memory-bound classes: each kernel pays t_kernel_small; its per-expert GEMMs pay t_kernel."""
    ops = _ops("unfused")
    for name, cost in (("moe.dispatch", s.t_kernel_small), ("moe.experts_act", s.t_kernel_small),
                       ("moe.experts", s.t_kernel)):
        latency = op_time(ops[name], {}).latency
        other = s.t_kernel if cost is s.t_kernel_small else s.t_kernel_small
        assert sp.simplify(latency - sp.sympify(ops[name].kernels) * cost) == 0, name
        assert other not in latency.free_symbols, name


def test_a_small_kernel_is_priced_apart_from_a_gemm():
    """Both profiles price a small kernel apart from a GEMM's graph node: the vllm profile at the
    median small kernel of its training models' profiled decode steps (about twice a node's
    cost), the hf profile at its fit's; and an unfused decode step moves with it alone."""
    vllm = load_profile("vllm", "h200-sxm").latency
    assert vllm.small_kernel_s == vllm.per_small_kernel_s and 1.5 * vllm.per_kernel_s < vllm.small_kernel_s < 3e-6
    roofline = load_profile("roofline", "h200-sxm").latency
    assert roofline.small_kernel_s == roofline.per_kernel_s
    hf = load_profile("hf", "h200-sxm")
    assert 0.5e-6 < hf.latency.small_kernel_s < hf.latency.per_kernel_s
    spec, gpu = load_model("olmoe-1b-7b"), load_gpu("h200-sxm")

    def step(small: float, impl: str) -> float:
        profile = hf.model_copy(update={"latency": hf.latency.model_copy(update={"per_small_kernel_s": small})})
        return evaluate(spec, gpu, profile, Workload(batch=1, moe_impl=impl), "decode").metrics["decode_step_s"]

    kernels = 16 * (9 + (UNFUSED_DISPATCH_KERNELS_PER_EXPERT + UNFUSED_COPIES_PER_EXPERT
                         + UNFUSED_ACT_KERNELS_PER_EXPERT) * 8)  # B = 1: 8 experts per MoE layer
    assert step(2e-6, "unfused") - step(1e-6, "unfused") > kernels * 1e-6 * 0.999


def test_an_eager_row_s_prefill_is_predicted_at_the_routing_it_ran():
    import json

    from perfmodel import symbols
    from perfmodel.calibration.fit import EXPERT_SYNC_POINT
    from perfmodel.measuring.compare import compare, prefill_skew
    from perfmodel.ops.moe import distinct_experts
    from perfmodel.paths import RESULTS_DIR
    from perfmodel.specs.model import load_model

    rows = [json.loads(line) for line in (RESULTS_DIR / "h200-hf.jsonl").read_text().splitlines()]
    row = [r for r in rows if r["point_id"] == EXPERT_SYNC_POINT and r.get("prefill_experts_hit")][-1]
    spec = load_model("olmoe-1b-7b")
    hits = row["prefill_experts_hit"]
    assert len(hits) == 16 and sum(hits) < 16 * 64 / 2  # random weights: fewer experts deeper down
    sigma = prefill_skew(row, spec)
    touched = distinct_experts(symbols.T).subs({symbols.T: 128, symbols.E: 64, symbols.k: 8, symbols.sigma: sigma})
    assert float(touched) == pytest.approx(sum(hits) / len(hits), rel=1e-3)
    # a row without the record, or whose prefill touched every expert, is predicted uniform
    assert prefill_skew({**row, "prefill_experts_hit": None}, spec) == 0.0
    assert prefill_skew({**row, "batch": 16, "prefill_experts_hit": [64] * 16}, spec) == 0.0
    # the fit took the row at that routing: its TTFT is the fitted one, and the syncs are the
    # touched experts' (fewer than uniform routing's 1,024)
    profile = load_profile("hf", "h200-sxm")
    assert profile.fit["expert_sync"]["skew"] == pytest.approx(sigma, rel=1e-3)
    points, _ = compare([row], engine="hf", train_models=["olmoe-1b-7b"])
    ttft = points[points.metric == "ttft"].iloc[0]
    assert ttft["rel_error"] == pytest.approx(0.0, abs=0.01)
    uniform, _ = compare([{**row, "prefill_experts_hit": None}], engine="hf", train_models=["olmoe-1b-7b"])
    assert uniform[uniform.metric == "ttft"].iloc[0]["predicted"] > 1.5 * ttft["predicted"]
