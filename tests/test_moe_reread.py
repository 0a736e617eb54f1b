"""Row blocks of vLLM's default fused-MoE tiles that read an expert's weights again
(ops.moe.reread_scale, group_rows, row_blocks; prediction.moe_default_tiles;
moe_tables.has_table)."""

from __future__ import annotations

import pytest
import sympy as sp

from perfmodel import predict
from perfmodel.ops.moe import GROUP_ROWS, group_rows, reread_scale, row_blocks
from perfmodel.symbols import L2

MIB = 2**20


def test_weights_are_read_once_per_group_of_row_blocks_beyond_what_l2_holds():
    b, g, w = sp.symbols("b g w", positive=True)
    scale = reread_scale(b, g, w).subs(L2, 50 * MIB)
    assert float(scale.subs({b: 3, g: 1, w: 40 * MIB})) == 1.0  # the expert fits in L2: read once
    assert float(scale.subs({b: 1, g: 1, w: 400 * MIB})) == 1.0  # one block: read once
    assert float(scale.subs({b: 3, g: 1, w: 400 * MIB})) == pytest.approx(1 + 2 * 7 / 8)
    assert float(scale.subs({b: 3, g: 16, w: 400 * MIB})) == 1.0  # one group holds all three blocks
    assert float(scale.subs({b: 48, g: 16, w: 400 * MIB})) == pytest.approx(1 + 2 * 7 / 8)


def test_the_default_tiles_group_row_blocks_above_128_tokens_per_expert():
    tokens = sp.Symbol("tokens", positive=True)
    rule = group_rows(tokens, 8)
    assert int(rule.subs(tokens, 128 * 8)) == 1  # M // E = 128: not above
    assert int(rule.subs(tokens, 128 * 8 + 7)) == 1  # M // E still 128
    assert int(rule.subs(tokens, 129 * 8)) == GROUP_ROWS


def test_blocks_per_expert_pad_scattered_counts_and_never_pass_the_tokens():
    blocks = row_blocks(sp.Integer(1024), sp.Integer(8), sp.Integer(64), sp.Integer(512))
    assert float(blocks) == pytest.approx((1024 + 8 * 31.5) / 512)  # 128 rows each, scattered
    every = row_blocks(sp.Integer(128), sp.Integer(8), sp.Integer(16), sp.Integer(16))  # top-8 of 8
    assert float(every) == 1.0  # no expert holds more than the 16 tokens: one block each
    assert float(row_blocks(sp.Integer(40), sp.Integer(8), sp.Integer(16), sp.Integer(20))) == 1.0


def test_only_vllms_default_tiles_read_again():
    from perfmodel.prediction import Workload, moe_default_tiles
    from perfmodel.profile import load_profile
    from perfmodel.specs.model import load_model

    h100, h200 = load_profile("vllm", "h100-sxm"), load_profile("vllm", "h200-sxm")
    big, mixtral = load_model("mixtral-8x22b"), load_model("mixtral-8x7b")
    assert moe_default_tiles(h100, Workload(), big)  # no table ships for E=8, N=16384
    assert moe_default_tiles(h100, Workload(), mixtral)  # nor for E=8, N=14336 in bf16 on the H100
    assert not moe_default_tiles(h200, Workload(), mixtral)  # the H200 has one: its tiles are not the rule's
    assert not moe_default_tiles(h100, Workload(quant="fp8"), mixtral)  # nor in fp8 on the H100
    assert not moe_default_tiles(h100, Workload(quant="fp8-block"), big)  # 32 row blocks grouped
    assert moe_default_tiles(h200, Workload(moe_tables=False), mixtral)  # the rule, by choice
    assert not moe_default_tiles(h100, Workload(), None)


def _experts(model, **kw):
    p = predict(model, engine="vllm", gpu="h100-sxm", phase="prefill", batch=1, input_len=512, **kw)
    return next(op for op in p.ops if op["name"] == "moe.experts")


def test_a_prompt_of_a_few_blocks_per_expert_streams_the_weights_once_per_block(monkeypatch):
    import perfmodel.moe_tables as tables

    reread = _experts("mixtral-8x22b")
    monkeypatch.setattr(tables, "has_table", lambda *a: True)  # as if a tuned table ran it
    once = _experts("mixtral-8x22b")
    w = 3 * 6144 * 16384 * 2  # one expert in bf16, bytes
    blocks = (1024 + 8 * 31.5) / 512  # 512 tokens top-2 over 8 experts, BLOCK_SIZE_M 64
    assert reread["memory_s"] / once["memory_s"] == pytest.approx(1 + (blocks - 1) * (1 - 50 * MIB / w), rel=1e-3)
    assert reread["compute_s"] == pytest.approx(once["compute_s"], rel=1e-9)
