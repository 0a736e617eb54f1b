"""A decode step replayed from a CUDA graph runs its batch padded up to the next captured size."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from perfmodel.measuring.vllm_backend import DEFAULT_CAPTURE_SIZES
from perfmodel.phases import graph_batch
from perfmodel.planning.steptime import build_step_times
from perfmodel.prediction import predict
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import load_model
from perfmodel.symbols import B, M_graph

_PAD = sp.lambdify([B, M_graph], graph_batch(), "numpy")


def test_the_padded_batch_is_the_next_of_vllms_default_capture_sizes():
    n = np.arange(1, 700, dtype=float)
    expected = [next((s for s in DEFAULT_CAPTURE_SIZES if s >= b), b) for b in n]
    assert np.array_equal(_PAD(n, 512.0), expected)
    assert _PAD(10.0, 512.0) == 16 and _PAD(3.0, 512.0) == 4 and _PAD(257.0, 512.0) == 272


def test_no_padding_beyond_the_largest_graph_or_without_one():
    assert _PAD(513.0, 512.0) == 513  # beyond the largest captured size: no graph, no padding
    assert _PAD(10.0, 0.0) == 10  # an eager engine
    assert _PAD(10.0, 8.0) == 10 and _PAD(8.0, 8.0) == 8  # a cap of 8 holds 8, not 10
    assert _PAD(1024.0, 1024.0) == 1024


def _itl(engine: str, batch: int) -> float:
    return predict("qwen3-30b-a3b", gpu="h200", engine=engine, phase="decode", batch=batch,
                   context=1024).metrics["itl_s"]


def test_a_vllm_decode_step_of_10_runs_the_experts_of_16():
    """The experts of 16 padded tokens are read, the attention of 10 sequences: between the two."""
    at8, at10, at16 = (_itl("vllm", b) for b in (8, 10, 16))
    assert at10 > at8 + 0.6 * (at16 - at8)
    assert at10 < at16  # the attention and the host follow the 10 real sequences


def test_an_engine_that_captures_each_batch_exactly_does_not_pad():
    assert load_profile("hf", "h200-sxm").pads_cudagraphs is False
    assert load_profile("vllm", "h200-sxm").pads_cudagraphs is True
    at8, at10, at16 = (_itl("hf", b) for b in (8, 10, 16))
    assert at10 - at8 < 0.5 * (at16 - at8)  # experts touched by 10 tokens: less than half way


def test_the_serving_step_tables_pad_decode_only_steps():
    profile = load_profile("vllm", "h200-sxm")
    steps = build_step_times(load_model("qwen3-30b-a3b"), load_gpu("h200"), profile, "bf16", Layout(1, 1, 1),
                             max_tokens=1024, max_seqs=64, max_context=2048)
    assert steps.tokens(10) == pytest.approx(steps.tokens(16))
    assert steps.tokens(9) == pytest.approx(steps.tokens(16))
    assert steps.tokens(8) < steps.tokens(16)
    # a step beyond the largest graph (512 tokens, a prefill chunk) runs its tokens as they are
    assert steps.tokens(600) < steps.tokens(601) < steps.tokens(608)


def _prefill_op(input_len: int, op: str = "moe.experts") -> float:
    p = predict("qwen3-30b-a3b", gpu="h200", engine="vllm", phase="prefill", batch=1, input_len=input_len)
    return next(o["time_s"] for o in p.ops if o["name"] == op and o["pass"] == "prefill")


def test_a_prefill_within_the_largest_graph_runs_its_tokens_padded():
    assert _prefill_op(257) == pytest.approx(_prefill_op(272))  # replayed from the graph of 272
    assert _prefill_op(256) < _prefill_op(257)
    assert _prefill_op(600) < _prefill_op(608)  # above the largest graph (512): as it is


def test_the_prediction_says_which_graph_a_decode_step_replays(capsys):
    import math

    from perfmodel.commands import main

    vllm = predict("qwen3-30b-a3b", gpu="h200", engine="vllm", batch=10, input_len=128, output_len=16)
    hf = predict("qwen3-30b-a3b", gpu="h200", engine="hf", batch=10, input_len=128, output_len=16)
    prefill = predict("qwen3-30b-a3b", gpu="h200", engine="vllm", phase="prefill", batch=10, input_len=128)
    assert vllm.metrics["decode_graph_batch"] == 16 and hf.metrics["decode_graph_batch"] == 10
    assert math.isnan(prefill.metrics.get("decode_graph_batch", float("nan")))
    main(["predict", "qwen3-30b-a3b", "-b", "10"])
    out = capsys.readouterr().out
    assert "the CUDA graph it replays" in out and "16 sequences" in out
    main(["predict", "qwen3-30b-a3b", "-b", "16"])
    assert "the CUDA graph it replays" not in capsys.readouterr().out  # nothing padded: no line


def test_the_formula_of_a_padded_step_is_the_graphs():
    from perfmodel.formula_text import op_formula_data

    def data(batch, engine="vllm"):
        return op_formula_data("qwen3-30b-a3b", "moe.experts", "time", "decode", [], batch=batch, context=1024,
                               engine=engine)

    at10, at16 = data(10), data(16)
    assert at10["at"]["T_g"] == 16 and at10["substitutions"]["T"] == "T_g"
    assert at10["value"] == pytest.approx(at16["value"])  # the experts of the graph's 16 tokens
    assert "T_g" not in at16["at"] and at16["substitutions"]["T"] == "B"  # a captured size: as it is
    hf = data(10, engine="hf")
    assert "T_g" not in hf["at"] and hf["value"] < data(16, engine="hf")["value"]  # 10 tokens' experts
