"""``validate --serving``: measured serving rows replayed against the planning's predict_serving.

The rows are written here by hand. One case replaces predict_serving by a function of known
values, so every relative error, the MAPE, the overload verdicts and the saturation are exact;
one checks that a replay's statistics are those ``measure --serving`` computes from the same
token times; one calls the real planning simulation on a small workload end to end.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from perfmodel.measuring import serving_replay as replay
from perfmodel.specs.layout import Layout
from perfmodel.validate import serving as sv

O = 64
#: The fake prediction's closed-form saturation rate and replay throughput cap, req/s.
FAKE_SATURATION, FAKE_SERVED = 6.0, 4.5
FAKE_KV = 17_000  # the planning's KV capacity, tokens, against the rows' 16,000


def _per_request(n, rate, ttft_ms, aborted=0, never=0):
    """Per-request columns of n requests submitted every 1/rate s: TTFT ttft_ms(i) ms; the last
    ``aborted`` unfinished, the last ``never`` of them without a first token."""
    sub = [round(i / rate, 6) for i in range(n)]
    ttft = [None if i >= n - never else float(ttft_ms(i)) for i in range(n)]
    e2e = [None if i >= n - aborted else float(ttft_ms(i)) + 500.0 for i in range(n)]
    return {"arrival_s": sub, "submitted_s": sub, "ttft_ms": ttft, "e2e_ms": e2e,
            "output_tokens": [0 if i >= n - never else (5 if i >= n - aborted else O) for i in range(n)]}


def _row(rate, *, achieved, served, ttft=(100.0, 200.0), itl=(10.0, 20.0, 13.0), model="olmoe-1b-7b", tp=1, ep=False,
         s=512, o=O, gpu="NVIDIA H200", status="ok", per_request=None, cap=30.0, blocks=(1000, 16), aborted=0):
    return {
        "schema_version": 1, "point_id": f"vllm|{model}|rate={rate}|tp={tp}", "status": status,
        "error": None if status == "ok" else "boom", "backend": "vllm", "mode": "serving", "model": model,
        "overrides": [], "layers": None, "rate": rate, "num_requests": 100, "input_len": s, "output_len": o,
        "max_num_seqs": 128, "seed": 3, "gpu_name": gpu, "driver": "580.1", "torch": "2.11.0", "vllm": "0.26.0",
        "git_commit": "abc", "date": "2026-12-10T10:00:00+00:00", "duration_cap_s": cap,
        "engine": {"name": "vllm", "tp": tp, "ep": ep, "pp": 1, "quantization": "none",
                   "max_num_seqs": 128, "max_num_batched_tokens": 8192},
        "engine_detail": {"resolved": {"num_gpu_blocks": blocks[0], "block_size": blocks[1]}} if blocks else {},
        "ttft_p50_ms": ttft[0], "ttft_p90_ms": ttft[1], "itl_p50_ms": itl[0], "itl_p90_ms": itl[1],
        "itl_mean_ms": itl[2] if len(itl) > 2 else None,
        "achieved_rate": achieved, "completion_rate": achieved, "output_tok_s": served, "aborted": aborted,
        "submitted": len(per_request["submitted_s"]) if per_request else None,
        "completed": sum(e is not None for e in per_request["e2e_ms"]) if per_request else None,
        "per_request": per_request,
    }


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fake_prediction(calls):
    """Known predictions: TTFT 120/150 ms, ITL 11/18 ms, the served rate min(rate, FAKE_SERVED)
    x O, a constant TTFT below 6 req/s and a growing one above (overloaded by the rule)."""
    def predict_serving(model, gpu, layout, traffic, **kw):
        calls.append((model, gpu, layout, traffic, kw))
        arrivals = kw["arrivals"]
        grows = traffic["rate"] > 6
        per = {"submitted_s": list(arrivals), "ttft_s": [0.1 + (0.05 * i if grows else 0.0) for i in range(len(arrivals))],
               "e2e_s": [1.0] * len(arrivals), "output_tokens": [O] * len(arrivals)}
        return {"ttft_s": {"p50": 0.12, "p90": 0.15}, "itl_s": {"p50": 0.011, "p90": 0.018, "mean": 0.013},
                "output_tok_s": min(traffic["rate"], FAKE_SERVED) * O, "submitted": len(arrivals),
                "completed": len(arrivals), "aborted": 0, "per_request": per, "kv_tokens": kw.get("kv_tokens"),
                "model_kv_tokens": FAKE_KV,
                "saturation_rate_per_replica": FAKE_SATURATION}
    return predict_serving


def _rows():
    flat = _per_request(40, 2.0, lambda i: 100.0)
    return [
        _row(2.0, achieved=2.0, served=120.0, per_request=flat),
        _row(4.0, achieved=4.1, served=250.0, per_request=_per_request(40, 4.0, lambda i: 100.0 + i)),
        _row(8.0, achieved=8.2, served=300.0, ttft=(900.0, 3000.0),
             per_request=_per_request(40, 8.0, lambda i: 100.0 + 50.0 * i)),
        _row(16.0, achieved=15.5, served=320.0, per_request=_per_request(40, 16.0, lambda i: 100.0, 10, 5),
             cap=2.4, aborted=10),
        _row(3.0, achieved=3.0, served=0.0, status="error"),
        _row(4.0, achieved=4.0, served=256.0, model="mixtral-8x7b", tp=2, ep=True, per_request=flat),
    ]


def test_replay_against_known_predictions(tmp_path, monkeypatch, capsys):
    from perfmodel import planning
    from perfmodel.commands import main

    calls = []
    monkeypatch.setattr(planning, "predict_serving", _fake_prediction(calls), raising=False)
    rows = _rows()
    rows[3]["per_request"]["submitted_s"][-1] = None  # never submitted: left out of the replay
    rows[1]["engine_detail"]["resolved"]["cudagraph_capture_sizes"] = [1, 2, 4, 8, 16, 24, 32]
    path = _write(tmp_path / "serving.jsonl", rows)
    main(["validate", "olmoe", "--serving", "--results", str(path), "--out", str(tmp_path / "rep"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["source"]["mode"] == "replay" and "replay of the measured schedule" in result["source"]["comparison"]
    # the ok rows of that model only, each replayed with its own schedule, end and engine
    assert [c[3]["rate"] for c in calls[:4]] == [2.0, 4.1, 8.2, 15.5]  # the rates really offered
    # then the runs that kept up, offered faster and slower to read TTFT's error as a rate: the fake
    # TTFT does not follow the rate until the replay overloads (above 6 req/s), which counts as
    # longer than any TTFT measured; so the measured p50 (100 ms, under its 120) lies below the
    # search, the p90 (200 ms, over its 150) above it at 2 req/s and where the replay overloads at 4.1
    assert all(1.0 <= c[3]["rate"] <= 8.2 for c in calls[4:])  # within 0.5x-2x of the kept-up runs' rates
    assert [(e["rate"], e["metric"], e["bound"]) for e in result["rate_errors"]] == [
        (2.0, "ttft_p50", "below"), (2.0, "ttft_p90", "above"), (4.0, "ttft_p50", "below"), (4.0, "ttft_p90", None)]
    assert result["rate_errors"][-1]["factor"] * 4.1 == pytest.approx(6.0, rel=3e-3)
    model, gpu, layout, traffic, kw = calls[0]
    assert (model, gpu, layout) == ("olmoe-1b-7b", "h200-sxm", Layout(1, 1, 1))
    assert traffic == {"rate": 2.0, "burstiness": 1.0, "input_len": 512, "output_len": O}  # no field: Poisson
    assert kw["arrivals"] == rows[0]["per_request"]["submitted_s"] and kw["until_s"] == pytest.approx(45.0)
    assert kw["kv_tokens"] == 16_000 and kw["max_num_seqs"] == 128 and kw["max_batched_tokens"] == 8192
    assert kw["dtype"] == "none" and kw["seed"] == 3 and kw["engine"] == "vllm"  # unquantized, as it ran
    assert kw["graph_tokens"] is None  # a row that names no capture sizes: the profile's largest graph
    assert calls[1][4]["graph_tokens"] == 32  # the engine's own largest graph
    assert "requests" not in kw and "warmup" not in kw
    assert len(calls[3][4]["arrivals"]) == 39 and calls[3][4]["until_s"] == pytest.approx(3.6)
    by = {(p["rate"], p["metric"]): p for p in result["points"]}
    assert by[2.0, "ttft_p50"]["rel_error"] == pytest.approx(0.12 / 0.100 - 1)
    assert by[8.0, "ttft_p90"]["rel_error"] == pytest.approx(0.15 / 3.0 - 1)
    assert by[4.0, "itl_p90"]["rel_error"] == pytest.approx(0.018 / 0.020 - 1)
    # served throughput: the replay's output tokens/s against the row's
    assert by[4.0, "served_tok_s"]["measured"] == pytest.approx(250.0)
    assert by[4.0, "served_tok_s"]["predicted"] == pytest.approx(4.1 * O)
    assert by[16.0, "served_tok_s"]["rel_error"] == pytest.approx(FAKE_SERVED * O / 320.0 - 1)
    mape = {m["metric"]: m for m in result["mape"]}
    assert mape["ttft_p50"]["count"] == 4 and mape["ttft_p50"]["left_out"] == 0
    assert mape["ttft_p50"]["mape"] == pytest.approx(100 * (0.2 * 3 + abs(0.12 / 0.9 - 1)) / 4)
    assert mape["itl_p50"]["mape"] == pytest.approx(10.0)
    # overload: flat and gently rising TTFT kept up, 8 req/s grew, 16 req/s aborted requests
    runs = {r["rate"]: r for r in result["rates"]}
    # the target count is over the runs that kept up (2 and 4 req/s; TTFT p50 +20% at both), served
    # tokens/s against its own 10% target
    kept_errors = {metric: [abs(by[rate, metric]["rel_error"]) for rate in (2.0, 4.0)] for metric in mape}
    for metric, m in mape.items():
        assert m["kept_up"] == 2 and m["target"] == (0.10 if metric == "served_tok_s" else 0.15)
        assert m["within_target"] == sum(e <= m["target"] for e in kept_errors[metric])
    assert mape["ttft_p50"]["within_target"] == 0
    assert [runs[r]["measured_overloaded"] for r in (2.0, 4.0, 8.0, 16.0)] == [False, False, True, True]
    assert runs[2.0]["measured_ttft_growth"] == pytest.approx(1.0)
    assert runs[16.0]["measured_aborted"] == 9 and "never prefilled" in runs[16.0]["measured_why"]
    assert [runs[r]["predicted_overloaded"] for r in (2.0, 4.0, 8.0, 16.0)] == [False, False, True, True]
    assert runs[16.0]["measured_capacity_rps"] == pytest.approx(5.0) and runs[2.0]["engine_kv_tokens"] == 16_000
    # the planning's KV capacity beside the engine's, once for the four rates of one engine
    (kv,) = result["kv_capacity"]
    assert (kv["engine_tokens"], kv["model_tokens"]) == (16_000, FAKE_KV) and kv["rel_error"] == pytest.approx(FAKE_KV / 16_000 - 1)
    (sat,) = result["saturation"]
    assert sat["followed_up_to"] == 4.1 and sat["saturated_from"] == 8.2 and sat["spans"]
    assert sat["followed_up_to_nominal"] == 4.0 and sat["overloaded_rates"] == [8.0, 16.0]
    assert sat["capacity_rates"] == [16.0]  # 8 req/s finished every request: its window drains
    assert sat["measured_capacity_rps"] == pytest.approx(5.0)
    assert sat["predicted_saturation_rps"] == FAKE_SATURATION and sat["closed_form_position"] == "inside"
    assert sat["closed_form_rel_error"] == pytest.approx(FAKE_SATURATION / 5.0 - 1)
    assert sat["replay_capacity_rps"] == pytest.approx(FAKE_SERVED)
    assert sat["replay_capacity_rel_error"] == pytest.approx(FAKE_SERVED / 5.0 - 1) and sat["replay_agrees"]
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "**REPLAY**" in summary and "replay of the measured schedule" in summary
    assert "between 4.1 req/s offered (nominal 4) and 8.2 req/s offered (nominal 8)" in summary
    assert "| olmoe-1b-7b | 16 | 15.5 | 39 | 30/39 | 9/0 |" in summary
    # vLLM's TP+EP is predicted with whole experts over the same GPUs
    calls.clear()
    sv.compare_serving(rows, model="mixtral")
    assert [c[2] for c in calls] == [Layout(2, 1, 1, expert_parallel=True)]


def test_rows_without_per_request_data_replay_the_seeded_schedule(monkeypatch):
    from perfmodel import planning
    from perfmodel.measuring.vllm_serving import poisson_arrivals

    calls = []
    monkeypatch.setattr(planning, "predict_serving", _fake_prediction(calls), raising=False)
    row = _row(4.0, achieved=4.0, served=200.0, cap=10.0, blocks=None, aborted=3)
    result = sv.compare_serving([row])
    kw = calls[0][4]
    want = [t for t in poisson_arrivals(4.0, 100, 3) if t <= 10.0]
    assert kw["arrivals"] == pytest.approx(want) and kw["kv_tokens"] is None and kw["until_s"] == pytest.approx(15.0)
    (run,) = result["rates"]
    assert run["schedule"] == "scheduled" and run["engine_kv_tokens"] is None and run["model_kv_tokens"] == FAKE_KV
    assert result["kv_capacity"] == []  # nothing the engine allocated to check the planning's against
    assert run["measured_overloaded"] is True and run["measured_ttft_growth"] is None  # from its aborted count


def test_overload_rule_on_synthetic_requests():
    n = 40  # quarters of 10
    sub = [i * 0.1 for i in range(n)]
    done = [True] * n
    flat = replay.overload(sub, [50.0] * n, done)
    assert flat["overloaded"] is False and flat["ttft_growth"] == pytest.approx(1.0)
    # TTFT = 10 + i: medians 14.5 (first quarter) and 44.5 (last): a growing queue
    rising = replay.overload(sub, [10.0 + i for i in range(n)], done)
    assert rising["overloaded"] is True and rising["ttft_growth"] == pytest.approx(44.5 / 14.5)
    # just under the threshold: kept up; the order of the columns does not matter
    ttft = [10.0] * 10 + [15.0] * 20 + [10.0 * sv.QUEUE_GROWTH - 0.5] * 10
    order = list(range(n))
    random.Random(1).shuffle(order)
    under = replay.overload([sub[i] for i in order], [ttft[i] for i in order], done)
    assert under["overloaded"] is False and under["ttft_growth"] == pytest.approx(sv.QUEUE_GROWTH - 0.05)
    # requests unfinished at the drain limit: overloaded whatever the TTFTs
    cut = replay.overload(sub, [50.0] * (n - 2) + [None, None], [True] * (n - 3) + [False] * 3)
    assert cut["overloaded"] is True and (cut["aborted"], cut["never_prefilled"]) == (3, 2)
    # requests never submitted are left out; too few to tell
    few = replay.overload([0.0, 0.1, None, None], [5.0, 50.0, None, None], [True, True, False, False])
    assert few["overloaded"] is None and few["aborted"] == 0


def _toy_steps():
    """Step times built by hand: 10 ms + 0.1 ms per token of the step."""
    from perfmodel.planning.steptime import StepTimes

    n, L = np.array([1.0, 256.0]), np.array([1.0, 4096.0])
    return StepTimes(token_s=1e-4 * np.arange(2049, dtype=float), ctx_n=n, ctx_L=L, ctx_s=np.zeros((2, 2)),
                     pre_len=np.array([1.0, 4096.0]), pre_s_per_token=np.zeros(2), fixed_s=0.01, floor_s=0.0,
                     weights_bytes=0.0, activation_bytes=0.0, kv_bytes_per_token=1.0, usable_bytes=1e6)


def test_replay_statistics_are_computed_as_the_measured_ones():
    """The simulated token times, handed to ``measure --serving``'s own ``summarize``, give the
    replay's statistics (an overloaded run, cut at its drain limit, with aborted requests)."""
    from perfmodel.measuring.vllm_serving import RequestTrace, summarize
    from perfmodel.planning.simulate import EngineLimits, Requests, simulate

    n, o = 80, 40
    arrival = np.cumsum(np.random.default_rng(0).exponential(1 / 30.0, n))
    requests = Requests(arrival, np.full(n, 600), np.full(n, o))
    result = simulate(_toy_steps(), EngineLimits(16, 2048, 20_000), requests, until_s=2.0, record_tokens=True)
    mine = result.run_summary()
    traces = []
    for i, times in enumerate(result.token_times):
        if arrival[i] > result.horizon_s:
            continue
        done = len(times) == o
        traces.append(RequestTrace(scheduled_s=float(arrival[i]), submitted=float(arrival[i]),
                                   token_times=[float(t) for t in times], token_counts=[1] * len(times),
                                   finished=float(times[-1]) if done else None, aborted=not done))
    theirs = summarize(traces, 0.0, num_requests=n, output_len=o)
    assert 0 < mine["completed"] < mine["submitted"] and mine["aborted"] == theirs["aborted"] > 0
    assert (mine["submitted"], mine["completed"]) == (theirs["submitted"], theirs["completed"])
    for metric in ("ttft", "itl", "tpot", "e2e"):
        for q in ("p50", "p90", "p99", "mean"):
            assert mine[metric][q] * 1e3 == pytest.approx(theirs[f"{metric}_{q}_ms"], abs=2e-4), (metric, q)
    assert mine["output_tokens"] == theirs["output_tokens"]
    assert mine["output_tok_s"] == pytest.approx(theirs["output_tok_s"], rel=1e-6)
    assert mine["completion_rate"] == pytest.approx(theirs["completion_rate"], rel=1e-9)
    assert [x is None for x in mine["per_request"]["ttft_s"]] == [x is None for x in theirs["per_request"]["ttft_ms"]]


