"""Repeated measurements (perfmodel/validate/repeats.py): which points, their spread, and the
validation report's section."""

from __future__ import annotations

import json
import math
import sys

import pytest

pd = pytest.importorskip("pandas")

from perfmodel.measuring.results import read_rows  # noqa: E402
from perfmodel.paths import RESULTS_DIR  # noqa: E402
from perfmodel.validate.repeats import (  # noqa: E402
    every_measurement, repeat_section, repeat_summary, repeated_points, summary_line,
)

TWICE = "hf|model-a|set=|layers=all|B=4|S=128|O=128"
ONCE = "hf|model-a|set=|layers=all|B=8|S=128|O=128"
FAILED_AGAIN = "hf|model-b|set=|layers=all|B=1|S=64|O=64"


def _row(point_id: str, batch: int, *, date: str, commit: str, ttft: float | None, itl: float,
         tput: float, status: str = "ok", model: str = "model-a") -> dict:
    return {"point_id": point_id, "model": model, "status": status, "batch": batch, "input_len": 128,
            "output_len": 128, "date": date, "git_commit": commit, "ttft_ms": ttft, "itl_ms": itl,
            "throughput_tok_s": tput}


@pytest.fixture
def results(tmp_path):
    """A results file: one point measured twice (known numbers; the second row without TTFT is
    not: its TTFT has one value), one measured once, one measured ok once and failed once."""
    rows = [
        _row(TWICE, 4, date="2026-12-01T10:05:59+00:00", commit="aaa1111", ttft=10.0, itl=2.0, tput=1000.0),
        _row(ONCE, 8, date="2026-12-01T10:06:00+00:00", commit="aaa1111", ttft=12.0, itl=3.0, tput=2000.0),
        _row(FAILED_AGAIN, 1, date="2026-12-01T10:07:00+00:00", commit="aaa1111", ttft=5.0, itl=1.0,
             tput=100.0, model="model-b"),
        _row(TWICE, 4, date="2026-12-02T08:30:00+00:00", commit="bbb2222", ttft=15.0, itl=2.5, tput=800.0),
        _row(FAILED_AGAIN, 1, date="2026-12-02T08:31:00+00:00", commit="bbb2222", ttft=None, itl=0.0,
             tput=0.0, status="error", model="model-b"),
    ]
    path = tmp_path / "h200-x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_only_the_point_measured_ok_twice(results):
    table = repeated_points([results])
    assert list(table["point_id"]) == [TWICE]
    row = table.iloc[0]
    assert (row["model"], row["variant"], row["batch"], row["n"]) == ("model-a", "model-a", 4, 2)
    assert row["dates"] == ["2026-12-01 10:05", "2026-12-02 08:30"]
    assert row["git_commits"] == ["aaa1111", "bbb2222"]
    # ITL 2.0 and 2.5 ms: spread 25 %; TTFT 10 and 15 ms: 50 %; throughput 1000 and 800: 25 %
    assert row["decode_step_min"] == pytest.approx(2.0e-3) and row["decode_step_max"] == pytest.approx(2.5e-3)
    assert row["decode_step_spread_pct"] == pytest.approx(25.0)
    assert row["ttft_min"] == pytest.approx(10e-3) and row["ttft_spread_pct"] == pytest.approx(50.0)
    assert row["throughput_min"] == pytest.approx(800.0) and row["throughput_spread_pct"] == pytest.approx(25.0)


def test_models_filter_and_no_repeats(results, tmp_path):
    assert repeated_points([results], models=["model-b"]).empty
    assert len(repeated_points([results], models=["MODEL-A"])) == 1
    empty = repeated_points([tmp_path / "missing.jsonl"])
    assert empty.empty and "decode_step_spread_pct" in empty.columns
    assert repeat_section(empty) is None


def test_a_metric_with_one_value_has_no_spread(results):
    lines = results.read_text().splitlines()
    second = json.loads(lines[3])
    second["ttft_ms"] = None
    lines[3] = json.dumps(second)
    results.write_text("\n".join(lines) + "\n")
    row = repeated_points([results]).iloc[0]
    assert math.isnan(row["ttft_spread_pct"]) and row["decode_step_spread_pct"] == pytest.approx(25.0)
    summary = repeat_summary(repeated_points([results]))
    assert summary["ttft"] == {"median_pct": None, "max_pct": None, "points": 0}
    assert "TTFT" not in summary_line(summary) and "ITL" in summary_line(summary)


