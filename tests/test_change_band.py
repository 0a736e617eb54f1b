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
from perfmodel.validate.change_band import BAND_PERCENTILE, KNOBS, MIN_PAIRS, band, change_pairs, changes_file
from perfmodel.validate.paper.measured import knobs, load_rows
from perfmodel.validate.validation import training_set


@pytest.fixture(scope="module")
def h100_pairs():
    return change_pairs("h100-sxm")


def _pair(knob, error, held_out=True):
    return {"knob": knob, "error_pp": error, "held_out": held_out}


def test_a_band_is_the_90th_percentile_of_held_out_errors_only():
    errors = [1.0, -2.0, 3.0, -4.0, 5.0, 6.0]
    pairs = [_pair("top_k", e) for e in errors] + [_pair("top_k", 50.0, held_out=False)]
    pairs += [_pair("quant", e) for e in errors[: MIN_PAIRS - 1]]
    out = band(pairs)
    assert out["top_k"]["pairs"] == 6 and out["top_k"]["fitted_pairs"] == 1
    assert out["top_k"]["band_pp"] == pytest.approx(np.percentile(np.abs(errors), BAND_PERCENTILE), abs=0.01)
    assert out["top_k"]["median_pp"] == pytest.approx(3.5) and out["top_k"]["within_10pp"] == 6
    assert out["quant"]["pairs"] == MIN_PAIRS - 1 and out["quant"]["band_pp"] is None  # too few for a band
    assert out["ffn"] == {"pairs": 0, "fitted_pairs": 0, "band_pp": None, "median_pp": None, "within_10pp": 0}


def test_each_pair_differs_in_its_knob_alone_and_its_error_is_the_models_minus_the_measured(h100_pairs):
    rows = load_rows("h100-sxm", "vllm")
    assert {p["knob"] for p in h100_pairs} == set(KNOBS)
    for p in h100_pairs:
        assert p["value"] != p["baseline"]
        assert p["error_pp"] == pytest.approx(p["model_pct"] - p["measured_pct"], abs=1e-9)
    # one pair checked against the committed rows themselves: fp8 against bf16 of a Mixtral skeleton
    by_id = {row["point_id"]: row for row in rows}
    fp8 = next(p for p in h100_pairs if p["knob"] == "quant" and p["value"] == "fp8")
    side, base = by_id[fp8["side_id"]], by_id[fp8["base_id"]]
    ks, kb = knobs(side), knobs(base)
    assert (ks["quant"], kb["quant"]) == ("fp8", "none")
    assert {n: v for n, v in ks.items() if n != "quant"} == {n: v for n, v in kb.items() if n != "quant"}
    measured = 100 * (side["throughput_tok_s"] / base["throughput_tok_s"] - 1)
    assert fp8["measured_pct"] == pytest.approx(measured, rel=1e-9)


def test_held_out_means_no_side_was_fitted_on(h100_pairs):
    train, points = training_set(load_profile("vllm", "h100-sxm"), "h100-sxm")
    fitted = {r["point_id"] for r in load_rows("h100-sxm", "vllm") if row_fitted(r, train, points)}
    assert fitted  # the H100's fit read some of its rows
    assert sum(p["held_out"] for p in h100_pairs) >= MIN_PAIRS
    out = band(h100_pairs)
    assert sum(v["pairs"] for v in out.values()) == sum(p["held_out"] for p in h100_pairs)


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200-sxm"])
def test_the_committed_band_is_what_the_committed_rows_give(gpu, tmp_path, capsys):
    main(["validate", "all", "--changes", "--gpu", gpu, "--out", str(tmp_path / "c.json"), "--json"])
    shown = json.loads(capsys.readouterr().out)
    fresh = json.loads((tmp_path / "c.json").read_text())
    committed = json.loads(changes_file(gpu).read_text())
    assert shown["knobs"] == fresh["knobs"]
    for knob in KNOBS:
        ours, theirs = fresh["knobs"][knob], committed["knobs"][knob]
        assert ours["pairs"] == theirs["pairs"], (gpu, knob)  # rerun validate all --changes after new rows
        for field in ("band_pp", "median_pp"):
            assert (ours[field] is None) == (theirs[field] is None)
            if ours[field] is not None:
                assert ours[field] == pytest.approx(theirs[field], abs=0.05), (gpu, knob, field)


def test_sweep_names_the_band_of_the_knob_it_changes():
    committed = json.loads(changes_file("h100-sxm").read_text())["knobs"]
    quant = change_band("dtype", ["h100-sxm"], "vllm")[0]
    assert quant["knob"] == "quant" and quant["band_pp"] == committed["quant"]["band_pp"]
    pruned = change_band("prune_experts", ["h100-sxm", "h200-sxm"], "vllm")
    assert [b["knob"] for b in pruned] == ["num_experts", "num_experts"]
    text = change_band_text(pruned)
    assert "h100-sxm: ±" in text and "h200-sxm: ±" in text and "held-out measured pairs of num_experts" in text
    assert "no measured pair varies batch" in change_band("batch", ["h100-sxm"], "vllm")[0]["none"]
    assert "not roofline" in change_band("quant", ["h100-sxm"], "roofline")[0]["none"]
    assert "no measured pairs" in change_band("quant", ["b200-sxm"], "vllm")[0]["none"]


def test_the_sweep_header_prints_the_band(capsys):
    main(["sweep", "qwen3-30b-a3b", "--gpu", "h200", "--grid", "top_k=4,8", "--baseline", "top_k=8"])
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("change band of throughput_tok_s_vs_base_pct"))
    band_pp = json.loads(changes_file("h200-sxm").read_text())["knobs"]["top_k"]["band_pp"]
    assert f"h200-sxm: ±{band_pp:.1f} pp" in line
