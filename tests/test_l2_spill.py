"""The fused-MoE kernel on experts larger than the L2 cache (ops.moe.l2_spill_scale,
options.moe_l2_spill, calibration.fit_moe_tables.fit_l2_spill)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sympy as sp
import yaml

from perfmodel import predict
from perfmodel.ops.moe import l2_spill_scale
from perfmodel.symbols import L2, s_l2

MIB = 2**20
TRAIN = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b", "mixtral-8x7b")


def test_the_factor_is_one_while_an_expert_fits_in_l2_and_grows_with_the_share_beyond():
    w = sp.Symbol("w", positive=True)
    scale = l2_spill_scale(w).subs({L2: 50 * MIB, s_l2: 0.3})
    assert float(scale.subs(w, 10 * MIB)) == 1.0 and float(scale.subs(w, 50 * MIB)) == 1.0
    assert float(scale.subs(w, 100 * MIB)) == pytest.approx(1.15)
    assert float(scale.subs(w, 400 * MIB)) == pytest.approx(1 + 0.3 * 7 / 8)
    assert float(l2_spill_scale(w).subs({L2: 50 * MIB, s_l2: 0.0, w: 400 * MIB})) == 1.0  # no term: none


def _experts(engine, model, **kw):
    p = predict(model, engine=engine, gpu="h100-sxm", phase="prefill", batch=4, input_len=1024, **kw)
    return next(op for op in p.ops if op["name"] == "moe.experts")


def test_only_the_compute_time_of_experts_larger_than_l2_grows(roofline_with):
    spill = roofline_with(gpu="h100-sxm", options={"moe_l2_spill": 0.5})
    w = 3 * 4096 * 14336 * 2  # one Mixtral-8x7B expert in bf16, bytes
    plain, spilled = _experts("roofline", "mixtral-8x7b"), _experts(spill, "mixtral-8x7b")
    assert spilled["compute_s"] / plain["compute_s"] == pytest.approx(1 + 0.5 * (1 - 50 * MIB / w), rel=1e-9)
    assert spilled["memory_s"] == pytest.approx(plain["memory_s"], rel=1e-12)
    fp8 = _experts(spill, "mixtral-8x7b", quant="fp8")["compute_s"] / _experts("roofline", "mixtral-8x7b",
                                                                                quant="fp8")["compute_s"]
    assert fp8 == pytest.approx(1 + 0.5 * (1 - 50 * MIB / (w / 2)), rel=1e-3)  # one byte a weight
    olmoe = _experts(spill, "olmoe-1b-7b")["compute_s"]  # 13 MB experts: within L2
    assert olmoe == pytest.approx(_experts("roofline", "olmoe-1b-7b")["compute_s"])
    assert _experts(spill, "mixtral-8x7b", tp=4)["compute_s"] == pytest.approx(  # 88 MB a GPU: still beyond
        _experts("roofline", "mixtral-8x7b", tp=4)["compute_s"] * (1 + 0.5 * (1 - 50 * MIB / (w / 4))), rel=1e-9)


def test_profiles_that_differ_in_the_cost_alone_share_their_compiled_expressions(roofline_with, monkeypatch):
    """s_L2 is a symbol's value, not part of an expression's form: a profile with another cost (a
    refit, the anchored and unanchored fits) reuses the compiled expressions, and its numbers move."""
    from perfmodel import prediction

    monkeypatch.setattr(prediction, "_COMPILED", {})
    first = Path(roofline_with(gpu="h100-sxm", options={"moe_l2_spill": 0.5}))
    half = _experts(str(first), "mixtral-8x7b")["compute_s"]
    built = len(prediction._COMPILED)
    data = yaml.safe_load(first.read_text())
    data["options"].update(moe_l2_spill=1.0, memory_usable_fraction=0.8)
    other = first.with_name("other.yaml")
    other.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(prediction, "phase_expressions", lambda *a, **k: pytest.fail("rebuilt"))
    whole = _experts(str(other), "mixtral-8x7b")
    assert len(prediction._COMPILED) == built
    w = 3 * 4096 * 14336 * 2
    assert whole["compute_s"] / half == pytest.approx((1 + (1 - 50 * MIB / w)) / (1 + 0.5 * (1 - 50 * MIB / w)))


def _timed(rows, gpu, profile):
    from perfmodel.measuring.kernel_timings import kernel_call_seconds

    return [{**r, "us": 1e6 * kernel_call_seconds(r, gpu, profile)} for r in rows]


def test_the_fit_recovers_the_cost_the_timings_were_made_with(tmp_path):
    from perfmodel.calibration.fit import _profile
    from perfmodel.calibration.fit_moe_tables import fit_l2_spill
    from perfmodel.paths import ROOT, moe_kernel_file

    base = yaml.safe_load((ROOT / "calibration/profiles/h100-sxm-vllm.yaml").read_text())
    base["options"].pop("moe_l2_spill", None)
    planted = _profile({**base, "options": {**base["options"], "moe_l2_spill": 0.4}})
    shape = {"hidden": 4096, "top_k": 2, "scheme": "none", "tiles": "default"}
    rows = _timed([{**shape, "experts": 8, "width": 14336, "tokens": t} for t in (1024, 2048, 4096, 8192)]
                  + [{**shape, "experts": 8, "width": 7168, "tokens": 2048},  # no training model's shape
                     {**shape, "experts": 8, "width": 14336, "tokens": 256},  # below the compute-bound passes
                     {**shape, "experts": 8, "width": 14336, "tokens": 2048, "tiles": "table"}], "h100-sxm", planted)
    rows[4]["us"] *= 3  # rows the fit must not read: were they read, the fit would move
    rows[5]["us"] *= 3
    rows[6]["us"] *= 3
    results = tmp_path / "h100-vllm.jsonl"
    moe_kernel_file(results).write_text("".join(json.dumps(r) + "\n" for r in rows))
    value, record = fit_l2_spill(results, base, "h100-sxm", TRAIN)
    assert value == pytest.approx(0.4, rel=1e-2)
    assert record["passes"] == 4 and record["shapes"] == ["E=8 N=14336 (hidden 4096, top-2)"]
    assert record["predicted_over_measured"]["fitted"] == pytest.approx([1.0, 1.0], abs=0.01)
    assert fit_l2_spill(results, base, "h100-sxm", ("olmoe-1b-7b",)) == (None, {})  # experts within L2
    assert fit_l2_spill(Path(tmp_path / "none" / "h100-vllm.jsonl"), base, "h100-sxm", TRAIN) == (None, {})


def test_the_h100_profile_carries_the_fitted_cost_and_its_record():
    from perfmodel.profile import load_profile

    profile = load_profile("vllm", "h100-sxm")
    assert 0 < profile.options.moe_l2_spill < 1
    record = profile.fit["moe_l2_spill"]
    assert record["shapes"] == ["E=8 N=14336 (hidden 4096, top-2)"] and record["passes"] >= 10
    assert load_profile("vllm", "h200-sxm").options.moe_l2_spill is None  # no kernel timings there


def test_a_prediction_names_the_factor_where_its_experts_outgrow_l2(capsys):
    from perfmodel.commands import main

    p = predict("mixtral-8x7b", gpu="h100-sxm", phase="prefill", batch=1, input_len=1024, quant="fp8")
    spill = p.provenance["moe_l2_spill"]
    w = 3 * 4096 * 14336 / MIB  # one byte a weight, MiB
    assert spill["expert_mib"] == pytest.approx(w, rel=1e-9) and spill["l2_mib"] == 50
    assert spill["factor"] == pytest.approx(1 + spill["s_l2"] * (1 - 50 / w), rel=1e-9)
    for kw in ({"tp": 4}, {"moe_impl": "unfused"}):  # 42 MiB a GPU: within L2; no fused kernel
        assert predict("mixtral-8x7b", gpu="h100-sxm", phase="prefill", batch=1, input_len=1024, quant="fp8",
                       **kw).provenance["moe_l2_spill"] is None
    assert predict("mixtral-8x7b", gpu="h200-sxm", quant="fp8").provenance["moe_l2_spill"] is None  # not fitted
    main(["predict", "mixtral-8x7b", "--gpu", "h100", "--quant", "fp8"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "L2 cache" in x)
    assert f"x {spill['factor']:.2f}" in line and "168 MiB" in line
