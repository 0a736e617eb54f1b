"""Fitting the hf profile and validating against committed measurements (CPU, replay only)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from perfmodel.commands import main
from perfmodel.errors import SpecError
from perfmodel.paths import CALIBRATION_DATA_DIR, PROFILES_DIR, RESULTS_DIR


@pytest.fixture(scope="module")
def fitted():
    from perfmodel.calibration.fit import fit_profile

    return fit_profile("h200-sxm")


def test_fit_is_deterministic_and_matches_the_committed_profile(fitted):
    """Refitting gives the committed profile, within the stated tolerance (fits are never
    compared bit for bit: another machine rounds differently)."""
    from perfmodel.calibration.fit import fit_profile, profile_differences

    again = fit_profile("h200-sxm")
    assert profile_differences(again, fitted) == []
    committed = yaml.safe_load((PROFILES_DIR / "h200-sxm-hf.yaml").read_text())
    assert profile_differences(committed, fitted) == [], \
        "calibration/profiles/h200-sxm-hf.yaml is stale: run perfmodel calibrate fit"


def _numbers(tree, where=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{where}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _numbers(value, f"{where}{i}.")
    elif isinstance(tree, float):
        yield where.rstrip("."), tree


def test_fit_writes_rounded_numbers_and_no_noise_at_a_bound(fitted):
    """Every number is rounded to the stated significant digits, and a fixed cost that the
    data pins at its bound (0 s) is exactly 0, not floating-point noise (1e-22 s)."""
    from perfmodel.calibration.fit import SIG_DIGITS

    for where, value in _numbers(fitted):
        assert float(f"{value:.{SIG_DIGITS}g}") == value, where
    for key, seconds in fitted["latency"].items():
        assert seconds == 0.0 or seconds >= 1e-9, (key, seconds)


def test_profile_differences_tolerates_rounding_not_changes():
    from perfmodel.calibration.fit import FIT_RTOL, profile_differences

    committed = yaml.safe_load((PROFILES_DIR / "h200-sxm-hf.yaml").read_text())
    committed["latency"]["eager_step_s"] = 0.0  # a coefficient the data pins at its bound
    noisy = json.loads(json.dumps(committed))
    noisy["latency"]["eager_step_s"] = 1.933e-22  # noise of a coefficient at its bound
    noisy["latency"]["per_layer_s"] *= 1 + FIT_RTOL / 10  # a different last digit
    assert profile_differences(committed, noisy) == []
    changed = json.loads(json.dumps(noisy))
    changed["efficiency"]["gemm"]["memory"] *= 1.05
    changed["fit"]["held_out_models"] = ["phi-3.5-moe"]
    changed["fit"]["residuals"]["train"]["ttft"]["n"] += 1
    diff = profile_differences(committed, changed)
    assert [d.split(":")[0] for d in diff] == ["efficiency.gemm.memory", "fit.held_out_models",
                                               "fit.residuals.train.ttft.n"]


def test_calibrate_fit_check_compares_within_the_tolerance(fitted, tmp_path, monkeypatch, capsys):
    """``calibrate fit --check`` accepts a profile that differs by rounding only, and names
    the numbers of a stale one in one line."""
    import perfmodel.calibration.fit as fit_module
    import perfmodel.paths

    at_bound = json.loads(json.dumps(fitted))
    at_bound["latency"]["eager_step_s"] = 0.0  # a coefficient the data pins at its bound
    monkeypatch.setattr(fit_module, "fit_profile", lambda gpu, anchor=None: at_bound)
    monkeypatch.setattr(perfmodel.paths, "PROFILES_DIR", tmp_path)
    noisy = json.loads(json.dumps(at_bound))
    noisy["latency"]["eager_step_s"] = 2.806e-22
    noisy["latency"]["per_kernel_s"] *= 1.0004
    fit_module.write_profile(noisy, tmp_path / "h200-sxm-hf.yaml")
    main(["calibrate", "fit", "--check"])
    assert "up to date" in capsys.readouterr().out
    stale = json.loads(json.dumps(at_bound))
    stale["latency"]["per_layer_s"] *= 1.2
    fit_module.write_profile(stale, tmp_path / "h200-sxm-hf.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "fit", "--check"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latency.per_layer_s" in err[0] and "per_kernel_s" not in err[0]


def test_fit_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The held-out comparison needs the profile as a file: it lives in a private folder that
    is removed afterwards, and nothing already in the temporary folder is touched."""
    import perfmodel.calibration.fit as fit_module

    committed = yaml.safe_load((PROFILES_DIR / "h200-sxm-hf.yaml").read_text())
    monkeypatch.setattr(fit_module, "fit_overheads", lambda rows, base, gpu: {
        "latency": {k: committed["latency"][k] for k in fit_module._LATENCY_KEYS},
        "elementwise_memory": committed["efficiency"]["elementwise"]["memory"]})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = scratch / "perfmodel-fit-planted.yaml"
    planted.symlink_to(victim)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    profile = fit_module.fit_profile("h200-sxm")
    assert profile["fit"]["residuals"]["held-out"]["decode_step"]["n"] > 0
    assert sorted(p.name for p in scratch.iterdir()) == [planted.name]
    assert victim.read_text() == "keep me"


