"""Vectorized sweeps: grid sizes, dropped combinations, categorical keys, equality with predict()."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from perfmodel.errors import InputError
from perfmodel.prediction import COUNT_METRICS, METRICS, predict
from perfmodel.specs.model import load_model
from perfmodel.sweeps import parse_grid, sweep

REL = 1e-9


def assert_row_matches(row, prediction) -> None:
    """Every metric equal (rel 1e-9; a count of bytes or parameters, which a sweep gives as a whole
    number, to within one); a metric the phase lacks (NaN) is not a column."""
    for metric in METRICS:
        expected = prediction.metrics[metric]
        if metric not in row.index:
            assert math.isnan(expected), metric
            continue
        got = float(row[metric])
        assert math.isclose(got, expected, rel_tol=REL, abs_tol=1 if metric in COUNT_METRICS else 0), \
            (metric, got, expected)
    assert bool(row["fits_in_memory"]) == prediction.metrics["fits_in_memory"]


def test_grid_size_is_the_product_in_c_order():
    grid = {"batch": [1, 8, 64], "input_len": [128, 1024], "output_len": [16, 256, 512, 2048]}
    table = sweep("mixtral-8x7b", grid)
    assert len(table) == 3 * 2 * 4
    expected = list(itertools.product(*grid.values()))
    assert list(zip(table["batch"], table["input_len"], table["output_len"])) == expected
    assert list(table.columns[:3]) == ["batch", "input_len", "output_len"]
    assert list(table.columns[3:]) == [*METRICS, "fits_in_memory", "concurrent_sequences", "kv_waves",
                                       "kv_preemptions", "gpus", "throughput_per_gpu_tok_s"]
    assert all(table[k].dtype == np.int64 for k in grid)


def test_rows_with_top_k_above_num_experts_are_dropped():
    table = sweep("mixtral-8x7b", {"top_k": [1, 2, 4, 8, 16], "num_experts": [4, 8, 16]})
    pairs = list(zip(table["top_k"], table["num_experts"]))
    assert pairs == [(k, e) for k in (1, 2, 4, 8, 16) for e in (4, 8, 16) if k <= e]
    assert len(table) == 12
    assert table.index.tolist() == list(range(12))


def test_top_k_alone_is_checked_against_the_models_experts():
    table = sweep("olmoe-1b-7b", {"top_k": [8, 64, 65, 128]})  # OLMoE has 64 experts
    assert table["top_k"].tolist() == [8, 64]


def test_ep_and_pp_that_do_not_divide_are_dropped():
    table = sweep("mixtral-8x7b", {"ep": [1, 2, 3, 4], "pp": [1, 2, 3]})
    assert list(zip(table["ep"], table["pp"])) == [(e, p) for e in (1, 2, 4) for p in (1, 2)]


def test_grid_with_no_valid_combination_is_an_error():
    with pytest.raises(InputError, match="no valid combination"):
        sweep("mixtral-8x7b", {"top_k": [9, 10]})


def test_categorical_keys_loop_outside_the_numeric_grid():
    grid = {"batch": [1, 32], "dtype": ["bf16", "fp8"], "gpu": ["h200-sxm", "h100-sxm"]}
    table = sweep("olmoe-1b-7b", grid)
    assert len(table) == 2 * 2 * 2
    assert list(table.columns[:3]) == ["batch", "dtype", "gpu"]
    combos = list(zip(table["dtype"], table["gpu"], table["batch"]))
    assert combos == [(d, g, b) for d in ("bf16", "fp8") for g in ("h200-sxm", "h100-sxm") for b in (1, 32)]
    for _, row in table.iterrows():
        p = predict("olmoe-1b-7b", gpu=row["gpu"], dtype=row["dtype"], batch=int(row["batch"]))
        assert_row_matches(row, p)
    # fp8 halves the linear layers' weights (the embedding and lm_head stay bf16); the GPU
    # changes times, not sizes
    by = {(r["dtype"], r["gpu"], r["batch"]): r for _, r in table.iterrows()}
    bf16_weights = by[("bf16", "h200-sxm", 1)]["weights_bytes"]
    assert 0.5 * bf16_weights < by[("fp8", "h200-sxm", 1)]["weights_bytes"] < 0.55 * bf16_weights
    assert by[("bf16", "h100-sxm", 1)]["weights_bytes"] == by[("bf16", "h200-sxm", 1)]["weights_bytes"]
    assert by[("bf16", "h100-sxm", 32)]["e2e_s"] > by[("bf16", "h200-sxm", 32)]["e2e_s"]


def test_only_categorical_keys_gives_one_row_per_combination():
    table = sweep("olmoe-1b-7b", {"kv_dtype": ["bf16", "fp8"]}, batch=4)
    assert table["kv_dtype"].tolist() == ["bf16", "fp8"]
    assert table["kv_cache_bytes"][1] == pytest.approx(0.5 * table["kv_cache_bytes"][0])


@pytest.mark.parametrize("model, grid, fixed", [
    ("mixtral-8x7b", {"num_experts": [8, 16], "top_k": [1, 2], "ffn": [4096, 14336]}, {"batch": 8}),
    ("olmoe-1b-7b", {"num_layers": [8, 16], "hidden_size": [1024, 2048]}, {"input_len": 512}),
    ("olmoe-1b-7b", {"batch": [1, 16], "skew": [0.0, 0.5, 1.0]}, {"output_len": 64}),
    ("gpt-oss-20b", {"input_len": [64, 128, 4096], "output_len": [1, 2, 300]}, {"batch": 2}),
    ("mixtral-8x7b", {"tp": [1, 2, 4], "ep": [1, 2]}, {"batch": 16}),
    # keys whose --set changes other fields: head_dim follows hidden_size/num_heads where the
    # config leaves it out (OLMoE); gpt-oss's windowed-layer count follows num_layers
    ("olmoe-1b-7b", {"num_heads": [16, 32], "hidden_size": [1024, 4096]}, {"batch": 4}),
    ("gpt-oss-20b", {"num_layers": [2, 7, 24]}, {"input_len": 1024}),
])
def test_sweep_equals_predict_at_every_point(model, grid, fixed):
    table = sweep(model, grid, **fixed)
    assert len(table) == math.prod(len(v) for v in grid.values())
    workload_keys = {"batch", "input_len", "output_len", "tp", "ep", "pp", "skew", "context"}
    for _, row in table.iterrows():
        point = {k: (float(row[k]) if k == "skew" else int(row[k])) for k in grid}
        overrides = {k: v for k, v in point.items() if k not in workload_keys}
        workload = {k: v for k, v in point.items() if k in workload_keys}
        assert_row_matches(row, predict(model, overrides=overrides, **fixed, **workload))


@pytest.mark.parametrize("model, grid", [
    # DeepSeek-V2-Lite's first layer is dense: one layer in all has no MoE layer left
    ("deepseek-v2-lite", {"num_layers": [1, 2, 27], "batch": [1, 8]}),
    # a sliding window gives Mixtral windowed layers, which the model as built has none of
    ("mixtral-8x7b", {"sliding_window": [1024, 4096], "input_len": [512, 8192]}),
])
def test_grid_points_of_other_layer_kinds_equal_predict(model, grid):
    """A grid whose points have other kinds of layers than the model as built (each kind of
    graph compiled once) still equals predict() at every point."""
    table = sweep(model, grid)
    assert len(table) == math.prod(len(v) for v in grid.values())
    for _, row in table.iterrows():
        overrides = {k: int(row[k]) for k in grid if k not in ("batch", "input_len")}
        workload = {k: int(row[k]) for k in grid if k in ("batch", "input_len")}
        assert_row_matches(row, predict(model, overrides=overrides, **workload))


def test_decode_sweep_over_input_len_sets_the_context():
    """In the decode phase the context defaults to the input length, in a sweep too."""
    table = sweep("mixtral-8x7b", {"input_len": [128, 8192]}, phase="decode", batch=4)
    for _, row in table.iterrows():
        p = predict("mixtral-8x7b", phase="decode", batch=4, input_len=int(row["input_len"]))
        assert_row_matches(row, p)
    assert table["decode_step_s"][1] > table["decode_step_s"][0]
    assert "ttft_s" not in table and "e2e_s" not in table and "prefill_s" not in table
    assert table["kv_cache_bytes"][1] == pytest.approx(64 * table["kv_cache_bytes"][0])


def test_decode_sweep_over_context():
    table = sweep("mixtral-8x7b", {"context": [1, 4096, 65536], "batch": [1, 64]}, phase="decode")
    for _, row in table.iterrows():
        p = predict("mixtral-8x7b", phase="decode", context=int(row["context"]), batch=int(row["batch"]))
        assert_row_matches(row, p)


def test_sweep_accepts_a_model_spec_and_overrides():
    spec = load_model("mixtral-8x7b", ["num_experts=16"])
    a = sweep(spec, {"batch": [1, 4]})
    b = sweep("mixtral-8x7b", {"batch": [1, 4]}, overrides=["num_experts=16"])
    assert a.equals(b)
    assert a["params"][0] > sweep("mixtral-8x7b", {"batch": [1]})["params"][0]


def test_results_are_independent_arrays():
    """Columns may be modified without touching each other (ttft_s and prefill_s are the
    same expression)."""
    table = sweep("mixtral-8x7b", {"batch": [1, 2, 3]})
    before = table["prefill_s"].copy()
    table.loc[0, "ttft_s"] = -1.0
    assert table["prefill_s"].equals(before)


def test_parse_grid():
    grid = parse_grid(["batch=1, 16,64", "dtype=bf16,fp8", "skew=0,0.5"])
    assert grid == {"batch": [1.0, 16.0, 64.0], "dtype": ["bf16", "fp8"], "skew": [0.0, 0.5]}
    for bad in (["batch"], ["batch="], ["nope=1"], ["batch=x"]):
        with pytest.raises(InputError):
            parse_grid(bad)


@pytest.mark.parametrize("model, grid, match", [
    ("mixtral-8x7b", {"batch": [0, 1]}, "must be positive"),
    ("mixtral-8x7b", {"batch": [1.5]}, "must be integers"),
    ("mixtral-8x7b", {"batch": [float("nan")]}, "finite"),
    ("mixtral-8x7b", {"input_len": [2.0**60]}, "too large"),
    ("mixtral-8x7b", {"skew": [1.5]}, r"\[0, 1\]"),
    ("mixtral-8x7b", {"batch": []}, "no values"),
    ("mixtral-8x7b", {"warp": [1]}, "unknown grid key"),
    ("mixtral-8x7b", {"num_shared_experts": [1]}, "no shared experts"),
    ("llama-3.1-8b", {"num_experts": [8]}, "needs a model with experts"),
    ("llama-3.1-8b", {"ep": [1, 2]}, "needs a model with experts"),
])
def test_bad_grids(model, grid, match):
    with pytest.raises(InputError, match=match):
        sweep(model, grid)


def test_layouts_predict_refuses_are_dropped():
    """The tp/ep/pp rules predict applies (perfmodel.specs.layout) hold for every sweep row,
    for the model of that row: tp=3 divides no head count of Mixtral; num_heads=48 takes tp=3."""
    table = sweep("mixtral-8x7b", {"tp": [1, 2, 3], "num_heads": [32, 48]})
    kept = list(zip(table["tp"], table["num_heads"]))
    for tp in (1, 2, 3):
        for heads in (32, 48):
            try:
                p = predict("mixtral-8x7b", tp=tp, overrides={"num_heads": heads})
            except InputError:
                assert (tp, heads) not in kept
                continue
            row = table[(table["tp"] == tp) & (table["num_heads"] == heads)].iloc[0]
            assert_row_matches(row, p)
    assert (3, 32) not in kept and table.attrs["dropped"]["count"] == 6 - len(kept)
    assert any("tp (3) must divide" in r for r in table.attrs["dropped"]["reasons"])
    with pytest.raises(InputError, match=r"no valid combination in the grid: batch=1: ep \(3\) must divide"):
        sweep("mixtral-8x7b", {"batch": [1]}, ep=3)


def test_counts_are_integers_in_the_table():
    """Parameters and bytes are whole numbers in the DataFrame, hence in its CSV and printout."""
    table = sweep("mixtral", {"top_k": [1, 2]})
    for name in ("params", "active_params", "weights_bytes", "kv_cache_bytes", "memory_bytes"):
        assert str(table[name].dtype) == "int64", name
    assert "46702792704.0" not in table.to_csv(index=False)
