"""Measured comparisons of the paper report with several comparisons per effect (E9 pruning,
E10 speculative decoding), and the speculative-decoding knobs that keep plain and speculative
rows apart."""

from __future__ import annotations

import pytest
import yaml

from perfmodel import paths
from perfmodel.commands import main
from perfmodel.errors import SpecError
from perfmodel.measuring.compare import as_measured, prefill_skew, row_overrides
from perfmodel.specs.model import load_model
from perfmodel.validate.paper import measured
from perfmodel.validate.paper.effects import Measured, load_study
from perfmodel.validate.paper.report import PaperReport, measured_text

STUDY_FILE = paths.STUDIES_DIR / "moe-inference-bench.yaml"


@pytest.fixture(scope="module")
def rows():
    return measured.load_rows()


@pytest.fixture(scope="module")
def study():
    return load_study()


def _row(top_k: int, throughput: float, spec: str | None = None) -> dict:
    tags = "|quant=none|routing=uniform_random|sampling=random" + (f"|spec={spec}|spec_accept=0.7" if spec else "")
    point = f"vllm|olmoe-1b-7b|set=top_k={top_k}|layers=4|B=1|S=128|O=128{tags}|tp=1"
    return {"schema_version": 1, "status": "ok", "point_id": point,
            "model": "olmoe-1b-7b", "overrides": [f"top_k={top_k}"], "layers": 4, "batch": 1, "input_len": 128,
            "output_len": 128, "engine": {"quantization": "none", "tp": 1}, "throughput_tok_s": throughput,
            "spec_mean_accepted_len": 2.5 if spec else None, "measured_gpu": "h200-sxm"}


def test_a_speculative_row_is_another_point_than_the_plain_row_of_the_same_workload():
    plain, spec = _row(8, 1000.0), _row(8, 1500.0, "qwen3-1.7b:4")
    assert measured.knobs(plain)["spec"] == "none" and measured.knobs(plain)["spec_accept"] == "none"
    assert measured.knobs(spec)["spec"] == "qwen3-1.7b:4" and measured.knobs(spec)["spec_accept"] == "0.7"
    # the speculative top-8 row comes last: without the spec knobs it would be the pair's baseline
    (pair,) = measured.pairs([_row(1, 1200.0), plain, spec], Measured(vary="top_k", value=1, baseline=8), "vllm")
    assert pair.base is plain and pair.measured_pct == pytest.approx(20.0)
    assert "spec" not in pair.label and "α" not in pair.label


def test_speculative_rows_whose_verify_pass_ran_without_graphs_stand_in_no_pair(rows):
    from perfmodel.measuring.compare import load_measurements, verify_replayed
    from perfmodel.paths import RESULTS_DIR

    spec_rows = [r for r in rows if measured.knobs(r)["spec"] != "none"]
    assert {r["batch"] for r in spec_rows} == {1, 2, 4, 8, 16}
    assert all(measured.comparable(r) == verify_replayed(r) for r in spec_rows)
    assert all(measured.comparable(r) for r in rows if measured.knobs(r)["spec"] == "none")
    # the B = 16 rows measured before the runner captured graphs up to B·(γ + 1) are kept apart
    graphless = load_measurements(RESULTS_DIR / "h200-vllm-whatif-graphless.jsonl")
    assert graphless and not any(measured.comparable(r) for r in graphless)


def test_an_effect_takes_one_comparison_or_a_list(study):
    assert study.effect("E1").measured == [Measured(vary="quant", value="fp8", baseline="none")]
    e9 = study.effect("E9").measured
    assert [(m.vary, m.value, m.baseline) for m in e9] == [
        ("num_experts", 56, 64), ("num_experts", 48, 64), ("num_experts", 32, 64),
        ("ffn", 896, 1024), ("ffn", 768, 1024), ("ffn", 512, 1024)]
    assert [m.value for m in study.effect("E10").measured] == ["qwen3-1.7b:4", "qwen3-1.7b:4", "qwen3-0.6b:4",
                                                                "qwen3-1.7b:8"]
    assert study.effect("E5").measured == [Measured(vary="moe_impl", value="fused", baseline="unfused", engine="hf")]
    assert study.effect("E7").measured == []


