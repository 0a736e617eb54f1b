"""``perfmodel sweep --out DIR``: each metric against the first swept key (lines by the second,
panels by the third; keys beyond held at their first value), the points drawn listed."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from perfmodel.cli import app
from perfmodel.commands import register
from perfmodel.sweep_report import MAX_ROWS, shown
from perfmodel.sweeps import sweep

register()
RUNNER = CliRunner()


def _specs(html: str) -> dict:
    found = re.search(r"var specs = (\{.*?\});\n", html, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_the_page_draws_each_metric_against_the_first_key(tmp_path):
    result = RUNNER.invoke(app, ["sweep", "olmoe", "--grid", "batch=1,16,64", "--grid", "top_k=2,8",
                                 "--grid", "dtype=bf16,fp8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'report.html'}" in result.output
    specs = _specs((tmp_path / "report.html").read_text())
    assert set(specs) == {"chart-throughput_tok_s", "chart-output_throughput_tok_s", "chart-itl_s", "chart-ttft_s"}
    itl = specs["chart-itl_s"]
    assert itl["facet"]["column"]["field"] == "dtype"  # the third key: one panel per value
    layers = itl["spec"]["layer"]
    assert layers[0]["encoding"]["x"]["field"] == "batch" and layers[0]["encoding"]["color"]["field"] == "top_k"
    assert layers[0]["encoding"]["x"]["scale"]["type"] == "log"  # batch spans 64×
    md = (tmp_path / "summary.md").read_text()
    assert "12 of 12 points" in md and md.count("\n| ") == 13  # header and 12 points


def test_values_are_shown_in_ms_and_a_decode_sweep_has_no_ttft(tmp_path):
    result = RUNNER.invoke(app, ["sweep", "olmoe", "--phase", "decode", "--grid", "batch=1,8", "--json",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["report"] == [str(tmp_path / "report.html"), str(tmp_path / "summary.md")]
    specs = _specs((tmp_path / "report.html").read_text())
    assert "chart-ttft_s" not in specs and "chart-itl_s" in specs
    drawn = {row["batch"]: row["value"] for row in specs["chart-itl_s"]["datasets"][next(iter(specs["chart-itl_s"]["datasets"]))]}
    itl = {row["batch"]: row["itl_s"] for row in data["rows"]}
    assert all(abs(drawn[b] - itl[b] * 1e3) < 1e-9 * drawn[b] for b in itl)


def test_keys_beyond_the_third_are_held_at_their_first_value():
    keys = ["batch", "top_k", "dtype", "input_len"]
    table = sweep("olmoe-1b-7b", {"batch": [1, 4], "top_k": [2, 8], "dtype": ["bf16"], "input_len": [128, 512]})
    part, held = shown(table, keys)
    assert held == {"input_len": 128} and len(part) == 4 and set(part["input_len"]) == {128}
    big = sweep("olmoe-1b-7b", {"batch": list(range(1, MAX_ROWS + 11))})
    assert len(shown(big, ["batch"])[0]) == MAX_ROWS
