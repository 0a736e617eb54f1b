"""The serving error band: the replays of held-out measured serving runs that kept up."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from perfmodel.calibration.fit_serving_band import DENSE, MIN_RUNS, fit_serving_band, serving_files
from perfmodel.measuring.serving_replay import TARGETS
from perfmodel.paths import PROFILES_DIR, RESULTS_DIR

MODELS = RESULTS_DIR / "h200-vllm-serving-models.jsonl"


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())


def _folder(tmp_path, rows):
    (tmp_path / "h200-vllm-serving-models.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kind in ("steps", "tokens"):  # traces beside the rows are not rows
        shutil.copy(MODELS.with_name(f"{MODELS.stem}-{kind}.jsonl"), tmp_path / f"{MODELS.stem}-{kind}.jsonl")
    return tmp_path


def test_the_band_is_the_p90_of_the_kept_up_runs_as_the_validation_replays_them(tmp_path, profile):
    from perfmodel.measuring.serving_replay import measured_overload
    from perfmodel.validate.serving import compare_serving

    rows = [json.loads(line) for line in MODELS.read_text().splitlines() if line.strip()]
    folder = _folder(tmp_path, rows)
    assert serving_files("h200-sxm", folder) == [folder / MODELS.name]
    band = fit_serving_band(profile, "h200-sxm", results_dir=folder)
    kept = [r for r in rows if measured_overload(r)["overloaded"] is False]
    assert band["runs"] == len(kept) >= MIN_RUNS and "kept up" in band["source"]
    points = compare_serving(kept)["points"]  # the committed profile: the same as the one given
    for metric in ("ttft_p50", "ttft_p90", "itl_p50", "itl_p90", "itl_mean", "served_tok_s"):
        errors = [abs(p["rel_error"]) for p in points if p["metric"] == metric]
        assert band[metric] == pytest.approx(np.percentile(errors, 90), rel=1e-3)
        # the accuracy summary: median |error|, and the share of runs within the metric's target
        assert band["accuracy"]["median"][metric] == pytest.approx(np.median(errors), rel=1e-3)
        target = TARGETS[metric]
        assert band["accuracy"]["within_target"][metric] == pytest.approx(
            sum(e <= target for e in errors) / len(errors), rel=1e-3)
    assert band["accuracy"]["runs"] == len(kept) and "accuracy_all_schemes" not in band  # bf16 alone
    # a run a parameter was fitted on leaves the band; too few runs give none
    fitted = [(MODELS.name, kept[0]["point_id"])]
    assert fit_serving_band(profile, "h200-sxm", fitted, results_dir=folder)["runs"] == len(kept) - 1
    assert fit_serving_band(profile, "h200-sxm", [("other.jsonl", kept[0]["point_id"])],
                            results_dir=folder)["runs"] == len(kept)
    few = tmp_path / "few"
    few.mkdir()
    assert fit_serving_band(profile, "h200-sxm", results_dir=_folder(few, kept[:MIN_RUNS - 1])) is None


def test_the_band_follows_the_profile_it_is_fitted_for(tmp_path, profile):
    """The replays run on the profile being fitted, not on the committed one: a host floor twice
    as long moves the TTFT band."""
    rows = [json.loads(line) for line in MODELS.read_text().splitlines() if line.strip()]
    folder = _folder(tmp_path, rows)
    slow = {**profile, "latency": {**profile["latency"], "eager_layer_s": 2 * profile["latency"]["eager_layer_s"]}}
    assert fit_serving_band(slow, "h200-sxm", results_dir=folder)["ttft_p50"] != pytest.approx(
        fit_serving_band(profile, "h200-sxm", results_dir=folder)["ttft_p50"], rel=1e-2)
    assert fit_serving_band(profile, "h200-sxm", results_dir=tmp_path / "empty") is None


def test_a_schemes_runs_are_checked_against_the_band_not_part_of_it(tmp_path, profile):
    """Runs served in fp8, or as a GPTQ checkpoint, leave the bf16 band and are checked against
    it, scheme by scheme: their |errors| at the 90th percentile, and whether each lies within."""
    from perfmodel.measuring.serving_replay import measured_overload
    from perfmodel.validate.serving import compare_serving

    rows = [json.loads(line) for line in MODELS.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if measured_overload(r)["overloaded"] is False]
    quantized = []
    for row, quant in zip(kept[:3], ("fp8", "fp8", "gptq")):
        row = json.loads(json.dumps(row))
        row["engine"]["quantization"] = quant
        row["point_id"] += f"|quant={quant}"
        quantized.append(row)
    band = fit_serving_band(profile, "h200-sxm", results_dir=_folder(tmp_path, rows + quantized))
    assert band["runs"] == len(kept) and "in bf16" in band["source"]
    assert set(band["schemes"]) == {"fp8", "w4a16"}
    fp8, w4a16 = band["schemes"]["fp8"], band["schemes"]["w4a16"]
    assert (fp8["runs"], w4a16["runs"]) == (2, 1)
    points = compare_serving(quantized[:2])["points"]  # replayed in fp8
    for metric, value in fp8["errors"].items():
        errors = [abs(p["rel_error"]) for p in points if p["metric"] == metric]
        assert value == pytest.approx(np.percentile(errors, 90), rel=1e-3)
    for check in (fp8, w4a16):
        assert check["within"] == all(v <= band[m] for m, v in check["errors"].items() if m in band)
        assert "own_band" not in check  # too few runs (< MIN_RUNS) for a band of their own
    every = compare_serving(kept + quantized)["points"]  # the summary over every scheme's runs
    errors = [abs(p["rel_error"]) for p in every if p["metric"] == "itl_p50"]
    assert band["accuracy_all_schemes"]["runs"] == len(kept) + 3
    assert band["accuracy_all_schemes"]["median"]["itl_p50"] == pytest.approx(np.median(errors), rel=1e-3)
    as_bf16 = compare_serving(kept[:2])["points"]  # the same runs unquantized: other replays
    assert [p["predicted"] for p in as_bf16 if p["metric"] == "itl_p50"] != pytest.approx(
        [p["predicted"] for p in points if p["metric"] == "itl_p50"], rel=0.05)


def test_a_gpu_with_too_few_runs_takes_its_anchors_band_where_its_runs_check_it():
    from perfmodel.calibration.fit_serving_band import carried_band

    anchor = {"ttft_p50": 0.3, "itl_p50": 0.1, "served_tok_s": 0.02, "runs": 50}
    runs = ["h100-vllm-serving.jsonl:a", "h100-vllm-serving.jsonl:b"]
    errors = {"ttft_p50": [0.05, 0.1], "itl_p50": [0.2, 0.3], "served_tok_s": [0.01, 0.01]}
    band = carried_band("h200-sxm", anchor, errors, runs)
    # a metric whose runs here lie within the anchor's half-width keeps it; the other has none
    assert band["ttft_p50"] == 0.3 and band["served_tok_s"] == 0.02 and "itl_p50" not in band
    assert band["runs"] == 50 and band["carried_from"] == "h200-sxm"
    assert band["own_runs"]["runs"] == 2 and band["own_runs"]["within"] is False
    assert band["own_runs"]["errors"]["itl_p50"] == pytest.approx(np.percentile([0.2, 0.3], 90))
    assert "left out: itl_p50" in band["source"] and "h100-vllm-serving.jsonl" in band["source"]
    assert band["accuracy"]["runs"] == 2
    inside = carried_band("h200-sxm", anchor, {**errors, "itl_p50": [0.05, 0.05]}, runs)
    assert inside["itl_p50"] == 0.1 and inside["own_runs"]["within"] is True and "left out" not in inside["source"]
    # no run to check it, or no metric within it: no band
    assert carried_band("h200-sxm", anchor, {}, []) is None
    assert carried_band("h200-sxm", anchor, {m: [1.0] for m in errors}, runs[:1]) is None


def test_the_h100s_band_is_its_own_once_it_has_enough_runs_that_kept_up():
    """Its kept-up bf16 runs (no parameter fitted on them) are enough for a band of its own: the
    90th percentile of their |error| per metric, replayed on the H100's profile, none carried."""
    from perfmodel.calibration.fit_serving_band import serving_errors
    from perfmodel.profile import load_profile

    band = load_profile("vllm", "h100-sxm").serving_error_band
    groups = serving_errors(PROFILES_DIR / "h100-sxm-vllm.yaml", "h100-sxm", serving_files("h100-sxm"))
    errors, runs = groups["bf16"]
    assert band.carried_from is None and band.runs == len(runs) >= MIN_RUNS
    files = {path.name for path in serving_files("h100-sxm")}
    assert {"h100-vllm-serving.jsonl", "h100-vllm-serving-repeat.jsonl", "h100-vllm-serving-dense.jsonl"} <= files
    assert all(r.split(":")[0] in files for r in runs)  # every H100 serving file, none of the H200's
    for metric, values in errors.items():
        assert getattr(band, metric) == pytest.approx(np.percentile(values, 90), rel=1e-3), metric
    # the dense models' runs (Llama-3.1-8B, Qwen3-8B in fp8 among them) are not the band's: they
    # are checked against it apart, whatever their scheme
    dense_errors, dense_runs = groups[DENSE]
    assert not any(r.startswith("h100-vllm-serving-dense.jsonl") for r in runs)
    assert {r.split(":")[0] for r in dense_runs} == {"h100-vllm-serving-dense.jsonl"}
    assert any("quant=fp8" in r for r in dense_runs)
    assert not any(r.startswith("h100-vllm-serving-dense.jsonl") for r in groups["fp8"][1])
    assert band.dense.runs == len(dense_runs) >= MIN_RUNS
    for metric, values in dense_errors.items():
        assert band.dense.errors[metric] == pytest.approx(np.percentile(values, 90), rel=1e-3), metric
    assert band.dense.within == all(v <= getattr(band, m) for m, v in band.dense.errors.items())


