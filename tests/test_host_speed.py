"""The host's speed as an input: its factor, where it applies, its fit, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from perfmodel import symbols as s
from perfmodel.calibration.fit_host_speed import fit_host_speed, host_only_rows
from perfmodel.errors import InputError
from perfmodel.host_speed import HOST_FACTOR, HOST_TIMES, check_probe, host_factor, row_probe_ms
from perfmodel.prediction import Workload, predict
from perfmodel.profile import load_profile


def _vllm():
    return load_profile("vllm", "h200-sxm")


def test_the_factor_is_the_probe_ratio_to_the_exponent():
    assert HOST_FACTOR == (s.p_host / s.p_ref) ** s.alpha_host
    profile = _vllm()
    ref, alpha = profile.latency.host_probe_ref_ms, profile.latency.host_speed_exponent
    assert ref > 0 and 0 < alpha <= 2
    assert host_factor(profile, None) == 1.0
    assert host_factor(profile, ref) == pytest.approx(1.0)
    assert host_factor(profile, 4 * ref) == pytest.approx(4 ** alpha)
    assert float(HOST_FACTOR.subs({s.p_host: 2 * ref, s.p_ref: ref, s.alpha_host: alpha})) == pytest.approx(
        host_factor(profile, 2 * ref))


def test_a_profile_without_a_host_fit_refuses_a_probe():
    hf = load_profile("hf", "h200-sxm")
    assert hf.latency.host_probe_ref_ms is None
    assert host_factor(hf, None) == 1.0
    with pytest.raises(InputError, match="no host-speed fit"):
        host_factor(hf, 40.0)


@pytest.mark.parametrize("bad", [0, -3.0, float("nan"), float("inf"), True, "40"])
def test_bad_probe_times_are_refused(bad):
    with pytest.raises(InputError, match="host_probe_ms"):
        check_probe(bad)
    with pytest.raises(InputError, match="host_probe_ms"):
        Workload(host_probe_ms=bad)


def test_a_slower_host_scales_the_host_times_and_nothing_else():
    profile = _vllm()
    kwargs = dict(engine="vllm", batch=1024, input_len=16, output_len=64, model="olmoe")
    ref = profile.latency.host_probe_ref_ms
    base = predict(**kwargs)
    slow = predict(**kwargs, host_probe_ms=2 * ref)
    factor = 2 ** profile.latency.host_speed_exponent
    assert slow.provenance["host"]["factor"] == pytest.approx(factor)
    assert base.provenance["host"] == {"probe_ms": None, "reference_probe_ms": ref, "factor": 1.0}
    # the host's floor of a decode step and the offline call's per-request time scale ...
    assert slow.metrics["decode_host_s"] == pytest.approx(factor * base.metrics["decode_host_s"])
    assert slow.metrics["request_host_s"] == pytest.approx(factor * base.metrics["request_host_s"])
    assert slow.metrics["prefill_launch_s"] == pytest.approx(factor * base.metrics["prefill_launch_s"])
    # ... the GPU's work does not
    gpu = {(o["pass"], o["name"]): o["time_s"] for o in base.ops}
    assert {(o["pass"], o["name"]): o["time_s"] for o in slow.ops} == pytest.approx(gpu)
    # a host-bound step follows the host
    assert slow.metrics["itl_s"] > base.metrics["itl_s"]
    assert slow.metrics["itl_s"] == pytest.approx(max(factor * base.metrics["decode_host_s"],
                                                      base.metrics["itl_s"]), rel=1e-6)


def test_every_host_time_is_a_latency_of_the_profile():
    names = {sym.name for sym in HOST_TIMES}
    assert {"t_host_step", "t_host_seq", "t_eager_layer", "t_eager_step", "t_eager_seq", "t_uncompiled",
            "t_piece_layer", "t_req", "t_draft", "t_sync", "t_moe_host", "t_mla_split", "t_launch_serial",
            "t_launch_serial_seq", "t_dense_launch"} == names
    assert all(isinstance(sym, sp.Symbol) for sym in HOST_TIMES)


def test_row_probe_is_the_mean_of_before_and_after():
    assert row_probe_ms({"host_probe_ms": [30.0, 50.0]}) == 40.0
    assert row_probe_ms({}) is None
    assert row_probe_ms({"host_probe_ms": []}) is None
    assert row_probe_ms({"host_probe_ms": ["x", None]}) is None


def _row(batch: int, probe: float, itl_ms: float, layers=1, spread: float = 1.0) -> dict:
    return {"status": "ok", "layers": layers, "batch": batch, "output_len": 64, "itl_ms": itl_ms,
            "host_probe_ms": [probe, probe * spread], "model": "olmoe-1b-7b",
            "point_id": f"vllm|olmoe-1b-7b|set=|layers={layers}|B={batch}|S=16|O=64|tp=1"}


def test_the_fit_recovers_a_known_exponent_from_host_only_rows():
    rng = np.random.default_rng(0)
    rows = []
    for batch in (16, 256, 1024):
        for probe in rng.uniform(30, 80, size=6):
            itl = (1.5 + 0.018 * batch) * (probe / 40.0) ** 0.6 * math.exp(rng.normal(0, 0.01))
            rows.append(_row(batch, float(probe), itl))
    # rows the fit leaves alone: a full model, a host that changed speed within the point
    rows += [_row(256, 40.0, 99.0, layers=None), _row(256, 30.0, 99.0, spread=2.0)]
    assert len(host_only_rows(rows)) == 18
    # a held-out model's rows and a variant's: they do not move the reference
    held_out = [{**_row(256, 90.0, 9.0, layers=None), "model": "qwen3-30b-a3b"} for _ in range(30)]
    variant = [{**_row(256, 95.0, 9.0, layers=None), "overrides": {"num_experts": 32}} for _ in range(30)]
    values, points = fit_host_speed(rows + held_out + variant, train=("olmoe-1b-7b",))
    assert values["host_speed_exponent"] == pytest.approx(0.6, abs=0.03)
    reference = rows[:-1]  # the host-only rows and the full OLMoE row, not the unsteady 1-layer one
    probes = sorted(row_probe_ms(r) for r in reference)
    assert values["host_probe_ref_ms"] == pytest.approx(float(np.median(probes)), rel=1e-3)
    assert values["record"]["reference_rows"] == len(reference)
    assert values["record"]["mape_pct"]["with_probe"] < values["record"]["mape_pct"]["without_probe"]
    assert len(points) == 3  # one point id per batch, every pass of it
    # a training model's held-out rows (the what-if file, outside the rows the end-to-end fit
    # reads) on a slow host do not move it either
    kept_apart = [_row(64, 90.0, 9.0, layers=None) for _ in range(30)]
    apart, _ = fit_host_speed(rows + kept_apart, train=("olmoe-1b-7b",), fitted=rows)
    assert apart["host_probe_ref_ms"] == pytest.approx(values["host_probe_ref_ms"], rel=1e-3)
    moved, _ = fit_host_speed(rows + kept_apart, train=("olmoe-1b-7b",))
    assert moved["host_probe_ref_ms"] > values["host_probe_ref_ms"] * 1.2
    # nor do a training model's quantized rows: each scheme's fit holds the host's terms fixed
    quantized = [{**r, "engine": {"quantization": "gptq"}} for r in kept_apart]
    apart, _ = fit_host_speed(rows + quantized, train=("olmoe-1b-7b",))
    assert apart["host_probe_ref_ms"] == pytest.approx(values["host_probe_ref_ms"], rel=1e-3)


def test_too_few_host_only_rows_fit_nothing():
    train = ("olmoe-1b-7b",)
    assert fit_host_speed([_row(16, 40.0, 2.0), _row(256, 40.0, 6.0)], train) == (None, [])
    assert fit_host_speed([_row(16, 30.0 + i, 2.0) for i in range(8)], train) == (None, [])  # one batch


def test_a_measured_row_is_predicted_at_its_hosts_speed():
    from perfmodel.measuring.compare import model_workload

    row = {"batch": 64, "point_id": "vllm|olmoe-1b-7b|set=|layers=all|B=64|S=16|O=64|tp=1",
           "host_probe_ms": [60.0, 70.0]}
    assert model_workload(row, _vllm())["host_probe_ms"] == 65.0
    assert "host_probe_ms" not in model_workload(row)
    assert "host_probe_ms" not in model_workload(row, load_profile("hf", "h200-sxm"))


def test_cli_takes_and_checks_the_probe(capsys):
    from perfmodel.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "olmoe", "--engine", "vllm", "--host-probe-ms", "-3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "perfmodel: error: host_probe_ms must be a number of milliseconds above 0 and at most 10,000, got -3.0"]
    with pytest.raises(SystemExit) as exit_info:  # a probe beyond any host: a typo, not a prediction
        main(["predict", "olmoe", "--engine", "vllm", "--host-probe-ms", "1e308"])
    assert exit_info.value.code == 2 and "at most 10,000" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "olmoe", "--engine", "hf", "--host-probe-ms", "40"])
    assert exit_info.value.code == 2
    assert "no host-speed fit" in capsys.readouterr().err


def test_host_probe_command_prints_the_probe_and_the_factor(capsys):
    import json

    from perfmodel.commands import main

    try:
        main(["host-probe", "--engine", "vllm", "--json"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["host_probe_ms"] > 0 and out["reference_probe_ms"] == _vllm().latency.host_probe_ref_ms
    assert out["host_factor"] == pytest.approx(host_factor(_vllm(), out["host_probe_ms"]))


def test_planning_takes_the_hosts_speed():
    from perfmodel.planning.question import PlanQuestion

    q = PlanQuestion(model="olmoe", traffic={"rate": 1, "input_len": 128, "output_len": 16}, host_probe_ms=70)
    assert q.host_probe_ms == 70
    with pytest.raises(Exception, match="greater than 0"):
        PlanQuestion(model="olmoe", traffic={"rate": 1, "input_len": 128, "output_len": 16}, host_probe_ms=0)


def test_a_sweep_takes_the_host_speed_as_predict_does():
    from perfmodel.sweeps import sweep

    probe = 1.5 * _vllm().latency.host_probe_ref_ms
    table = sweep("olmoe", {"batch": [16, 1024]}, engine="vllm", input_len=16, output_len=64,
                  host_probe_ms=probe)
    for batch, itl in zip(table["batch"], table["itl_s"]):
        one = predict("olmoe", engine="vllm", batch=int(batch), input_len=16, output_len=64, host_probe_ms=probe)
        assert itl == pytest.approx(one.metrics["itl_s"], rel=1e-9)
    base = sweep("olmoe", {"batch": [1024]}, engine="vllm", input_len=16, output_len=64)
    assert table["itl_s"].iloc[-1] > base["itl_s"].iloc[0]


def test_a_plan_says_which_host_it_was_scaled_to():
    from perfmodel.planning.answer import answer
    from perfmodel.planning.question import PlanQuestion
    from perfmodel.planning.search import run_search

    q = PlanQuestion(model="olmoe", traffic={"rate": 2, "input_len": 256, "output_len": 32},
                     slo={"ttft_p90": 2.0, "itl_p90": 0.1}, search={"gpus": ["h200"], "max_gpus": 1},
                     simulation={"requests": 60, "warmup": 20}, host_probe_ms=80.0)
    data = answer(run_search(q), sweep=False)
    assert data["profile"][0]["host"]["probe_ms"] == 80.0
    assert data["profile"][0]["host"]["factor"] == pytest.approx(host_factor(_vllm(), 80.0))
    assert any("host probe of 80.0 ms" in c for c in data["caveats"])


def test_a_run_sampler_samples_the_host_while_the_block_runs():
    import time

    from perfmodel.host_trace import RunSampler, run_summary

    with RunSampler(every_s=0.01) as sampler:
        time.sleep(0.5)
    samples = sampler.samples
    assert len(samples) >= 5
    assert all(b[0] > a[0] for a, b in zip(samples, samples[1:]))  # in time order
    summary = run_summary(samples)
    assert summary["samples"] == len(samples) and summary["p10_ms"] <= summary["p50_ms"] <= summary["p90_ms"]
    assert summary["mean_ms"] == pytest.approx(float(np.mean([m for _, m in samples])), abs=1e-3)
    assert run_summary([]) is None


def test_a_run_shorter_than_a_sample_still_has_one():
    from perfmodel.host_trace import RunSampler

    with RunSampler(every_s=10.0) as sampler:  # the block ends at once: the stop comes before any sleep
        pass
    assert len(sampler.samples) == 1 and sampler.samples[0][1] > 0


def test_run_summary_reads_the_slow_state_and_the_mean_over_the_work():
    from perfmodel.host_trace import run_summary

    samples = [(0.025 * i, 70.0 if i % 4 == 0 else 35.0) for i in range(40)]
    summary = run_summary(samples)
    assert summary["slow_share"] == pytest.approx(0.25)
    assert summary["mean_ms"] == pytest.approx(0.25 * 70 + 0.75 * 35)


def test_a_rows_host_speed_is_its_run_mean_where_sampled_else_its_probes():
    from perfmodel.host_speed import row_host_ms

    row = {"host_probe_ms": [30.0, 50.0], "host_run": {"mean_ms": 61.5}}
    assert row_probe_ms(row) == 40.0  # the probes before and after
    assert row_host_ms(row) == 61.5  # the samples through the rate, where there are some
    assert row_probe_ms({"host_run": {"mean_ms": 45.0}}) is None
    assert row_host_ms({"host_run": {"mean_ms": 45.0}}) == 45.0
    for broken in (None, {}, {"mean_ms": 0.0}, {"mean_ms": "fast"}, {"mean_ms": float("nan")}, {"mean_ms": True}):
        assert row_host_ms({"host_probe_ms": [30.0, 50.0], "host_run": broken}) == 40.0
    assert row_host_ms({}) is None


def test_a_run_sampler_that_cannot_start_leaves_the_run_alone(monkeypatch):
    import multiprocessing.context

    from perfmodel.host_trace import RunSampler

    def refuse(self):
        raise OSError("no process for you")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refuse)
    ran = []
    with RunSampler() as sampler:
        ran.append(True)
    assert ran == [True] and sampler.samples == []
