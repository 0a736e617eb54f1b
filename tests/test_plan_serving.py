"""The serving model behind ``perfmodel plan``: step tables, the closed form and the simulation.

Mixtral-8x7B on one H200 under the vllm profile, 1024 prompt and 256 output tokens; every
simulation is seeded. Tolerances are stated where a closed form meets a simulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from perfmodel.planning.serving import serving_curve
from perfmodel.planning.simulate import EngineLimits, Requests, poisson_requests, simulate
from perfmodel.planning.steptime import build_step_times
from perfmodel.prediction import predict
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import load_model

S, O = 1024, 256
#: Closed form vs simulation at low load: mean TTFT and mean ITL within this relative error.
LOW_LOAD_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def steps():
    gpu = load_gpu("h200")
    return build_step_times(load_model("mixtral"), gpu, load_profile("vllm", gpu.name), "bf16", Layout(),
                            max_tokens=8192, max_seqs=256, max_context=S + O)


@pytest.fixture(scope="module")
def limits(steps):
    return EngineLimits(256, 8192, steps.kv_tokens)


def _fixed(rate: float, n: int, seed: int = 0) -> Requests:
    return poisson_requests(rate, np.full(n, S), np.full(n, O), seed=seed)


def test_step_tables_reproduce_predict(steps):
    """A decode-only step is predict's decode step; a prefill-only step its prefill pass."""
    for batch, context in ((1, 1024), (64, 1100), (200, 1200)):
        want = predict("mixtral", gpu="h200", phase="decode", batch=batch, context=context).metrics["decode_step_s"]
        assert steps.step(batch, context, 0, 0) == pytest.approx(want, rel=1e-3)
    for prompts, length in ((1, 1024), (4, 1024), (1, 4096)):
        want = predict("mixtral", gpu="h200", phase="prefill", batch=prompts, input_len=length).metrics["prefill_s"]
        tokens = prompts * length
        assert steps.step(0, 1, tokens, tokens * steps.prefill_rate(length)) == pytest.approx(want, rel=0.01)
    assert "attn.core" in steps.sequence_ops and "moe.experts" in steps.token_ops
    # a step holding prompt tokens takes at least the prefill of one token (the host floor)
    assert steps.step(4, 1000, 1, 1e-9) >= steps.floor_s > steps.step(4, 1000, 0, 0)


def test_vectorized_steps_match_scalar(steps):
    n = np.array([0.5, 1, 2, 7, 33, 100, 255.5])
    for p in (0.0, 500.0):
        want = [steps.step(x, 1100.0, p, p * 1e-5) for x in n]
        assert np.allclose(steps.steps(n, 1100.0, p, p * 1e-5), want, rtol=1e-9)


@pytest.mark.parametrize("rate", [0.5, 1.0, 2.0])
def test_closed_form_agrees_with_simulation_at_low_load(steps, limits, rate):
    curve = serving_curve(steps, limits, S, O)
    state = curve.at(rate)
    result = simulate(steps, limits, _fixed(rate, 500), warmup=100)
    sim = result.summary()
    assert state.stable and not result.overloaded
    for metric in ("ttft", "itl"):
        assert state.metrics()[metric]["mean"] == pytest.approx(sim[metric]["mean"], rel=LOW_LOAD_TOLERANCE), metric


def test_saturation_is_where_the_simulation_queues(steps, limits):
    curve = serving_curve(steps, limits, S, O)
    sat = curve.saturation_rate
    assert 1.0 < sat < 100.0
    assert not curve.at(1.05 * sat).stable
    below = simulate(steps, limits, _fixed(0.5 * sat, 300), warmup=50, abort_wait_s=30)
    above = simulate(steps, limits, _fixed(2.0 * sat, 300), warmup=50, abort_wait_s=30)
    assert below.summary()["ttft"]["p90"] < 1.0
    assert above.summary()["ttft"]["p90"] > 10 * below.summary()["ttft"]["p90"]


