"""The staged MoE block (vLLM's MXFP4 MoE at ``--moe-backend triton_unfused``): the fused block's
grouped GEMMs with the routing data, the activation and the top-k sum run apart. It launches
more kernels and moves more activation bytes than the fused block, adds the bitmatrix pack
whose floor follows the experts' 32-bit columns, never the tokens, and is what a measured
row at that backend is predicted as."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp

from perfmodel import InputError, predict, sweep
from perfmodel import symbols as s
from perfmodel.measuring.compare import model_workload, row_moe_impl, row_what_ifs
from perfmodel.ops.moe import (
    STAGED_DISPATCH_KERNELS, expert_split, expert_tokens, local_load, moe_block, routing_bitmatrix,
)
from perfmodel.paths import RESULTS_DIR, ROOT
from perfmodel.roofline import op_time
from perfmodel.specs.model import load_model


def _ops(impl: str) -> dict:
    spec = load_model("gpt-oss-120b")
    return {op.name: op for op in moe_block(spec.moe, spec.norm, impl=impl, quantized=True, tiled=True)}


def test_the_staged_block_adds_the_pack_kernels_and_the_gathers_bytes():
    fused, staged = _ops("fused"), _ops("staged")
    assert "moe.routing_bitmatrix" in staged and "moe.routing_bitmatrix" not in fused
    assert staged["moe.dispatch"].kernels == fused["moe.dispatch"].kernels + STAGED_DISPATCH_KERNELS
    extra = sp.simplify(staged["moe.dispatch"].act_bytes - fused["moe.dispatch"].act_bytes)
    rows = local_load(expert_tokens(), expert_split()[0])[0]  # the busiest GPU's rows, of the dp ranks' tokens
    assert sp.simplify(extra - 6 * rows * s.I_e / expert_split()[1] * s.b_a) == 0
    for name in ("moe.experts", "moe.router", "moe.experts_act"):  # the same GEMMs, tiles and router
        assert staged[name] == fused[name]


@pytest.mark.parametrize("experts, ep, columns", [(32, 1, 1), (33, 1, 2), (128, 1, 4), (128, 2, 2), (512, 1, 16)])
def test_the_pack_floor_is_one_pass_at_one_column_and_a_loop_over_more(experts, ep, columns):
    floor = routing_bitmatrix().tile_floor
    times = {s.t_bitpack_one: 4e-6, s.t_bitpack_loop: 15e-6, s.t_bitpack: 10e-6}
    expected = 4e-6 if columns == 1 else 15e-6 + columns * 10e-6
    for tokens in (1, 64, 4096):
        value = floor.subs({s.E: experts, s.ep: ep, s.x_ep: 0, s.T: tokens, s.k: 4, **times})
        assert float(value) == pytest.approx(expected)
    zero = {symbol: 0 for symbol in times}
    assert op_time(routing_bitmatrix(), zero).tiles == 0  # no fitted times: its kernel and bytes


@pytest.mark.parametrize("batch", [1, 16, 64])
def test_staged_is_never_faster_than_fused(batch):
    common = dict(engine="vllm", gpu="h200-sxm", batch=batch, input_len=512, output_len=512, quant="mxfp4-moe")
    fused = predict("gpt-oss-120b", **common)
    staged = predict("gpt-oss-120b", moe_impl="staged", **common)
    assert staged.metrics["itl_s"] > fused.metrics["itl_s"]
    assert staged.metrics["ttft_s"] >= fused.metrics["ttft_s"]


def test_staged_needs_a_tiled_moe_kernel():
    with pytest.raises(InputError, match="staged is vLLM's TRITON_UNFUSED MoE"):
        predict("olmoe-1b-7b", engine="vllm", moe_impl="staged")
    with pytest.raises(InputError, match="staged is vLLM's TRITON_UNFUSED MoE"):
        sweep("olmoe-1b-7b", {"moe_impl": ["fused", "staged"]})
    with pytest.raises(InputError, match="staged is vLLM's TRITON_UNFUSED MoE"):  # the checkpoint's, refused
        predict("gpt-oss-120b", engine="vllm", moe_impl="staged", quant="none")


def test_a_model_stored_with_a_tiled_kernel_runs_staged_without_naming_its_scheme():
    """gpt-oss's checkpoint stores its experts in MXFP4, whose kernel is tiled: predict and sweep
    take --moe-impl staged for it as they take it with --quant mxfp4-moe."""
    named = predict("gpt-oss-120b", engine="vllm", moe_impl="staged", quant="mxfp4-moe")
    stored = predict("gpt-oss-120b", engine="vllm", moe_impl="staged")
    assert stored.workload.quant == "mxfp4-moe" and stored.metrics["itl_s"] == named.metrics["itl_s"]
    table = sweep("gpt-oss-120b", {"moe_impl": ["fused", "staged"]})
    assert list(table["itl_s"])[1] == pytest.approx(stored.metrics["itl_s"])


def _unfused_row() -> dict:
    for line in (RESULTS_DIR / "h200-vllm.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("moe_backend") == "triton_unfused" and row["status"] == "ok":
            return row
    raise AssertionError("no triton_unfused row")


def test_a_triton_unfused_row_is_predicted_as_the_staged_block():
    row = _unfused_row()
    assert row_moe_impl(row) == "staged"
    assert model_workload(row)["moe_impl"] == "staged"
    kinds = row_what_ifs(row, load_model(row["model"]))
    assert "MoE kernel triton_unfused" in kinds and not any(k.startswith("MoE staged") for k in kinds)
    for backend, impl in (("triton", "fused"), ("marlin", "fused")):
        assert row_moe_impl({**row, "moe_backend": backend}) == impl
        assert "moe_impl" not in model_workload({**row, "moe_backend": backend})


def test_the_pack_times_come_from_the_kernel_timed_alone_and_hold_on_every_profiled_pack():
    """The pack's law is fitted on its bench (no model's row), and puts every profiled pack of
    gpt-oss-20b (one column) and gpt-oss-120b (four) on the H200 within 15%."""
    import pandas as pd

    from perfmodel.calibration.fit_tiles import bitmatrix_columns, bitmatrix_rows, pack_kernel_s
    from perfmodel.measuring.compare import load_with_what_ifs
    from perfmodel.profile import load_profile

    profile = load_profile("vllm", "h200-sxm")
    kernels = profile.quant_efficiency("mxfp4-moe")
    record = profile.fit["tiles"]["mxfp4-moe"]["bitmatrix"]
    bench = pd.read_csv(ROOT / record["bench"])
    assert set(bench["kernel"]) == {"pack_bitmatrix", "make_routing_data"} and bench["experts"].nunique() >= 8
    rows = bitmatrix_rows(load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl"), "mxfp4-moe")
    assert {r["model"] for r in rows} == {"gpt-oss-20b", "gpt-oss-120b"}
    assert set(record["held_out"]["errors_pct"]) == {r["point_id"] for r in rows}  # none of them fitted
    for row in rows:
        n = bitmatrix_columns(row)
        law = kernels.bitmatrix_one_s if n == 1 else kernels.bitmatrix_loop_s + n * kernels.bitmatrix_column_s
        assert np.isclose(law, pack_kernel_s(row), rtol=0.15), row["point_id"]


def test_the_fused_block_handed_expert_ids_packs_them_too():
    """vLLM's routing simulator hands the fused block's tiled kernel expert ids, not logits: the
    pack runs there as in the staged block; nothing else of the block changes, and a block whose
    kernel is not tiled (or one given logits) has no pack."""
    spec = load_model("gpt-oss-120b")
    handed = {op.name: op for op in moe_block(spec.moe, spec.norm, impl="fused", quantized=True, tiled=True,
                                              routing_ids=True)}
    fused = _ops("fused")
    assert "moe.routing_bitmatrix" in handed
    assert {name: op for name, op in handed.items() if name != "moe.routing_bitmatrix"} == fused
    common = dict(engine="vllm", gpu="h100-sxm", batch=1, input_len=128, output_len=128)
    ids, logits = (predict("gpt-oss-120b", routing_ids=flag, **common) for flag in (True, False))
    assert "moe.routing_bitmatrix" in {op["name"] for op in ids.ops}
    assert "moe.routing_bitmatrix" not in {op["name"] for op in logits.ops}
    assert ids.metrics["itl_s"] > logits.metrics["itl_s"]
    # a kernel that is not tiled takes ids without a pack
    olmoe = [predict("olmoe-1b-7b", routing_ids=flag, **common).metrics["itl_s"] for flag in (True, False)]
    assert olmoe[0] == olmoe[1]
    with pytest.raises(InputError, match="routing_ids must be true or false"):
        predict("gpt-oss-120b", routing_ids="yes", **common)


def test_a_simulator_row_is_predicted_with_its_profiled_pack():
    """The H100's gpt-oss-120b rows at the routing simulator on the fused (TRITON) backend ran a
    pack_bitmatrix per MoE layer in their profiled decode steps (a step that also held a prompt
    chunk, more): their workload says the kernel
    was handed ids, and the model's router and pack kernels (the profiler's router_topk) lie
    within 15% of the profiled ones, where without the pack they would be a tenth of them."""
    from perfmodel.measuring.compare import compare, load_with_what_ifs

    rows = [r for r in load_with_what_ifs(RESULTS_DIR / "h100-vllm.jsonl")
            if r["model"] == "gpt-oss-120b" and r.get("moe_backend") == "triton" and r.get("decode_profile")
            and "routing=uniform_random" in r["point_id"] and r["status"] == "ok"]
    assert len(rows) >= 4
    layers, counts = load_model("gpt-oss-120b").n_layers, []
    for row in rows:
        counts += [k[2] for k in row["decode_profile"]["top_kernels"] if k[0] == "pack_bitmatrix"]
        assert model_workload(row).get("routing_ids") is True
        assert "routing_ids" not in model_workload({**row, "point_id": row["point_id"].replace(
            "|routing=uniform_random", "")})
    assert len(counts) == len(rows) and min(counts) == layers  # one per MoE layer and step
    _, ops = compare(rows, engine="vllm", gpu="h100-sxm", train_models=())
    router = ops[ops["category"] == "router_topk"]
    assert len(router) == len(rows)
    assert np.allclose(router["predicted_s"], router["measured_s"], rtol=0.15)