def test_summary_median_and_max(results, tmp_path):
    other = tmp_path / "h200-x-whatif.jsonl"
    rows = [_row("hf|model-c|B=1", 1, date="2026-12-03T00:00:00", commit="c", ttft=1.0, itl=1.0, tput=1.0,
                 model="model-c"),
            _row("hf|model-c|B=1", 1, date="2026-12-03T01:00:00", commit="c", ttft=1.0, itl=2.0, tput=1.0,
                 model="model-c")]
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = repeated_points([results, other])
    assert len(table) == 2
    summary = repeat_summary(table)
    # ITL spreads 25 % and 100 %
    assert summary["decode_step"]["median_pct"] == pytest.approx(62.5)
    assert summary["decode_step"]["max_pct"] == pytest.approx(100.0)
    assert summary_line(summary).startswith("A repeated point moved by a median of 62.5% (largest 100.0%) in ITL")


def test_committed_deepseek_top_k_1_points_are_repeated():
    paths = [RESULTS_DIR / "h200-vllm.jsonl", RESULTS_DIR / "h200-vllm-whatif.jsonl"]
    table = repeated_points(paths)
    top1 = table[table["point_id"].str.startswith("vllm|deepseek-v2-lite|set=num_hidden_layers=8;top_k=1|")]
    assert set(top1["batch"]) == {1, 16, 64, 128}
    assert (top1["n"] >= 2).all()
    assert top1["variant"].str.contains("k=1").all()
    # the spread is the file's: recomputed from its ok rows of the same point id
    all_rows = [r for p in paths for r in read_rows(p, unique=False, warn=False).rows if r.get("status") == "ok"]
    for _, row in top1.iterrows():
        itl = [r["itl_ms"] for r in all_rows if r["point_id"] == row["point_id"]]
        assert len(itl) == row["n"]
        assert row["decode_step_spread_pct"] == pytest.approx((max(itl) / min(itl) - 1) * 100)
        assert row["decode_step_spread_pct"] > 0


def _points(table) -> "pd.DataFrame":
    """A compare()-like points table (both engines) for the repeated point and one other."""
    rows = []
    for engine, err in (("hf", 0.10), ("roofline", -0.5)):
        for pid, batch in ((TWICE, 4), (ONCE, 8)):
            for metric, measured in (("ttft", 0.015), ("decode_step", 0.0025), ("e2e", 0.3),
                                     ("throughput", 800.0)):
                rows.append(dict(model="model-a", variant="model-a", batch=batch, input_len=128,
                                 output_len=128, point_id=pid, layout="1 GPU", engine=engine,
                                 split="held-out", metric=metric, measured=measured,
                                 predicted=measured * (1 + err), rel_error=err))
    return pd.DataFrame(rows)


SOURCE = {"mode": "replay", "date": "2026-12-02", "gpu": "NVIDIA H200", "driver": "1", "torch": "2",
          "transformers": "5", "results_file": "validate/results/h200-x.jsonl", "git_commit": "bbb2222",
          "calibrated_engine": "hf", "baseline_engine": "roofline", "train_models": [],
          "held_out_models": ["model-a"]}


def test_markdown_section(results):
    from perfmodel.validate.report_pages import summary_markdown

    table = repeated_points([results])
    md = summary_markdown(_points(table), title="t", source=SOURCE, repeats=table)
    section = md.split("## Repeated measurements", 1)[1].split("\n## ", 1)[0]
    assert md.index("## MAPE") < md.index("## Repeated measurements") < md.index("worst held-out")
    assert "This point was measured more than once" in section and "latest measurement" in section
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(body) == 1
    cell = dict(zip(header, body[0]))
    assert cell["model"] == "model-a" and cell["B"] == "4" and cell["n"] == "2"
    assert cell["measured (UTC, commit)"] == "2026-12-01 10:05 (aaa1111); 2026-12-02 08:30 (bbb2222)"
    assert cell["ITL ms (min–max)"] == "2.000–2.500" and cell["ITL spread %"] == "25.0"
    assert cell["TTFT spread %"] == "50.0" and cell["throughput spread %"] == "25.0"
    assert cell["ITL err %"] == "+10.0"  # the calibrated engine's, not the baseline's
    assert ("A repeated point moved by a median of 25.0% (largest 25.0%) in ITL, 50.0% (largest 50.0%) "
            "in TTFT and 25.0% (largest 25.0%) in throughput.") in section


def test_no_repeats_no_section(results):
    from perfmodel.validate.report_pages import summary_markdown

    points = _points(repeated_points([results]))
    for repeats in (None, repeated_points([results], models=["model-b"])):
        assert "Repeated measurements" not in summary_markdown(points, title="t", source=SOURCE,
                                                               repeats=repeats)