def _hf_rows():
    return measured.load_rows("h200-sxm", "hf")


def test_the_fused_vs_unfused_comparison_pairs_transformers_rows_alone(study):
    comparison = study.effect("E5").measured[0]
    hf = _hf_rows()
    vllm = measured.load_rows()
    found = measured.pairs(hf + vllm, comparison, "vllm")
    assert found and not measured.pairs(vllm, comparison, "vllm")
    skewed = 0
    for pair in found:
        assert pair.side["backend"] == pair.base["backend"] == "hf"
        assert "experts=grouped_mm" in pair.side["point_id"] and "experts=eager" in pair.base["point_id"]
        assert pair.side["point_id"].replace("grouped_mm", "eager") == pair.base["point_id"]
        # predicted with the hf profile, each side with its own MoE implementation; the eager
        # loop's decode steps (timed as kernel sums: it cannot be captured) at their kernel time
        shape = tuple(row_overrides(pair.side))
        fused = measured._predicted("h200-sxm", pair.side["model"], shape, pair.side["batch"],
                                    pair.side["input_len"], pair.side["output_len"], None, "hf")
        unfused = measured._predicted("h200-sxm", pair.base["model"], shape, pair.base["batch"],
                                      pair.base["input_len"], pair.base["output_len"], None, "hf", (),
                                      "unfused")
        assert pair.base["decode_method"] == "kernel_sum" and pair.side["decode_method"] == "cuda_graph"
        assert pair.predicted_side == pytest.approx(fused["throughput_tok_s"])
        # and its prefill at the routing it ran, where the row recorded it
        skew = prefill_skew(pair.base, load_model(pair.base["model"], list(shape)))
        skewed += skew > 0
        prefill = (measured._predicted("h200-sxm", pair.base["model"], shape, pair.base["batch"],
                                       pair.base["input_len"], pair.base["output_len"], None, "hf", (), "unfused",
                                       "prefill", skew)["prefill_s"] if skew > 0 else None)
        kernel_steps = as_measured(unfused, pair.base, prefill)
        assert kernel_steps["itl_s"] == pytest.approx(unfused["decode_kernels_s"])
        assert kernel_steps["itl_s"] < unfused["itl_s"]
        assert pair.predicted_base == pytest.approx(kernel_steps["throughput_tok_s"])
        assert pair.predicted_base > unfused["throughput_tok_s"]
    assert skewed >= 1  # OLMoE's one-sequence eager prefill: random weights touched fewer experts
    assert measured.knobs(found[0].base)["moe_impl"] == "unfused"
    # a vLLM comparison never takes a transformers row
    e1 = study.effect("E1").measured[0]
    assert all(p.side["backend"] == "vllm" for p in measured.pairs(hf + vllm, e1, "vllm"))


