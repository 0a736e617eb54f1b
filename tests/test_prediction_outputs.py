"""A compiled model's outputs by name: totals keyed by the declared output names, one row per op."""

from __future__ import annotations

import numpy as np
import pytest

from perfmodel.prediction import (
    OP_FIELDS, CompiledOutputs, Workload, compile_model, numeric_values, predict,
)
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.model import load_model


def _setup(name: str = "deepseek-v2-lite", **workload):
    model, gpu = load_model(name), load_gpu("h200-sxm")
    profile = load_profile("hf", gpu.name)
    return model, gpu, profile, Workload(**workload)


def test_named_outputs_are_the_prediction():
    model, gpu, profile, w = _setup(batch=16, input_len=512, output_len=256)
    compiled = compile_model(model, "request", profile)
    out = compiled.evaluate(numeric_values(model, gpu, profile, w))
    assert isinstance(out, CompiledOutputs)
    assert tuple(out.totals) == compiled.outputs and "ttft_s" in out.totals and "itl_s" in out.totals
    p = predict(model, gpu=gpu.name, engine="hf", batch=16, input_len=512, output_len=256)
    for name, value in out.totals.items():
        if name in p.metrics:
            assert p.metrics[name] == float(value), name
    assert [(o["name"], o["pass"]) for o in out.ops] == [(o["name"], o["pass"]) for o in p.ops]
    assert [o["name"] for o in out.ops] == [n for _, ops in compiled.passes for n in ops]
    for mine, theirs in zip(out.ops, p.ops):
        assert set(OP_FIELDS) <= set(mine)
        assert all(float(mine[f]) == theirs[f] for f in OP_FIELDS)
    # the request's passes: prefill then decode, each op's time its largest part plus latency
    assert {o["pass"] for o in out.ops} == {"prefill", "decode"}
    assert sum(o["time_s"] for o in out.ops if o["pass"] == "decode") <= out.totals["decode_step_s"]


def test_totals_only_and_arrays():
    model, gpu, profile, w = _setup("mixtral", batch=1)
    compiled = compile_model(model, "decode", profile, with_ops=False)
    values = numeric_values(model, gpu, profile, w)
    values["B"] = np.array([1, 8, 64])
    out = compiled.evaluate(values)
    assert out.ops == [] and np.shape(out.totals["decode_step_s"]) == (3,)
    assert np.all(np.diff(out.totals["decode_step_s"]) > 0)


def test_a_result_of_the_wrong_length_is_refused():
    model, _, profile, _ = _setup("olmoe")
    compiled = compile_model(model, "prefill", profile)
    with pytest.raises(ValueError, match="expected"):
        compiled.named([0.0] * (len(compiled.outputs) + 1))