def test_html_section(results, monkeypatch):
    pytest.importorskip("altair")
    from perfmodel.validate.report_pages import report_html

    monkeypatch.setitem(sys.modules, "vl_convert", None)  # CDN path: fast
    table = repeated_points([results])
    points = _points(table)
    html = report_html(points, None, title="t", source=SOURCE, repeats=table)
    section = html.split("<section id='repeats'>", 1)[1].split("</section>", 1)[0]
    assert "<h2>Repeated measurements</h2>" in section
    assert "2.000–2.500" in section and ">25.0<" in section and ">+10.0<" in section
    assert "A repeated point moved by a median of 25.0%" in section
    assert "<section id='repeats'>" not in report_html(points, None, title="t", source=SOURCE)


def test_reports_show_a_commit_hash_short():
    from perfmodel.validate.report_metrics import measured_span, short_commit

    assert short_commit("bc3edb571edc71ebf28a58bae22f704f002ce9a3") == "bc3edb5"
    assert short_commit("5e1f361") == "5e1f361" and short_commit("unknown") == "unknown"
    rows = [{"date": "2026-12-03T09:49", "git_commit": "bc3edb571edc71ebf28a58bae22f704f002ce9a3"},
            {"date": "2026-12-03T07:44", "git_commit": "bc3edb5"}]
    assert measured_span(rows) == {"date": "2026-12-03", "git_commit": "bc3edb5"}


def test_every_measurement_beside_the_latest(results):
    """The held-out MAPE over every measurement of each point, beside the one over each point's
    latest row: here the repeated point's earlier row is 30% off where its latest is 10%."""
    from perfmodel.validate.report_pages import summary_markdown

    table = repeated_points([results])
    points = _points(table)
    earlier = points[(points["engine"] == "hf") & (points["point_id"] == TWICE)].assign(rel_error=0.30)
    every = pd.concat([points[points["engine"] == "hf"], earlier], ignore_index=True)
    every = pd.concat([every, every.assign(split="train").iloc[:2]], ignore_index=True)  # not held out
    summary = every_measurement(points, every, "hf")
    assert set(summary) == {"decode_step", "ttft", "throughput"}
    for metric in summary.values():
        assert metric["points"] == 2 and metric["rows"] == 3
        assert metric["mape_latest"] == pytest.approx(10.0)
        assert metric["mape_every"] == pytest.approx((10 + 10 + 30) / 3)
    assert every_measurement(points, None, "hf") == {}
    md = summary_markdown(points, title="t", source=SOURCE, repeats=table, every=every)
    assert ("Read over every measurement of each point (3 held-out rows) instead of the latest "
            "(2 points), `hf`'s held-out MAPE is ITL 16.7% (latest 10.0%)") in md
    assert "Read over every measurement" not in summary_markdown(points, title="t", source=SOURCE,
                                                                 repeats=table)
    assert repeat_section(table, points, "hf", every)["every"].endswith("throughput 16.7% (latest 10.0%).")


def test_a_point_in_the_results_and_what_if_files_counts_once(tmp_path):
    """load_with_what_ifs: one row per point id across a results file and its what-if file, the
    later measured row in the results file's place; a measured row beats a later failed one."""
    from perfmodel.measuring.compare import load_with_what_ifs, what_if_file

    early, late = "2026-12-01T10:00:00+00:00", "2026-12-04T06:00:00+00:00"
    results = tmp_path / "h200-vllm.jsonl"
    main = [_row(TWICE, 4, date=early, commit="aaa1111", ttft=10.0, itl=2.0, tput=1000.0),
            _row(ONCE, 8, date=early, commit="aaa1111", ttft=12.0, itl=3.0, tput=2000.0),
            _row(FAILED_AGAIN, 1, date=early, commit="aaa1111", ttft=5.0, itl=1.0, tput=100.0, model="model-b")]
    extra = [_row(TWICE, 4, date=late, commit="bbb2222", ttft=11.0, itl=2.2, tput=990.0),
             _row(FAILED_AGAIN, 1, date=late, commit="bbb2222", ttft=None, itl=0.0, tput=0.0, status="error",
                  model="model-b"),
             _row("hf|model-a|set=|layers=2|B=4|S=128|O=128", 4, date=late, commit="bbb2222", ttft=1.0,
                  itl=0.5, tput=9000.0)]
    results.write_text("".join(json.dumps(r) + "\n" for r in main))
    what_if_file(results).write_text("".join(json.dumps(r) + "\n" for r in extra))
    rows = load_with_what_ifs(results)
    assert [r["point_id"] for r in rows] == [TWICE, ONCE, FAILED_AGAIN, extra[2]["point_id"]]
    assert rows[0]["git_commit"] == "bbb2222"  # the later measurement of the point in both files
    assert rows[2]["status"] == "ok" and rows[2]["git_commit"] == "aaa1111"  # not the later error
    what_if_file(results).unlink()
    assert [r["point_id"] for r in load_with_what_ifs(results)] == [TWICE, ONCE, FAILED_AGAIN]
