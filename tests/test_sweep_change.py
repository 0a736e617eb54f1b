"""``sweep --baseline KEY=VALUE``: each row's change against the row that differs in that key alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perfmodel.commands import main
from perfmodel.prediction import predict
from perfmodel.sweep_change import SUFFIX, parse_baseline, with_changes
from perfmodel.sweeps import sweep


@pytest.fixture(scope="module")
def quant_by_batch():
    grid = {"quant": ["none", "fp8"], "batch": [1, 16]}
    return with_changes(sweep("mixtral-8x7b", grid, gpu="h200-sxm"), list(grid), "quant", "none")


def _row(table, **keys):
    mask = np.ones(len(table), dtype=bool)
    for key, value in keys.items():
        mask &= (table[key] == value).to_numpy()
    assert mask.sum() == 1, keys
    return table[mask].iloc[0]


@pytest.mark.parametrize("batch", [1, 16])
def test_a_change_is_the_ratio_of_two_predictions(quant_by_batch, batch):
    fp8 = predict("mixtral-8x7b", gpu="h200-sxm", batch=batch, quant="fp8").metrics
    plain = predict("mixtral-8x7b", gpu="h200-sxm", batch=batch, quant="none").metrics
    row = _row(quant_by_batch, quant="fp8", batch=batch)
    for metric in ("throughput_tok_s", "itl_s", "ttft_s", "e2e_s", "memory_bytes"):  # one GPU: per GPU alike
        expected = 100 * (fp8[metric] / plain[metric] - 1)
        assert row[f"{metric}{SUFFIX}"] == pytest.approx(expected, rel=1e-9, abs=1e-9), metric
    assert row[f"throughput_tok_s{SUFFIX}"] > 20  # fp8 halves the weights a decode step reads


def test_baseline_rows_change_by_nothing_and_the_columns_follow_the_keys(quant_by_batch):
    base = quant_by_batch[quant_by_batch["quant"] == "none"]
    changes = [c for c in quant_by_batch.columns if c.endswith(SUFFIX)]
    assert len(changes) == 6 and (base[changes].to_numpy() == 0).all()
    columns = list(quant_by_batch.columns)
    assert set(columns[:2]) == {"quant", "batch"} and columns[2:2 + len(changes)] == changes
    assert quant_by_batch.attrs["baseline"] == {"key": "quant", "value": "none", "rows": 2, "misfits": 0}


def test_a_numeric_baseline_is_matched_on_every_other_key():
    grid = {"gpu": ["h100-sxm", "h200-sxm"], "batch": [1, 64], "input_len": [128, 512]}
    table = with_changes(sweep("olmoe-1b-7b", grid), list(grid), "batch", 1.0)
    for gpu in grid["gpu"]:
        for s in grid["input_len"]:
            one = _row(table, gpu=gpu, batch=1, input_len=s)
            big = _row(table, gpu=gpu, batch=64, input_len=s)
            expected = 100 * (big["throughput_tok_s"] / one["throughput_tok_s"] - 1)
            assert big[f"throughput_tok_s{SUFFIX}"] == pytest.approx(expected, rel=1e-12)
            assert one[f"throughput_tok_s{SUFFIX}"] == 0


def test_rows_whose_baseline_was_dropped_have_no_change():
    grid = {"top_k": [2, 9], "batch": [1, 16]}  # top_k 9 > 8 experts: predict refuses those rows
    table = sweep("mixtral-8x7b", grid)
    assert set(table["top_k"]) == {2}
    out = with_changes(table, list(grid), "top_k", 9.0)
    assert np.isnan(out[f"itl_s{SUFFIX}"].to_numpy()).all() and out.attrs["baseline"]["rows"] == 0


@pytest.mark.parametrize("text, grid, expected", [
    ("quant=fp8", {"quant": ["none", "fp8"]}, ("quant", "fp8")),
    (" batch = 16 ", {"batch": [1.0, 16.0]}, ("batch", 16.0)),
    ("gpu=h100", {"gpu": ["h100", "h200"]}, ("gpu", "h100")),
])
def test_parse_baseline(text, grid, expected):
    assert parse_baseline(text, grid) == expected


def test_the_cli_prints_the_baseline_and_warns_when_it_does_not_fit(capsys):
    main(["sweep", "mixtral", "--gpu", "h100", "--grid", "quant=none,fp8", "--grid", "batch=1,16",
          "--baseline", "quant=none", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    band = out["baseline"].pop("change_band")
    assert out["baseline"] == {"key": "quant", "value": "none"}
    assert [b["gpu"] for b in band] == ["h100-sxm"] and band[0]["knob"] == "quant"
    assert band[0]["metrics"]["throughput_tok_s"]["pairs"] >= 5
    fp8 = [r for r in out["rows"] if r["quant"] == "fp8"]
    assert len(fp8) == 2 and all(r[f"memory_bytes{SUFFIX}"] < -40 for r in fp8)
    # bf16 Mixtral-8x7B (87 GiB of weights) does not fit one 80 GB H100
    assert "2 of the 2 baseline rows (quant=none) do not fit in memory" in captured.err


def test_the_report_lists_the_changes(tmp_path, capsys):
    main(["sweep", "olmoe", "--grid", "batch=1,16", "--baseline", "batch=1", "--out", str(tmp_path)])
    capsys.readouterr()
    summary = (tmp_path / "summary.md").read_text()
    assert f"throughput_tok_s{SUFFIX}" in summary and "against the row with batch=1" in summary
    page = (tmp_path / "report.html").read_text()
    assert "id='chart-throughput_tok_s_vs_base_pct'" in page and "id='chart-itl_s_vs_base_pct'" in page


def test_per_gpu_throughput_shows_what_a_wider_layout_costs():
    grid = {"tp": [1, 2, 4]}
    table = with_changes(sweep("mixtral-8x7b", grid, batch=64), list(grid), "tp", 1.0)
    assert (table["throughput_per_gpu_tok_s"] == table["throughput_tok_s"] / table["tp"]).all()
    wide = _row(table, tp=4)
    assert wide[f"throughput_per_gpu_tok_s{SUFFIX}"] == pytest.approx(
        100 * ((1 + wide[f"throughput_tok_s{SUFFIX}"] / 100) / 4 - 1), rel=1e-9)
    assert wide[f"throughput_per_gpu_tok_s{SUFFIX}"] < 0 < wide[f"throughput_tok_s{SUFFIX}"]
