"""A serving run's TTFT error read as a rate (perfmodel.validate.serving_rate)."""

from __future__ import annotations

import pytest

from perfmodel import planning
from perfmodel.validate.serving_rate import FACTORS, rate_error, rate_errors, rate_markdown, rate_summary

CAPACITY = 10.0  # req/s of the fake engine below


def _queue(model, gpu, layout, traffic, **kw):
    """A fake replay whose TTFT grows as an M/M/1 queue's toward CAPACITY: p50 = 0.1/(1 − ρ) s and
    p90 twice that, ρ = rate / CAPACITY (the rate the arrivals given really hold); at CAPACITY and
    beyond no request gets its first token, and the percentiles are NaN."""
    arrivals = kw["arrivals"]
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert rate == pytest.approx(traffic["rate"], rel=1e-9)  # the schedule and the rate are scaled together
    wait = 0.1 / (1.0 - rate / CAPACITY) if rate < CAPACITY * (1 - 1e-9) else float("nan")
    return {"ttft_s": {"p50": wait, "p90": 2 * wait}, "itl_s": {}, "per_request": None}


def _row(rate, ttft_p50_ms, ttft_p90_ms):
    n = 50
    times = [i / rate for i in range(n)]
    return {"point_id": f"r{rate}", "status": "ok", "mode": "serving", "model": "olmoe-1b-7b", "overrides": [],
            "input_len": 512, "output_len": 64, "max_num_seqs": 64, "rate": rate, "achieved_rate": rate,
            "num_requests": n, "duration_cap_s": 30.0, "seed": 0, "engine": {},
            "per_request": {"submitted_s": times}, "ttft_p50_ms": ttft_p50_ms, "ttft_p90_ms": ttft_p90_ms}


@pytest.fixture
def queue(monkeypatch):
    monkeypatch.setattr(planning, "predict_serving", _queue, raising=False)


def test_the_rate_is_where_the_replays_ttft_equals_the_measured(queue):
    # measured at 5 req/s a TTFT p50 of 250 ms: the fake model gives it at ρ = 0.6, 6 req/s (+20%)
    found = rate_error(_row(5.0, 250.0, 800.0), "h200-sxm", "ttft_p50")
    assert found["bound"] is None and found["factor"] == pytest.approx(1.2, rel=2e-3)
    assert found["error"] == pytest.approx(0.2, abs=3e-3)
    # p90 800 ms = 2·0.1/(1 − ρ): ρ = 0.75, 7.5 req/s (+50%), where twice the rate (10 req/s) gets
    # no first token at all: longer than any measured TTFT
    assert rate_error(_row(5.0, 250.0, 800.0), "h200-sxm", "ttft_p90")["error"] == pytest.approx(0.5, abs=3e-3)
    # the model slower than measured: its TTFT at half the rate is already longer -> below the search
    assert rate_error(_row(8.0, 50.0, 100.0), "h200-sxm", "ttft_p50") == {"factor": None, "error": None,
                                                                         "bound": "below"}
    assert FACTORS[0] < 1 < FACTORS[1]


def test_only_runs_that_kept_up_are_read_and_the_report_says_so(queue):
    rows = [_row(5.0, 250.0, 800.0), _row(9.0, 5000.0, 9000.0)]
    runs = [{"point_id": "r5.0", "model": "olmoe-1b-7b", "scheme": "bf16", "rate": 5.0, "offered_rate": 5.0,
             "gpu": "h200-sxm", "measured_overloaded": False},
            {"point_id": "r9.0", "model": "olmoe-1b-7b", "scheme": "bf16", "rate": 9.0, "offered_rate": 9.0,
             "gpu": "h200-sxm", "measured_overloaded": True}]
    entries = rate_errors(rows, runs, "h200-sxm")
    assert [(e["rate"], e["metric"]) for e in entries] == [(5.0, "ttft_p50"), (5.0, "ttft_p90")]
    assert [e["error"] for e in entries] == [pytest.approx(0.2, abs=3e-3), pytest.approx(0.5, abs=3e-3)]
    summary = {s["metric"]: s for s in rate_summary(entries)}
    assert summary["ttft_p50"]["within"] == 0 and summary["ttft_p50"]["median_abs"] == pytest.approx(0.2, abs=3e-3)
    text = rate_markdown(entries)
    assert "## TTFT's error as a rate" in text and "| olmoe-1b-7b | 5 | ttft_p50 | 250.000 ms | 6 req/s | +20.0% |" in text
    assert rate_markdown([]) == ""


def test_a_runs_metrics_share_its_replays(monkeypatch):
    calls = []

    def counted(*args, **kw):
        calls.append(kw["traffic"]["rate"] if "traffic" in kw else args[3]["rate"])
        return _queue(*args, **kw)

    monkeypatch.setattr(planning, "predict_serving", counted, raising=False)
    row = _row(5.0, 250.0, 800.0)
    replays = {}
    first = rate_error(row, "h200-sxm", "ttft_p50", replays)
    both_ends = len(calls)
    second = rate_error(row, "h200-sxm", "ttft_p90", replays)
    assert first["error"] == pytest.approx(0.2, abs=3e-3) and second["error"] == pytest.approx(0.5, abs=3e-3)
    # the second search replays neither end again: the rates at 0.5x and 2x are each offered once
    assert calls.count(2.5) == 1 and calls.count(10.0) == 1 and len(calls) > both_ends
