"""Held-out error by what-if: what a measured row changed from its model as built
(perfmodel.measuring.compare.row_what_ifs) and the validation report's table of it
(perfmodel.validate.report_metrics.what_if_rows)."""

from __future__ import annotations

import pytest

pd = pytest.importorskip("pandas")

from perfmodel.measuring.compare import load_with_what_ifs, row_overrides, row_what_ifs  # noqa: E402
from perfmodel.paths import RESULTS_DIR  # noqa: E402
from perfmodel.specs.model import load_model  # noqa: E402
from perfmodel.validate.report_metrics import AS_BUILT, what_if_rows  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return [r for r in load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl") if r.get("status") == "ok"]


def _what_ifs(row: dict) -> tuple[str, ...]:
    return row_what_ifs(row, load_model(row["model"], row_overrides(row)))


def _first(rows: list[dict], *fragments: str) -> dict:
    return next(r for r in rows if all(f in r["point_id"] for f in fragments))


def test_a_row_names_what_it_changed_from_its_model_as_built(rows):
    # a cut to fewer layers changes nothing the table groups by
    assert _what_ifs(_first(rows, "vllm|mixtral-8x7b|set=|layers=8|", "quant=none")) == ()
    assert _what_ifs(_first(rows, "set=ffn=1792;top_k=8|layers=8", "quant=fp8")) == ("quantization fp8", "MoE shape")
    assert _what_ifs(_first(rows, "spec=qwen3-1.7b:4")) == ("speculative decoding",)
    assert _what_ifs(_first(rows, "moe_backend=marlin", "gpt-oss-20b")) == (
        "quantization mxfp4-moe-marlin", "MoE kernel marlin")
    kv = next(r for r in rows if (r.get("engine") or {}).get("kv_cache_dtype") == "fp8")
    assert "KV cache fp8" in _what_ifs(kv)
    # the seed study's top-k sweep through --set, at full depth
    assert _what_ifs(_first(rows, "vllm|qwen1.5-moe-a2.7b|set=top_k=32|layers=all|")) == ("MoE shape",)


def _points(what_if: str, point: str, errors: dict[str, float], split: str = "held-out") -> list[dict]:
    return [{"engine": "vllm", "split": split, "metric": metric, "rel_error": error, "what_if": what_if,
             "point_id": point} for metric, error in errors.items()]


def test_the_table_counts_a_point_under_each_of_its_what_ifs_and_holds_each_to_the_bound():
    points = pd.DataFrame(
        _points("quantization fp8; MoE shape", "a", {"decode_step": 0.05, "ttft": -0.12, "throughput": 0.04})
        + _points("MoE shape", "b", {"decode_step": -0.03, "ttft": 0.02, "throughput": 0.01})
        + _points("", "c", {"decode_step": 0.01, "ttft": 0.01, "throughput": 0.01})
        + _points("speculative decoding", "d", {"decode_step": 0.5, "ttft": 0.5, "throughput": 0.5}, split="train"))
    table = what_if_rows(points, "vllm")
    assert table["header"] == ["what-if", "ITL vllm MAPE", "TTFT MAPE", "throughput MAPE", "points", "all ≤ 10%"]
    assert table["rows"] == [
        ["MoE shape", "4.00", "7.00", "2.50", "2", "yes"],
        ["quantization fp8", "5.00", "12.00", "4.00", "1", "no: TTFT"],
        [AS_BUILT, "1.00", "1.00", "1.00", "1", "yes"],
    ]  # the training point stands in no row
    assert what_if_rows(pd.DataFrame(_points("", "c", {"ttft": 0.01})), "vllm") == {"header": [], "rows": []}


def test_the_html_report_has_each_table_section_once_and_none_inside_another(tmp_path):
    from perfmodel.commands import main

    main(["validate", "all", "--backend", "vllm", "--gpu", "h100-sxm", "--out", str(tmp_path)])
    html = (tmp_path / "report.html").read_text()
    for section in ("regimes", "decode-regimes", "what-ifs"):  # the H100's report has all three
        assert html.count(f"<section id='{section}'>") == 1, section
        body = html.split(f"<section id='{section}'>")[1].split("</section>")[0]
        assert "<section" not in body and body.count("<table") == body.count("</table>") == 1, section
