"""The serving validation's HTML page: written beside summary.md, named in the result and the
terminal, the REPLAY banner and tables, one Vega-Lite spec per chart, no network."""

from __future__ import annotations

import json
import re

import pytest
from test_validate_serving import _fake_prediction, _rows, _write

from perfmodel.validate import serving as sv
from perfmodel.validate import serving_charts as sc

SPECS = re.compile(r"var specs = (\{.*?\});\n", re.S)
EXTERNAL = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.I)


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _dataset(spec):
    return spec["datasets"][spec["data"]["name"]]


def _layers(spec):
    return spec["spec"]["layer"]


@pytest.fixture
def page(tmp_path, monkeypatch, capsys):
    """The result (--json) and the page of a replay of the synthetic rows, predictions known."""
    from perfmodel import planning
    from perfmodel.commands import main

    monkeypatch.setattr(planning, "predict_serving", _fake_prediction([]), raising=False)
    path = _write(tmp_path / "serving.jsonl", _rows())
    main(["validate", "olmoe", "--serving", "--results", str(path), "--out", str(tmp_path / "rep"), "--json"])
    result = json.loads(capsys.readouterr().out)
    return result, (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")


def test_page_is_written_and_named(page, tmp_path, monkeypatch, capsys):
    from perfmodel import planning
    from perfmodel.commands import main

    result, html = page
    assert result["report_html"] == str(tmp_path / "rep" / "report.html")
    assert result["summary_md"] == str(tmp_path / "rep" / "summary.md")
    # the banner is the markdown's, word for word (less the Markdown quoting)
    banner = sv.replay_banner(result["source"])
    assert banner.startswith(f"of {result['source']['results_file']}: NVIDIA H200, driver 580.1")
    assert f"<span class='tag'>REPLAY</span>{banner}</div>" in html
    assert "replay of the measured schedule" in html
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert f"**REPLAY** of `{result['source']['results_file']}`:" in summary
    # the tables: MAPE per metric, the runs, the saturation lines, every point
    for m in result["mape"]:
        assert f"<tr><td class='l'>{m['metric']}</td><td>{m['mape']:.1f}</td>" in html
    assert "<td class='l'>olmoe-1b-7b</td><td>16</td><td>15.5</td><td>40</td><td>30/40</td><td>10/0</td>" in html
    assert "between 4.1 req/s offered (nominal 4) and 8.2 req/s offered (nominal 8)" in html
    points = html.split("<table class='sortable points'>", 1)[1].split("</table>", 1)[0]
    assert points.count("<tr>") == 1 + len(result["points"]) == 1 + 4 * len(sv.METRICS)
    first = re.search(r"<tr>(.*?)</tr>", points.split("</thead>", 1)[1]).group(1)
    cells = re.findall(r'data-v="([^"]*)">([^<]*)</td>', first)
    assert [text for _, text in cells] == ["olmoe-1b-7b", "512/64", "128", "2", "ttft_p50", "100.000 ms",
                                           "120.000 ms", "+20.0%", "–"]  # no client sample: no band
    assert float(cells[7][0]) == pytest.approx(20.0) and float(cells[5][0]) == pytest.approx(0.1)  # sort keys
    # the terminal names the page beside the summary
    monkeypatch.setattr(planning, "predict_serving", _fake_prediction([]), raising=False)
    path = _write(tmp_path / "one.jsonl", _rows()[:1])
    main(["validate", "all", "--serving", "--results", str(path), "--out", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 't' / 'report.html'}" in out.replace("\n", "") and "summary:" in out


def test_one_vega_lite_spec_per_chart(page):
    result, html = page
    specs = _strict_json(SPECS.search(html).group(1))
    assert set(specs) == {"chart-latency", "chart-served"}
    for chart_id, spec in specs.items():
        assert "vega-lite" in spec["$schema"] and f"id='{chart_id}'" in html
    # latency: measured points and replay lines of TTFT/ITL p50/p90 (ms, log y) vs the offered rate
    latency = specs["chart-latency"]
    marks = [layer["mark"]["type"] for layer in _layers(latency)]
    assert marks == ["line", "point", "point"]
    for layer in _layers(latency):
        assert layer["encoding"]["x"]["field"] == "offered_rate"
        assert layer["encoding"]["y"]["field"] == "value" and layer["encoding"]["y"]["scale"]["type"] == "log"
    assert {latency["facet"]["row"]["field"], latency["facet"]["column"]["field"]} == {"series", "panel"}
    rows = _dataset(latency)
    assert {r["metric"] for r in rows} == set(sv.LATENCY) and {r["side"] for r in rows} == {"measured", "predicted"}
    by = {(r["metric"], r["side"], r["rate"]): r for r in rows}
    assert by["ttft_p50", "measured", 2.0]["value"] == pytest.approx(100.0)  # ms
    assert by["ttft_p90", "predicted", 8.0]["value"] == pytest.approx(150.0)
    assert by["ttft_p50", "measured", 8.0]["offered_rate"] == pytest.approx(8.2)
    # overloaded rates are marked, each side by its own verdict
    assert by["itl_p50", "measured", 16.0]["verdict"] == "overloaded"
    assert by["itl_p50", "predicted", 2.0]["verdict"] == "kept up"
    # served throughput: measured vs replay tok/s
    served = _dataset(specs["chart-served"])
    assert {r["metric"] for r in served} == {"served_tok_s"} and len(served) == 2 * 4
    tok = {(r["side"], r["rate"]): r["value"] for r in served}
    assert tok["measured", 4.0] == pytest.approx(250.0) and tok["predicted", 16.0] == pytest.approx(4.5 * 64)
    assert [layer["mark"]["type"] for layer in _layers(specs["chart-served"])] == ["line", "point", "point"]


def test_page_needs_no_network(page):
    _, html = page
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "vegaEmbed" in html and "embedCharts(specs)" in html  # the Vega JavaScript is inlined


def test_nothing_to_chart_and_missing_values():
    """Points without a finite value (or a latency of 0, not on a log scale) are left out of the
    charts; with no predicted run there is no chart, and the page says so."""
    run = {"point_id": "p", "rate": 1.0, "offered_rate": 1.0, "measured_overloaded": None,
           "predicted_overloaded": True, "measured_why": "no per-request data", "predicted_why": "x"}
    point = {"model": "m", "input_len": 1, "output_len": 2, "max_num_seqs": 3, "gpu": "g", "layout": "1 GPU",
             "point_id": "p", "rate": 1.0, "rel_error": None}
    result = {"rates": [run], "points": [
        {**point, "metric": "ttft_p50", "measured": None, "predicted": 0.5},
        {**point, "metric": "itl_p50", "measured": 0.0, "predicted": float("inf")},
        {**point, "metric": "served_tok_s", "measured": 10.0, "predicted": None}]}
    rows = sc.chart_rows(result)
    assert [(r["metric"], r["side"], r["value"], r["verdict"]) for r in rows] == [
        ("ttft_p50", "predicted", 500.0, "overloaded"), ("served_tok_s", "measured", 10.0, "unknown")]
    assert sc.chart_specs({"rates": [{**run, "error": "boom"}], "points": []}) == {}