def test_terminal_output_and_bad_input(tmp_path, monkeypatch, capsys):
    from perfmodel import planning
    from perfmodel.commands import main

    monkeypatch.setattr(planning, "predict_serving", _fake_prediction([]), raising=False)
    path = _write(tmp_path / "serving.jsonl", _rows()[:1])
    main(["validate", "all", "--serving", "--results", str(path), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert "REPLAY of serving measurements" in out and "replay of the measured schedule" in out
    assert "ttft_p50" in out and "+20.0%" in out and "kept up/kept up" in out
    assert "above 2 req/s offered (nominal 2); no rate overloaded" in out
    for args, expected in (
        (["all", "--serving", "--results", str(tmp_path / "none.jsonl")], "no serving measurements at"),
        (["mixtral", "--serving", "--results", str(path)], "no serving measurements of mixtral-8x7b"),
        (["all", "--results", str(tmp_path / "none.jsonl")], "no results file"),
        (["all", "--serving", "--results", str(path), "--gpu", "h9000"], "unknown GPU"),
    ):
        with pytest.raises(SystemExit) as code:
            main(["validate", *args, "--out", str(tmp_path / "rep")])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and len(err.splitlines()) == 1 and expected in err, (args, err)


def _edit(field, value):
    def edit(row):
        if "." in field:
            head, key = field.split(".", 1)
            row[head][key] = value
        else:
            row[field] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_edit("per_request", [1, 2]), "'per_request' must be a mapping"),
    (_edit("per_request.submitted_s", "x"), "'per_request.submitted_s' must be a list"),
    (_edit("per_request.ttft_ms", ["a"] * 40), "'per_request.ttft_ms' holds 'a'"),
    (_edit("per_request.output_tokens", [1.5] * 40), "'per_request.output_tokens' holds 1.5"),
    (_edit("per_request.e2e_ms", [1.0]), "columns differ in length"),
    (_edit("duration_cap_s", -5), "'duration_cap_s' must be > 0 s"),
    (_edit("output_tok_s", "fast"), "'output_tok_s' must be a number"),
    (_edit("engine_detail", {"resolved": {"num_gpu_blocks": "many", "block_size": 16}}),
     "'engine_detail.resolved.num_gpu_blocks' must be a whole number > 0"),
    (_edit("duration_cap_s", "long"), "'duration_cap_s' must be > 0 s"),
    (_edit("seed", -1), "'seed' must be a whole number >= 0"),
    (_edit("layers", [1]), "'layers' must be a whole number >= 1"),
    (_edit("input_len", 1e30), "'input_len' must be a whole number from 1 to"),
    (_edit("rate", 0), "'rate' must be a number above 0"),
    (_edit("ttft_p50_ms", -1.0), "'ttft_p50_ms' must be a number >= 0"),
])
def test_malformed_rows_are_one_line_errors(tmp_path, capsys, edit, expected):
    from perfmodel.commands import main

    row = _rows()[0]
    edit(row)
    path = _write(tmp_path / "serving.jsonl", [row])
    with pytest.raises(SystemExit) as code:
        main(["validate", "all", "--serving", "--results", str(path), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_measured_gpu_names_map_to_specs():
    assert sv.gpu_spec_name("NVIDIA H200", "b200") == "h200-sxm"
    assert sv.gpu_spec_name("NVIDIA H100 80GB HBM3", "b200") == "h100-sxm"
    assert sv.gpu_spec_name("Some Future GPU", "h200") == "h200-sxm"
    assert sv.gpu_spec_name(None, "h100") == "h100-sxm"


def test_saturation_bracket_one_sided():
    def run(rate, overloaded, capacity, aborted):
        return {"rate": rate, "offered_rate": rate, "measured_overloaded": overloaded, "predicted_overloaded": overloaded,
                "measured_aborted": aborted, "measured_capacity_rps": capacity, "predicted_capacity_rps": capacity}
    runs = [run(1.0, True, 0.5, 3), run(2.0, True, 0.6, 9)]
    s = sv.saturation(runs, 0.8)
    assert s["followed_up_to"] is None and s["saturated_from"] == 1.0 and not s["spans"]
    assert s["closed_form_position"] == "inside" and s["measured_capacity_rps"] == pytest.approx(0.55)
    assert sv.saturation(runs, 1.5)["closed_form_position"] == "above"
    kept = sv.saturation([run(1.0, False, 0.9, 0), run(2.0, False, 1.8, 0)], 1.5)
    assert kept["closed_form_position"] == "below" and kept["measured_capacity_rps"] is None


def test_a_short_run_kept_up_above_an_overloaded_rate_does_not_invert_the_bracket():
    def run(rate, overloaded):
        return {"rate": rate, "offered_rate": rate, "measured_overloaded": overloaded, "predicted_overloaded": overloaded,
                "measured_aborted": 0, "measured_capacity_rps": None, "predicted_capacity_rps": None}
    s = sv.saturation([run(40.0, False), run(44.0, True), run(56.0, False), run(66.0, True)], 50.0)
    assert (s["followed_up_to"], s["saturated_from"], s["kept_up_above"]) == (40.0, 44.0, [56.0])
    assert s["closed_form_position"] == "above"
    head = {"model": "olmoe-1b-7b", "input_len": 1024, "output_len": 256, "max_num_seqs": 256, "gpu": "h200-sxm",
            "layout": "1 GPU"}
    assert "kept up at 56 req/s offered as well" in " ".join(sv.saturation_lines({**head, **s}))


def test_a_run_too_short_for_a_steady_state_bounds_no_bracket():
    """A run kept up whose submissions span under two of its requests' median E2E met an engine
    still filling its batch: it is listed apart, and the bracket is the steady runs'."""
    def measured(n, rate, e2e_ms):
        return {"e2e_p50_ms": e2e_ms, "num_requests": n, "rate": rate,
                "per_request": {"submitted_s": [i / rate for i in range(n)]}}

    assert replay.steady_span(measured(300, 40.0, 4000.0)) is False  # 7.5 s of submissions, E2E 4 s
    assert replay.steady_span(measured(450, 36.0, 4000.0)) is True  # 12.5 s
    assert replay.steady_span({"e2e_p50_ms": 4000.0, "num_requests": 450, "rate": 36.0}) is True  # N over the rate
    assert replay.steady_span({"num_requests": 450, "rate": 36.0}) is None

    def run(rate, overloaded, steady):
        return {"rate": rate, "offered_rate": rate, "measured_overloaded": overloaded, "predicted_overloaded": overloaded,
                "measured_aborted": 0, "measured_capacity_rps": None, "predicted_capacity_rps": None, "steady": steady}
    s = sv.saturation([run(8.0, False, True), run(24.0, False, True), run(40.0, False, False)], 29.0)
    assert (s["followed_up_to"], s["saturated_from"], s["kept_up_above"]) == (24.0, None, [40.0])
    assert s["closed_form_position"] == "inside"
    assert sv.saturation([run(24.0, False, True), run(40.0, False, True)], 29.0)["closed_form_position"] == "below"


def test_a_bursty_run_is_named_by_its_arrivals():
    assert replay.model_label("olmoe-1b-7b", "bf16", 0.25) == "olmoe-1b-7b (burstiness 0.25)"
    assert replay.model_label("mixtral-8x7b", "fp8", 0.25) == "mixtral-8x7b (fp8, burstiness 0.25)"
    assert replay.model_label("mixtral-8x7b", "fp8", 1.0) == replay.model_label("mixtral-8x7b", "fp8") == "mixtral-8x7b (fp8)"
    assert replay.model_label("olmoe-1b-7b", None) == "olmoe-1b-7b"
    poisson = _row(8.0, achieved=8.0, served=7.9)
    bursty = {**poisson, "burstiness": 0.25}
    assert sv._group_key(bursty, "h200-sxm") != sv._group_key(poisson, "h200-sxm")  # saturation apart


def test_real_replay_on_a_small_workload(tmp_path):
    """The real planning simulation replays a light run: every request completes, the served
    throughput is the run's own N·O over its window, the engine's KV cache is used."""
    n, rate = 30, 4.0
    per = _per_request(n, rate, lambda i: 20.0)
    rows = [_row(rate, achieved=rate, served=200.0, s=128, o=32, ttft=(20.0, 25.0), itl=(3.0, 4.0, 3.4),
                 per_request=per, cap=10.0, blocks=(4000, 16))]
    result = sv.run_serving_validation("olmoe-1b-7b", results=_write(tmp_path / "s.jsonl", rows),
                                       out_dir=tmp_path / "rep")
    by = {p["metric"]: p for p in result["points"]}
    assert set(by) == set(sv.METRICS)
    for metric in sv.LATENCY:
        assert 0 < by[metric]["predicted"] < 1.0 and by[metric]["rel_error"] is not None
    (run,) = result["rates"]
    assert (run["predicted_submitted"], run["predicted_completed"], run["predicted_aborted"]) == (n, n, 0)
    assert run["predicted_overloaded"] is False and run["engine_kv_tokens"] == 64_000 and run["model_kv_tokens"] > 0
    last = per["submitted_s"][-1]
    # n·O tokens between the first submission and the last token, which comes within a second
    assert n * 32 / (last + 1.0) < by["served_tok_s"]["predicted"] < n * 32 / last
    (sat,) = result["saturation"]
    assert sat["predicted_saturation_rps"] > rate and sat["closed_form_position"] == "inside"
    assert not math.isnan(sat["predicted_saturation_rps"])


def test_probed_runs_are_replayed_at_their_probe_and_at_the_reference_host(tmp_path, monkeypatch):
    """A run with the host's probe is replayed at it, or at the host's speed sampled through the
    rate where the run has that; the report also gives the MAPE those runs would have at the
    profile's reference host (host_probe_ms=None)."""
    from perfmodel import planning

    calls = []
    fake = _fake_prediction(calls)

    def predict_serving(model, gpu, layout, traffic, **kw):
        out = fake(model, gpu, layout, traffic, **kw)
        slow = (kw.get("host_probe_ms") or 40.0) / 40.0  # the host's times scale with the probe
        out["itl_s"] = {k: v * slow for k, v in out["itl_s"].items()}
        return out

    monkeypatch.setattr(planning, "predict_serving", predict_serving, raising=False)
    rows = _rows()[:2]
    rows[0]["host_probe_ms"] = [60.0, 60.0]  # measured at a host 1.5x slower than the reference
    result = sv.compare_serving(rows, model="olmoe")
    assert [kw.get("host_probe_ms") for *_, kw in calls] == [60.0, None, None]  # row 0 twice, row 1 once
    speed = {m["metric"]: m for m in result["host_speed"]}
    assert speed["itl_p50"]["count"] == 1
    measured = rows[0]["itl_p50_ms"] * 1e-3
    assert speed["itl_p50"]["mape_probe"] == pytest.approx(100 * abs(0.011 * 1.5 / measured - 1))
    assert speed["itl_p50"]["mape_reference"] == pytest.approx(100 * abs(0.011 / measured - 1))
    by = {(p["rate"], p["metric"]): p for p in result["points"]}
    assert by[2.0, "itl_p50"]["predicted"] == pytest.approx(0.011 * 1.5)  # the report's own: at the probe
    assert sv.compare_serving(_rows()[:2], model="olmoe")["host_speed"] == []  # no probe, no table
    assert [(r["host_ms"], r["host_from"]) for r in result["rates"]] == [(60.0, "probes"), (None, None)]
    sampled = [dict(rows[0], host_run={"mean_ms": 80.0, "samples": 1200}), rows[1]]
    calls.clear()
    again = sv.compare_serving(sampled, model="olmoe")  # the host sampled through the rate wins over its probes
    assert [kw.get("host_probe_ms") for *_, kw in calls] == [80.0, None, None]
    assert (again["rates"][0]["host_ms"], again["rates"][0]["host_from"]) == (80.0, "sampled")
    from perfmodel.commands import main

    main(["validate", "olmoe", "--serving", "--results", str(_write(tmp_path / "s.jsonl", rows)),
          "--out", str(tmp_path / "rep")])
    summary = (tmp_path / "rep" / "summary.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("| itl_p50 |") and x.count("|") == 5)
    assert line == (f"| itl_p50 | {speed['itl_p50']['mape_probe']:.1f} | "
                    f"{speed['itl_p50']['mape_reference']:.1f} | 1 |")
    assert "MAPE % at the reference host" in (tmp_path / "rep" / "report.html").read_text()
    assert "| host ms |" in summary and "| 60.0 (probes) |" in summary  # each run's host speed, in its row


def test_a_run_of_drawn_lengths_is_replayed_with_each_requests_own(tmp_path):
    """A run whose lengths were drawn replays each request with its measured prompt and output:
    the replay streams exactly their output tokens; the report names the percentiles; a row
    whose lengths were drawn but not written per request is refused in one line."""
    n, rate = 30, 4.0
    rng = np.random.default_rng(1)
    ins = [int(x) for x in rng.integers(16, 400, n)]
    outs = [int(x) for x in rng.integers(2, 60, n)]
    per = {**_per_request(n, rate, lambda i: 20.0), "input_len": ins, "output_len": outs}
    per["output_tokens"] = outs
    row = _row(rate, achieved=rate, served=200.0, s=128, o=16, ttft=(20.0, 25.0), itl=(3.0, 4.0, 3.4),
               per_request=per, cap=10.0, blocks=(4000, 16))
    row["lengths"] = {"input_len": {"p50": 128, "p90": 300}, "output_len": {"p50": 16, "p90": 50}}
    pred = replay.predict_row(row, "h200-sxm")
    assert pred["completed"] == n and sum(pred["per_request"]["output_tokens"]) == sum(outs)
    assert sorted(pred["per_request"]["output_tokens"]) == sorted(outs)
    fixed = replay.predict_row({**row, "lengths": None, "per_request": _per_request(n, rate, lambda i: 20.0)},
                               "h200-sxm")
    assert sum(fixed["per_request"]["output_tokens"]) == n * 16  # without them: all O
    result = sv.run_serving_validation("olmoe-1b-7b", results=_write(tmp_path / "s.jsonl", [row]),
                                       out_dir=tmp_path / "rep")
    (run,) = result["rates"]
    assert run["lengths"] == "128/16 median, p90 300/50" and run["predicted_completed"] == n
    assert "128/16 median, p90 300/50" in (tmp_path / "rep" / "summary.md").read_text()
    bad = {**row, "per_request": _per_request(n, rate, lambda i: 20.0)}
    with pytest.raises(sv.InputError, match="lacks each request's input_len and output_len"):
        sv.check_row(bad)


def test_replay_lengths_are_checked_in_one_line():
    """predict_serving's ``lengths``: one prompt and one output length (whole tokens >= 1) per
    arrival, and only for a replay of explicit arrivals."""
    from perfmodel import planning
    from perfmodel.errors import InputError

    traffic = {"rate": 2.0, "input_len": 64, "output_len": 8}
    cases = [(None, ([64], [8]), "explicit arrivals"),
             ([0.0, 0.5], ([64], [8]), "each of the 2 arrivals"),
             ([0.0], ([64.5], [8]), "whole numbers"),
             ([0.0], ([64], [0]), "whole numbers"),
             ([0.0], ("x", [8]), "two lists")]
    for arrivals, lengths, expected in cases:
        with pytest.raises(InputError, match=expected):
            planning.predict_serving("olmoe-1b-7b", "h200-sxm", (1, 1, 1), traffic, arrivals=arrivals,
                                     lengths=lengths)
    # a replay in another order of arrivals keeps each request's lengths with it
    out = planning.predict_serving("olmoe-1b-7b", "h200-sxm", (1, 1, 1), traffic, arrivals=[0.5, 0.0],
                                   lengths=([64, 32], [9, 3]))
    assert out["per_request"]["submitted_s"] == [0.0, 0.5] and out["per_request"]["output_tokens"] == [3, 9]


@pytest.mark.parametrize("quantization, kv, dtype, kv_dtype", [
    ("none", None, "bf16", None), ("fp8", None, "fp8", None), ("gptq", None, "w4a16", None),
    ("fp8-block", None, "fp8-block", None), ("experts_int8", None, "w8a16-experts", None),
    ("none", "fp8", "bf16", "fp8")])
def test_a_quantized_run_is_replayed_in_its_scheme(monkeypatch, quantization, kv, dtype, kv_dtype):
    """A run of a checkpoint format or vLLM's on-load quantization is replayed with the model's
    scheme for it (a GPTQ run as w4a16, not bf16), and with its KV cache's dtype; an unquantized
    run as the model unquantized (``none``: not a quantized checkpoint's own scheme), labelled bf16."""
    calls = []
    monkeypatch.setattr("perfmodel.planning.predict_serving", _fake_prediction(calls))
    row = _row(4.0, achieved=4.0, served=250.0, per_request=_per_request(20, 4.0, lambda i: 100.0))
    row["engine"]["quantization"] = quantization
    if kv is not None:
        row["engine"]["kv_cache_dtype"] = kv
    assert replay.serving_dtype(row) == dtype and replay.serving_kv_dtype(row) == kv_dtype
    replay.predict_row(row, "h200-sxm")
    ((_, _, _, _, kw),) = calls
    assert kw["dtype"] == ("none" if quantization == "none" else dtype) and kw["kv_dtype"] == kv_dtype


def test_the_closed_form_is_set_against_a_bracket_at_each_of_its_runs_hosts():
    def run(rate, overloaded, saturation, host_ms):
        return {"rate": rate, "offered_rate": rate, "measured_overloaded": overloaded, "predicted_overloaded": overloaded,
                "measured_aborted": 0, "measured_capacity_rps": None, "predicted_capacity_rps": None,
                "predicted_saturation_rps": saturation, "host_ms": host_ms}
    # kept up at 36 on a fast host, overloaded at 40 on one twice as slow: the closed form at each
    # host agrees with each run, though the slow host's figure lies below the bracket's low end
    s = sv.saturation([run(36.0, False, 40.6, 29.5), run(40.0, True, 24.6, 85.4)], 24.6)
    assert s["closed_form_position"] == "below" and s["closed_form_host_position"] == "inside"
    assert s["closed_form_at_hosts"] == {"kept_up": 40.6, "kept_up_host_ms": 29.5, "overloaded": 24.6,
                                         "overloaded_host_ms": 85.4}
    above = sv.saturation([run(13.0, False, 19.0, 34.3), run(14.2, True, 16.5, 78.6)], 16.5)
    assert above["closed_form_host_position"] == "above"
    assert above["closed_form_host_rel_error"] == pytest.approx(16.5 / 14.2 - 1)
    below = sv.saturation([run(24.0, False, 21.2, 40.5), run(32.0, True, 24.5, 30.1)], 24.5)
    assert below["closed_form_host_position"] == "below"
    assert below["closed_form_host_rel_error"] == pytest.approx(21.2 / 24.0 - 1)
    head = {"model": "phi-3.5-moe", "input_len": 1024, "output_len": 256, "max_num_seqs": 256, "gpu": "h100-sxm",
            "layout": "1 GPU"}
    line = " ".join(sv.saturation_lines({**head, **above}))
    assert "19 req/s at the kept-up run's host (34.3 ms)" in line and "above the bracket at those hosts (+16" in line
    assert sv.saturation([run(1.0, False, None, None)], None)["closed_form_host_position"] is None
