"""Expert pruning: the transformation of the ModelSpec, its use in predict, sweep and the CLI,
and bad input (one line, exit 2 / InputError)."""

from __future__ import annotations

import json
import math

import pytest

from perfmodel import predict, sweep
from perfmodel.commands import main
from perfmodel.errors import InputError
from perfmodel.pruning import prune
from perfmodel.specs.model import load_model

METRICS = ("ttft_s", "itl_s", "e2e_s", "throughput_tok_s", "memory_bytes", "params")


@pytest.fixture(scope="module")
def qwen():
    return load_model("qwen3-30b-a3b")  # 128 experts, top-8, FFN 768


def test_ratio_zero_is_the_identity(qwen):
    assert prune(qwen, 0.0, 0.0) == qwen
    assert prune(qwen) is qwen
    plain, pruned = predict("olmoe"), predict("olmoe", prune_experts=0, prune_ffn=0)
    assert {m: pruned.metrics[m] for m in METRICS} == {m: plain.metrics[m] for m in METRICS}


@pytest.mark.parametrize("ratio, experts, width", [
    (0.125, 112, 672),  # 128 − 16, 768 − 96
    (0.25, 96, 576),
    (0.5, 64, 384),
    (0.3, 90, 538),  # 128 − round(38.4), 768 − round(230.4)
])
def test_pruned_sizes_as_computed_by_hand(qwen, ratio, experts, width):
    assert prune(qwen, experts=ratio).moe.n_experts == experts
    assert prune(qwen, ffn=ratio).moe.expert_intermediate == width
    both = prune(qwen, ratio, ratio).moe
    assert (both.n_experts, both.expert_intermediate, both.top_k) == (experts, width, 8)


def test_halves_round_up():
    mixtral = load_model("mixtral")  # 8 experts, FFN 14336
    assert prune(mixtral, experts=0.0625).moe.n_experts == 7  # 8 − round(0.5) = 8 − 1
    assert prune(mixtral, experts=0.125).moe.n_experts == 7


def test_pruning_predicts_as_the_matching_override():
    pruned = predict("qwen3-30b-a3b", batch=16, prune_experts=0.25, prune_ffn=0.5)
    overridden = predict("qwen3-30b-a3b", batch=16, overrides={"num_experts": 96, "ffn": 384})
    for m in METRICS:
        assert math.isclose(pruned.metrics[m], overridden.metrics[m], rel_tol=1e-12), m
    assert pruned.pruning == {"prune_experts": 0.25, "num_experts": [128, 96],
                              "prune_ffn": 0.5, "moe_intermediate_size": [768, 384]}
    assert pruned.overrides == {}


def test_pruning_applies_after_the_overrides():
    p = predict("qwen3-30b-a3b", overrides={"num_experts": 64}, prune_experts=0.5)
    assert p.pruning["num_experts"] == [64, 32]


def test_header_and_json_report_the_pruning(capsys):
    main(["predict", "qwen3-30b-a3b", "--prune-experts", "0.25"])
    out = capsys.readouterr().out
    assert "overrides: none · pruning: prune_experts=0.25 (num_experts 128 → 96)" in out
    main(["predict", "qwen3-30b-a3b", "--prune-ffn", "0.125", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["pruning"] == {"prune_ffn": 0.125, "moe_intermediate_size": [768, 672]}


def test_sweep_over_pruning_ratios_equals_predictions():
    table = sweep("qwen3-30b-a3b", {"prune_experts": [0, 0.125, 0.25, 0.5], "prune_ffn": [0, 0.5]},
                  batch=16, input_len=256, output_len=256)
    assert len(table) == 8 and list(table.columns[:2]) == ["prune_experts", "prune_ffn"]
    for _, row in table.iterrows():
        p = predict("qwen3-30b-a3b", batch=16, input_len=256, output_len=256,
                    prune_experts=row.prune_experts, prune_ffn=row.prune_ffn)
        for m in METRICS:
            assert math.isclose(row[m], p.metrics[m], rel_tol=1e-9), m
    fixed = sweep("qwen3-30b-a3b", {"batch": [1, 16]}, prune_experts=0.5)
    assert (fixed["params"] == predict("qwen3-30b-a3b", prune_experts=0.5).metrics["params"]).all()


def test_sweep_drops_points_that_prune_below_top_k():
    table = sweep("mixtral", {"prune_experts": [0, 0.5, 0.9]})
    assert list(table["prune_experts"]) == [0, 0.5]
    assert "fewer than top-k" in table.attrs["dropped"]["reasons"][0]


BAD = [
    ("ratio-one", "mixtral", dict(prune_experts=1.0), "prune-experts must be in [0, 1)"),
    ("ratio-negative", "mixtral", dict(prune_ffn=-0.25), "prune-ffn must be in [0, 1)"),
    ("below-top-k", "mixtral", dict(prune_experts=0.9), "leaves 1 of 8 experts, fewer than top-k (2)"),
    ("dense", "qwen3-8b", dict(prune_experts=0.25), "pruning needs a model with routed experts"),
]


@pytest.mark.parametrize("model, kwargs, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_input_error(model, kwargs, fragment):
    with pytest.raises(InputError) as info:
        predict(model, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("model, kwargs, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(model, kwargs, fragment, capsys):
    flags = [x for k, v in kwargs.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    with pytest.raises(SystemExit) as info:
        main(["predict", model, *flags])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith("perfmodel: error: ") and fragment in err


@pytest.mark.parametrize("grid, fixed, fragment", [
    ({"prune_experts": [0, 1]}, {}, "prune-experts must be in [0, 1)"),
    ({"prune_experts": [0, 0.5]}, {"prune_experts": 0.25}, "both swept"),
    ({"prune_experts": [0, 0.5], "num_experts": [8, 16]}, {}, "set the same hyperparameter"),
])
def test_bad_sweep_input_raises_input_error(grid, fixed, fragment):
    with pytest.raises(InputError) as info:
        sweep("mixtral", grid, **fixed)
    assert fragment in str(info.value)


def test_sweep_over_a_dense_model_refuses_pruning():
    with pytest.raises(InputError, match="needs a model with experts"):
        sweep("qwen3-8b", {"prune_ffn": [0, 0.5]})
