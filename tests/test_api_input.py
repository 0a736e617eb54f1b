"""The Python API checks every argument of predict() and sweep(): a wrong type or value raises
InputError with one line, never a bare TypeError, KeyError or AttributeError; numpy integers
and integral floats are integers, bools and strings are not numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from perfmodel.errors import InputError
from perfmodel.prediction import predict
from perfmodel.specs.model import load_model
from perfmodel.sweeps import MAX_POINTS, sweep

SPEC = load_model("mixtral-8x7b")


def refused(call, match: str) -> str:
    """``call()`` raises exactly InputError whose message is one line containing ``match``."""
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert match in message, message
    assert "\n" not in message and message.strip() == message, message
    return message


@pytest.mark.parametrize("kwargs, match", [
    (dict(skew=None), "skew must be in [0, 1], got None"),
    (dict(skew="0.1"), "skew must be in [0, 1], got '0.1'"),
    (dict(skew=True), "skew must be in [0, 1], got True"),
    (dict(skew=float("nan")), "skew must be in [0, 1]"),
    (dict(dtype=None), "unknown dtype None"),
    (dict(dtype=["bf16"]), "unknown dtype ['bf16']"),
    (dict(kv_dtype=8), "unknown kv-dtype 8"),
    (dict(gpu=None), "gpu must be a name or a path, got None"),
    (dict(gpu=200), "gpu must be a name or a path, got 200"),
    (dict(engine=None), "engine must be a name or a path, got None"),
    (dict(phase=None), "unknown phase None"),
    (dict(batch="4"), "batch must be a positive integer, got '4'"),
    (dict(batch=None), "batch must be a positive integer, got None"),
    (dict(batch=True), "batch must be a positive integer, got True"),
    (dict(batch=np.bool_(True)), "batch must be a positive integer"),
    (dict(batch=4.5), "batch must be a positive integer, got 4.5"),
    (dict(batch=np.float64(0.5)), "batch must be a positive integer, got 0.5"),
    (dict(batch=float("inf")), "batch must be a positive integer"),
    (dict(input_len=np.int64(0)), "input-len must be a positive integer, got 0"),
    (dict(output_len=2.0**60), "output-len is too large"),
    (dict(phase="decode", context=True), "context must be a positive integer, got True"),
    (dict(phase="decode", context="4096"), "context must be a positive integer"),
    (dict(tp=False), "tp must be a positive integer, got False"),
    (dict(ep=[2]), "ep must be a positive integer"),
    (dict(pp=1.5), "pp must be a positive integer"),
    (dict(phase="prefill", context=1024), "applies to the decode phase only"),
    (dict(phase="request", context=1024), "applies to the decode phase only"),
    (dict(overrides="top_k=4"), "overrides must be a list of 'KEY=VALUE' strings or a dict"),
    (dict(overrides=4), "overrides must be a list of 'KEY=VALUE' strings or a dict"),
    (dict(overrides=[4]), "overrides must be 'KEY=VALUE' strings, got 4"),
    (dict(overrides={4: 4}), "override keys must be strings"),
    (dict(overrides=["top_k=2", "top_k=4"]), "--set top_k is given twice"),
    (dict(overrides=["ffn=1000", "moe_intermediate_size=2000"]), "both set intermediate_size: give one"),
    (dict(overrides=["num_experts_per_tok=4", "top_k=2"]), "both set num_experts_per_tok: give one"),
    (dict(overrides={"top_k": np.float64(2.5)}), "must be an integer"),
    (dict(overrides={"top_k": np.bool_(True)}), "must be an integer"),
    (dict(overrides={"top_k": "4"}), "must be an integer"),
], ids=lambda v: repr(v)[:60])
def test_predict_refuses_bad_arguments(kwargs, match):
    refused(lambda: predict("mixtral-8x7b", **kwargs), match)


@pytest.mark.parametrize("impl", ["unfused", "staged"])
def test_a_model_without_experts_takes_no_moe_implementation(impl):
    refused(lambda: predict("mistral-7b", moe_impl=impl), f"--moe-impl {impl}: mistral-7b has no routed experts")


@pytest.mark.parametrize("model, match", [
    (None, "model must be a zoo name, a path to a config.json or a ModelSpec, got None"),
    (3, "got 3"),
    ("", "got ''"),
    (["mixtral"], "got ['mixtral']"),
])
def test_predict_refuses_a_bad_model_argument(model, match):
    refused(lambda: predict(model), match)


def test_overrides_need_a_model_with_a_config():
    refused(lambda: predict(SPEC, overrides={"top_k": 4}), "not to a ModelSpec")


def test_numpy_integers_and_integral_floats_are_integers():
    """np.int64(4), np.float64(4.0) and 4.0 mean 4, for overrides and workload fields alike,
    and the workload keeps Python ints (JSON writes 4, not "4" or 4.0)."""
    expected = predict("mixtral-8x7b", batch=4, input_len=256, overrides={"top_k": 4})
    for batch, input_len, top_k in ((np.int64(4), np.int32(256), np.int64(4)),
                                    (4.0, np.float64(256.0), np.float64(4.0)),
                                    (np.uint8(4), 256, 4.0)):
        p = predict("mixtral-8x7b", batch=batch, input_len=input_len, overrides={"top_k": top_k})
        assert p.metrics == expected.metrics
        assert type(p.workload.batch) is int and type(p.workload.input_len) is int
        assert p.overrides == {"top_k": 4} and type(p.overrides["top_k"]) in (int, float)


def test_paths_are_names_too(tmp_path):
    config = Path(__file__).resolve().parent.parent / "specs" / "hardware" / "h200-sxm.yaml"
    p = predict("mixtral-8x7b", gpu=config)
    assert p.provenance["gpu"] == predict("mixtral-8x7b").provenance["gpu"]


# sweep()

@pytest.mark.parametrize("args, kwargs, match", [
    (({"batch": [1]},), dict(bogus=1), "unknown sweep argument 'bogus'"),
    (({"batch": [1]},), dict(gpu=3), "gpu must be a name or a path, got 3"),
    (({"batch": [1]},), dict(engine=["hf"]), "engine must be a name or a path"),
    (({"batch": [1]},), dict(phase="middle"), "unknown phase 'middle'"),
    (({"top_k": [1]},), dict(batch="4"), "batch must be a positive integer, got '4'"),
    (({"top_k": [1]},), dict(skew=True), "skew must be in [0, 1], got True"),
    (({"top_k": [1]},), dict(dtype=None), "unknown dtype None"),
    (({"top_k": [1]},), dict(overrides="top_k=4"), "overrides must be a list"),
    (({"top_k": [1]},), dict(max_points=0), "max-points must be a positive integer"),
    ((None,), {}, "grid must be a dict"),
    (([("batch", [1])],), {}, "grid must be a dict"),
    (({"batch": 4},), {}, "grid key 'batch' needs a list of values, got int"),
    (({"dtype": "bf16"},), {}, "grid key 'dtype' needs a list of values, got str"),
    (({"batch": ["1", "2"]},), {}, "grid values of 'batch' must be numbers, got '1'"),
    (({"batch": [True, 2]},), {}, "grid values of 'batch' must be numbers, got True"),
    (({"batch": np.array(["1"])},), {}, "grid values of 'batch' must be numbers"),
    (({"dtype": [None]},), {}, "unknown dtype None"),
    (({"gpu": [None]},), {}, "gpu must be a name or a path, got None"),
    (({"batch": [1, 2]},), dict(batch=4), "'batch' is both swept (grid) and fixed"),
    (({"gpu": ["h100"]},), dict(gpu="h200"), "'gpu' is both swept (grid) and fixed"),
    (({"ffn": [1024], "moe_intermediate_size": [2048]},), {}, "set the same hyperparameter"),
    (({"top_k": [1, 2]},), dict(overrides=["top_k=2"]), "'top_k' is both swept (grid) and set (--set top_k)"),
    (({"context": [1024]},), {}, "applies to the decode phase only"),
    (({"batch": [1]},), dict(context=1024, phase="prefill"), "applies to the decode phase only"),
], ids=lambda v: repr(v)[:60])
def test_sweep_refuses_bad_arguments(args, kwargs, match):
    refused(lambda: sweep("mixtral-8x7b", *args, **kwargs), match)


def test_sweep_refuses_a_bad_model_argument():
    refused(lambda: sweep(None, {"batch": [1]}), "model must be a zoo name")
    refused(lambda: sweep(SPEC, {"batch": [1]}, overrides=["top_k=4"]), "not to a ModelSpec")


def test_sweep_accepts_numpy_axes_and_numpy_fixed_values():
    a = sweep("mixtral-8x7b", {"batch": np.array([1, 4]), "top_k": (1, 2), "dtype": np.array(["bf16"])},
              input_len=np.int64(256), skew=np.float64(0.5))
    b = sweep("mixtral-8x7b", {"batch": [1, 4], "top_k": [1, 2], "dtype": ["bf16"]}, input_len=256, skew=0.5)
    assert a.equals(b)


def test_the_grid_size_is_checked_before_the_grid_is_built():
    """10^8 combinations are refused at once (and the limit can be raised)."""
    grid = {key: list(range(1, 101)) for key in ("batch", "input_len", "output_len", "top_k")}
    message = refused(lambda: sweep("mixtral-8x7b", grid), "100,000,000 combinations")
    assert f"{MAX_POINTS:,}" in message and "max_points" in message
    refused(lambda: sweep("mixtral-8x7b", {"batch": [1, 2, 3]}, max_points=2), "limit of 2")
    assert len(sweep("mixtral-8x7b", {"batch": [1, 2, 3]}, max_points=3)) == 3


def test_a_sweep_point_passes_the_checks_predict_makes():
    """OLMoE leaves head_dim to hidden_size // num_heads: hidden_size=3 gives a head width of
    0, which predict refuses; the sweep drops that point, says why, and fails if none is left."""
    refused(lambda: predict("olmoe-1b-7b", overrides={"hidden_size": 3}), "head_dim")
    message = refused(lambda: sweep("olmoe-1b-7b", {"hidden_size": [3]}), "no valid combination")
    assert "hidden_size=3" in message and "head_dim" in message
    table = sweep("olmoe-1b-7b", {"hidden_size": [3, 2048], "batch": [1, 2]})
    assert table["hidden_size"].tolist() == [2048, 2048]
    assert table.attrs["dropped"]["count"] == 2 and table.attrs["dropped"]["of"] == 4
    assert "hidden_size=3" in table.attrs["dropped"]["reasons"][0]
    p = predict("olmoe-1b-7b", overrides={"hidden_size": 2048}, batch=2)
    assert math.isclose(table["e2e_s"][1], p.metrics["e2e_s"], rel_tol=1e-9)


def test_a_sweep_over_a_model_spec_checks_each_point():
    """A ModelSpec has no config: its fields take the grid's values and are validated."""
    refused(lambda: sweep(SPEC, {"num_kv_heads": [7]}), "must be a multiple of num_key_value_heads")
    table = sweep(SPEC, {"num_kv_heads": [7, 8], "top_k": [2, 9]})
    assert list(zip(table["num_kv_heads"], table["top_k"])) == [(8, 2)]


def test_the_package_exports_its_error_class():
    """``from perfmodel import InputError`` is the class bad arguments raise."""
    import perfmodel

    assert perfmodel.InputError is InputError and "InputError" in perfmodel.__all__
    with pytest.raises(perfmodel.InputError):
        perfmodel.predict("mixtral-8x7b", batch=0)
