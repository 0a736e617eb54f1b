"""What an op is lives in typed fields (its OpClass, Role and windowed flag), never in its name:
every list of op classes derives from the one enum, and renaming ops changes nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sympy as sp

from perfmodel.graph import GraphOptions, ModelGraph, build_graph
from perfmodel.memory import active_parameter_count, kv_cache_bytes
from perfmodel.ops import LayerGroup, Op, OpClass, Peak, ProfilerCategory, Role
from perfmodel.ops.elementwise import streaming
from perfmodel.roofline import op_time
from perfmodel.specs.model import load_model
from perfmodel.symbols import T, bw, link_bw, peak, peak_attn


def test_every_list_of_op_classes_comes_from_the_enum():
    from perfmodel.calibration.fit_kernels import EXTRA_CLASSES, PROFILE_CLASSES
    from perfmodel.measuring.profiler_split import CATEGORIES
    from perfmodel.measuring.results import PROFILE_CATEGORIES
    from perfmodel.profile import OP_CLASSES, OPTIONAL_OP_CLASSES, EngineProfile

    assert OP_CLASSES == tuple(c.value for c in OpClass if c.fallback is None)
    assert OPTIONAL_OP_CLASSES == {c.value: c.fallback.value for c in OpClass if c.fallback}
    assert set(PROFILE_CLASSES) | {"comm"} == set(OP_CLASSES) and set(EXTRA_CLASSES) == set(OPTIONAL_OP_CLASSES)
    assert CATEGORIES == PROFILE_CATEGORIES == tuple(c.value for c in ProfilerCategory)
    assert {c.category.value for c in OpClass} | {r.category.value for r in Role if r.category} \
        == set(CATEGORIES)
    # a profile may give every class its own curves, by the class's name
    keys = EngineProfile.model_fields["efficiency"].annotation.__args__[0].__args__
    assert set(keys) == {c.value for c in OpClass}


def test_each_class_says_its_peak_fallback_and_category():
    assert OpClass.ATTENTION_MASKED.peak is OpClass.ATTENTION.peak is Peak.ATTENTION
    assert OpClass.GEMM.peak is OpClass.GROUPED_GEMM.peak is Peak.MATMUL
    assert OpClass.ATTENTION_MASKED.fallback is OpClass.ATTENTION
    assert OpClass.COPY.fallback is OpClass.ELEMENTWISE
    assert OpClass.COMM.over_link and not any(c.over_link for c in OpClass if c is not OpClass.COMM)
    assert f"{OpClass.GROUPED_GEMM}" == str(OpClass.GROUPED_GEMM) == "grouped_gemm"


@pytest.mark.parametrize("op_class, peak_symbol", [
    (OpClass.GEMM, peak), (OpClass.GROUPED_GEMM, peak),
    (OpClass.ATTENTION, peak_attn), (OpClass.ATTENTION_MASKED, peak_attn),
])
def test_op_time_runs_each_class_at_its_peak(op_class, peak_symbol):
    op = Op("anything", op_class, flops=2 * T, act_bytes=T, efficiency_size=T)
    compute = op_time(op, {}).compute
    assert peak_symbol in compute.free_symbols and ({peak, peak_attn} - {peak_symbol}).isdisjoint(
        compute.free_symbols)


def test_an_op_without_a_peak_moves_bytes_only():
    t = op_time(streaming("anything", T, passes=2), {})
    assert t.compute == 0 and bw in t.memory.free_symbols
    comm = op_time(Op("anything", OpClass.COMM, comm_bytes=T), {})
    assert comm.memory == 0 and link_bw in comm.link.free_symbols
    with pytest.raises(ValueError, match="counts FLOPs"):
        Op("anything", OpClass.ELEMENTWISE, flops=2 * T)


def _renamed(graph: ModelGraph) -> ModelGraph:
    """The same graph with every op and group given a meaningless name."""
    ops = lambda seq: tuple(replace(op, name=f"op{i}") for i, op in enumerate(seq))  # noqa: E731
    return ModelGraph(groups=tuple(LayerGroup(f"group{i}", g.count, ops(g.ops))
                                   for i, g in enumerate(graph.groups)),
                      head_ops=ops(graph.head_ops), tail_ops=ops(graph.tail_ops))


@pytest.mark.parametrize("name", ["gpt-oss-20b", "mixtral-8x7b", "deepseek-v2-lite"])
def test_memory_follows_roles_not_names(name):
    """The KV cache of windowed attention is capped at W and routed experts count k of E
    active parameters because the ops say so (``windowed``, ``Role.ROUTED_EXPERTS``): renaming
    every op and layer group changes neither."""
    from perfmodel.graph import model_values
    from perfmodel.symbols import B, S, b_e, b_kv, b_w, ep, pp, tp

    model = load_model(name)
    graph = build_graph(model, decode=True)
    values = {**model_values(model), B: 2, S: 8192, tp: 1, ep: 1, pp: 1, b_kv: 2, b_w: 2, b_e: 2}
    for quantity in (lambda g: kv_cache_bytes(g, S), active_parameter_count):
        assert float(quantity(_renamed(graph)).subs(values)) == float(quantity(graph).subs(values))
    if model.n_window_layers:  # the cap matters here: the cache of 8192 tokens exceeds W
        assert any(op.windowed for g in graph.groups for op in g.ops)


def test_profiler_categories_come_from_classes_and_roles():
    """The hf decode graph's ops map to the profiler's categories through their class (and
    the router through its role), whatever they are called."""
    from perfmodel.measuring.compare import op_categories

    spec = load_model("olmoe-1b-7b")
    categories = op_categories(spec, "hf", "h200-sxm")
    assert categories["attn.core"] == "attention" and categories["attn.kv_expand"] == "copy"
    assert categories["moe.experts"] == "expert_gemm" and categories["moe.router"] == "router_topk"
    assert categories["attn.qkv_proj"] == categories["lm_head"] == "dense_gemm"
    assert categories["attn.norm"] == categories["embed"] == "norm_elementwise"
    assert categories["comm.attn_all_reduce"] == "other"
    graph = build_graph(spec, decode=True, options=GraphOptions(decode_kv_expand=True))
    router = next(op for _, op in graph.all_ops() if op.role is Role.ROUTER)
    assert replace(router, name="anything").category is ProfilerCategory.ROUTER_TOPK


def test_routed_experts_are_two_expert_gemms():
    """The routed experts op is the gate|up and down GEMMs of the benchmark's grouped GEMM
    (:func:`perfmodel.ops.moe.gemm`) over the distinct experts touched: the fit's grouped rows
    and the model count the same FLOPs and bytes."""
    from perfmodel.ops.moe import expert_split, gemm, local_load, routed_experts
    from perfmodel.symbols import E, H, I_e, b_e, dp

    op = routed_experts(bias=False)  # the dp ranks' dp·T tokens over the GPUs holding the experts
    groups, shard = expert_split()
    rows, hit = local_load(dp * T, groups)  # the busiest GPU's
    up = gemm("up", OpClass.GROUPED_GEMM, rows=rows, d_in=H, d_out=2 * I_e / shard, matrices=hit, param_bytes=b_e)
    down = gemm("down", OpClass.GROUPED_GEMM, rows=rows, d_in=I_e / shard, d_out=H, matrices=hit, param_bytes=b_e)
    for field in ("flops", "bytes"):
        assert sp.simplify(getattr(op, field) - getattr(up, field) - getattr(down, field)) == 0
    assert sp.simplify(op.efficiency_size - up.efficiency_size) == 0
    assert op.kernels == up.kernels + down.kernels and op.role is Role.ROUTED_EXPERTS
    assert E in op.params.free_symbols
