"""The host time of a launched step that its GPU work does not hide, fitted from profiled steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perfmodel.calibration.fit_launch_serial import fit_launch_serial, fit_launch_serial_seq

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


def test_each_decode_beside_the_prompt_adds_the_least_squares_slope_through_the_prompt_alone(tmp_path):
    serial = {"latency": {**BASE["latency"], "launch_serial_s": 4e-3}}
    rows = [_row("mixtral-8x7b", 40.0, 35.0),  # the prompt alone: not this term's
            _row("mixtral-8x7b", 40.0 + 5.0, 35.0, decodes=16),  # gap 10 ms: 6 ms over 4 at D = 16
            _row("mixtral-8x7b", 60.0, 48.0, decodes=64),  # gap 12 ms: 8 ms over 4 at D = 64
            _row("mixtral-8x7b", 20.0, 8.0, decodes=128),  # host-bound: left out
            _row("mixtral-8x7b", 20.0, 14.0, decodes=32, probes=(144.0, 144.0)),  # h = 2: 3 ms, −1 ms at D = 32
            _row("phi-3.5-moe", 55.0, 48.0, decodes=64)]  # another model's: a check
    value, record = fit_launch_serial_seq(serial, ("mixtral-8x7b",), files=_write(tmp_path, rows))
    want = (16 * 6.0 + 64 * 8.0 + 32 * -1.0) / (16 ** 2 + 64 ** 2 + 32 ** 2) * 1e-3
    assert value == pytest.approx(want, rel=1e-3)  # four significant digits
    assert [r["row"].rsplit(" ", 1)[1] for r in record["rows"]] == ["D=16", "D=64", "D=32"]
    assert [c["serial_ms"] for c in record["checks"]] == pytest.approx([7.0])
    assert any("D=128: host-bound" in r for r in record["left_out"])
    # a slope below zero is none; without the prompt alone's term, or a qualifying row, no term
    shrinking = [_row("mixtral-8x7b", 37.0, 35.0, decodes=16)]
    assert fit_launch_serial_seq(serial, ("mixtral-8x7b",), files=_write(tmp_path, shrinking))[0] == 0.0
    assert fit_launch_serial_seq(BASE, ("mixtral-8x7b",), files=_write(tmp_path, rows))[0] is None
    assert fit_launch_serial_seq(serial, ("olmoe-1b-7b",), files=_write(tmp_path, rows))[0] is None


def test_a_launched_steps_gpu_time_holds_the_serial_time_of_each_further_sequence():
    from dataclasses import replace

    from perfmodel.planning.steptime import build_step_times
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    gpu = load_gpu("h200")
    steps = build_step_times(load_model("mixtral"), gpu, load_profile("vllm", gpu.name), "bf16", Layout(),
                             max_tokens=8192, max_seqs=256, max_context=2048)
    steps = replace(steps, serial_s=4e-3, serial_seq_s=30e-6)
    assert steps.serial(1) == pytest.approx(4e-3) and steps.serial(101) == pytest.approx(4e-3 + 100 * 30e-6)
    alone = steps.step_parts(0, 1100, 1024, 1024 * steps.prefill_rate(1024))
    beside = steps.step_parts(100, 1100, 1024, 1024 * steps.prefill_rate(1024))
    plain = replace(steps, serial_seq_s=0.0).step_parts(100, 1100, 1024, 1024 * steps.prefill_rate(1024))
    assert alone[2] and beside[2]
    assert beside[0] - plain[0] == pytest.approx(100 * 30e-6)  # its GPU time, on top of the kernels
    assert beside[1] == pytest.approx(plain[1])  # the host's launches do not change
    gpu_times, _, launched = steps.parts(np.array([0.0, 100.0]), 1100, 1024, 1024 * steps.prefill_rate(1024))
    assert launched.all() and gpu_times == pytest.approx([alone[0], beside[0]])
    replayed = steps.step_parts(100, 1100, 16, 16 * steps.prefill_rate(16))  # within the graph: not launched
    assert not replayed[2]
    assert replayed[0] == pytest.approx(replace(steps, serial_seq_s=0.0).step_parts(
        100, 1100, 16, 16 * steps.prefill_rate(16))[0])


def test_the_committed_profiles_per_sequence_term_is_the_slope_of_its_rows():
    from perfmodel.profile import load_profile

    h200, h100 = load_profile("vllm", "h200-sxm"), load_profile("vllm", "h100-sxm")
    rows = h200.fit["launch_serial_seq"]["rows"]
    serial_ms = h200.latency.launch_serial_s * 1e3
    pairs = [(int(r["row"].rsplit("D=", 1)[1]), r["serial_ms"]) for r in rows]
    slope = sum(d * (t - serial_ms) for d, t in pairs) / sum(d * d for d, _ in pairs) * 1e-3
    assert h200.latency.launch_serial_seq_s == pytest.approx(slope, rel=1e-3) and slope > 0
    assert h100.latency.launch_serial_seq_s == h200.latency.launch_serial_seq_s  # a host term: the anchor's
    assert h200.latency.eager_seq_s >= h200.latency.launch_serial_seq_s  # serial with the launches too
