"""The host time of a launched step that its GPU work does not hide, fitted from profiled steps."""

from __future__ import annotations

import json

import pytest

from perfmodel.calibration.fit_launch_serial import fit_launch_serial

BASE = {"latency": {"host_probe_ref_ms": 36.0, "host_speed_exponent": 0.5}}


def _row(model, wall, busy, probes=(36.0, 36.0), decodes=0, overrides=None, profile=True):
    profiles = {"mixed": {"busy_ms": busy}} if profile else {}
    return {"model": model, "overrides": overrides, "quantization": "none", "decodes": decodes,
            "mixed_median_ms": wall, "host_probe_ms": list(probes), "profiles": profiles,
            "point_id": f"{model}|{overrides}|{decodes}|{wall}"}


def _write(tmp_path, rows):
    path = tmp_path / "h100-vllm-mixed-steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [path]


def test_the_term_is_the_mean_gap_of_a_training_models_gpu_bound_prompts_at_the_reference_host(tmp_path):
    rows = [_row("mixtral-8x7b", 40.0, 35.0),  # GPU-bound, reference host: 5 ms
            _row("mixtral-8x7b", 14.0, 10.0, probes=(144.0, 144.0), overrides=["num_hidden_layers=4"]),  # h = 2: 2 ms
            _row("mixtral-8x7b", 50.0, 40.0, decodes=16),  # decodes beside: not the prompt alone
            _row("olmoe-1b-7b", 20.0, 8.0),  # host-bound: the launches' time
            _row("mixtral-8x7b", 30.0, 25.0, probes=(36.0, 60.0)),  # host not steady
            _row("mixtral-8x7b", 30.0, 25.0, profile=False),  # no kernel profile
            _row("phi-3.5-moe", 48.0, 43.5)]  # another model's: a check
    value, record = fit_launch_serial(BASE, ("mixtral-8x7b", "olmoe-1b-7b"), files=_write(tmp_path, rows))
    assert value == pytest.approx((5.0 + 2.0) / 2 * 1e-3)
    assert [r["serial_ms"] for r in record["rows"]] == pytest.approx([5.0, 2.0])
    assert [c["serial_ms"] for c in record["checks"]] == pytest.approx([4.5])
    reasons = " ".join(record["left_out"])
    assert "host-bound" in reasons and "host not steady" in reasons and "no kernel profile" in reasons
    assert len(record["left_out"]) == 3


def test_without_a_qualifying_row_there_is_no_term(tmp_path):
    value, record = fit_launch_serial(BASE, ("mixtral-8x7b",), files=_write(tmp_path, [_row("phi-3.5-moe", 48.0, 43.5)]))
    assert value is None and len(record["checks"]) == 1 and not record["rows"]


def test_the_committed_profiles_take_it_from_the_training_models_profiled_steps():
    from perfmodel.profile import load_profile

    h200, h100 = load_profile("vllm", "h200-sxm"), load_profile("vllm", "h100-sxm")
    record = h200.fit["launch_serial"]
    assert record["rows"] and all(r["row"].split(": ")[1].startswith(("mixtral-8x7b", "olmoe", "qwen1.5"))
                                  for r in record["rows"])
    mean_ms = sum(r["serial_ms"] for r in record["rows"]) / len(record["rows"])
    assert h200.latency.launch_serial_s == pytest.approx(mean_ms * 1e-3, rel=1e-3)
    assert h100.latency.launch_serial_s == h200.latency.launch_serial_s  # a host term: the anchor's
