"""The host time of an MLA step that holds a prompt beside decodes: the op's term, the step
tables that pay it, and its fit from profiled steps."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from perfmodel.calibration.fit import _profile
from perfmodel.calibration.fit_mla_split import fit_mla_split
from perfmodel.host_speed import host_factor
from perfmodel.measuring.step_compare import step_tables
from perfmodel.paths import ROOT

PER_LAYER_S = 4e-4
DSV2_LAYERS = 27


def _base(per_layer_s: float = PER_LAYER_S) -> dict:
    base = yaml.safe_load((ROOT / "calibration" / "profiles" / "h200-sxm-vllm.yaml").read_text())
    base["latency"]["mla_split_layer_s"] = per_layer_s
    return base


def _row(model: str) -> dict:
    return {"point_id": f"vllm|{model}|rate=4", "status": "ok", "model": model, "overrides": [],
            "input_len": 1024, "output_len": 256, "max_num_seqs": 256, "rate": 4.0,
            "engine": {"max_num_batched_tokens": 8192}}


@pytest.fixture(scope="module")
def mla():
    return step_tables(_row("deepseek-v2-lite"), _profile(_base()), "h100-sxm")


def test_an_mla_prompt_pass_splits_in_every_layer_and_a_gqa_one_in_none(mla):
    assert mla.split_s == pytest.approx(DSV2_LAYERS * PER_LAYER_S)
    gqa = step_tables(_row("olmoe-1b-7b"), _profile(_base()), "h100-sxm")
    assert gqa.split_s == 0.0


def test_only_a_step_with_a_prompt_beside_decodes_pays_it(mla):
    none = dataclasses.replace(mla, split_s=0.0)
    for n, p, launched in ((16, 1024, True), (64, 1024, True)):  # a launched step: on the host
        gpu, host, was = mla.step_parts(n, 1100.0, p, p * mla.prefill_rate(p))
        gpu0, host0, _ = none.step_parts(n, 1100.0, p, p * none.prefill_rate(p))
        assert was is launched and gpu == pytest.approx(gpu0) and host - host0 == pytest.approx(mla.split_s)
    gpu, host, was = mla.step_parts(8, 1100.0, 64, 64 * mla.prefill_rate(64))  # replayed: serial with the GPU
    gpu0, host0, _ = none.step_parts(8, 1100.0, 64, 64 * none.prefill_rate(64))
    assert not was and gpu - gpu0 == pytest.approx(mla.split_s) and host == pytest.approx(host0)
    for n, p in ((0, 1024), (32, 0)):  # a prompt alone, decodes alone
        assert mla.step_parts(n, 1100.0, p, p * mla.prefill_rate(p)) == \
            none.step_parts(n, 1100.0, p, p * none.prefill_rate(p))


def test_the_vectorized_steps_agree_with_one_step(mla):
    n = np.array([0.0, 16.0, 64.0, 8.0, 32.0])
    p = np.array([1024.0, 1024.0, 1024.0, 64.0, 0.0])
    gpu, host, launched = mla.parts(n, 1100.0, p, p * mla.prefill_rate(1024.0))
    for i in range(len(n)):
        one = mla.step_parts(n[i], 1100.0, p[i], p[i] * mla.prefill_rate(1024.0))
        assert (gpu[i], host[i], bool(launched[i])) == pytest.approx(one)


def _profiled(decodes: int, step_ms: float, probes: list[float], busy_ms: float = 15.0) -> dict:
    return {"model": "deepseek-v2-lite", "overrides": [], "quantization": "none", "decodes": decodes,
            "mixed_median_ms": step_ms, "host_probe_ms": probes,
            "profiles": {"mixed": {"busy_ms": busy_ms}}}


def test_the_fit_recovers_the_host_time_that_made_the_steps(tmp_path):
    base = _base(0.0)
    profile = _profile(base)
    probe = 50.0
    h = host_factor(profile, probe)
    per_seq = base["latency"]["eager_seq_s"]
    alone_ms = 45.0
    rows = [_profiled(0, alone_ms, [probe, probe])]
    rows += [_profiled(d, alone_ms + 1e3 * h * (d * per_seq + DSV2_LAYERS * PER_LAYER_S), [probe, probe])
             for d in (16, 64, 128)]
    path = tmp_path / "x-vllm-mixed-steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    value, record = fit_mla_split(base, [path])
    assert value == pytest.approx(PER_LAYER_S, rel=1e-3)
    assert len(record["pairs"]) == 3 and record["left_out"] == []


def test_a_model_cut_to_fewer_layers_is_a_check_not_a_fitted_pair(tmp_path):
    base = _base(0.0)
    h = host_factor(_profile(base), 50.0)
    per_seq = base["latency"]["eager_seq_s"]
    cut = ["num_hidden_layers=8"]
    rows = [_profiled(0, 45.0, [50.0, 50.0])]
    rows += [_profiled(d, 45.0 + 1e3 * h * (d * per_seq + DSV2_LAYERS * PER_LAYER_S), [50.0, 50.0]) for d in (16, 64)]
    rows += [{**_profiled(0, 15.0, [50.0, 50.0], busy_ms=5.0), "overrides": cut}]
    rows += [{**_profiled(d, 15.0 + 1e3 * h * (d * per_seq + 8 * 2 * PER_LAYER_S), [50.0, 50.0]), "overrides": cut}
             for d in (16, 64)]
    path = tmp_path / "x-vllm-mixed-steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    value, record = fit_mla_split(base, [path])
    assert value == pytest.approx(PER_LAYER_S, rel=1e-3)  # the cut model's twice as large a term is not fitted on
    assert len(record["pairs"]) == 2 and all("num_hidden_layers=8" not in p["row"] for p in record["pairs"])
    assert [c["per_layer_ms"] for c in record["checks"]] == pytest.approx([2e3 * PER_LAYER_S] * 2, rel=1e-3)


def test_the_fit_leaves_out_a_host_that_changed_speed_and_a_step_the_gpu_sets(tmp_path):
    rows = [_profiled(0, 45.0, [35.0, 70.0]), _profiled(16, 60.0, [35.0, 36.0])]
    unsteady = tmp_path / "a-vllm-mixed-steps.jsonl"
    unsteady.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [_profiled(0, 33.0, [79.0, 80.0], busy_ms=27.0), _profiled(16, 35.0, [79.0, 81.0], busy_ms=27.5)]
    gpu_bound = tmp_path / "b-vllm-mixed-steps.jsonl"
    gpu_bound.write_text("".join(json.dumps(r) + "\n" for r in rows))
    value, record = fit_mla_split(_base(0.0), [unsteady, gpu_bound])
    assert value is None and record["pairs"] == []
    assert [r.split(": ")[-1].split(" (")[0] for r in record["left_out"]] == ["host not steady", "GPU-bound"]


def test_the_committed_profiles_carry_the_fitted_term():
    for gpu in ("h200-sxm", "h100-sxm"):
        profile = yaml.safe_load((ROOT / "calibration" / "profiles" / f"{gpu}-vllm.yaml").read_text())
        assert 1e-4 < profile["latency"]["mla_split_layer_s"] < 1e-3


def test_the_launch_formula_writes_out_what_a_mixed_step_adds():
    from perfmodel.formula_text import op_formula, op_formula_data

    per_layer = yaml.safe_load((ROOT / "calibration" / "profiles" / "h100-sxm-vllm.yaml").read_text())[
        "latency"]["mla_split_layer_s"]
    data = op_formula_data("deepseek-v2-lite", "launch", "time", "prefill", [], gpu="h100-sxm", engine="vllm")
    assert data["mixed_step_split"]["value_s"] == pytest.approx(DSV2_LAYERS * per_layer)
    assert any("prompt tokens beside decodes" in line
               for line in op_formula("deepseek-v2-lite", "launch", "time", "prefill", False, [],
                                      gpu="h100-sxm", engine="vllm"))
    assert op_formula_data("olmoe-1b-7b", "launch", "time", "prefill", [], engine="vllm")["mixed_step_split"] is None
