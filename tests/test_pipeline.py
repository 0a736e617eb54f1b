"""Asynchronous scheduling on two resources (perfmodel.planning.pipeline), alone and in the
simulation: the host launches step k + 1 while the GPU runs step k, and step k's outputs are
handed over once both are done."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perfmodel.planning.pipeline import gpu_end, handover_times, mixed_in_decodes
from perfmodel.planning.simulate import EngineLimits, Requests, simulate
from perfmodel.planning.steptime import StepTimes

DECODE = (0.013, 0.003, False)  # GPU 13 ms, host 3 ms, replayed from a graph
LAUNCH = (0.060, 0.078, True)  # GPU 60 ms, host 78 ms to launch piece by piece


def _gaps(kinds):
    gpu, host, launched = (list(col) for col in zip(*kinds))
    return np.diff(handover_times(gpu, host, launched), prepend=0.0)


def test_equal_steps_take_the_larger_of_their_gpu_and_host_times():
    for gpu, host in ((0.013, 0.003), (0.004, 0.009)):
        for launched in (False, True):
            gaps = _gaps([(gpu, host, launched)] * 12)
            assert gaps[2:-1] == pytest.approx(max(gpu, host), rel=1e-12)


def test_a_launch_holds_back_the_decode_step_before_it_and_overlaps_its_gpu_time():
    """Decode steps of 13 ms on the GPU, then one launched for 78 ms on the host: the decode
    step's outputs wait for that launch (78 ms after the previous hand-over, not 13), and the
    launched step's own follow once the host has launched the next decode (3 ms): 81 ms for
    both, where one after the other they take 13 + 78 = 91."""
    gaps = _gaps([DECODE] * 4 + [LAUNCH] + [DECODE] * 4)
    assert gaps[2] == pytest.approx(0.013)
    assert gaps[3] == pytest.approx(0.078)  # the decode step before the launched one
    assert gaps[4] == pytest.approx(0.003)  # the launched step's own outputs
    assert gaps[3] + gaps[4] < DECODE[0] + max(LAUNCH[0], LAUNCH[1])
    added, first_out = mixed_in_decodes(DECODE, LAUNCH)
    assert added == pytest.approx(0.078 + 0.003 - 0.013)
    assert first_out == pytest.approx(0.081)  # from its scheduling to its outputs
    # a GPU-bound launched step (Mixtral-like): it adds its GPU time, and its launch hides
    added, first_out = mixed_in_decodes((0.024, 0.003, False), (0.064, 0.048, True))
    assert added == pytest.approx(0.064) and first_out == pytest.approx(0.024 + 0.064)
    # two launched steps in a row: the first one's outputs wait for the second's launch
    _, then_launched = mixed_in_decodes(DECODE, LAUNCH, then_mixed=True)
    assert then_launched == pytest.approx(2 * 0.078)


def test_streams_broadcast_and_agree_with_the_scalar_rule():
    gpu = np.array([0.013, 0.024])
    added, _ = mixed_in_decodes((gpu, 0.003, False), (0.060, np.array([0.078, 0.048]), True))
    one = [mixed_in_decodes((g, 0.003, False), (0.060, h, True))[0] for g, h in ((0.013, 0.078), (0.024, 0.048))]
    assert added == pytest.approx(one)
    assert gpu_end(1.0, 0.5, 0.2, launched=False) == pytest.approx(1.2)
    assert gpu_end(1.0, 2.0, 0.2, launched=False) == pytest.approx(2.2)  # waits for its launch
    assert gpu_end(1.0, 2.0, 0.2, launched=True) == pytest.approx(2.0)  # ran as it was launched


def _steps(floor: float) -> StepTimes:
    """Decode steps of 10 ms + 0.1 ms per token on the GPU; every step holding prompt tokens is
    launched (no CUDA graph) with a host floor of ``floor``; no host time otherwise."""
    n, L = np.array([1.0, 2.0, 4.0, 256.0]), np.array([1.0, 4096.0])
    return StepTimes(token_s=1e-4 * np.arange(8193, dtype=float), ctx_n=n, ctx_L=L, ctx_s=np.zeros((4, 2)),
                     pre_len=np.array([1.0, 4096.0]), pre_s_per_token=np.zeros(2), fixed_s=0.01,
                     floor_s=floor, weights_bytes=0.0, activation_bytes=0.0, kv_bytes_per_token=1.0,
                     usable_bytes=1e6)


def test_the_simulation_hands_tokens_over_as_the_two_resources_allow():
    """A decodes alone (10.1 ms steps); B's prompt (10 tokens) arrives and its step is launched
    for 50 ms on the host. A's token from the decode step before it comes 50 ms after the one
    before (the launch), B's first token right after (the next decode needs no host time), and
    the pair takes 50 ms where one after the other it took 10.1 + 50."""
    requests = Requests(np.array([0.0, 0.1]), np.array([10, 10]), np.array([40, 3]))
    limits = EngineLimits(8, 8192, 100_000, async_scheduling=True)
    result = simulate(_steps(0.05), limits, requests, record_tokens=True)
    a, b = result.token_times
    gaps = np.diff(a)
    assert np.max(gaps) == pytest.approx(0.05)
    k = int(np.argmax(gaps))
    assert b[0] == pytest.approx(a[k + 2])  # B's first token leaves with A's token of that step
    assert a[k + 2] - a[k + 1] == pytest.approx(0.0, abs=1e-9)  # the launched step adds no more
    # scheduled one step at a time, the same requests take the launch after the decode step
    sync = simulate(_steps(0.05), dataclasses.replace(limits, async_scheduling=False), requests,
                    record_tokens=True)
    a_sync = sync.token_times[0]
    assert np.max(np.diff(a_sync)) == pytest.approx(0.05)
    assert a_sync[-1] > a[-1]  # the overlap shortens A's run


def test_a_launched_steps_gpu_time_holds_the_hosts_work_its_kernels_do_not_overlap():
    from dataclasses import replace

    plain, serial = _steps(0.005), replace(_steps(0.005), serial_s=0.004)
    # a launched step (prompt tokens, no CUDA graph): the GPU's 10 + 0.1·T ms and 4 ms more
    assert serial.step_parts(2, 100.0, 30, 0.0)[0] == pytest.approx(plain.step_parts(2, 100.0, 30, 0.0)[0] + 0.004)
    assert serial.step(2, 100.0, 30, 0.0) == pytest.approx(0.01 + 32e-4 + 0.004)
    assert serial.step(0, 100.0, 0, 0.0) == pytest.approx(plain.step(0, 100.0, 0, 0.0))  # decodes alone: none
    gpu, _, launched = serial.parts(np.array([2.0, 2.0]), 100.0, np.array([30.0, 0.0]), 0.0)
    assert list(launched) == [True, False] and gpu == pytest.approx([0.01 + 32e-4 + 0.004, 0.01 + 2e-4])
    # where the host's launches set the step, the part lies within them
    host_set = replace(_steps(0.05), serial_s=0.004)
    assert host_set.step(2, 100.0, 30, 0.0) == pytest.approx(_steps(0.05).step(2, 100.0, 30, 0.0))
