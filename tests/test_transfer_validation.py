"""A profile fitted on one GPU predicting another's rows (``validate --fitted-on``): the host speed
of rows without a probe, the points at schemes the profile was never fitted in, a profile file as
the fit, and ``calibrate fit --out``."""

from __future__ import annotations

import json

import pytest
import yaml

from perfmodel.commands import main
from perfmodel.errors import InputError
from perfmodel.measuring.compare import model_workload, row_quant
from perfmodel.paths import RESULTS_DIR
from perfmodel.profile import fitted_profile_path, load_profile
from perfmodel.validate.report_metrics import UNFITTED_SPLIT
from perfmodel.validate.validation import machine_probe_ms, run_validation


def test_a_row_without_a_probe_is_read_at_its_machines_usual_speed():
    """Under a profile with a host-speed fit, a row's own probe wins; a row without one is read at
    the speed given for its machines (their GPU's own fit's reference), else at the profile's."""
    profile = load_profile("vllm", "h100-sxm")
    row = {"batch": 16, "model": "olmoe-1b-7b"}
    assert model_workload(row, profile)["host_probe_ms"] is None
    assert model_workload(row, profile, unprobed_ms=50.0)["host_probe_ms"] == 50.0
    assert model_workload({**row, "host_probe_ms": [30.0, 40.0]}, profile, unprobed_ms=50.0)["host_probe_ms"] == 35.0
    ref = load_profile("vllm", "h200-sxm").latency.host_probe_ref_ms
    assert machine_probe_ms("vllm", "h200-sxm") == ref is not None


def _rows_file(tmp_path) -> tuple[str, list[dict]]:
    """A few of the H200's rows of OLMoE-1B-7B: bf16 at B = 1 and int4 weight-only (w4a16)."""
    rows = []
    for line in (RESULTS_DIR / "h200-vllm.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("status") == "ok" and r["model"] == "olmoe-1b-7b" and not r.get("overrides") and not r.get("layers") \
                and (row_quant(r) == "w4a16" or (row_quant(r) is None and r["batch"] == 1 and r.get("routing") is None)):
            rows.append(r)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), rows


def test_a_transfer_sets_apart_the_schemes_its_profile_was_never_fitted_in(tmp_path):
    """A profile without a w4a16 entry (fitted where no such row was measured) predicts the
    H200's w4a16 rows at the bf16 kernels' rates: those points leave the verdict, in a split of
    their own, and the source says which; the bf16 points stay held out."""
    fit = yaml.safe_load(fitted_profile_path("vllm", "h100-sxm").read_text())
    del fit["fit"]["anchor"]  # as if fitted on the H100's rows alone (calibrate fit --anchor none)
    whole = tmp_path / "h100-whole.yaml"
    whole.write_text(yaml.safe_dump(fit, sort_keys=False))
    del fit["quantization"]["w4a16"]
    profile = tmp_path / "h100-own.yaml"
    profile.write_text(yaml.safe_dump(fit, sort_keys=False))
    rows_path, rows = _rows_file(tmp_path)
    assert {row_quant(r) for r in rows} == {None, "w4a16"}
    out = run_validation("all", backend="vllm", gpu="h200-sxm", results=rows_path, fitted_on=str(profile),
                         out_dir=tmp_path / "report")
    points = [p for p in out["points"] if p["engine"] != "roofline"]
    assert {p["split"] for p in points if p["quant"] == "w4a16"} == {UNFITTED_SPLIT}
    assert {p["split"] for p in points if p["quant"] == "none"} == {"held-out"}
    assert "w4a16" in out["source"]["not_fitted"] and "fitted_on" in out["source"]
    committed = run_validation("all", backend="vllm", gpu="h200-sxm", results=rows_path, fitted_on=str(whole),
                               out_dir=tmp_path / "whole")  # a w4a16 entry: its points stay in the verdict
    assert UNFITTED_SPLIT not in {p["split"] for p in committed["points"]}
    assert f"the others at {machine_probe_ms('vllm', 'h200-sxm'):g} ms" in committed["source"]["host_speed"]
    assert "not_fitted" not in committed["source"]


def test_a_fitted_on_file_must_be_a_profile_of_the_backend(tmp_path):
    with pytest.raises(InputError, match="no such profile file"):
        run_validation("all", backend="vllm", gpu="h200-sxm", fitted_on=str(tmp_path / "none.yaml"))
    with pytest.raises(InputError, match="a profile of the hf engine, not --backend vllm"):
        run_validation("all", backend="vllm", gpu="h200-sxm",
                       fitted_on=str(fitted_profile_path("hf", "h100-sxm")))


def test_calibrate_fit_writes_to_out_and_checks_against_it(tmp_path, capsys):
    out = tmp_path / "h200-hf.yaml"
    main(["calibrate", "fit", "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    fitted, committed = yaml.safe_load(out.read_text()), yaml.safe_load(fitted_profile_path("hf", "h200-sxm").read_text())
    assert fitted["gpu"] == committed["gpu"] == "h200-sxm" and fitted["engine"] == "hf"
    main(["calibrate", "fit", "--check", "--out", str(out)])
    assert "up to date" in capsys.readouterr().out
    for bad, why in ((tmp_path, "a folder"), (tmp_path / "no" / "x.yaml", "no folder")):
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", "fit", "--out", str(bad)])
        assert exc.value.code != 0 and why in capsys.readouterr().err
