"""The change band: the model's change of throughput against measured pairs that differ in one knob,
held out, and the line ``sweep --baseline`` prints from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perfmodel.commands import main
from perfmodel.measuring.compare import row_fitted
from perfmodel.profile import load_profile
from perfmodel.sweep_change import change_band, change_band_text
from perfmodel.paths import changes_file
from perfmodel.validate.change_band import BAND_PERCENTILE, KNOBS, METRICS, MIN_PAIRS, band, change_pairs
from perfmodel.validate.paper.measured import knobs, load_rows, predicted_metrics
from perfmodel.validate.validation import training_set


@pytest.fixture(scope="module")
def h100_pairs():
    return change_pairs("h100-sxm")


def _pair(knob, error, held_out=True):
    return {"knob": knob, "throughput_tok_s": {"ratio_error_pct": error}, "held_out": held_out}


def test_a_band_is_the_90th_percentile_of_held_out_errors_only():
    errors = [1.0, -2.0, 3.0, -4.0, 5.0, 6.0]
    pairs = [_pair("top_k", e) for e in errors] + [_pair("top_k", 50.0, held_out=False)]
    pairs += [_pair("quant", e) for e in errors[: MIN_PAIRS - 1]]
    out = band(pairs)
    top_k = out["top_k"]["throughput_tok_s"]
    assert top_k["pairs"] == 6 and top_k["fitted_pairs"] == 1
    assert top_k["band_pct"] == pytest.approx(np.percentile(np.abs(errors), BAND_PERCENTILE), abs=0.01)
    assert top_k["median_pct"] == pytest.approx(3.5) and top_k["within_10pct"] == 6
    quant = out["quant"]["throughput_tok_s"]
    assert quant["pairs"] == MIN_PAIRS - 1 and quant["band_pct"] is None  # too few for a band
    assert out["ffn"]["throughput_tok_s"] == {"pairs": 0, "fitted_pairs": 0, "band_pct": None, "median_pct": None,
                                              "within_10pct": 0}
    assert out["top_k"]["itl_s"]["pairs"] == 0  # a metric a pair does not have counts no pair


def test_each_pair_differs_in_its_knob_alone_and_its_error_is_the_models_minus_the_measured(h100_pairs):
    rows = load_rows("h100-sxm", "vllm")
    assert {p["knob"] for p in h100_pairs} == set(KNOBS)
    for p in h100_pairs:
        assert p["value"] != p["baseline"] and "throughput_tok_s" in p
        for metric in METRICS:
            if metric in p:
                e = p[metric]
                assert e["error_pp"] == pytest.approx(e["model_pct"] - e["measured_pct"], abs=1e-9)
                ratio = (1 + e["model_pct"] / 100) / (1 + e["measured_pct"] / 100)
                assert e["ratio_error_pct"] == pytest.approx(100 * (ratio - 1), abs=1e-9)
    # one pair checked against the committed rows themselves: fp8 against bf16 of a Mixtral skeleton
    by_id = {row["point_id"]: row for row in rows}
    fp8 = next(p for p in h100_pairs if p["knob"] == "quant" and p["value"] == "fp8")
    side, base = by_id[fp8["side_id"]], by_id[fp8["base_id"]]
    ks, kb = knobs(side), knobs(base)
    assert (ks["quant"], kb["quant"]) == ("fp8", "none")
    assert {n: v for n, v in ks.items() if n != "quant"} == {n: v for n, v in kb.items() if n != "quant"}
    for metric, field in METRICS.items():
        measured = 100 * (side[field] / base[field] - 1)
        assert fp8[metric]["measured_pct"] == pytest.approx(measured, rel=1e-9), metric
        model = 100 * (predicted_metrics(side, "vllm")[metric] / predicted_metrics(base, "vllm")[metric] - 1)
        assert fp8[metric]["model_pct"] == pytest.approx(model, rel=1e-9), metric


def test_held_out_means_no_side_was_fitted_on(h100_pairs):
    train, points = training_set(load_profile("vllm", "h100-sxm"), "h100-sxm")
    fitted = {r["point_id"] for r in load_rows("h100-sxm", "vllm") if row_fitted(r, train, points)}
    assert fitted  # the H100's fit read some of its rows
    assert sum(p["held_out"] for p in h100_pairs) >= MIN_PAIRS
    out = band(h100_pairs)
    assert sum(v["throughput_tok_s"]["pairs"] for v in out.values()) == sum(p["held_out"] for p in h100_pairs)


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200-sxm"])
def test_the_committed_band_is_what_the_committed_rows_give(gpu, tmp_path, capsys):
    main(["validate", "all", "--changes", "--gpu", gpu, "--out", str(tmp_path / "c.json"), "--json"])
    shown = json.loads(capsys.readouterr().out)
    fresh = json.loads((tmp_path / "c.json").read_text())
    committed = json.loads(changes_file("vllm", gpu).read_text())
    assert shown["knobs"] == fresh["knobs"]
    for knob in KNOBS:
        for metric in METRICS:
            ours, theirs = fresh["knobs"][knob][metric], committed["knobs"][knob][metric]
            assert ours["pairs"] == theirs["pairs"], (gpu, knob)  # rerun validate all --changes after new rows
            for field in ("band_pct", "median_pct"):
                assert (ours[field] is None) == (theirs[field] is None)
                if ours[field] is not None:
                    assert ours[field] == pytest.approx(theirs[field], abs=0.05), (gpu, knob, metric, field)


def test_sweep_names_the_band_of_the_knob_it_changes():
    committed = json.loads(changes_file("vllm", "h100-sxm").read_text())["knobs"]
    quant = change_band("dtype", ["h100-sxm"], "vllm")[0]
    assert quant["knob"] == "quant" and set(quant["metrics"]) == set(METRICS)
    assert quant["metrics"]["throughput_tok_s"]["band_pct"] == committed["quant"]["throughput_tok_s"]["band_pct"]
    pruned = change_band("prune_experts", ["h100-sxm", "h200-sxm"], "vllm")
    assert [b["knob"] for b in pruned] == ["num_experts", "num_experts"]
    text = change_band_text(pruned)
    assert "pairs of num_experts" in text and "h100-sxm: throughput ±" in text and "h200-sxm: throughput ±" in text
    assert "no measured pair varies batch" in change_band("batch", ["h100-sxm"], "vllm")[0]["none"]
    assert "not roofline" in change_band("quant", ["h100-sxm"], "roofline")[0]["none"]
    assert "no measured pairs" in change_band("quant", ["b200-sxm"], "vllm")[0]["none"]


def test_the_sweep_header_prints_the_band(capsys):
    main(["sweep", "qwen3-30b-a3b", "--gpu", "h200", "--grid", "top_k=4,8", "--baseline", "top_k=8"])
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("change band"))
    entry = json.loads(changes_file("vllm", "h200-sxm").read_text())["knobs"]["top_k"]
    for metric, name in (("throughput_tok_s", "throughput"), ("itl_s", "ITL"), ("ttft_s", "TTFT")):
        assert f"{name} ±{entry[metric]['band_pct']:.1f}% ({entry[metric]['pairs']} pairs)" in line


def test_rows_of_other_engine_settings_do_not_pair():
    from perfmodel.validate.change_band import _settings

    base = "vllm|olmoe-1b-7b|set=|layers=all|B=16|S=128|O=128|experts=vllm_fused_moe|dtype=bfloat16|graphs=1" \
           "|full=0|ep=0|moe_backend=triton|quant=none|tp=1"
    kv = base.replace("|tp=1", "|kv=fp8|tp=1")
    marlin = base.replace("moe_backend=triton|quant=none", "moe_backend=marlin|quant=w4a16")
    topk = base.replace("set=", "set=top_k=4")
    assert _settings({"point_id": base}, "top_k") != _settings({"point_id": kv}, "top_k")
    assert _settings({"point_id": base}, "quant") == _settings({"point_id": marlin}, "quant")  # its scheme's backend
    assert _settings({"point_id": base}, "top_k") != _settings({"point_id": marlin}, "top_k")
    assert _settings({"point_id": base}, "top_k") == _settings({"point_id": topk}, "top_k")  # the knob's own override


def test_the_sweep_report_draws_each_changes_band(tmp_path, capsys):
    from perfmodel.sweep_change import with_changes
    from perfmodel.sweep_report import band_limits
    from perfmodel.sweeps import sweep

    grid = {"batch": [1, 16], "quant": ["none", "fp8"], "gpu": ["h100", "h200"]}
    table = with_changes(sweep("mixtral-8x7b", grid), list(grid), "quant", "none")
    header = {"gpu": "h200-sxm", "baseline": {"key": "quant", "value": "none",
                                              "change_band": change_band("quant", ["h100-sxm", "h200-sxm"], "vllm")}}
    low, high = band_limits(table, "throughput_tok_s_vs_base_pct", header)
    bands = {b["gpu"]: b["metrics"]["throughput_tok_s"]["band_pct"] / 100 for b in header["baseline"]["change_band"]}
    for i, row in enumerate(table.itertuples(index=False)):
        if row.quant == "none":  # the baseline's own rows carry no band
            assert np.isnan(low[i]) and np.isnan(high[i])
            continue
        ratio, width = 1 + row.throughput_tok_s_vs_base_pct / 100, bands[f"{row.gpu}-sxm"]
        assert low[i] == pytest.approx(100 * (ratio * (1 - width) - 1))
        assert high[i] == pytest.approx(100 * (ratio * (1 + width) - 1))
    assert band_limits(table, "throughput_tok_s", header) is None  # a value, not a change
    main(["sweep", "mixtral", "--grid", "batch=1,16", "--grid", "quant=none,fp8", "--baseline", "quant=none",
          "--gpu", "h100", "--out", str(tmp_path / "q")])
    main(["sweep", "mixtral", "--grid", "batch=1,16", "--baseline", "batch=1", "--out", str(tmp_path / "b")])
    capsys.readouterr()
    assert '"band_low"' in (tmp_path / "q" / "report.html").read_text()
    assert '"band_low"' not in (tmp_path / "b" / "report.html").read_text()  # no measured pair varies the batch
