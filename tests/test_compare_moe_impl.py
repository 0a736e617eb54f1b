"""A measured row's experts implementation picks the model's MoE implementation: transformers'
grouped_mm is the fused MoE, its eager loop the unfused one (held out, never a training point),
and batched_mm, which the model has no counterpart of, is left out."""

import copy
import json

import pytest

from perfmodel.measuring.compare import compare, row_moe_impl
from perfmodel.paths import RESULTS_DIR


def _olmoe_row():
    for line in (RESULTS_DIR / "h200-hf.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["model"] == "olmoe-1b-7b" and row["status"] == "ok" and row["batch"] == 16:
            return row
    raise AssertionError("no OLMoE B=16 row")


def _with_impl(row, impl):
    other = copy.deepcopy(row)
    other["engine"]["experts_implementation"] = impl
    other["point_id"] = row["point_id"].replace("experts=grouped_mm", f"experts={impl}")
    return other


@pytest.mark.parametrize("engine, impl, expected", [
    ({"experts_implementation": "grouped_mm"}, None, "fused"),
    ({"experts_implementation": "eager"}, None, "unfused"),
    ({"experts_implementation": "batched_mm"}, None, None),
    ({"experts_implementation": "vllm_fused_moe:triton"}, None, "fused"),
    ({}, None, "fused"),
])
def test_row_moe_impl(engine, impl, expected):
    assert row_moe_impl({"engine": engine}) == expected


def test_an_eager_row_is_held_out_and_costs_the_unfused_moe():
    fused = _olmoe_row()
    rows = [fused, _with_impl(fused, "eager"), _with_impl(fused, "batched_mm")]
    points, _ = compare(rows, engine="h200-sxm-hf", train_models=["olmoe-1b-7b"])
    decode = points[points.metric == "decode_step"].set_index("point_id")
    assert len(decode) == 2  # batched_mm left out
    assert decode.loc[fused["point_id"], "split"] == "train"
    eager_id = rows[1]["point_id"]
    assert decode.loc[eager_id, "split"] == "held-out"
    assert decode.loc[eager_id, "predicted"] > decode.loc[fused["point_id"], "predicted"]
