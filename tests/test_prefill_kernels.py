"""One prefill's kernels by op category against the model's ops: the rows it takes, the sums it
sets beside each other, the ratios it reports, and the validation report's section."""

from __future__ import annotations

import pytest

pd = pytest.importorskip("pandas")

from perfmodel.measuring.compare import load_with_what_ifs, op_categories  # noqa: E402
from perfmodel.measuring.prefill_kernels import category_ratios, prefill_kernels, profiled_prefill  # noqa: E402
from perfmodel.paths import RESULTS_DIR  # noqa: E402
from perfmodel.prediction import predict  # noqa: E402
from perfmodel.specs.model import load_model  # noqa: E402
from perfmodel.validate.report_prefill import decode_summary, prefill_section  # noqa: E402


def _profiled(model: str, batch: int, input_len: int) -> dict:
    rows = load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl")
    return next(r for r in rows if r.get("status") == "ok" and r["model"] == model and r["batch"] == batch
                and r["input_len"] == input_len and not r.get("layers") and not r.get("overrides")
                and "routing=uniform_random" in r["point_id"] and r.get("prefill_profile"))


def test_only_one_step_prefills_with_a_kernel_split_are_taken():
    row = _profiled("deepseek-v2-lite", 64, 256)
    assert profiled_prefill(row, 16384) and profiled_prefill(row, None)
    assert not profiled_prefill(row, 8192)  # 16,384 tokens in two engine steps
    assert not profiled_prefill({**row, "prefill_profile": {}}, 16384)
    assert not profiled_prefill({**row, "status": "oom"}, 16384)


def test_each_category_sets_the_profilers_time_beside_the_models_ops_of_it():
    row = _profiled("deepseek-v2-lite", 64, 256)
    table = prefill_kernels([row], engine="vllm").set_index("category")
    measured = row["prefill_profile"]["split_ms"]
    for category, ms in measured.items():
        assert table.loc[category, "measured_s"] == pytest.approx(ms * 1e-3)
    spec = load_model("deepseek-v2-lite")
    cats = op_categories(spec, "vllm", "h200-sxm", decode=False)
    p = predict(spec, phase="prefill", batch=64, input_len=256, output_len=row["output_len"])
    attention = sum(op["time_s"] for op in p.ops if cats[op["name"]] == "attention")
    assert table.loc["attention", "predicted_s"] == pytest.approx(attention, rel=1e-6)
    assert "attn.kv_b_proj" in cats and cats["attn.core"] == "attention"  # the prefill graph's ops (MLA)
    assert table.loc["copy", "predicted_s"] == 0  # a category the model has no op in


def test_ratios_are_medians_and_percentiles_of_measured_over_model():
    table = pd.DataFrame([
        {"point_id": p, "category": c, "measured_s": m, "predicted_s": q}
        for p, c, m, q in [("a", "attention", 2.0, 1.0), ("b", "attention", 3.0, 1.0), ("c", "attention", 4.0, 1.0),
                           ("a", "copy", 1.0, 0.0), ("b", "copy", 1.0, 0.0), ("c", "copy", 1.0, 0.0)]])
    ratios = category_ratios(table)
    assert ratios.loc["attention", "median"] == 3.0 and ratios.loc["attention", "points"] == 3
    assert ratios.loc["attention", "p10"] == pytest.approx(2.2) and ratios.loc["attention", "p90"] == pytest.approx(3.8)
    assert "copy" not in ratios.index  # no time in the model: only in the pass's sum
    assert ratios.loc["all", "median"] == 4.0  # (3 + 1) / 1 for point b
    assert category_ratios(table.iloc[0:0]).empty


def test_the_report_section_sums_up_each_split_and_lists_the_worst_held_out_prefills():
    prefill = pd.DataFrame([
        {"model": "m", "variant": "m", "batch": 1, "input_len": 128, "output_len": 8, "point_id": p,
         "category": c, "measured_s": meas, "predicted_s": pred, "split": split}
        for p, split in (("p1", "held-out"), ("p2", "held-out"), ("p3", "train"))
        for c, meas, pred in (("attention", 3e-3, 1e-3), ("expert_gemm", 5e-3, 5e-3), ("copy", 1e-4, 0.0))])
    points = pd.DataFrame([{"engine": "e", "metric": "ttft", "point_id": p, "rel_error": err}
                           for p, err in (("p1", -0.10), ("p2", 0.30), ("p3", 0.0))])
    section = prefill_section(points, prefill, "e")
    rows = {(r[0], r[1]): r for r in section["summary"]["rows"]}
    assert rows["held-out", "attention"][2:4] == ["2", "3.00"] and rows["train", "expert_gemm"][3] == "1.00"
    assert rows["held-out", "all"][3] == f"{(3 + 5 + 0.1) / 6:.2f}"
    assert "2 held-out, 1 train" in section["sentence"] and "(copy)" in section["sentence"]
    worst = section["worst"]
    assert [r[4] for r in worst["rows"]] == ["+30.0", "-10.0"]  # by |TTFT error|, held-out only
    assert worst["header"][5:] == ["attention ms", "expert_gemm ms", "copy ms"]
    assert worst["rows"][0][5] == "3.00 / 1.00"
    assert prefill_section(points, None, "e")["summary"]["rows"] == []


def test_the_decode_summary_takes_every_profiled_step_of_the_calibrated_engine():
    ops = pd.DataFrame([
        {"engine": engine, "point_id": p, "split": split, "category": c, "measured_s": meas, "predicted_s": pred}
        for engine in ("e", "roofline")
        for p, split, meas in (("p1", "held-out", 2e-3), ("p2", "held-out", 4e-3), ("p3", "train", 1e-3),
                               ("p4", "held-out", None))  # p4: a row without a decode profile
        for c, pred in (("dense_gemm", 1e-3), ("other", 0.0))])
    section = decode_summary(ops, "e")
    rows = {(r[0], r[1]): r for r in section["summary"]["rows"]}
    assert rows["held-out", "dense_gemm"][2:4] == ["2", "3.00"]  # p1 and p2: median of 2 and 4
    assert rows["train", "dense_gemm"][2:4] == ["1", "1.00"]
    assert ("held-out", "other") not in rows and rows["held-out", "all"][3] == "6.00"  # p1 (2 + 2) / 1, p2 (4 + 4) / 1
    assert "2 held-out, 1 train" in section["sentence"] and "(other)" in section["sentence"]
    assert decode_summary(None, "e")["summary"]["rows"] == []
    assert decode_summary(ops[ops["engine"] == "roofline"], "e")["summary"]["rows"] == []



def test_the_category_chart_draws_each_point_of_the_two_splits():
    from perfmodel.validate.report_charts import category_ratio_chart

    table = pd.DataFrame([
        {"model": "m", "variant": "m", "batch": 1, "input_len": 128, "point_id": p, "category": c,
         "measured_s": meas, "predicted_s": pred, "split": split}
        for p, split in (("p1", "held-out"), ("p2", "train"), ("p3", "held-out, routing collapsed"))
        for c, meas, pred in (("attention", 3e-3, 1e-3), ("copy", 1e-4, 0.0))])
    spec = category_ratio_chart(table, "t").to_dict(validate=False)
    rows = next(iter(spec["datasets"].values()))
    assert sorted((r["split"], r["category"], round(r["ratio"], 6)) for r in rows) == [
        ("held-out", "attention", 3.0), ("train", "attention", 3.0)]  # no model time, other splits: left out
    assert category_ratio_chart(table.iloc[0:0], "t") is None and category_ratio_chart(None, "t") is None
