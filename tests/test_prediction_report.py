"""``perfmodel predict --out DIR``: the report page and its charts (each op on the GPU's
roofline, time by op) and the Markdown summary (an --out that is a file: tests/test_bad_input.py)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from perfmodel import predict
from perfmodel.cli import app
from perfmodel.commands import register
from perfmodel.prediction_charts import above_roofs, placed_ops, roofline_chart, roofs
from perfmodel.roofs import compute_dtypes, roof_shares
from perfmodel.specs.hardware import load_gpu

register()
RUNNER = CliRunner()


@pytest.fixture(scope="module")
def mixtral():
    return predict("mixtral-8x7b", gpu="h200-sxm", batch=16, input_len=1024, output_len=256)


def _specs(html: str) -> dict:
    found = re.search(r"var specs = (\{.*?\});\n", html, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_ops_are_placed_at_their_intensity_and_achieved_flops(mixtral):
    placed = {(o["pass"], o["op"]): o for o in placed_ops(mixtral)}
    ops = {(o["pass"], o["name"]): o for o in mixtral.ops}
    experts = ops["decode", "moe.experts"]
    point = placed["decode", "moe.experts"]
    assert point["intensity"] == pytest.approx(experts["flops"] / experts["bytes"])
    assert point["tflops"] == pytest.approx(experts["flops"] / experts["time_s"] / 1e12)
    assert ("decode", "attn.norm") not in placed  # no matrix math: not on the roofline
    for name in ("prefill", "decode"):
        assert sum(o["share"] for o in placed.values() if o["pass"] == name) <= 1 + 1e-9


def test_every_op_sits_under_the_uncalibrated_roofline():
    """The roofline engine runs each op at the datasheet peaks' derates: no op above the roofs."""
    p = predict("mixtral-8x7b", engine="roofline", batch=16, input_len=1024, output_len=256, quant="fp8")
    gpu = load_gpu("h200-sxm")
    peak = max(gpu.peak(d) for d in compute_dtypes(p.workload, gpu))
    for op in placed_ops(p):
        assert op["tflops"] * 1e12 <= min(peak, gpu.hbm_bandwidth * op["intensity"]) * (1 + 1e-9), op["op"]


def test_an_efficiency_above_the_datasheet_puts_its_ops_above_the_roof_and_the_report_says_so(tmp_path):
    from perfmodel.profile import load_profile

    profile = load_profile("vllm", "h200-sxm")
    p = predict("mixtral-8x7b", engine="vllm", batch=1, input_len=128, output_len=128)
    above = {(o["pass"], o["op"]): o["over"] for o in above_roofs(p)}
    if profile.efficiency["gemm"].memory <= 1:
        assert not above
        return
    assert ("decode", "lm_head") in above  # a dense GEMM read at the fitted η_m > 1
    assert all(over > 1 for over in above.values())
    result = RUNNER.invoke(app, ["predict", "mixtral", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Above the roofline: " in (tmp_path / "summary.md").read_text()


def test_of_roof_is_the_speed_of_light_time_over_the_predicted_time(mixtral):
    gpu = load_gpu("h200-sxm")
    shares = dict(zip(((o["pass"], o["name"]) for o in mixtral.ops), roof_shares(mixtral, gpu)))
    experts = next(o for o in mixtral.ops if (o["pass"], o["name"]) == ("decode", "moe.experts"))
    light = max(experts["flops"] / gpu.peak("bf16"), experts["bytes"] / gpu.hbm_bandwidth)
    assert shares["decode", "moe.experts"] == pytest.approx(light / experts["time_s"])
    assert 0.5 < shares["decode", "moe.experts"] < 1  # memory-bound under its calibrated η_m
    layout = predict("mixtral-8x7b", batch=16, tp=2)
    collective = [s for o, s in zip(layout.ops, roof_shares(layout, gpu)) if o["name"].startswith("comm.")]
    assert collective and all(s is None for s in collective)  # over a link: no HBM roof


def test_roofs_follow_the_datasheet():
    gpu = load_gpu("h200-sxm")
    lines = roofs(gpu, ["bf16", "fp8"], 1.0, 10_000.0)
    assert {r["roof"].split()[0] for r in lines} == {"bf16", "fp8"}
    for r in lines:
        peak = gpu.peak(r["roof"].split()[0])
        assert r["tflops"] == pytest.approx(min(peak, gpu.hbm_bandwidth * r["intensity"]) / 1e12)
    ridge = [r for r in lines if r["roof"].startswith("bf16")][1]
    assert ridge["intensity"] == pytest.approx(989.5e12 / 4.8e12)


def test_compute_dtypes_add_the_low_precision_one():
    gpu = load_gpu("h200-sxm")
    assert compute_dtypes(predict("olmoe-1b-7b", quant="fp8").workload, gpu) == ["bf16", "fp8"]
    assert compute_dtypes(predict("olmoe-1b-7b", quant="w4a16").workload, gpu) == ["bf16"]  # weight-only: bf16 math
    assert compute_dtypes(predict("olmoe-1b-7b").workload, gpu) == ["bf16"]


def test_roofline_chart_has_one_panel_per_pass(mixtral):
    spec = roofline_chart(mixtral, load_gpu("h200-sxm")).to_dict(validate=False)
    assert [panel["title"] for panel in spec["hconcat"]] == ["prefill: ops on the roofline", "decode: ops on the roofline"]


def test_cli_writes_the_page_and_the_summary(tmp_path):
    out = tmp_path / "report"
    result = RUNNER.invoke(app, ["predict", "mixtral", "-b", "16", "-s", "1024", "-o", "256", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output
    html = (out / "report.html").read_text()
    specs = _specs(html)
    assert set(specs) == {"chart-roofline", "chart-op-time"}
    assert all("vega-lite" in s["$schema"] for s in specs.values())
    assert "moe.experts" in html and "±" in html  # the per-op table and the band
    md = (out / "summary.md").read_text()
    assert md.startswith("# mixtral-8x7b on h200-sxm") and "| decode | moe.experts |" in md
    assert "↳ the host's time for its 16 sequences" in md


def test_cli_json_names_the_report(tmp_path):
    result = RUNNER.invoke(app, ["predict", "olmoe", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["report"] == [str(tmp_path / "report.html"), str(tmp_path / "summary.md")]
    experts = next(op for op in data["ops"] if (op["pass"], op["name"]) == ("decode", "moe.experts"))
    assert 0 < experts["of_roof"] < 1 and all("of_roof" in op for op in data["ops"])


def test_a_gpu_given_as_a_file_has_its_own_roofs(tmp_path):
    """A GPU from a YAML file, not in the catalogue: the report reads its roofs from the spec
    the prediction was made on."""
    import yaml

    from perfmodel.paths import HARDWARE_DIR

    data = yaml.safe_load((HARDWARE_DIR / "h200-sxm.yaml").read_text())
    data.update(name="half-h200", aliases=[], hbm_bandwidth_tb_s=2.4)
    path = tmp_path / "half-h200.yaml"
    path.write_text(yaml.safe_dump(data))
    result = RUNNER.invoke(app, ["predict", "olmoe", "--gpu", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    p = predict("olmoe-1b-7b", gpu=str(path))
    assert p.gpu.hbm_bandwidth_tb_s == 2.4
    lines = roofs(p.gpu, ["bf16"], 1.0, 10.0)
    assert lines[0]["tflops"] == pytest.approx(2.4)  # 2.4 TB/s at 1 FLOP/byte
