"""Parallel layouts: the GPUs a tp/ep/pp layout uses, the rules that keep heads, experts and
layers whole on every GPU, and the KV heads one GPU holds when tp exceeds them (replicated,
as vLLM does: ⌈n_kv/tp⌉ per GPU)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import sympy as sp

from perfmodel import symbols as s
from perfmodel.errors import InputError
from perfmodel.graph import build_graph, model_values
from perfmodel.prediction import predict
from perfmodel.specs.layout import Layout, layout_holds
from perfmodel.specs.model import load_model


def test_gpus_of_a_layout_are_tp_times_ep_times_pp():
    assert Layout().gpus == 1
    assert Layout(tp=2, ep=4, pp=3).gpus == 24
    assert Layout(tp=8).gpus == 8


@pytest.mark.parametrize("name, tp, fragment", [
    ("mixtral-8x7b", 3, "tp (3) must divide the number of attention heads (32)"),
    ("llama-3.1-8b", 64, "tp (64) must divide the number of attention heads (32)"),
    ("mixtral-8x22b", 12, "tp (12) must divide the number of KV heads (8) or be a multiple of it"),
    ("qwen2-57b-a14b", 28, "tp (28) must divide the experts' FFN width (2560)"),
])
def test_layout_that_splits_a_head_or_a_width_is_refused(name, tp, fragment):
    model = load_model(name)
    with pytest.raises(InputError, match=re.escape(fragment)):
        Layout(tp=tp).check(model)
    with pytest.raises(InputError, match="must divide"):
        predict(name, tp=tp)


@pytest.mark.parametrize("name, tp", [("llama-3.1-8b", 16), ("llama-3.1-8b", 32),
                                      ("qwen3-30b-a3b", 8), ("qwen3-30b-a3b", 32)])
def test_more_gpus_than_kv_heads_is_allowed(name, tp):
    model = load_model(name)
    assert tp > model.attention.n_kv_heads
    Layout(tp=tp).check(model)


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v2-lite", "qwen1.5-moe-a2.7b",
                                  "llama-3.1-8b", "qwen2-57b-a14b", "gpt-oss-20b"])
def test_vectorized_rules_agree_with_the_check(name):
    """:func:`layout_holds` over numpy arrays (what a sweep uses) says what Layout.check says."""
    model = load_model(name)
    tps, eps, pps = np.arange(1, 41), np.array([1, 2, 3, 4, 8]), np.array([1, 2, 3, 4, 7])
    tp, ep, pp = np.meshgrid(tps, eps, pps, indexing="ij", sparse=True)
    grid = np.broadcast_to(layout_holds(model, {"tp": tp, "ep": ep, "pp": pp}),
                           (len(tps), len(eps), len(pps)))
    for (i, t), (j, e), (k, p) in itertools.product(enumerate(tps), enumerate(eps), enumerate(pps)):
        try:
            Layout(int(t), int(e), int(p)).check(model)
            ok = True
        except InputError:
            ok = False
        assert grid[i, j, k] == ok, (t, e, p)


def _kv_cache_per_gpu(name: str, tp: int) -> float:
    return predict(name, tp=tp, batch=4, input_len=256, output_len=64).metrics["kv_cache_bytes"]


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-30b-a3b"])
def test_kv_cache_per_gpu_stops_shrinking_at_one_kv_head(name):
    """Each GPU keeps ⌈n_kv/tp⌉ KV heads: n_kv/tp while tp ≤ n_kv, then one (replicated)."""
    n_kv = load_model(name).attention.n_kv_heads
    one = _kv_cache_per_gpu(name, 1)
    for tp in (2, n_kv, 2 * n_kv, 4 * n_kv):
        expected = one / n_kv * max(1, n_kv // tp)
        assert _kv_cache_per_gpu(name, tp) == pytest.approx(expected, rel=1e-12), tp


def test_kv_projection_weights_per_gpu_hold_whole_kv_heads():
    """The QKV projection on one GPU: n_h/tp query heads and ⌈n_kv/tp⌉ key and value heads;
    its parameter count (whole model) does not depend on tp."""
    model = load_model("llama-3.1-8b")
    a = model.attention
    op = next(o for _, o in build_graph(model, decode=False).all_ops() if o.name == "attn.qkv_proj")
    values = {**model_values(model), s.b_w: 2}
    for tp in (1, 4, 8, 16, 32):
        stored = op.stored_bytes.subs({**values, s.tp: tp})
        heads = sp.Rational(a.n_heads, tp) + 2 * max(1, a.n_kv_heads // tp)
        assert stored == model.hidden * heads * a.head_dim * 2, tp
        assert op.params.subs(values) == model.hidden * (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