def test_write_profile_replaces_the_file_in_one_step(fitted, tmp_path, monkeypatch):
    """The profile is written to a temporary file beside it and moved over it: a symbolic
    link at the path is replaced (its target untouched), and a failed write leaves the old
    profile and no temporary file."""
    from perfmodel.calibration.fit import write_profile

    target = tmp_path / "elsewhere.yaml"
    target.write_text("not a profile\n")
    link = tmp_path / "h200-sxm-hf.yaml"
    link.symlink_to(target)
    write_profile(fitted, link)
    assert not link.is_symlink() and target.read_text() == "not a profile\n"
    assert yaml.safe_load(link.read_text()) == fitted
    before = link.read_text()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_profile({**fitted, "name": "other"}, link)
    assert link.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.yaml", "h200-sxm-hf.yaml"]


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
    assert held["ttft"]["mape_pct"] <= 12
    assert held["ttft GPU-bound"]["mape_pct"] <= 10  # a launch-bound prefill follows the host's speed
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
    # OLMoE is a training model: its grouped_mm rows train; of its eager-loop rows (the unfused
    # MoE) only the one the host's sync time was fitted on does, the others are held out
    from perfmodel.profile import load_profile

    sync_points = set(load_profile("hf", "h200-sxm").fit["expert_sync"]["points"])
    split = {p["point_id"]: p["split"] for p in out["points"]}
    fused = {pid for pid in split if "experts=grouped_mm" in pid}
    assert fused and {split[pid] for pid in fused} == {"train"}
    eager = set(split) - fused
    assert sync_points <= eager and {split[pid] for pid in sync_points} == {"train"}
    assert eager - sync_points and {split[pid] for pid in eager - sync_points} == {"held-out"}
    # the eager loop is a what-if of its own, held out: the report's and the JSON's table have it
    assert {p["what_if"] for p in out["points"] if p["point_id"] in eager - sync_points} == {"MoE unfused"}
    assert [r[0] for r in out["what_ifs"]["rows"]][0] == "MoE unfused"
    html = Path(out["report_html"]).read_text()
    summary = Path(out["summary_md"]).read_text()
    assert "REPLAY" in html and "REPLAY" in summary and "Held-out error by what-if" in summary
    assert "LIVE" not in html and "live run" not in summary.lower()


