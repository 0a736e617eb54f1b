"""vLLM's data parallelism (``dp``) and expert parallelism (``expert_parallel``) in the model.

dp ranks of tp GPUs each run the attention of their own B/dp sequences; the MoE layers span all
ranks: the ranks' tokens are gathered before the experts, whose weights are spread over the
tp·dp GPUs (widths split, or whole experts with ``expert_parallel``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp
from perfmodel import predict, sweep
from perfmodel import symbols as s
from perfmodel.commands import main
from perfmodel.errors import InputError
from perfmodel.ops.comm import dp_gather
from perfmodel.ops.moe import dispatch, expert_split, expert_tokens, local_load, routed_experts
from perfmodel.specs.layout import expected_max_normal
from perfmodel.specs.model import load_model

MODEL = "deepseek-v2-lite"  # MLA: tp replicates its latent cache, dp splits it
KW = dict(engine="roofline", gpu="h200-sxm", input_len=512, output_len=128)


def _ops(p) -> dict[tuple[str, str], dict]:
    return {(op["pass"], op["name"]): op for op in p.ops}


def _expert_bytes(model: str) -> float:
    """Bytes of the routed experts' weights (bf16), the model's whole."""
    spec = load_model(model)
    moe_layers = spec.n_layers - spec.n_dense_layers
    return moe_layers * spec.moe.n_experts * 3 * spec.hidden * spec.moe.expert_intermediate * 2


def test_a_rank_holds_its_own_sequences_cache_and_the_experts_are_spread_over_the_ranks():
    one = predict(MODEL, batch=16, **KW).metrics
    dp4 = predict(MODEL, batch=16, dp=4, **KW).metrics
    tp4 = predict(MODEL, batch=16, tp=4, **KW).metrics
    # MLA's latent cache: the same on each of 4 TP GPUs as on one, a quarter on each DP rank
    assert tp4["kv_cache_bytes"] == pytest.approx(one["kv_cache_bytes"], rel=1e-12)
    assert dp4["kv_cache_bytes"] == pytest.approx(one["kv_cache_bytes"] / 4, rel=1e-12)
    # every rank keeps the attention and dense layers whole; three quarters of the experts leave each GPU
    assert one["weights_bytes"] - dp4["weights_bytes"] == pytest.approx(0.75 * _expert_bytes(MODEL), rel=1e-9)
    assert predict(MODEL, batch=16, dp=4, **KW).workload.gpus == 4


def test_throughputs_count_every_rank_and_the_experts_serve_all_ranks_tokens():
    p = predict(MODEL, batch=16, dp=4, phase="decode", **KW)
    m = p.metrics
    assert m["throughput_tok_s"] == pytest.approx(16 / m["itl_s"], rel=1e-12)
    one = _ops(predict(MODEL, batch=16, phase="decode", **KW))
    ops = _ops(p)
    # the expert layer computes the 16 gathered tokens' rows at a quarter of the width
    assert ops[("decode", "moe.experts")]["flops"] == pytest.approx(one[("decode", "moe.experts")]["flops"] / 4,
                                                                    rel=1e-12)
    # the attention runs a rank's 4 sequences
    four = _ops(predict(MODEL, batch=4, phase="decode", **KW))
    assert ops[("decode", "attn.core")]["flops"] == pytest.approx(four[("decode", "attn.core")]["flops"], rel=1e-12)
    assert ops[("decode", "comm.moe_dp_gather")]["time_s"] > 0 == one[("decode", "comm.moe_dp_gather")]["time_s"]


def test_the_ranks_exchange_their_tokens_hidden_states_twice_and_the_logits_once():
    op = dp_gather("g")
    assert sp.simplify(op.comm_bytes - (s.dp - 1) * s.T * (2 * s.H + s.E) * s.b_a) == 0
    assert op.comm_bytes.subs(s.dp, 1) == 0 and op.fixed_latency.subs(s.dp, 1) == 0


def test_expert_parallelism_places_whole_experts_and_dispatches_only_their_rows():
    assert [sp.simplify(x.subs(s.x_ep, 0)) for x in expert_split()] == [s.ep, s.tp * s.dp]
    assert [sp.simplify(x.subs(s.x_ep, 1)) for x in expert_split()] == [s.ep * s.tp * s.dp, 1]
    op, moved = routed_experts(False), dispatch()
    at = {s.T: 64, s.E: 64, s.k: 6, s.sigma: 0, s.ep: 1, s.tp: 4, s.dp: 2, s.H: 2048, s.I_e: 1408, s.b_e: 2,
          s.b_a: 2, s.b_w: 2}
    split, whole = {**at, s.x_ep: 0}, {**at, s.x_ep: 1}
    even = {s.z_busy: 0}  # every GPU at the mean: the same FLOPs and bytes either way
    for field in ("flops", "weight_bytes", "stored_bytes"):
        expr = getattr(op, field)
        assert float(expr.subs({**whole, **even})) == pytest.approx(float(expr.subs({**split, **even})), rel=1e-12)
    # the dispatch moves only the rows routed to a GPU's own experts: 1/(tp·dp) of the gathered rows
    rows = float((expert_tokens() * s.k * s.H * s.b_a).subs(at))
    assert float(moved.act_bytes.subs({**split, **even})) == pytest.approx(6 * rows, rel=1e-12)
    assert float(moved.act_bytes.subs({**whole, **even})) == pytest.approx(6 * rows / 8, rel=1e-12)
    # the step waits for the busiest of the 8 GPUs: more rows and touched experts than the mean
    busy = {s.z_busy: expected_max_normal(8)}
    assert float(op.flops.subs({**whole, **busy})) > float(op.flops.subs({**whole, **even}))
    assert float(op.weight_bytes.subs({**whole, **busy})) > float(op.weight_bytes.subs({**whole, **even}))
    assert float(op.flops.subs({**split, **busy})) == float(op.flops.subs({**split, **even}))  # every GPU alike


def test_the_busiest_gpu_holds_at_most_its_experts_and_matches_a_monte_carlo_draw():
    """local_load's touched experts against uniform routing drawn at random: 64 experts over 8
    GPUs, top-6, at 1 to 64 tokens (within 10%), never above the 8 experts a GPU holds."""
    rng = np.random.default_rng(0)
    fn = sp.lambdify((s.T,), local_load(s.T, 8)[1].subs({s.E: 64, s.k: 6, s.sigma: 0,
                                                           s.z_busy: expected_max_normal(8)}), "numpy")
    for tokens in (1, 4, 16, 64):
        draws = [np.bincount(np.unique(np.concatenate([rng.choice(64, 6, replace=False) for _ in range(tokens)]))
                             // 8, minlength=8).max() for _ in range(4000)]
        assert float(fn(tokens)) == pytest.approx(np.mean(draws), rel=0.10), tokens
        assert float(fn(tokens)) <= 8


def test_expert_parallelism_over_tp_gpus_dispatches_less_and_waits_for_its_busiest_gpu():
    tp = predict(MODEL, batch=64, tp=4, **KW)
    ep = predict(MODEL, batch=64, tp=4, expert_parallel=True, **KW)
    assert ep.workload.gpus == tp.workload.gpus == 4
    assert ep.metrics["weights_bytes"] == pytest.approx(tp.metrics["weights_bytes"])
    a, b = _ops(tp), _ops(ep)
    assert b[("prefill", "moe.dispatch")]["bytes"] < a[("prefill", "moe.dispatch")]["bytes"] / 3.5
    # a decode step of 4 sequences touches about 21 of the 64 experts, 5.2 of each GPU's 16 on
    # average: the step waits for the GPU whose own were touched most, and reads more weights
    split, whole = (_ops(predict(MODEL, batch=4, tp=4, expert_parallel=e, **KW))[("decode", "moe.experts")]
                    for e in (False, True))
    assert whole["bytes"] > 1.2 * split["bytes"]
    assert ep.to_dict()["workload"]["expert_parallel"] is True


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch=6, dp=4), "batch (6) must be a multiple of dp (4)"),
    (dict(batch=8, dp=2, ep=2), "dp (2) and ep (2) are not combined"),
    (dict(batch=8, tp=2, ep=2, expert_parallel=True), "expert parallelism (vLLM's, over the tp·dp GPUs) and ep"),
    (dict(model="mixtral-8x7b", batch=16, dp=16, expert_parallel=True),
     "with expert parallelism tp·dp (1·16) must divide the number of experts (8)"),
    (dict(model="mixtral-8x7b", batch=3, dp=3), "tp·dp (1·3) must divide the experts' FFN width (14336)"),
])
def test_layouts_vllm_would_refuse_are_refused_in_one_line(kwargs, message):
    model = kwargs.pop("model", MODEL)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predict(model, **{**KW, **kwargs})


def test_the_command_line_takes_the_layout_and_says_its_gpus(capsys):
    main(["predict", MODEL, "-b", "16", "--dp", "4", "--expert-parallel", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"] == 4 and data["workload"]["dp"] == 4 and data["workload"]["expert_parallel"] is True
    with pytest.raises(SystemExit) as info:
        main(["predict", MODEL, "-b", "6", "--dp", "4"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.splitlines() == [
        "perfmodel: error: batch (6) must be a multiple of dp (4): each data-parallel rank runs batch/dp sequences"]


def test_a_sweep_at_a_dp_layout_is_predict_at_each_point():
    table = sweep(MODEL, {"batch": [8, 32]}, dp=8, expert_parallel=True, engine="roofline", input_len=512,
                  output_len=128)
    assert (table["gpus"] == 8).all()
    for _, row in table.iterrows():
        p = predict(MODEL, batch=int(row["batch"]), dp=8, expert_parallel=True, **KW).metrics
        for metric in ("ttft_s", "itl_s", "throughput_tok_s", "kv_cache_bytes"):
            assert row[metric] == pytest.approx(p[metric], rel=1e-9), metric
    with pytest.raises(InputError, match="multiple of dp"):
        sweep(MODEL, {"batch": [8, 12]}, dp=8, engine="roofline")


def test_a_sweep_over_dp_is_predict_at_each_point_and_drops_batches_the_ranks_cannot_share():
    table = sweep(MODEL, {"dp": [1, 2, 4], "batch": [4, 6]}, expert_parallel=True, engine="vllm",
                  input_len=512, output_len=128)  # an engine of KV waves: its count of sequences is all ranks'
    assert sorted(zip(table["dp"], table["batch"])) == [(1, 4), (1, 6), (2, 4), (2, 6), (4, 4)]
    assert table.attrs["dropped"]["reasons"] == ["dp=4, batch=6: batch (6) must be a multiple of dp (4): each "
                                                 "data-parallel rank runs batch/dp sequences"]
    for _, row in table.iterrows():
        p = predict(MODEL, batch=int(row["batch"]), dp=int(row["dp"]), expert_parallel=True,
                    **{**KW, "engine": "vllm"})
        assert row["gpus"] == p.workload.gpus
        for metric in ("ttft_s", "itl_s", "throughput_tok_s", "kv_cache_bytes", "weights_bytes",
                       "concurrent_sequences"):
            assert row[metric] == pytest.approx(p.metrics[metric], rel=1e-9, abs=1), metric


def test_ranks_run_in_waves_of_their_own_and_the_count_is_all_ranks():
    """A batch whose cache does not fit a rank at once: each rank runs its share in waves."""
    p = predict("deepseek-v3", gpu="h200-sxm", batch=2048, input_len=8192, output_len=1024, dp=8,
                expert_parallel=True)
    m = p.metrics
    assert m["kv_waves"] > 1 and m["concurrent_sequences"] % 8 == 0
    assert m["throughput_tok_s"] == pytest.approx(2048 * (8192 + 1024) / m["e2e_s"], rel=1e-9)


def test_the_planner_searches_vllms_expert_and_data_parallel_layouts():
    from perfmodel.planning.candidates import Engine
    from perfmodel.planning.search import layouts
    from perfmodel.specs.layout import Layout

    found = layouts(load_model("deepseek-v3"), 8, 8)
    assert {Layout(8), Layout(8, 1, 1, 1, True), Layout(1, 1, 1, 8, True), Layout(2, 1, 1, 4, True)} <= set(found)
    assert not any(lay.dp > 1 or lay.expert_parallel for lay in layouts(load_model("llama-3.1-8b"), 8, 8))
    without = layouts(load_model("deepseek-v3"), 8, 8, expert_parallel=False)  # plan --no-expert-parallel
    assert without and not any(lay.dp > 1 or lay.expert_parallel for lay in without)
    assert Engine("h200-sxm", "bf16", Layout(2, 1, 1, 4, True), 128, 8192).layout_label() == "TP2·DP4+EP"
    assert Layout(2, 1, 2, 1).streams == 2 and Layout(1, 1, 1, 8, True).streams == 8


def test_deepseek_v3_on_h200s_is_planned_with_data_parallel_attention(capsys):
    """Its latent cache, which TP replicates on every GPU, is split over DP ranks: the cheapest
    layout that meets the targets is data-parallel with whole experts per GPU, and without expert
    parallelism (--no-expert-parallel) none within 64 GPUs does."""
    main(["plan", "deepseek-v3", "--rate", "30", "-s", "2048", "-o", "512", "--ttft-p90", "2", "--itl-p90",
          "0.08", "--gpu", "h200", "--no-disagg", "--json"])
    chosen = json.loads(capsys.readouterr().out)["chosen"]
    assert chosen["layout"]["dp"] > 1 and chosen["layout"]["expert_parallel"] is True
    assert chosen["gpus"] == chosen["replicas"] * chosen["layout"]["tp"] * chosen["layout"]["dp"]
    # without them, every GPU holds every sequence's latent cache: no layout within 64 GPUs meets the ITL
    with pytest.raises(SystemExit) as info:
        main(["plan", "deepseek-v3", "--rate", "30", "-s", "2048", "-o", "512", "--ttft-p90", "2", "--itl-p90",
              "0.08", "--gpu", "h200", "--no-disagg", "--no-expert-parallel"])
    out = capsys.readouterr().out
    assert info.value.code == 1 and "No configuration meets every SLO" in out and "+EP" not in out


def test_speculative_decoding_runs_a_dense_draft_on_every_rank():
    p = predict("qwen3-30b-a3b", batch=16, dp=2, expert_parallel=True, spec_draft="qwen3-1.7b", spec_tokens=4,
                spec_accept=0.7, engine="roofline", input_len=512, output_len=512)
    m = p.metrics
    assert p.workload.gpus == 2 and m["throughput_tok_s"] == pytest.approx(16 * 1024 / m["e2e_s"], rel=1e-9)


def test_the_fit_hint_counts_the_data_parallel_ranks_gpus():
    from perfmodel.fit_hint import ways_to_fit

    base = dict(model="mixtral-8x22b", gpu="h100-sxm", batch=2, expert_parallel=True)
    # 8 GPUs in all: at --tp 2 (4 GPUs) each holds 68 GiB of weights, less room than the
    # activations vLLM reserves at start-up leave
    assert [w["flags"] for w in ways_to_fit({**base, "dp": 2})][0] == "--tp 4"
    # at dp = 8 a larger tp would take 16 GPUs: none is tried (one host's 8 at most)
    assert not any(w["flags"].startswith("--tp") for w in ways_to_fit({**base, "batch": 8, "dp": 8, "quant": "none"}))
