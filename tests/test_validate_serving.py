"""``validate --serving``: measured serving rows replayed against the planning's predict_serving.

The rows are written here by hand. One case replaces predict_serving by a function of known
values, so every relative error, the MAPE and the saturation bracket are exact; one calls the
real planning simulation on a small workload to check that the replay runs end to end.
"""

from __future__ import annotations

import json

import pytest

from perfmodel.validate import serving as sv

O = 64


def _row(rate, *, achieved, completion, ttft=(100.0, 200.0), itl=(10.0, 20.0), model="olmoe-1b-7b",
         tp=1, ep=False, s=512, o=O, gpu="NVIDIA H200", status="ok"):
    return {
        "schema_version": 1, "point_id": f"vllm|{model}|rate={rate}|tp={tp}", "status": status,
        "error": None if status == "ok" else "boom", "backend": "vllm", "mode": "serving", "model": model,
        "overrides": [], "layers": None, "rate": rate, "num_requests": 100, "input_len": s, "output_len": o,
        "max_num_seqs": 128, "seed": 3, "gpu_name": gpu, "driver": "580.1", "torch": "2.11.0", "vllm": "0.26.0",
        "git_commit": "abc", "date": "2026-12-10T10:00:00+00:00",
        "engine": {"name": "vllm", "tp": tp, "ep": ep, "pp": 1, "quantization": "none",
                   "max_num_seqs": 128, "max_num_batched_tokens": 8192},
        "ttft_p50_ms": ttft[0], "ttft_p90_ms": ttft[1], "itl_p50_ms": itl[0], "itl_p90_ms": itl[1],
        "achieved_rate": achieved, "completion_rate": completion,
    }


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fake_prediction(calls):
    def predict_serving(model, gpu, layout, traffic, **kw):
        calls.append((model, gpu, layout, traffic, kw))
        over = traffic["rate"] > 100
        inf = float("inf")
        return {"ttft_s": {"p50": inf if over else 0.12, "p90": inf if over else 0.15},
                "itl_s": {"p50": 0.011, "p90": 0.018}, "overloaded": over,
                "saturation_rate_per_replica": 5.0}
    return predict_serving


