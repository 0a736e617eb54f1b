"""The host's speed over time: the trace's summary, and bad input."""

from __future__ import annotations

import pytest

from perfmodel.errors import InputError
from perfmodel.host_trace import as_rows, summarize, trace


def _worker(pattern: list[int], fast: float = 32.0, slow: float = 70.0, dt: float = 0.01):
    return [(i * dt, slow if flag else fast) for i, flag in enumerate(pattern)]


def test_the_summary_finds_the_slow_state_its_runs_and_whether_cores_agree():
    pattern = [0] * 100 + [1] * 100 + [0] * 100  # one slow second in three
    s = summarize([_worker(pattern), _worker(pattern)])
    assert s["probe_ms"]["p10"] == 32.0 and s["probe_ms"]["p90"] == 70.0
    assert s["probe_ms"]["mean"] == pytest.approx((2 * 32.0 + 70.0) / 3, abs=0.01)
    assert s["slow_threshold_ms"] == pytest.approx(48.0)
    assert s["slow_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["slow_share_by_worker"] == [pytest.approx(1 / 3, abs=1e-3)] * 2
    assert s["slow_runs_s"]["count"] == 2 and s["slow_runs_s"]["longest"] == pytest.approx(1.0)
    assert s["workers_agree"] == 1.0
    apart = summarize([_worker(pattern), _worker(pattern[::-1][100:] + pattern[:100])])
    assert apart["workers_agree"] < 1.0


def test_one_worker_has_no_agreement_and_a_fast_host_no_slow_state():
    s = summarize([_worker([0] * 50)])
    assert s["workers_agree"] is None and s["slow_share"] == 0 and s["slow_runs_s"]["count"] == 0


def test_a_short_trace_times_the_loop_and_scales_it_to_the_probe():
    samples = trace(0.2, 1)
    assert len(samples) == 1 and len(samples[0]) >= 1
    times = [t for t, _ in samples[0]]
    assert times == sorted(times) and all(ms > 0 for _, ms in samples[0])
    rows = as_rows(samples)
    assert rows[0].keys() == {"worker", "t_s", "probe_ms"}


@pytest.mark.parametrize("seconds, workers", [(0, 1), (-1, 1), (True, 1), (1, 0), (1, 1.5)])
def test_bad_trace_arguments_are_refused(seconds, workers):
    with pytest.raises(InputError):
        trace(seconds, workers)
    with pytest.raises(InputError, match="no sample"):
        summarize([[]])


def test_cli_refuses_trace_flags_without_seconds(capsys):
    from perfmodel.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["host-probe", "--workers", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "perfmodel: error: --workers and --out apply with --seconds"
