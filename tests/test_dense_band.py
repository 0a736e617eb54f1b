"""Dense models (no layer routes tokens to experts) beside the MoE models' band: their held-out
points are checked against it apart (``fit.residuals.architecture.dense``), a dense prediction is
widened to their own 90th percentiles where they lie outside, and validation reports them apart
from the verdict with their own error."""

from __future__ import annotations

import pandas as pd

from perfmodel import predict
from perfmodel.measuring.results import read_rows
from perfmodel.paths import RESULTS_DIR
from perfmodel.prediction import Workload, error_band
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.validate.report_metrics import DENSE_SPLIT
from perfmodel.validate.validation import _set_apart

DENSE = "llama-3.1-8b"


def _dense_check(profile):
    return profile.residuals("architecture").get("dense")


def test_the_h100_fit_checks_its_held_out_dense_models_apart_from_the_band():
    profile = load_profile("vllm", "h100-sxm")
    check = _dense_check(profile)
    assert check is not None and check["points"] > 0
    # the dense models are held out, counted in the residuals, not in the band's own points
    models = profile.residuals("models")
    assert models[DENSE] == {"held-out": models[DENSE]["held-out"]} and models[DENSE]["held-out"] > 0
    band_points = sum(v["n"] for k, v in profile.residuals("band points").items() if k.startswith("ttft"))
    held_ttft = profile.fit["residuals"]["held-out"]["ttft"]["n"]
    assert band_points < held_ttft  # the dense models' prefills are not among the band's
    # each own width is the 90th percentile its points give, kept only where it is wider than the band
    for key, width in (check.get("own_band") or {}).items():
        assert check["counts"][key] >= 5 and abs(100 * width - check["p90_abs_pct"][key]) < 1e-6


def test_a_dense_prediction_takes_the_wider_of_the_band_and_the_dense_models_own_scatter():
    profile = load_profile("vllm", "h100-sxm")
    check, limits = _dense_check(profile), profile.error_band
    assert not check["within"]
    own = check["own_band"]
    p = predict(DENSE, gpu="h100-sxm", batch=16, input_len=512, output_len=512)
    band = p.provenance["error_band"]
    assert band is not None and "dense-model points" in p.provenance["error_band_note"]
    regime = band["ttft_regime"]
    assert band["ttft"] == max(own[f"ttft {regime}"], getattr(limits, {"GPU-bound": "ttft",
                                                                        "launch-bound": "ttft_launch_bound"}[regime]))
    assert band["decode_step"] == max(own.get("decode_step GPU-bound", 0.0), limits.decode_step)
    # an MoE model on the same profile keeps the profile's band
    moe = predict("qwen3-30b-a3b", gpu="h100-sxm", batch=16, input_len=512, output_len=512)
    assert moe.provenance["error_band"] is not None and "dense" not in moe.provenance["error_band_note"]
    assert moe.provenance["error_band"]["decode_step"] == limits.decode_step


def test_a_dense_model_within_the_band_takes_it_and_none_is_given_where_no_dense_model_was_held_out():
    profile, gpu = load_profile("vllm", "h100-sxm"), load_gpu("h100-sxm")
    residuals = profile.fit["residuals"]
    within = profile.model_copy(update={"fit": {**profile.fit, "residuals": {
        **residuals, "architecture": {"dense": {**_dense_check(profile), "within": True}}}}})
    band, note = error_band(within, gpu, Workload(), dense=True)
    assert band is not None and band["decode_step"] == profile.error_band.decode_step
    assert "its held-out dense-model points within it" in note
    unmeasured = profile.model_copy(update={"fit": {**profile.fit, "residuals": {
        k: v for k, v in residuals.items() if k != "architecture"}}})
    band, note = error_band(unmeasured, gpu, Workload(), dense=True)
    assert band is None and "no dense model held out in its fit" in note
    assert error_band(unmeasured, gpu, Workload())[0] is not None  # an MoE model: the band
    # the H200's dense models (call s29a) lie outside its band in the launch-bound TTFT: a dense
    # prediction there takes, per regime, the wider of the band and their own 90th percentile
    h200_profile = load_profile("vllm", "h200-sxm")
    h200 = _dense_check(h200_profile)
    assert h200 is not None and h200["points"] >= 24 and not h200["within"]
    assert h200["own_band"]["ttft launch-bound"] > h200_profile.error_band.ttft_launch_bound
    band = predict(DENSE, batch=16, input_len=512, output_len=512).provenance["error_band"]
    assert band is not None and band["ttft_regime"] == "GPU-bound"
    assert band["ttft"] == max(h200["own_band"]["ttft GPU-bound"], h200_profile.error_band.ttft)


def test_validation_sets_held_out_dense_points_apart():
    rows = [r for r in read_rows(RESULTS_DIR / "h100-vllm.jsonl", warn=False).rows if r.get("status") == "ok"]
    dense = next(r for r in rows if r["model"] == DENSE)
    moe = next(r for r in rows if r["model"] == "qwen3-30b-a3b" and "quant=none" in r["point_id"])
    points = pd.DataFrame([{"point_id": r["point_id"], "model": r["model"], "split": "held-out",
                            "engine": "vllm", "dense": r is dense} for r in (dense, moe)])
    lines = _set_apart(points, [dense, moe], "h100-sxm")
    split = dict(zip(points["point_id"], points["split"]))
    assert split[dense["point_id"]] == DENSE_SPLIT and split[moe["point_id"]] == "held-out"
    assert lines["dense_models"].startswith(f"1 held-out points of dense models ({DENSE})")
