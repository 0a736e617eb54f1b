"""The host's jitter of a launched step: the process, its use in the simulation, and its fit."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import sympy as sp
import yaml
from pydantic import ValidationError

from perfmodel import symbols as s
from perfmodel.calibration.fit import _profile
from perfmodel.calibration.fit_launch_noise import binned_covariance, fit_covariance, fit_launch_noise
from perfmodel.host_noise import (CENTERED_VARIANCE, COVARIANCE, GRID_S, VARIANCE, HostNoise, first_order_recursion,
                                  ou_step)
from perfmodel.measuring.step_compare import mixed_steps, step_tables
from perfmodel.paths import ROOT
from perfmodel.planning.pipeline import handover_times
from perfmodel.planning.simulate import EngineLimits, Requests, simulate
from perfmodel.profile import LaunchNoise, load_profile

NOISE = LaunchNoise(sigma_white=0.08, sigma_fast=0.12, tau_fast_s=0.08, sigma_slow=0.12, tau_slow_s=1.5)
S, O, SEQS, BUDGET = 1024, 256, 256, 8192


def _logs(noise: LaunchNoise, times: np.ndarray, seed: int) -> np.ndarray:
    h = HostNoise(noise, float(times[-1]), seed)
    return np.log([h.factor(float(t)) for t in times])


def test_the_update_and_covariance_are_the_ornstein_uhlenbeck_process():
    step = ou_step(s.sigma_f, s.tau_f)
    decay, scale = sp.diff(step, s.z_launch), sp.diff(step, s.eps_launch)
    at = {s.lag: 0.3, s.sigma_f: 0.2, s.tau_f: 0.5}
    assert float(decay.subs(at)) == pytest.approx(math.exp(-0.6))
    assert float(scale.subs(at)) == pytest.approx(0.2 * math.sqrt(1 - math.exp(-1.2)))
    # the stationary variance is kept: decay^2 σ^2 + scale^2 = σ^2
    assert float((decay**2 * s.sigma_f**2 + scale**2).subs(at)) == pytest.approx(0.04)
    assert float(COVARIANCE.subs({s.lag: 0, s.sigma_f: 0.1, s.sigma_s: 0.2, s.tau_f: 1, s.tau_s: 2})) \
        == pytest.approx(0.05)
    assert VARIANCE == s.sigma_w**2 + s.sigma_f**2 + s.sigma_s**2


def test_the_factors_spread_and_drift_as_the_parameters_say():
    times = np.arange(0.0, 600.0, 0.05)
    z = _logs(NOISE, times, seed=3)
    sd = math.sqrt(NOISE.sigma_white**2 + NOISE.sigma_fast**2 + NOISE.sigma_slow**2)
    assert z.std() == pytest.approx(sd, rel=0.1)
    assert abs(np.median(z)) < 0.03  # median factor 1
    for lag in (1, 6, 30):  # 0.05, 0.3 and 1.5 s apart
        expected = (NOISE.sigma_fast**2 * math.exp(-lag * 0.05 / NOISE.tau_fast_s)
                    + NOISE.sigma_slow**2 * math.exp(-lag * 0.05 / NOISE.tau_slow_s)) / sd**2
        assert np.corrcoef(z[:-lag], z[lag:])[0, 1] == pytest.approx(expected, abs=0.08)


def test_the_drift_is_about_the_runs_own_level_and_repeatable():
    h = HostNoise(NOISE, 30.0, seed=1)
    grid = np.arange(0.0, 30.0 + GRID_S, GRID_S)
    quiet = LaunchNoise(sigma_white=0.0, sigma_fast=0.12, tau_fast_s=0.08, sigma_slow=0.12, tau_slow_s=1.5)
    logs = _logs(quiet, grid, seed=1)
    assert abs(logs.mean()) < 1e-3  # the run's mean log factor is 0 over its span
    again = [HostNoise(NOISE, 30.0, seed=1).factor(t) for t in (0.0, 1.0, 2.0)]
    assert again == [HostNoise(NOISE, 30.0, seed=1).factor(t) for t in (0.0, 1.0, 2.0)]
    assert again != [HostNoise(NOISE, 30.0, seed=2).factor(t) for t in (0.0, 1.0, 2.0)]
    assert h.factor(-1.0) > 0 and h.factor(1e6) > 0  # before the start and past the end: the ends


@pytest.mark.parametrize("bad", [dict(sigma_white=-0.1), dict(tau_fast_s=0.0), dict(tau_fast_s=5.0),
                                 dict(sigma_slow=2.5)])
def test_a_profile_refuses_impossible_launch_noise(bad):
    with pytest.raises(ValidationError):
        LaunchNoise(**{**NOISE.model_dump(), **bad})


def _tables():
    base = yaml.safe_load((ROOT / "calibration" / "profiles" / "h200-sxm-vllm.yaml").read_text())
    return base, step_tables(_row(44.0), _profile(base), "h200-sxm")


def _row(rate: float, model: str = "olmoe-1b-7b") -> dict:
    return {"point_id": f"vllm|{model}|rate={rate}", "status": "ok", "model": model, "overrides": [],
            "input_len": S, "output_len": O, "max_num_seqs": SEQS, "rate": rate,
            "engine": {"max_num_batched_tokens": BUDGET}, "engine_steps": {"max_running": SEQS}}


def test_a_simulation_draws_the_noise_only_into_launched_steps():
    _, tables = _tables()
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(1 / 8.0, 200))
    requests = Requests(arrivals, np.full(200, 1024), np.full(200, 64))
    limits = EngineLimits(SEQS, BUDGET, 10**6, True)
    plain = simulate(dataclasses.replace(tables, launch_noise=None), limits, requests)
    silent = LaunchNoise(sigma_white=0.0, sigma_fast=0.0, tau_fast_s=0.1, sigma_slow=0.0, tau_slow_s=1.0)
    assert simulate(dataclasses.replace(tables, launch_noise=silent), limits, requests).summary() == plain.summary()
    noisy = dataclasses.replace(tables, launch_noise=NOISE)
    one, same = (simulate(noisy, limits, requests, noise_seed=5) for _ in range(2))
    assert one.summary() == same.summary() != plain.summary()
    # decode steps replayed from graphs are untouched: a run with short prompts (no launch) does not move
    short = Requests(arrivals, np.full(200, 16), np.full(200, 64))
    assert simulate(noisy, limits, short).summary() == simulate(dataclasses.replace(tables, launch_noise=None),
                                                                 limits, short).summary()


def _noisy_trace(steps, noise: LaunchNoise, seed: int, pairs: int = 150, n: int = 200) -> dict:
    """Two decode-only steps and a mixed one in turn, as the model times them, each launch's host
    time multiplied by ``noise`` drawn at its start."""
    rate = steps.prefill_rate(S)
    prompt = np.tile([0.0, 0.0, S], pairs)
    gpu, host, launched = steps.parts(np.full(3 * pairs, float(n)), S + O / 2, prompt, prompt * rate, 1.0)
    span = 3 * pairs * float(np.maximum(gpu, host).max())
    draw = HostNoise(noise, span, seed)
    times = np.cumsum(np.maximum(gpu, host))
    host = np.where(launched, host * np.array([draw.factor(float(t)) for t in times]), host)
    rows = [[0.0, 0, 0, n, n, SEQS, 10, 0.5, 0]]
    for t, ctx in zip(handover_times(gpu, host, launched), prompt):
        rows.append([float(t), 1 if ctx else 0, int(ctx), n, n, SEQS, 10, 0.5, 0])
    return {"columns": ["t_s", "ctx_reqs", "ctx_tokens", "gen_reqs", "gen_tokens", "running", "waiting",
                        "kv_usage", "preempted"], "steps": rows}


def test_the_fit_recovers_the_noise_that_made_the_traces(tmp_path):
    base, tables = _tables()
    noise = LaunchNoise(sigma_white=0.05, sigma_fast=0.1, tau_fast_s=0.3, sigma_slow=0.15, tau_slow_s=3.0)
    runs = [(_row(10.0 + i), _noisy_trace(tables, noise, seed=i)) for i in range(12)]
    held = [(_row(10.0 + i, "qwen3-30b-a3b"), _noisy_trace(tables, noise, seed=100 + i)) for i in range(2)]
    path = tmp_path / "h200-vllm-serving-x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r, _ in runs + held))
    path.with_name(path.stem + "-steps.jsonl").write_text(
        "".join(json.dumps({"point_id": r["point_id"], **t}) + "\n" for r, t in runs + held))
    fitted, record, used = fit_launch_noise(base, "h200-sxm", ("olmoe-1b-7b",), results_dir=tmp_path)
    assert [pid for _, pid in used] == [r["point_id"] for r, _ in runs]  # the training model's runs only
    assert record["held_out"]["runs"] and all("qwen3" in r for r in record["held_out"]["runs"])
    sd = math.sqrt(fitted["sigma_white"] ** 2 + fitted["sigma_fast"] ** 2 + fitted["sigma_slow"] ** 2)
    true_sd = math.sqrt(0.05**2 + 0.1**2 + 0.15**2)
    assert sd == pytest.approx(true_sd, rel=0.15)  # the process: what the runs' means hid is put back
    assert fitted["tau_fast_s"] < fitted["tau_slow_s"]
    # the fitted correlations follow the measured ones where the pairs are many
    fit = record["fit"]
    assert fit["fitted_sd"] == pytest.approx(fit["sd"], rel=0.05)
    close = [abs(a - b) for a, b, p in zip(fit["correlation"], fit["fitted_correlation"], fit["pairs"]) if p > 500]
    assert close and max(close) < 0.15
    # one run's launches ride on the model's gaps: log(measured / model) is the drawn factor
    m = mixed_steps(runs[0][0], runs[0][1], tables)
    end, measured, model = m.launch_gaps(tables.floor_seq_s)
    assert len(end) == 150 and np.all(np.diff(end) > 0) and np.all(measured > 0)
    assert np.median(measured / model) == pytest.approx(1.0, abs=0.15)


def test_too_few_launches_or_no_convergence_fit_nothing():
    assert fit_covariance(binned_covariance([])) is None
    nan = {"variance": 0.04, "run_s": 30.0, "launches": 1000, "lag_s": [0.1, 0.2, 0.5, 1.0],
           "covariance": [float("nan")] * 4, "pairs": [100] * 4}
    assert fit_covariance(nan) is None
    assert fit_covariance({"variance": 0.04, "run_s": 30.0, "launches": 100, "lag_s": [0.1, 0.2],
                           "covariance": [0.02, 0.01], "pairs": [100, 100]}) is None


def test_the_committed_profile_carries_its_fitted_noise_and_its_check():
    profile = load_profile("vllm", "h200-sxm")
    noise = profile.latency.launch_noise
    assert noise is not None and noise.tau_fast_s < noise.tau_slow_s
    record = profile.fit["launch_noise"]
    at = {s.sigma_w: noise.sigma_white, s.sigma_f: noise.sigma_fast, s.tau_f: noise.tau_fast_s,
          s.sigma_s: noise.sigma_slow, s.tau_s: noise.tau_slow_s, s.T_run: record["fit"]["run_s"]}
    centered = math.sqrt(float(CENTERED_VARIANCE.subs(at)))
    assert record["fit"]["fitted_sd"] == pytest.approx(centered, rel=2e-3)
    assert record["fit"]["sd"] == pytest.approx(centered, rel=0.02)  # as measured, each less its run's mean
    assert math.sqrt(float(VARIANCE.subs(at))) > centered  # a run's mean hides part of the slow drift
    assert record["held_out"]["launches"] > 1000 and 0.1 < record["held_out"]["sd"] < 0.3
    assert all(run.split(": ")[0].startswith("h200-vllm-serving") for run in record["fit"]["runs"])


@pytest.mark.parametrize("n, a", [(1, 0.5), (127, 0.9), (128, 0.99), (129, 0.999), (20_000, 0.9995), (300, 0.0),
                                  (300, 1.0)])
def test_first_order_recursion_is_the_iir_filter(n, a):
    """The drifting parts' recursion y[n] = a·y[n − 1] + x[n] equals scipy's lfilter of it, across
    block edges, at a = 0 (no memory) and a = 1 (a random walk)."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(n)
    x, before = rng.standard_normal(n), float(rng.standard_normal())
    expected = lfilter([1.0], [1.0, -a], x, zi=[a * before])[0]
    np.testing.assert_allclose(first_order_recursion(x, a, before), expected, rtol=0, atol=1e-10)


def test_a_run_of_any_length_lays_out_a_bounded_path():
    """A very low arrival rate makes a simulated run years long: its drifting parts are laid out
    over :data:`MAX_LAYOUT_S` and reused, not over the whole run (which would not fit in memory)."""
    from perfmodel.host_noise import MAX_LAYOUT_S

    long = HostNoise(NOISE, span_s=1e9, seed=3)
    assert len(long._drift) == int(math.ceil(MAX_LAYOUT_S / GRID_S)) + 1
    assert long.factor(1e8) > 0 and math.isfinite(long.factor(1e8))
    white_free = HostNoise(NOISE.model_copy(update={"sigma_white": 0.0}), span_s=1e9, seed=3)
    period = len(white_free._drift) * GRID_S
    assert white_free.factor(10.0) == pytest.approx(white_free.factor(10.0 + 7 * period))
    short = HostNoise(NOISE.model_copy(update={"sigma_white": 0.0}), span_s=10.0, seed=3)
    assert short.factor(1e6) == short.factor(10.0 + GRID_S)  # past a short run's end: its last value