def test_a_scheme_served_outside_the_band_with_runs_enough_plans_with_its_own(capsys):
    """The H100's fp8 serving runs (at least MIN_RUNS, held out) lie outside its bf16 band: the
    fit marks them own_band, and a plan in fp8 takes, per metric, the wider of the band and their
    own 90th percentile, where one with too few runs outside the band has none."""
    from perfmodel.commands import main
    from perfmodel.profile import load_profile

    band = load_profile("vllm", "h100-sxm").serving_error_band
    fp8 = band.schemes["fp8"]
    assert fp8.runs >= MIN_RUNS and not fp8.within and fp8.own_band
    assert any(error > getattr(band, metric) for metric, error in fp8.errors.items())
    out = []
    for dtype in ("fp8", "bf16"):
        main(["plan", "qwen3-30b-a3b", "--rate", "4", "--input-len", "1024", "--output-len", "256", "--gpu", "h100",
              "--max-gpus", "1", "--no-disagg", "--requests", "40", "--dtype", dtype, "--json"])
        out.append(json.loads(capsys.readouterr().out)["profile"][0])
    planned, plain = out
    for metric in ("ttft_p50", "ttft_p90", "itl_p50", "itl_p90", "served_tok_s"):
        want = max(getattr(band, metric), fp8.errors[metric])
        assert planned["serving_error_band"][metric] == pytest.approx(want)
        assert plain["serving_error_band"][metric] == pytest.approx(getattr(band, metric))
    assert (f"its {fp8.runs} fp8 runs lie outside it, and each metric takes the wider"
            in planned["serving_error_band_note"])
    few = load_profile("vllm", "h200-sxm").serving_error_band.schemes["fp8"]
    assert few.runs < MIN_RUNS and not few.own_band
