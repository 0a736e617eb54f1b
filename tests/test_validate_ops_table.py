"""The validation summary sets a decode step's profiled kernels beside the model's ops, per
category, at the worst held-out points whose step was profiled (vLLM's --profile rows)."""

import pytest

from perfmodel.measuring.compare import compare, load_measurements
from perfmodel.paths import RESULTS_DIR
from perfmodel.validate.report_pages import ops_rows, summary_markdown


@pytest.fixture(scope="module")
def compared():
    rows = [r for name in ("h200-vllm.jsonl", "h200-vllm-whatif.jsonl")
            for r in load_measurements(RESULTS_DIR / name)]  # one row per point, as validate reads them
    rows = [r for r in rows if r["model"] == "deepseek-v2-lite"]
    return compare(rows, engine="h200-sxm-vllm", train_models=[])


def test_the_table_takes_profiled_points_alone_with_measured_and_predicted_ms(compared):
    points, ops = compared
    table = ops_rows(points, ops, "h200-sxm-vllm")
    profiled = set(ops.loc[ops["measured_s"].notna(), "point_id"])
    assert table["rows"] and len(table["rows"]) <= 6
    assert table["header"][:5] == ["model", "B", "S", "O", "step err %"]
    col = table["header"].index("expert_gemm ms")
    step = points[(points["metric"] == "decode_step") & points["point_id"].isin(profiled)]
    for row in table["rows"]:
        hit = step[(step["variant"] == row[0]) & (step["batch"] == int(row[1]))
                   & (step["input_len"] == int(row[2])) & (step["output_len"] == int(row[3]))]
        assert len(hit) == 1
        assert row[4] == f"{100 * hit['rel_error'].iloc[0]:+.1f}"
        measured, predicted = (float(x) for x in row[col].split(" / "))
        assert measured > 0 and predicted > 0
    # unprofiled points (e.g. the collapsed-routing rows, with larger errors) stand in no row
    listed = {(r[0], int(r[1]), int(r[2])) for r in table["rows"]}
    unprofiled = points[~points["point_id"].isin(profiled)]
    assert not unprofiled.empty
    assert not listed & set(zip(unprofiled["variant"], unprofiled["batch"], unprofiled["input_len"]))


def test_the_summary_has_the_section_only_with_profiled_points(compared):
    points, ops = compared
    source = {"mode": "replay", "results_file": "x", "date": "2026-12-03", "gpu": "NVIDIA H200",
              "calibrated_engine": "h200-sxm-vllm", "baseline_engine": "roofline"}
    with_ops = summary_markdown(points, title="t", source=source, ops=ops)
    assert "## One decode step by op category" in with_ops and "expert_gemm ms" in with_ops
    without = summary_markdown(points, title="t", source=source, ops=ops.iloc[0:0])
    assert "## One decode step by op category" not in without
