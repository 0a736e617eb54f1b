"""The per-sequence host time of a launched step: in the step tables, and fitted from step traces."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from perfmodel.calibration.fit import _profile
from perfmodel.calibration.fit_step_host import fit_eager_seq
from perfmodel.measuring.step_compare import compare_steps, decode_bands, mixed_steps, step_tables
from perfmodel.paths import ROOT
from perfmodel.planning.pipeline import handover_times

S, O, SEQS, BUDGET = 1024, 256, 256, 8192


def _base(per_seq_s: float = 0.0, serial_seq_s: float = 0.0) -> dict:
    """The committed H200 profile with the launched step's host time per sequence, on its launches
    (``eager_seq_s``) and serial with its kernels (``launch_serial_seq_s``), as given."""
    base = yaml.safe_load((ROOT / "calibration" / "profiles" / "h200-sxm-vllm.yaml").read_text())
    base["latency"].update(eager_seq_s=per_seq_s, launch_serial_seq_s=serial_seq_s)
    return base


def _row(rate: float, max_running: int) -> dict:
    return {"point_id": f"vllm|olmoe-1b-7b|rate={rate}", "status": "ok", "model": "olmoe-1b-7b", "overrides": [],
            "input_len": S, "output_len": O, "max_num_seqs": SEQS, "rate": rate,
            "engine": {"max_num_batched_tokens": BUDGET}, "engine_steps": {"max_running": max_running}}


@pytest.fixture(scope="module")
def tables():
    return step_tables(_row(1.0, SEQS), _profile(_base()), "h200-sxm")


def test_a_launched_step_pays_the_host_time_of_each_further_sequence(tables):
    per_seq = 4e-5
    steps = dataclasses.replace(tables, floor_seq_s=per_seq)
    small = steps.step(1, 1152, 1024, 1024 * steps.prefill_rate(S))
    assert small == pytest.approx(max(small, steps.floor_s))
    # 200 decodes beside one prompt chunk: the floor grows by 200 sequences' host time
    big = steps.step(200, 1152, 1024, 1024 * steps.prefill_rate(S), prompts=1)
    assert big >= steps.floor_s + 200 * per_seq - 1e-12
    assert steps.floor(201) == pytest.approx(steps.floor_s + 200 * per_seq)
    vector = steps.steps(np.array([200.0]), 1152, 1024.0, 1024 * steps.prefill_rate(S), 1.0)
    assert vector[0] == pytest.approx(big)
    # a decode-only step (replayed from a graph) pays none of it
    assert steps.step(200, 1152, 0, 0.0) == pytest.approx(tables.step(200, 1152, 0, 0.0))


def _trace(steps, per_seq_s: float, n: int = 200, pairs: int = 60) -> dict:
    """Two decode-only steps and a mixed one in turn, their outputs handed over when the model says with
    ``per_seq_s`` (the host launches each mixed step while the GPU runs the decode step before
    it, :mod:`perfmodel.planning.pipeline`)."""
    rate = steps.prefill_rate(S)
    timed = dataclasses.replace(steps, floor_seq_s=per_seq_s)
    prompt = np.tile([0.0, 0.0, S], pairs)  # the second decode step's outputs wait for the launch
    gpu, host, launched = timed.parts(np.full(3 * pairs, float(n)), S + O / 2, prompt, prompt * rate, 1.0)
    rows = [[0.0, 0, 0, n, n, SEQS, 10, 0.5, 0]]  # the record before the first step
    for t, ctx in zip(handover_times(gpu, host, launched), prompt):
        rows.append([float(t), 1 if ctx else 0, int(ctx), n, n, SEQS, 10, 0.5, 0])
    return {"columns": ["t_s", "ctx_reqs", "ctx_tokens", "gen_reqs", "gen_tokens", "running", "waiting",
                        "kv_usage", "preempted"], "steps": rows}


def _write(tmp_path, runs):
    path = tmp_path / "h200-vllm-serving-traced.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r, _ in runs))
    path.with_name(path.stem + "-steps.jsonl").write_text(
        "".join(json.dumps({"point_id": r["point_id"], **t}) + "\n" for r, t in runs))
    return path


def test_the_fit_recovers_the_host_time_that_made_the_trace(tmp_path, tables):
    true = 5e-5
    full, partial = _row(44.0, SEQS), _row(24.0, 90)
    path = _write(tmp_path, [(full, _trace(tables, true)), (partial, _trace(tables, 4 * true))])
    value, runs = fit_eager_seq(_base(), "h200-sxm", ("olmoe-1b-7b",), path=path)
    assert runs == [full["point_id"]]  # only the run that filled max_num_seqs
    assert value == pytest.approx(true, rel=2e-3)
    m = mixed_steps(full, _trace(tables, true), tables)
    assert m.model_mean_s(0.0) < m.measured_mean_s == pytest.approx(m.model_mean_s(true), rel=1e-3)
    # a trace no slower than the model without the term gives 0; no qualifying run gives None
    assert fit_eager_seq(_base(), "h200-sxm", ("olmoe-1b-7b",), path=_write(tmp_path, [(full, _trace(tables, 0.0))]))[0] == 0.0
    assert fit_eager_seq(_base(), "h200-sxm", ("mixtral-8x7b",), path=path) == (None, [])
    # never below the per-sequence work serial with the kernels: serial with the launches as well
    quick = _write(tmp_path, [(full, _trace(tables, 0.0))])
    assert fit_eager_seq(_base(serial_seq_s=2e-5), "h200-sxm", ("olmoe-1b-7b",), path=quick)[0] == 2e-5


def test_a_traced_run_beside_the_model_by_decode_count_and_mixed_steps():
    profile = _profile(_base(5e-5))
    tables = step_tables(_row(1.0, SEQS), profile, "h200-sxm")
    assert tables.floor_seq_s == pytest.approx(5e-5)
    trace = _trace(tables, 5e-5)  # the steps exactly as the model times them
    (band,) = decode_bands(_row(44.0, SEQS), trace, tables)
    assert band["decodes"] == 200 and band["steps"] >= 50
    assert band["measured_p50_ms"] == pytest.approx(band["model_ms"], rel=1e-3)
    out = compare_steps(_row(44.0, SEQS), trace, profile, "h200-sxm")
    assert out["decode"] == [band] and out["mixed"]["mean_sequences"] == 201
    assert out["mixed"]["measured_ms"] == pytest.approx(out["mixed"]["model_ms"], rel=1e-3)
    # around each launched step: the decode step before it waits for the launch, as replayed
    launches = out["launches"]
    assert launches["pairs"] == launches["launched"] == 60
    assert launches["before_ms"][0] == pytest.approx(launches["before_ms"][1], rel=1e-3)
    assert launches["launched_ms"][0] == pytest.approx(launches["launched_ms"][1], rel=1e-3)
    assert launches["before_ms"][0] > 1.5 * band["measured_p50_ms"]  # the launch, not the decode


def test_the_serving_report_sets_traced_runs_beside_the_model(tmp_path, tables):
    from perfmodel.validate.serving_steps import engine_step_comparison, engine_steps_markdown

    run = _row(44.0, SEQS)
    path = _write(tmp_path, [(run, _trace(tables, 5e-5))])
    (out,) = engine_step_comparison(path, "h200-sxm", {"olmoe-1b-7b"})
    assert out["point_id"] == run["point_id"] and out["decode"][0]["decodes"] == 200
    assert out["mixed"]["steps"] == 60 and out["mixed"]["measured_ms"] > out["decode"][0]["measured_p50_ms"]
    text = engine_steps_markdown([out])
    assert "## Engine steps (traced runs)" in text and "| olmoe-1b-7b | 44 | 200: " in text
    assert "| (60) " in text  # the gaps around the launched steps
    # other models' runs, and rows without a trace file, give no section
    assert engine_step_comparison(path, "h200-sxm", {"mixtral-8x7b"}) == [] and engine_steps_markdown([]) == ""
    assert engine_step_comparison(tmp_path / "none.jsonl", "h200-sxm", {"olmoe-1b-7b"}) == []