def test_a_bad_comparison_in_a_list_is_one_clear_error(tmp_path, capsys):
    data = yaml.safe_load(STUDY_FILE.read_text())
    e9 = next(e for e in data["effects"] if e["id"] == "E9")
    e9["measured"][1]["vary"] = "experts"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match=r"effects\.8\.measured\.1\.vary: Input should be 'quant'"):
        load_study(bad)
    with pytest.raises(SystemExit) as info:
        main(["report", "paper", "--study", str(bad), "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert info.value.code == 2 and "Traceback" not in out + err
    assert line.startswith("perfmodel: error: ") and "measured.1.vary" in line


def test_e9_pruned_olmoe_is_faster_and_the_model_follows_it(rows, study):
    pairs = measured.effect_pairs(rows, study.effect("E9").measured, "vllm")
    assert len(pairs) == 12 and {p.keys["model"] for p in pairs} == {"olmoe-1b-7b"}
    by = {(measured.compares_text(p.comparison), p.keys["batch"]): p for p in pairs}
    half = by["E=32 vs 64", 16]
    assert "E=32 vs 64" in half.label and "F=1024" in half.label and "B=16" in half.label
    assert half.measured_pct > 20 and abs(half.predicted_pct - half.measured_pct) < 10
    assert by["F=512 vs 1024", 16].measured_pct > 20
    for knob, values, base in (("E", (56, 48, 32), 64), ("F", (896, 768, 512), 1024)):
        gains = [by[f"{knob}={v} vs {base}", 16].measured_pct for v in values]
        assert 0 < gains[0] < gains[1] < gains[2]  # more pruning, more throughput
    assert all(p.measured_pct > 0 and abs(p.predicted_pct - p.measured_pct) < 10 for p in pairs)


def test_e10_draft_comparisons_with_the_model_at_the_measured_tokens_per_step(rows, study):
    comparisons = study.effect("E10").measured
    pairs = measured.effect_pairs(rows, comparisons, "vllm")
    assert all(p.comparison in comparisons for p in pairs) and {p.keys["batch"] for p in pairs} == {1, 16}
    by = {(measured.compares_text(p.comparison), p.keys["batch"]): p for p in pairs}
    over_8b, over_4b = by["spec=qwen3-1.7b:4 vs qwen3-8b:4", 1], by["spec=qwen3-1.7b:4 vs qwen3-4b:4", 1]
    small = by["spec=qwen3-0.6b:4 vs qwen3-1.7b:4", 1]
    # the 1.7B draft at B = 1 was measured on two engine starts (its throughput is their mean)
    assert over_8b.side["repeats"] == 2 and over_8b.base["repeats"] == 1
    assert over_8b.measured_pct > 25 and over_4b.measured_pct > 0 and -15 < small.measured_pct < 30
    assert over_8b.predicted_pct > over_4b.predicted_pct > 0  # the model ranks the drafts as measured
    assert all(abs(p.predicted_pct - p.measured_pct) < 20 for p in (over_8b, over_4b))
    # the 0.6B draft's gain over the 1.7B is the largest miss (measured +25%, the model +5%): its
    # passes cost vLLM's host more than their GPU time, which the model charges by size
    assert 0 < small.predicted_pct < small.measured_pct < small.predicted_pct + 25
    # ... within the spread of the 1.7B draft's two measurements, which the pair shows: the change
    # from the lowest to the highest, each side's extremes against the other's
    low, high = small.measured_span_pct
    span = small.base["throughput_span"]
    assert span[0] < small.measured_base < span[1] and small.side["repeats"] == 1
    assert low == pytest.approx(100 * (small.measured_side / span[1] - 1))
    assert high == pytest.approx(100 * (small.measured_side / span[0] - 1))
    assert low < small.predicted_pct < high
    assert by["spec=qwen3-1.7b:8 vs qwen3-1.7b:2", 1].measured_span_pct is None  # each side measured once
    assert "α=0.7" in over_8b.label and "spec=qwen3-1.7b:4 vs qwen3-8b:4" in over_8b.label
    # more draft tokens, less throughput (γ 8 vs 2, 1.7B draft): measured and predicted, B = 1 and 16
    for batch in (1, 16):
        gamma = by["spec=qwen3-1.7b:8 vs qwen3-1.7b:2", batch]
        assert gamma.measured_pct < -30 and gamma.predicted_pct < -15
    # at B = 16 the draft's size matters less in vLLM than at B = 1 (its passes are host-bound);
    # the model's draft passes follow their GPU time and overstate the difference
    wide = by["spec=qwen3-1.7b:4 vs qwen3-8b:4", 16]
    assert wide.measured_pct < over_8b.measured_pct and wide.measured_pct < wide.predicted_pct
    # speculative rows are predicted with their draft: the throughput is not the plain row's
    plain = measured.predicted_throughput(over_8b.side | {"point_id": "vllm|qwen3-30b-a3b|x|tp=1"}, "vllm")
    assert over_8b.predicted_side < 0.9 * plain

    report = PaperReport(study, "h100-sxm", "vllm", {}, {}, [], {"E10": pairs}, {})
    text = measured_text(report, "E10")
    assert text.startswith(f"H200 qwen3-30b-a3b, {len(pairs)} pairs: spec=qwen3-1.7b:4 vs qwen3-8b:4 +")
    assert measured_text(report, "E7") == "not measured" and measured_text(report, "E9") == "no measured pair"
    assert measured_text(report, "E5") == "no measured pair"


def test_the_model_is_judged_against_our_measurements_pair_by_pair():
    from perfmodel.validate.paper.verdict import NO_VALUE, OFF, PARTLY, TRACKS, judge_tracking

    assert judge_tracking([10.0, -20.0], [15.0, -25.0], 10.0).verdict == TRACKS
    partly = judge_tracking([10.0, -20.0], [15.0, 5.0], 10.0)
    assert partly.verdict == PARTLY and partly.within == 1
    assert "largest 25 pp" in partly.shown and partly.shown.startswith("partly: 1 of 2 pairs")
    assert judge_tracking([50.0], [0.0], 10.0).verdict == OFF
    empty = judge_tracking([], [], 10.0)
    assert empty.verdict == NO_VALUE and empty.shown == "–"


def test_rows_whose_routing_collapsed_stand_in_no_pair(rows, study):
    from perfmodel.measuring.routing_floor import routing_group

    kept, left_out = measured.without_collapsed_routing(rows)
    # Qwen3-30B-A3B in fp8 at its own router beat the HBM floor of uniform routing: left out;
    # the same model in fp8 through vLLM's uniform routing simulator stays
    assert "qwen3-30b-a3b fp8" in left_out
    assert ("qwen3-30b-a3b", "fp8", "model") not in {routing_group(r) for r in kept}
    assert ("qwen3-30b-a3b", "fp8", "uniform_random") in {routing_group(r) for r in kept}
    assert len(kept) < len(rows)
    # E1's Qwen3 pairs are then fp8 against bf16, both at the uniform routing simulator
    e1 = measured.effect_pairs(kept, study.effect("E1").measured, "vllm")
    qwen = [p for p in e1 if p.keys["model"] == "qwen3-30b-a3b"]
    assert qwen and all(p.keys["routing"] == "uniform_random" for p in qwen)
    assert all(abs(p.measured_pct - p.predicted_pct) < 25 for p in qwen)


def test_e8_at_full_depth_follows_the_model_and_a_pair_says_how_busy_the_gpu_was(rows, study):
    """The seed's E8 measured at full depth (DeepSeek-V2-Lite, Qwen1.5-MoE, top-k 1 → 32): the
    model within 10 pp at every GPU-bound pair; each pair carries its profiled steps' GPU share
    (busy time / ITL), which tells the host-bound 8-layer pairs apart."""
    pairs = measured.effect_pairs(rows, study.effect("E8").measured, "vllm")
    host_bound = [p for p in pairs if p.keys["layers"] == 8]
    full = [p for p in pairs if p not in host_bound]
    # (and gpt-oss-20b's MXFP4 experts at B = 1, top-k 1 → 32 through --set: the tiled kernel's waves)
    assert {p.keys["model"] for p in full} == {"deepseek-v2-lite", "qwen1.5-moe-a2.7b", "gpt-oss-20b"}
    assert len(full) == 9
    for p in full:
        assert all(share is not None and share > 0.8 for share in p.gpu_busy)
        assert p.measured_pct < -30 and abs(p.predicted_pct - p.measured_pct) < 10
    assert host_bound and all(p.gpu_busy[1] is not None and p.gpu_busy[1] < 0.7 for p in host_bound)
    assert measured.gpu_busy({"itl_ms": 2.0, "decode_profile": {"busy_ms": 1.0}}) == pytest.approx(0.5)
    assert measured.gpu_busy({"itl_ms": 2.0, "decode_profile": None}) is None
    assert host_bound[0].gpu_busy_text.startswith("– / ") and host_bound[0].gpu_busy_text.endswith("%")


def test_pairs_stay_on_their_gpu_and_are_predicted_with_its_fit(study):
    rows, left_out = measured.without_collapsed_routing(measured.load_sources())
    # Qwen3-30B-A3B's fp8 decode steps at its own router beat uniform routing's floor on the H100
    assert "qwen3-30b-a3b fp8 on h100-sxm" in left_out
    h100_qwen3 = [measured.knobs(r) for r in rows if r["measured_gpu"] == "h100-sxm" and r["model"] == "qwen3-30b-a3b"]
    assert h100_qwen3 and {k["quant"] for k in h100_qwen3} == {"none", "fp8"}
    assert {k["routing"] for k in h100_qwen3 if k["quant"] == "fp8"} == {"uniform_random"}  # the simulator's stay
    found = measured.pairs(rows, study.effect("E6").measured[0], "vllm")
    h100 = [p for p in found if p.keys["gpu"] == "h100-sxm"]
    assert {(p.keys["model"], p.keys["batch"]) for p in h100} >= {
        ("olmoe-1b-7b", 1), ("olmoe-1b-7b", 16), ("qwen1.5-moe-a2.7b", 1), ("qwen1.5-moe-a2.7b", 16)}
    for p in h100:
        assert p.side["measured_gpu"] == p.base["measured_gpu"] == "h100-sxm" and p.label.startswith("H100 ")
        assert "H100" in p.side["gpu_name"] and "H100" in p.base["gpu_name"]
        on_h200 = measured.predicted_throughput({**p.base, "measured_gpu": "h200-sxm"}, "vllm")
        assert p.predicted_base == pytest.approx(measured.predicted_throughput(p.base, "vllm"))
        if p.keys["batch"] >= 16:  # the H100's own fit, not the H200's, where the GPU sets the time
            assert abs(p.predicted_base / on_h200 - 1) > 0.02  # (at B = 1 the host does: its terms are shared)
    assert all(p.side["measured_gpu"] == p.base["measured_gpu"] for p in found)


def test_on_the_papers_gpu_our_vllm_follows_the_model_where_the_paper_differs(study):
    """The H100 (the paper's GPU): the Mixtral skeleton's top-k, FFN width and expert count (E2,
    E3, E4) and top-k 1 → 32 on the two models of E8, each pair within 10 pp of the model and,
    in bf16, outside the paper's claimed range by more than that (the skeleton's FFN width in
    fp8, −46%, lies within 10 pp of the paper's ≈ −50%, and of the model's −43%). The exception:
    top-1 vs top-8 at FFN 1,792, whose 8-layer decode steps sit where the host's time meets the
    GPU's (2.1–2.6 ms modelled at the reference host, 2.0–2.9 ms measured) and whose rows probed
    the host at 31 to 81 ms in one lease: the model's host time follows each row's probe, the
    engine's steps moved less (14 and 27 pp apart)."""
    rows, _ = measured.without_collapsed_routing(measured.load_sources())
    h100 = [r for r in rows if r["measured_gpu"] == "h100-sxm"]
    # the paper's ranges (%) each pair is checked against, by effect
    paper = {"E2": (60, 80), "E3": (-50, -50), "E4": (0, 15), "E8": (-8, -4)}
    for effect, (low, high) in paper.items():
        pairs = measured.effect_pairs(h100, study.effect(effect).measured, "vllm")
        assert pairs, effect
        for p in pairs:
            host_set = effect == "E2" and "F=1792" in p.label
            assert p.keys["gpu"] == "h100-sxm" and abs(p.predicted_pct - p.measured_pct) < (30 if host_set else 10), \
                p.label
            if p.keys.get("quant") in (None, "none") and (effect != "E8" or p.keys["batch"] <= 16):
                # E8's −4…−8% is the paper's claim at B ≤ 16
                assert p.measured_pct < low - 10 or p.measured_pct > high + 10, p.label
