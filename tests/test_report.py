"""The validation report (validate/report.py) on small synthetic tables: files, labels, numbers."""

from __future__ import annotations

import itertools
import json
import re
import sys

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("altair")

from perfmodel.validate.report import METRICS, TARGETS, mape_table, verdict, write_report  # noqa: E402

TRAIN, HELD = "model-a", "model-b"
CATEGORIES = ("attention", "expert_gemm", "dense_gemm", "norm_elementwise")


def _error(engine: str, model: str, metric: str, batch: int, s: int) -> float:
    """A deterministic relative error, different per engine, split, metric and point."""
    base = {"hf": 0.03, "roofline": -0.4}[engine]
    wobble = ((batch * 7 + s // 64 + METRICS.index(metric) * 3) % 5 - 2) * 0.013
    return base + wobble + (0.02 if model == HELD else 0.0)


def make_points() -> "pd.DataFrame":
    rows = []
    for engine, model, batch, s in itertools.product(("hf", "roofline"), (TRAIN, HELD),
                                                     (1, 16), (128, 512)):
        pid = f"hf|{model}|B={batch}|S={s}|O={s}"
        for metric in METRICS:
            measured = {"ttft": 0.02 * batch * s / 128, "decode_step": 0.004 + 0.0002 * batch,
                        "e2e": 0.5 * s / 128, "throughput": 400.0 * batch}[metric]
            err = _error(engine, model, metric, batch, s)
            rows.append(dict(model=model, batch=batch, input_len=s, output_len=s, point_id=pid,
                             engine=engine, split="train" if model == TRAIN else "held-out",
                             metric=metric, measured=measured, predicted=measured * (1 + err),
                             rel_error=err))
    return pd.DataFrame(rows)


def make_ops(points: "pd.DataFrame") -> "pd.DataFrame":
    rows = []
    keys = points.drop_duplicates(["engine", "point_id"])
    for _, p in keys.iterrows():
        for i, cat in enumerate(CATEGORIES):
            rows.append(dict(model=p["model"], batch=p["batch"], input_len=p["input_len"],
                             output_len=p["output_len"], point_id=p["point_id"], engine=p["engine"],
                             split=p["split"], category=cat,
                             measured_s=None if p["batch"] == 16 and i == 0 else 1e-4 * (i + 1),
                             predicted_s=1.1e-4 * (i + 1)))
    return pd.DataFrame(rows)


def source(mode: str) -> dict:
    return {"mode": mode, "date": "2026-11-28", "gpu": "NVIDIA H200", "driver": "580.159.04",
            "torch": "2.11.0+cu130", "transformers": "5.17.0",
            "results_file": "validate/results/h200-hf.jsonl", "git_commit": "abc1234",
            "calibrated_engine": "hf", "baseline_engine": "roofline",
            "train_models": [TRAIN], "held_out_models": [HELD]}


@pytest.fixture
def no_vl_convert(monkeypatch):
    """Make ``import vl_convert`` fail, so the report takes its CDN path (and stays fast)."""
    monkeypatch.setitem(sys.modules, "vl_convert", None)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """One replay report (CDN path), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("report") / "out"
    points = make_points()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "vl_convert", None)
        html_path, md_path = write_report(points, make_ops(points), out,
                                          title="Synthetic check", source=source("replay"))
    return (points, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"),
            html_path, md_path, out)


def test_files_written(replay):
    _, html, md, html_path, md_path, out = replay
    assert html_path == out / "report.html" and html_path.is_file()
    assert md_path == out / "summary.md" and md_path.is_file()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert md.startswith("# Synthetic check")


def test_replay_is_labelled_replay_never_live(replay):
    _, html, md, *_ = replay
    for text in (html, md):
        assert "replay" in text.lower()
        assert "live run" not in text.lower()
        assert "live" not in text.lower()
        assert "2026-11-28" in text and "NVIDIA H200" in text
        assert "2.11.0+cu130" in text and "5.17.0" in text and "580.159.04" in text
    assert md.splitlines()[2].startswith("**REPLAY of committed measurements")
    assert "class='banner replay'" in html


def test_live_is_labelled_live(tmp_path, no_vl_convert):
    points = make_points()
    html_path, md_path = write_report(points, make_ops(points), tmp_path, title="t",
                                      source=source("live"))
    for text in (html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")):
        assert "LIVE RUN" in text
        assert "replay" not in text.lower()
        assert "live run" in text.lower()


@pytest.mark.parametrize("mode", [None, "", "Replayed", "LIVE?"])
def test_unlabelled_source_is_refused(tmp_path, mode):
    points = make_points()
    src = source("replay")
    src["mode"] = mode
    with pytest.raises(ValueError, match="replay"):
        write_report(points, make_ops(points), tmp_path / "x", title="t", source=src)
    assert not (tmp_path / "x").exists()


def _md_table(md: str, heading_prefix: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_prefix))
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif seen:
            break
    return rows


def test_summary_mape_equals_data(replay):
    points, _, md, *_ = replay
    labels = {"ttft": "TTFT", "decode_step": "Decode step (ITL)", "e2e": "E2E latency",
              "throughput": "Throughput"}
    for split in ("held-out", "train"):
        rows = _md_table(md, f"### {split} ")
        header, body = rows[0], {r[0]: r for r in rows[2:]}
        assert set(body) == set(labels.values())
        for metric, label in labels.items():
            for engine in ("hf", "roofline"):
                sel = points[(points.engine == engine) & (points.split == split)
                             & (points.metric == metric)]
                expected = sel["rel_error"].abs().mean() * 100
                got = float(body[label][header.index(f"{engine} MAPE")])
                assert got == pytest.approx(expected, abs=0.005), (split, metric, engine)
            n = (points[(points.engine == "hf") & (points.split == split)
                        & (points.metric == metric)]).shape[0]
            assert body[label][header.index("points")] == str(n)


def test_mape_table_matches_groupby():
    points = make_points()
    table = mape_table(points)
    assert len(table) == 2 * 2 * len(METRICS)
    for _, row in table.iterrows():
        sel = points[(points.engine == row.engine) & (points.split == row.split)
                     & (points.metric == row.metric)]
        assert row.mape == pytest.approx(sel.rel_error.abs().mean() * 100)
        assert row["max"] == pytest.approx(sel.rel_error.abs().max() * 100)


def test_verdict(replay):
    points, html, md, *_ = replay
    word, checks = verdict(points, "hf")
    assert word == "PASS" and {c[0] for c in checks} == set(TARGETS)
    assert "Verdict: PASS" in md and "Verdict: PASS" in html
    worse = points.copy()
    hit = (worse.engine == "hf") & (worse.split == "held-out") & (worse.metric == "ttft")
    worse.loc[hit, "rel_error"] = 0.5
    assert verdict(worse, "hf")[0] == "FAIL"
    assert verdict(points[points.metric != "ttft"], "hf")[0] == "INCOMPLETE"


def test_worst_held_out_points(replay):
    points, _, md, *_ = replay
    rows = _md_table(md, "## The 10 worst held-out points")
    body = rows[2:]
    assert len(body) == 4  # the held-out model has 4 points
    assert all(r[0] == HELD for r in body)
    hf = points[(points.engine == "hf") & (points.split == "held-out")]
    worst = hf.groupby("point_id")["rel_error"].apply(lambda e: e.abs().max()).max() * 100
    assert max(abs(float(c)) for r in body for c in r[4:8]) == pytest.approx(worst, abs=0.05)


def _specs(html: str) -> dict:
    match = re.search(r"var specs = (\{.*?\});\n", html, re.S)
    assert match, "no chart specs in the page"
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_html_has_each_metric_chart_section(replay):
    _, html, *_ = replay
    specs = _specs(html)
    for metric in METRICS:
        assert f"id='metric-{metric}'" in html
        for kind in ("scatter", "error"):
            div = f"chart-{kind}-{metric}"
            assert f"id='{div}'" in html
            assert "$schema" in specs[div] and "vega-lite" in specs[div]["$schema"]
    assert "chart-ops" in specs
    scatter = json.dumps(specs["chart-scatter-ttft"])
    assert "roofline (uncalibrated baseline)" in scatter and "hf (calibrated)" in scatter
    assert '"type": "log"' in scatter
    # The tables: MAPE and every point.
    assert "<table class='mape'>" in html and "<table class='sortable points'>" in html
    assert html.count("<tr>") >= 2 * 4 * len(METRICS)


def test_cdn_fallback_says_so(replay):
    _, html, *_ = replay
    assert "cdn.jsdelivr.net" in html
    assert "offline, the charts do not render" in html
    assert "Chart not rendered" in html  # placeholder left visible if the scripts fail


def test_inlined_javascript_when_vl_convert_is_installed(tmp_path):
    pytest.importorskip("vl_convert")
    points = make_points()
    html_path, _ = write_report(points, make_ops(points), tmp_path, title="t",
                                source=source("replay"))
    html = html_path.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src" not in html
    assert "window.vegaEmbed" in html
    assert "the page needs no network" in html
