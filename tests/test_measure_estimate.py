"""The hf runner's time estimate: the roofline's passes (perfmodel.prediction), the runner's
protocol around them, and the labelled coarse estimate when the model cannot be imported."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("torch")

from perfmodel.measuring import hf_estimate as he  # noqa: E402
from perfmodel.measuring.hf_runner import HFBackend  # noqa: E402
from perfmodel.measuring.hf_steps import sample_steps  # noqa: E402
from perfmodel.measuring.points import SweepPoint  # noqa: E402

TINY = ("hidden_size=64", "num_heads=4", "num_kv_heads=2", "head_dim=16", "num_experts=4", "top_k=2",
        "moe_intermediate_size=32", "vocab_size=128")


def test_roofline_times_are_the_prediction_of_the_point():
    from perfmodel.prediction import predict

    point = SweepPoint("mixtral", batch=16, input_len=512, output_len=256, overrides=("top_k=1",), layers=4)
    times = he.roofline_times(point, "h200")
    p = predict("mixtral", engine="roofline", gpu="h200-sxm", batch=16, input_len=512, output_len=256,
                overrides=["top_k=1", "num_layers=4"])
    assert times.source == "roofline" and times.layers == 4
    assert times.prefill_s == pytest.approx(p.metrics["ttft_s"], rel=1e-12)
    assert times.step_s == pytest.approx(p.metrics["itl_s"], rel=1e-12)
    assert times.weight_bytes == pytest.approx(p.metrics["weights_bytes"], rel=1e-12)
    # the point's overrides and layers reach the model: the full model takes longer
    full = he.roofline_times(SweepPoint("mixtral", batch=16, input_len=512, output_len=256), "h200")
    assert full.layers == 32 and full.step_s > times.step_s and full.prefill_s > times.prefill_s


def test_roofline_times_follow_the_gpu_and_default_to_the_h200():
    point = SweepPoint("olmoe", batch=8, input_len=256, output_len=64)
    h200 = he.roofline_times(point, "h200")
    assert he.roofline_times(point, None) == h200
    assert he.roofline_times(point, "cpu") == h200  # no spec for this device: the H200 is assumed
    assert he.roofline_times(point, "h100").step_s > h200.step_s  # less HBM bandwidth


def test_estimate_follows_the_runner_protocol():
    """prefill 100 ms (short: 5 timed runs), step 10 ms (5 timed replays), 2 layers, O = 9."""
    times = he.PassTimes(prefill_s=0.1, step_s=0.01, layers=2, weight_bytes=50e9, source="roofline")
    point = SweepPoint("m", batch=1, input_len=8, output_len=9)
    samples = len(sample_steps(9))
    prefill_runs = 1 + 1 + 5  # first, profiled, timed
    expected = (prefill_runs * 0.1 + he.EAGER_STEPS * 0.01 + samples * (1 + 5) * 0.01
                + 0.01 + he.PROFILER_S + he.POINT_S)
    assert he.estimate_point_s(times, point) == pytest.approx(expected)
    built = he.estimate_point_s(times, point, build=True)
    assert built - he.estimate_point_s(times, point) == pytest.approx(he.BUILD_S + 50e9 / he.BUILD_BYTES_S)
    full = SweepPoint("m", batch=1, input_len=8, output_len=9, full_run=True)
    assert he.estimate_point_s(times, full) - he.estimate_point_s(times, point) == pytest.approx(8 * 0.01)
    # a long step is replayed 3 times per sample; a tiny prefill takes the host's launch time
    slow = he.PassTimes(prefill_s=1e-6, step_s=0.05, layers=2, weight_bytes=0.0, source="roofline")
    floor = 2 * he.EAGER_LAYER_S
    assert he.estimate_point_s(slow, point, profile=False) == pytest.approx(
        (1 + 1 + 5) * floor + he.EAGER_STEPS * 0.05 + samples * (1 + 3) * 0.05 + he.POINT_S)


def test_backend_plans_with_the_roofline(monkeypatch):
    logs = []
    backend = HFBackend(device="cpu", gpu=True, log=logs.append)
    point = SweepPoint("mixtral", batch=2, input_len=8, output_len=9, overrides=TINY, layers=2)
    times = he.roofline_times(point, "cpu")
    assert backend.estimate_s(None, point) == pytest.approx(he.estimate_point_s(times, point, build=True))
    assert not any("COARSE" in line for line in logs)
    assert HFBackend(device="cpu").estimate_s(None, point) == 0.0  # no GPU timing: nothing to plan


def test_without_the_model_the_estimate_is_coarse_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "perfmodel.prediction", None)  # as where pydantic is missing
    point = SweepPoint("mixtral", batch=2, input_len=8, output_len=9, overrides=TINY, layers=2)
    with pytest.raises(ImportError):
        he.roofline_times(point, "h200")
    logs = []
    backend = HFBackend(device="cpu", gpu=True, log=logs.append)
    times = backend.pass_times(None, point)
    assert times.source == "coarse" and times.layers == 2 and times.prefill_s > 0 and times.step_s > 0
    assert backend.estimate_s(None, point) > 0
    assert sum("COARSE" in line for line in logs) == 1  # said once