def test_validate_marks_held_out_models(tmp_path, capsys):
    main(["validate", "qwen3-30b-a3b", "--json", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert {p["split"] for p in out["points"]} == {"held-out"}
    calibrated = [p for p in out["points"] if p["engine"] == "h200-sxm-hf" and p["metric"] == "decode_step"]
    assert len(calibrated) == 12 + 2  # the dataset grid, and B = 8, 48 at S = O = 1024 (what-if file)
    assert sum(abs(p["rel_error"]) for p in calibrated) / len(calibrated) < 0.08


def test_validate_states_each_models_held_out_error_against_the_targets(tmp_path, capsys):
    """The per-model table: each model's held-out MAPE, recomputed from the points, and whether it
    meets the targets the verdict holds all of them to together."""
    main(["validate", "all", "--json", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    targets = {c["metric"]: c["target_pct"] for c in out["verdict"]["checks"]}
    rows = {r[0]: r for r in out["models"]["rows"]}
    held = [p for p in out["points"] if p["engine"] == "h200-sxm-hf" and p["split"] == "held-out"]
    assert set(rows) == {p["model"] for p in held} and "qwen3-30b-a3b" in rows
    for model, row in rows.items():
        mapes = {}
        for column, metric in ((1, "decode_step"), (2, "ttft"), (3, "throughput")):
            errors = [abs(p["rel_error"]) for p in held if p["model"] == model and p["metric"] == metric]
            mapes[metric] = 100 * sum(errors) / len(errors)
            assert float(row[column]) == pytest.approx(mapes[metric], abs=0.006)
        over = [m for m, v in mapes.items() if v > targets[m]]
        assert (row[5] == "yes") == (not over)
        assert row[4] == str(len({p["point_id"] for p in held if p["model"] == model}))
    assert "Held-out error by model" in Path(out["summary_md"]).read_text()
    assert "Held-out error by model" in Path(out["report_html"]).read_text()


def test_validate_states_its_verdict_in_json_and_on_the_terminal(tmp_path, capsys):
    """The verdict the summary opens with is in --json (result, checks against the targets) and
    printed after the MAPE table; it agrees with the held-out MAPE it judges."""
    main(["validate", "qwen3-30b-a3b", "--json", "--out", str(tmp_path / "j")])
    out = json.loads(capsys.readouterr().out)
    verdict = out["verdict"]
    held = {row["metric"]: row["mean"] for row in out["mape"]
            if row["engine"] == "h200-sxm-hf" and row["split"] == "held-out"}
    assert [c["metric"] for c in verdict["checks"]] == ["decode_step", "ttft", "throughput"]
    for check in verdict["checks"]:
        assert check["mape_pct"] == pytest.approx(held[check["metric"]])
        assert check["met"] == (check["mape_pct"] <= check["target_pct"])
    assert verdict["result"] == ("PASS" if all(c["met"] for c in verdict["checks"]) else "FAIL")
    assert verdict["line"] in Path(out["summary_md"]).read_text().replace("`", "")
    main(["validate", "qwen3-30b-a3b", "--out", str(tmp_path / "t")])
    printed = " ".join(capsys.readouterr().out.split())
    assert " ".join(verdict["line"].split()) in printed


def test_a_transferred_profile_is_held_to_the_transfer_targets():
    """Fitted on one GPU and predicting another's rows, each metric's target is 12%."""
    from perfmodel.validate.report_metrics import TARGETS, targets

    assert targets({"backend": "vllm", "fitted_on": "h200-sxm, transferred to h100-sxm"}) == {
        metric: 12.0 for metric in TARGETS}
    assert targets({"backend": "vllm"})["decode_step"] == 8.0


def test_validate_writes_its_report_under_the_working_directory(tmp_path, monkeypatch, capsys):
    """Without --out the report goes to reports/validate/<model> where the command runs (never
    into the installed package's data)."""
    monkeypatch.chdir(tmp_path)
    main(["validate", "olmoe", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert Path(out["report_html"]).resolve() == tmp_path / "reports" / "validate" / "olmoe-1b-7b" / "report.html"


def test_validate_without_committed_vllm_data_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "qwen2-57b-a14b", "--backend", "vllm"])  # never measured with vLLM
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vllm" in err[0]


def test_validate_replays_a_given_rows_file_alone(tmp_path, capsys):
    """``--results FILE`` replays that file's rows, without the committed file's what-if rows:
    here Qwen1.5-MoE with and without its shared expert, a file no fit reads."""
    from perfmodel.paths import RESULTS_DIR

    rows = RESULTS_DIR / "h200-vllm-shared-experts.jsonl"
    main(["validate", "qwen1.5-moe-a2.7b", "--backend", "vllm", "--results", str(rows), "--json",
          "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert out["source"]["mode"] == "replay" and out["source"]["results_file"].endswith(rows.name)
    ids = {json.loads(line)["point_id"] for line in rows.read_text().splitlines() if line.strip()}
    assert {p["point_id"] for p in out["points"]} == ids  # its four points (three passes each), none else
    assert any("shared_expert_intermediate_size=0" in pid for pid in ids)


def test_a_given_rows_file_of_another_kind_is_one_line(tmp_path, capsys):
    """Served runs, another backend's rows or a file with no measured row: one line, exit 2."""
    from perfmodel.paths import RESULTS_DIR

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    cases = [
        (["all", "--backend", "vllm", "--results", str(RESULTS_DIR / "h200-vllm-serving-quant.jsonl")],
         "holds serving runs: replay them with --serving"),
        (["all", "--backend", "hf", "--results", str(RESULTS_DIR / "h200-vllm-shared-experts.jsonl")],
         "holds vllm rows: replay them with --backend vllm"),
        (["all", "--backend", "vllm", "--results", str(bad)], "no measured rows in"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["validate", *args, "--out", str(tmp_path / "rep")])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
        assert exit_.value.code == 2 and len(err) == 1 and expected in err[0], (args, err)


@pytest.mark.parametrize("change, expected", [
    ({"batch": None}, "batch: expected int, got NoneType"),
    ({"ttft_ms": "x"}, "ttft_ms: expected int|float, got str"),
    ({"ttft_ms": 0}, "ttft_ms: must be > 0"),
    ({"itl_ms": float("inf")}, "itl_ms: not finite"),
    ({"engine": "x"}, "engine: expected dict, got str"),
    ({"decode_profile": "x"}, "decode_profile: expected dict|null"),
    ({"overrides": [5]}, "overrides: expected KEY=VALUE strings"),
    ({"input_len": 10**12}, "input_len: must be from 1 to 10,000,000"),
    ({"layers": 0}, "layers: must be >= 1"),
    ({"overrides": ["foo=1"]}, "measured row hf|olmoe-1b-7b|"),  # a row's model it cannot build: named
], ids=lambda v: str(v)[:40])
def test_a_malformed_row_of_a_given_file_is_one_line(tmp_path, capsys, change, expected):
    """A measured row given to replay that breaks the rows' schema, or holds what the comparison
    reads in a form it cannot use, is refused in one line (it raised KeyError, TypeError,
    ZeroDivisionError or OverflowError tracebacks in the comparison)."""
    from perfmodel.paths import RESULTS_DIR

    row = json.loads((RESULTS_DIR / "h200-hf.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok"
    row.update(change)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "all", "--results", str(path), "--out", str(tmp_path / "rep")])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
    assert exit_.value.code == 2 and len(err) == 1 and expected in err[0], err


def test_validate_sets_apart_collapsed_routing_and_an_engine_core_apart():
    """Of the committed vLLM rows: gpt-oss-20b at its own router (a router with a bias, collapsed
    under dummy weights by construction) and a row whose engine core ran in its own process go to
    their own splits; a held-out row at the routing simulator stays held-out."""
    import pandas as pd

    from perfmodel.measuring.results import read_rows
    from perfmodel.validate.report_metrics import COLLAPSED_SPLIT, ENGINE_PROCESS_SPLIT
    from perfmodel.validate.validation import _set_apart

    ok = [r for name in ("h200-vllm.jsonl", "h200-vllm-whatif.jsonl")
          for r in read_rows(RESULTS_DIR / name, warn=False).rows if r.get("status") == "ok"]
    own_router = next(r for r in ok if r["model"] == "gpt-oss-20b" and "routing=" not in r["point_id"])
    engine_core = next(r for r in ok if "|mp=1|" in r["point_id"] and "routing=uniform_random" in r["point_id"])
    simulator = next(r for r in ok if r["model"] == "qwen3-30b-a3b" and "|mp=1|" not in r["point_id"]
                     and "routing=uniform_random" in r["point_id"] and "quant=none" in r["point_id"])
    picked = [own_router, engine_core, simulator]
    points = pd.DataFrame([{"point_id": r["point_id"], "split": "held-out", "engine": e}
                           for r in picked for e in ("vllm", "roofline")])
    lines = _set_apart(points, picked, "h200-sxm")
    split = dict(zip(points["point_id"], points["split"]))
    assert split[own_router["point_id"]] == COLLAPSED_SPLIT
    assert split[engine_core["point_id"]] == ENGINE_PROCESS_SPLIT
    assert split[simulator["point_id"]] == "held-out"
    assert "gpt-oss-20b mxfp4-moe" in lines["routing_collapsed"]
    assert lines["engine_core_apart"].startswith("1 held-out points")
    train = pd.DataFrame([{"point_id": own_router["point_id"], "split": "train", "engine": "vllm"}])
    _set_apart(train, picked, "h200-sxm")
    assert list(train["split"]) == ["train"]  # only held-out points are set apart


def test_validate_json_gives_the_profiled_passes_by_op_category(tmp_path, capsys):
    """``prefill_kernels`` and ``decode_kernels``: per split, each category's measured/model
    kernel time over the profiled one-step prefills and decode steps (the report's "One prefill
    by op category" and "Every profiled decode step by op category")."""
    main(["validate", "qwen3-30b-a3b", "--backend", "vllm", "--json", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    held = out["prefill_kernels"]["held-out"]
    assert {"attention", "expert_gemm", "dense_gemm", "all"} <= set(held)
    assert all(v["p10"] <= v["median"] <= v["p90"] and v["points"] > 0 for v in held.values())
    assert 0.5 < held["all"]["median"] < 2 and held["attention"]["median"] > held["expert_gemm"]["median"]
    summary = Path(out["summary_md"]).read_text()
    assert "## One prefill by op category" in summary
    steps = out["decode_kernels"]["held-out"]
    assert {"attention", "expert_gemm", "dense_gemm", "all"} <= set(steps)
    assert all(v["p10"] <= v["median"] <= v["p90"] and v["points"] > 0 for v in steps.values())
    assert 0.5 < steps["expert_gemm"]["median"] < 2
    assert "## Every profiled decode step by op category" in summary


def test_the_h100_hf_fit_is_its_own_and_holds_its_models_out():
    """The H100's hf profile is fitted from its own transformers rows (the committed one is that
    fit), holds out the same models the H200's does and meets the targets on them; a GPU with no
    hf fit of its own takes the reference GPU's, not the H100's."""
    from perfmodel.calibration.fit import HELD_OUT_MODELS, fit_profile, profile_differences
    from perfmodel.profile import REFERENCE_GPU, load_profile

    h100 = fit_profile("h100-sxm")
    committed = yaml.safe_load((PROFILES_DIR / "h100-sxm-hf.yaml").read_text())
    assert profile_differences(committed, h100) == [], \
        "calibration/profiles/h100-sxm-hf.yaml is stale: run perfmodel calibrate fit --gpu h100-sxm"
    assert h100["fitted_from"].startswith("calibration/data/h100-sxm") and "h100-hf.jsonl" in h100["fitted_from"]
    assert h100["fit"]["held_out_models"] == list(HELD_OUT_MODELS)
    held = h100["fit"]["residuals"]["held-out"]
    assert held["decode_step"]["n"] > 0 and held["decode_step"]["mape_pct"] <= 8
    assert held["throughput"]["mape_pct"] <= 8 and held["ttft"]["mape_pct"] <= 12
    assert load_profile("hf", "h100-sxm").gpu == "h100-sxm"
    assert load_profile("hf", "b200").gpu == REFERENCE_GPU


def test_an_hf_fit_anchored_on_another_gpus_takes_its_fixed_costs_and_holds_every_row_out():
    """A GPU with microbenchmarks and no transformers rows takes the reference's fixed costs (auto);
    on the H100, whose rows then all stand held out, the anchored fit meets the transfer targets, and
    so does the H200's anchored on the H100's on the H200's rows."""
    from perfmodel.calibration.fit import ANCHORED_LATENCY, fit_profile, hf_anchor
    from perfmodel.profile import REFERENCE_GPU

    assert hf_anchor("b200") == REFERENCE_GPU  # no rows of its own
    assert hf_anchor("h100-sxm") is None and hf_anchor(REFERENCE_GPU) is None
    assert hf_anchor("h100-sxm", "h200-sxm") == "h200-sxm" and hf_anchor("h100-sxm", "none") is None
    own = yaml.safe_load((PROFILES_DIR / "h100-sxm-hf.yaml").read_text())
    reference = yaml.safe_load((PROFILES_DIR / f"{REFERENCE_GPU}-hf.yaml").read_text())
    anchored = fit_profile("h100-sxm", anchor=REFERENCE_GPU)
    for field in ANCHORED_LATENCY:
        assert anchored["latency"][field] == reference["latency"][field], field
    # the kernels are the H100's microbenchmarks', as in its own fit
    for name in ("gemm", "grouped_gemm", "attention"):
        assert anchored["efficiency"][name] == own["efficiency"][name], name
    assert anchored["latency"]["per_kernel_s"] == own["latency"]["per_kernel_s"]
    ratio = anchored["fit"]["anchor"]["elementwise_memory_ratio"]
    elementwise = anchored["efficiency"]["elementwise"]["memory"]
    assert 0 < ratio < 1 and elementwise != reference["efficiency"]["elementwise"]["memory"]
    assert anchored["fit"]["train_models"] == [] and "train" not in {
        split for split, metrics in anchored["fit"]["residuals"].items() if metrics}
    held = anchored["fit"]["residuals"]["held-out"]
    rows = sum(1 for line in open(RESULTS_DIR / "h100-hf.jsonl") if '"status":"ok"' in line)
    assert held["decode_step"]["n"] >= rows - 2  # every ok row but the unfused loop's, held out
    assert held["decode_step"]["mape_pct"] <= 12 and held["throughput"]["mape_pct"] <= 12
    assert held["ttft"]["mape_pct"] <= 12
    # the other way: the H200's tables with the H100's fixed costs, on the H200's rows
    back = fit_profile(REFERENCE_GPU, anchor="h100-sxm")["fit"]["residuals"]["held-out"]
    assert back["decode_step"]["n"] > held["decode_step"]["n"]
    assert back["decode_step"]["mape_pct"] <= 12 and back["throughput"]["mape_pct"] <= 12
    assert back["ttft"]["mape_pct"] <= 12


def test_an_anchored_hf_fit_without_rows_of_its_gpu_has_no_band(tmp_path):
    """With no transformers rows of the GPU, an anchored fit is a profile (it loads and predicts)
    with no error band: nothing measured checks it."""
    from perfmodel.calibration.fit import _profile, fit_profile
    from perfmodel.profile import REFERENCE_GPU

    bare = fit_profile("h100-sxm", anchor=REFERENCE_GPU, results=tmp_path / "h100-hf.jsonl")
    assert "error_band" not in bare and "residuals" not in bare["fit"]
    assert bare["fit"]["anchor"]["gpu"] == REFERENCE_GPU
    profile = _profile(bare)
    assert profile.error_band is None and profile.calibrated