def test_littles_law_holds_in_the_simulation(steps, limits):
    """Run to empty: the area under the number in the system equals the summed sojourn times,
    and L = λ·W over the run."""
    result = simulate(steps, limits, _fixed(4.0, 200, seed=7), warmup=0)
    assert result.completed == result.finished_all == result.arrived_all == 200
    assert result.area == pytest.approx(result.sojourn_sum, rel=1e-9)
    mean_in_system = result.area / result.horizon_s
    arrival_rate = result.arrived_all / result.horizon_s
    assert mean_in_system == pytest.approx(arrival_rate * result.e2e.mean(), rel=1e-9)


def test_littles_law_and_token_counts_under_preemption(steps):
    """A KV cache for a handful of requests: requests are preempted and recomputed, every one
    still finishes, and Little's law still balances."""
    rng = np.random.default_rng(3)
    small = EngineLimits(64, 8192, 6000)
    requests = poisson_requests(3.0, rng.integers(200, 2000, 150), rng.integers(20, 300, 150), seed=1)
    result = simulate(steps, small, requests, warmup=0)
    assert result.preemptions > 0
    assert result.completed == 150 and not result.overloaded
    assert result.area == pytest.approx(result.sojourn_sum, rel=1e-9)
    assert result.peak_kv_fraction <= 1.0
    assert np.all(result.e2e >= result.ttft)


def test_a_higher_rate_never_lowers_latency_percentiles(steps, limits):
    rng = np.random.default_rng(11)
    s, o = rng.integers(200, 2000, 300), rng.integers(20, 300, 300)
    previous = None
    for rate in (1.0, 2.0, 4.0, 6.0, 8.0):
        summary = simulate(steps, limits, poisson_requests(rate, s, o, seed=0), warmup=50).summary()
        row = {f"{m}_{q}": summary[m][q] for m in ("ttft", "itl", "e2e") for q in ("p50", "p90", "p99")}
        if previous is not None:
            lower = {k: (previous[k], v) for k, v in row.items() if v < previous[k]}
            assert not lower, f"rate {rate}: latencies fell: {lower}"
        previous = row


def test_overload_is_cut_short_and_reported(steps, limits):
    result = simulate(steps, limits, _fixed(60.0, 400), warmup=50, abort_wait_s=5.0)
    assert result.overloaded and "waited" in result.reason
    assert math.isinf(result.summary()["e2e"]["p99"])


def test_decode_pool_has_no_prefill_steps(steps, limits):
    """Requests that arrive with their prompt computed (a decode pool) see decode steps only."""
    plain = simulate(steps, limits, _fixed(4.0, 200), warmup=50).summary()
    prefilled = Requests(*[getattr(_fixed(4.0, 200), f) for f in ("arrival", "input_len", "output_len")], True)
    decode = simulate(steps, limits, prefilled, warmup=50).summary()
    assert decode["itl"]["p99"] < steps.floor_s <= plain["itl"]["p99"]


def test_a_request_larger_than_the_cache_ends_the_run(steps):
    """A prompt that cannot fit even alone is reported (overloaded), not retried forever."""
    requests = poisson_requests(1.0, np.array([2000, 100]), np.array([10, 10]), seed=0)
    result = simulate(steps, EngineLimits(8, 512, 1500), requests)
    assert result.overloaded and "does not fit" in result.reason


def test_step_tables_follow_the_dtype():
    """fp8 weights: the tables hold predict's fp8 weights and decode step, not bf16's."""
    gpu = load_gpu("h100")
    fp8 = build_step_times(load_model("mixtral"), gpu, load_profile("vllm", gpu.name), "fp8", Layout(),
                           max_tokens=1024, max_seqs=64, max_context=2048)
    want = predict("mixtral", gpu="h100", dtype="fp8", phase="decode", batch=16, context=1500)
    assert fp8.weights_bytes == pytest.approx(want.metrics["weights_bytes"], rel=1e-9)
    assert fp8.step(16, 1500, 0, 0) == pytest.approx(want.metrics["decode_step_s"], rel=1e-3)