def test_replay_against_known_predictions(tmp_path, monkeypatch, capsys):
    from perfmodel import planning
    from perfmodel.commands import main

    calls = []
    monkeypatch.setattr(planning, "predict_serving", _fake_prediction(calls), raising=False)
    rows = [_row(2.0, achieved=2.0, completion=2.0), _row(4.0, achieved=4.1, completion=3.9),
            _row(8.0, achieved=8.2, completion=5.5, ttft=(900.0, 3000.0)),
            _row(200.0, achieved=190.0, completion=5.4),
            _row(3.0, achieved=3.0, completion=3.0, status="error"),
            _row(4.0, achieved=4.0, completion=4.0, model="mixtral-8x7b", tp=2, ep=True)]
    path = _write(tmp_path / "serving.jsonl", rows)
    main(["validate", "olmoe", "--serving", "--results", str(path), "--out", str(tmp_path / "rep"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["source"]["mode"] == "replay" and result["source"]["vllm"] == "0.26.0"
    # the ok rows of that model only, each predicted for its own deployment and traffic
    assert [c[3]["rate"] for c in calls] == [2.0, 4.1, 8.2, 190.0]  # the rates really offered
    model, gpu, layout, traffic, kw = calls[0]
    assert (model, gpu, layout) == ("olmoe-1b-7b", "h200-sxm", (1, 1, 1))
    assert traffic == {"rate": 2.0, "input_len": 512, "output_len": O}
    assert kw["max_num_seqs"] == 128 and kw["max_batched_tokens"] == 8192 and kw["dtype"] == "bf16"
    assert kw["requests"] == 100 and kw["warmup"] == 0 and kw["seed"] == 3 and kw["engine"] == "vllm"
    by = {(p["rate"], p["metric"]): p for p in result["points"]}
    assert by[2.0, "ttft_p50"]["rel_error"] == pytest.approx(0.12 / 0.100 - 1)
    assert by[8.0, "ttft_p90"]["rel_error"] == pytest.approx(0.15 / 3.0 - 1)
    assert by[4.0, "itl_p90"]["rel_error"] == pytest.approx(0.018 / 0.020 - 1)
    # served throughput: min(rate, predicted saturation) x O against completion rate x O
    assert by[4.0, "served_tok_s"]["measured"] == pytest.approx(3.9 * O)
    assert by[4.0, "served_tok_s"]["predicted"] == pytest.approx(4.1 * O)
    assert by[8.0, "served_tok_s"]["predicted"] == pytest.approx(5.0 * O)
    assert by[8.0, "served_tok_s"]["rel_error"] == pytest.approx(5.0 / 5.5 - 1)
    assert by[200.0, "ttft_p50"]["rel_error"] is None  # predicted overloaded: left out
    mape = {m["metric"]: m for m in result["mape"]}
    assert mape["ttft_p50"]["count"] == 3 and mape["ttft_p50"]["left_out"] == 1
    assert mape["ttft_p50"]["mape"] == pytest.approx(100 * (0.2 + 0.2 + abs(0.12 / 0.9 - 1)) / 3)
    assert mape["itl_p50"]["mape"] == pytest.approx(10.0) and mape["itl_p50"]["count"] == 4
    (sat,) = result["saturation"]
    assert sat["followed_up_to"] == 4.0 and sat["saturated_from"] == 8.0 and sat["spans"]
    assert sat["measured_capacity_rps"] == pytest.approx((5.5 + 5.4) / 2)
    assert sat["predicted_saturation_rps"] == 5.0 and sat["predicted_in_bracket"] is True
    assert sat["capacity_rel_error"] == pytest.approx(5.0 / 5.45 - 1)
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "**REPLAY**" in summary and "between 4 and 8 req/s" in summary and "∞ (overloaded)" in summary
    # vLLM's TP+EP is predicted as TP on the same GPUs
    calls.clear()
    sv.compare_serving(rows, model="mixtral")
    assert [c[2] for c in calls] == [(2, 1, 1)]


def test_terminal_output_and_bad_input(tmp_path, monkeypatch, capsys):
    from perfmodel import planning
    from perfmodel.commands import main

    monkeypatch.setattr(planning, "predict_serving", _fake_prediction([]), raising=False)
    path = _write(tmp_path / "serving.jsonl", [_row(2.0, achieved=2.0, completion=2.0)])
    main(["validate", "all", "--serving", "--results", str(path), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert "REPLAY of serving measurements" in out and "ttft_p50" in out and "+20.0%" in out
    assert "above 2 req/s (every rate followed)" in out
    for args, expected in (
        (["all", "--serving", "--results", str(tmp_path / "none.jsonl")], "no serving measurements at"),
        (["mixtral", "--serving", "--results", str(path)], "no serving measurements of mixtral-8x7b"),
        (["all", "--results", str(path)], "--results applies to --serving"),
        (["all", "--serving", "--results", str(path), "--gpu", "h9000"], "unknown GPU"),
    ):
        with pytest.raises(SystemExit) as code:
            main(["validate", *args, "--out", str(tmp_path / "rep")])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and len(err.splitlines()) == 1 and expected in err, (args, err)


def test_measured_gpu_names_map_to_specs():
    assert sv.gpu_spec_name("NVIDIA H200", "b200") == "h200-sxm"
    assert sv.gpu_spec_name("NVIDIA H100 80GB HBM3", "b200") == "h100-sxm"
    assert sv.gpu_spec_name("Some Future GPU", "h200") == "h200-sxm"
    assert sv.gpu_spec_name(None, "h100") == "h100-sxm"


def test_saturation_bracket_one_sided():
    rows = [_row(1.0, achieved=1.0, completion=0.5), _row(2.0, achieved=2.0, completion=0.6)]
    s = sv.saturation(rows, 0.8)
    assert s["followed_up_to"] is None and s["saturated_from"] == 1.0 and not s["spans"]
    assert s["predicted_in_bracket"] is True and s["measured_capacity_rps"] == pytest.approx(0.55)
    assert sv.saturation(rows, 1.5)["predicted_in_bracket"] is False


def test_real_prediction_on_a_small_workload(tmp_path):
    rows = [_row(4.0, achieved=4.0, completion=4.0, s=128, o=32, ttft=(20.0, 25.0), itl=(3.0, 4.0))]
    result = sv.run_serving_validation("olmoe-1b-7b", results=_write(tmp_path / "s.jsonl", rows),
                                       out_dir=tmp_path / "rep")
    by = {p["metric"]: p for p in result["points"]}
    assert set(by) == set(sv.METRICS)
    for metric in sv.LATENCY:
        assert 0 < by[metric]["predicted"] < 1.0 and by[metric]["rel_error"] is not None
    assert by["served_tok_s"]["predicted"] == pytest.approx(4.0 * 32)  # far below saturation
    (sat,) = result["saturation"]
    assert sat["predicted_saturation_rps"] > 4.0 and sat["predicted_in_bracket"] is True
