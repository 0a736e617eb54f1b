"""Fitting the hf profile and validating against committed measurements (CPU, replay only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from perfmodel.cli import main
from perfmodel.errors import SpecError
from perfmodel.paths import CALIBRATION_DATA_DIR, PROFILES_DIR, RESULTS_DIR


@pytest.fixture(scope="module")
def fitted():
    from perfmodel.calibration.fit import fit_profile

    return fit_profile("h200-sxm")


def test_fit_is_deterministic_and_matches_the_committed_profile(fitted):
    from perfmodel.calibration.fit import fit_profile

    again = fit_profile("h200-sxm")
    assert again == fitted
    committed = yaml.safe_load((PROFILES_DIR / "h200-sxm-hf.yaml").read_text())
    assert committed == fitted, "calibration/profiles/h200-sxm-hf.yaml is stale: run perfmodel calibrate fit"


def test_fit_holds_out_models_and_reports_their_residuals(fitted):
    fit = fitted["fit"]
    assert set(fit["train_models"]).isdisjoint(fit["held_out_models"])
    held = fit["residuals"]["held-out"]
    assert {"ttft", "decode_step", "e2e", "throughput"} <= set(held)
    assert all(held[m]["n"] > 0 for m in held)
    band = fitted["error_band"]
    assert band["decode_step"] == pytest.approx(held["decode_step"]["p90_abs_pct"] / 100, rel=1e-3)


def test_held_out_errors_meet_the_targets(fitted):
    held = fitted["fit"]["residuals"]["held-out"]
    assert held["decode_step"]["mape_pct"] <= 8
    assert held["ttft"]["mape_pct"] <= 10
    assert held["throughput"]["mape_pct"] <= 8


def test_fit_with_missing_tables_fails_clearly(tmp_path):
    from perfmodel.calibration.fit import fit_profile

    data = tmp_path / "data"
    shutil.copytree(CALIBRATION_DATA_DIR / "h200-sxm", data)
    (data / "grouped_gemm.csv").unlink()
    with pytest.raises(SpecError) as err:
        fit_profile("h200-sxm", data_dir=data)
    assert "grouped_gemm.csv" in str(err.value) and "\n" not in str(err.value)


def test_fit_without_measurements_fails_clearly(tmp_path):
    from perfmodel.calibration.fit import fit_profile

    with pytest.raises(SpecError) as err:
        fit_profile("h200-sxm", results=tmp_path / "none.jsonl")
    assert "no measurements" in str(err.value)


def test_fit_without_training_rows_fails_clearly(tmp_path):
    from perfmodel.calibration.fit import fit_profile

    path = tmp_path / "rows.jsonl"
    rows = [json.loads(line) for line in (RESULTS_DIR / "h200-hf.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["model"] == "phi-3.5-moe"))
    with pytest.raises(SpecError) as err:
        fit_profile("h200-sxm", results=path)
    assert "training models" in str(err.value)


def test_validate_replays_and_never_claims_live(tmp_path, capsys):
    main(["validate", "olmoe", "--json", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert out["source"]["mode"] == "replay"
    assert out["source"]["gpu"] == "NVIDIA H200" and out["source"]["date"].startswith("2026-")
    engines = {p["engine"] for p in out["points"]}
    assert engines == {"h200-sxm-hf", "roofline"}
    assert {p["split"] for p in out["points"]} == {"train"}
    html = Path(out["report_html"]).read_text()
    summary = Path(out["summary_md"]).read_text()
    assert "REPLAY" in html and "REPLAY" in summary
    assert "LIVE" not in html and "live run" not in summary.lower()


def test_validate_marks_held_out_models(tmp_path, capsys):
    main(["validate", "qwen3-30b-a3b", "--json", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert {p["split"] for p in out["points"]} == {"held-out"}
    calibrated = [p for p in out["points"] if p["engine"] == "h200-sxm-hf" and p["metric"] == "decode_step"]
    assert len(calibrated) == 12 + 2  # the dataset grid, and B = 8, 48 at S = O = 1024 (what-if file)
    assert sum(abs(p["rel_error"]) for p in calibrated) / len(calibrated) < 0.08


def test_validate_without_committed_vllm_data_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "mixtral", "--backend", "vllm"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vllm" in err[0]
