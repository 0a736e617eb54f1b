"""A tiled MoE kernel's floor (gpt-oss's MXFP4 experts, vLLM's matmul_ogs): its waves of K loops
counted by hand, where it binds, where it is absent, and the rows its times are fitted on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from perfmodel import predict
from perfmodel.calibration.fit_tiles import TILE_BACKENDS, tile_rows
from perfmodel.errors import SpecError
from perfmodel.measuring.compare import load_with_what_ifs, row_routing
from perfmodel.paths import RESULTS_DIR
from perfmodel.profile import load_profile, load_profile_file

TILE_S, K_STEP_S = 2e-6, 1e-6
H, I, E, LAYERS = 2880, 2880, 32, 24  # gpt-oss-20b
SMS = 132  # H200


def _tiled_profile(roofline_with) -> str:
    """The roofline profile with the MXFP4 MoE kernel's times (t_tile, t_kstep) set."""
    return roofline_with(quantization={"mxfp4-moe": {"tile_s": TILE_S, "k_step_s": K_STEP_S}})


def _experts(engine: str, batch: int = 1, model: str = "gpt-oss-20b", **kw) -> dict:
    p = predict(model, engine=engine, phase="decode", batch=batch, input_len=128, context=128, **kw)
    rows = [op for op in p.ops if op["name"] == "moe.experts"]
    return {key: sum(op[key] for op in rows) for key in ("tiles_s", "time_s", "compute_s", "memory_s")} | {
        "bound": {op["bound"] for op in rows}}


def _floor(experts: float, intermediate: int = I, hidden: int = H) -> float:
    """Σ over the gate|up (N = 2I over K = H) and down (N = H over K = I) GEMMs of t_tile +
    ⌈experts·⌈N/256⌉/SMs⌉·⌈K/128⌉·t_kstep, over the layers."""
    per_layer = sum(TILE_S + math.ceil(experts * math.ceil(n / 256) / SMS) * math.ceil(depth / 128) * K_STEP_S
                    for n, depth in ((2 * intermediate, hidden), (hidden, intermediate)))
    return LAYERS * per_layer


@pytest.mark.parametrize(("overrides", "experts", "intermediate"), [
    ({}, 4, I),  # 4 experts × 23 column tiles = 92 ≤ 132 SMs: one wave of 23 K steps each
    ({"top_k": 8}, 8, I),  # the gate|up GEMM's 184 tiles take two waves
    ({"top_k": 32}, 32, I),  # six and three waves
    ({"ffn": 5760}, 4, 5760),  # the down GEMM's K loop doubles, the gate|up GEMM's tiles
])
def test_the_floor_counts_waves_of_k_loops(roofline_with, overrides, experts, intermediate):
    ops = _experts(_tiled_profile(roofline_with), overrides=overrides)
    assert ops["tiles_s"] == pytest.approx(_floor(experts, intermediate), rel=1e-9)


def test_at_one_sequence_the_floor_sets_the_experts_time_and_the_bytes_do_not(roofline_with):
    tiled, plain = _experts(_tiled_profile(roofline_with)), _experts("roofline")
    assert plain["tiles_s"] == 0  # a profile without the kernel's times has no floor
    assert tiled["bound"] == {"tiles"} and tiled["time_s"] > 2 * max(tiled["compute_s"], tiled["memory_s"])
    assert tiled["compute_s"] == plain["compute_s"] and tiled["memory_s"] == plain["memory_s"]
    # with the committed vllm profile: the floor binds at B = 1, the roofline (111 of the 120b's
    # 128 experts touched per layer) at B = 64
    assert _experts("vllm", model="gpt-oss-120b")["bound"] == {"tiles"}
    wide = _experts("vllm", batch=64, model="gpt-oss-120b")
    assert "tiles" not in wide["bound"] and 0 < wide["tiles_s"] < wide["time_s"]


def test_the_floor_never_lets_a_step_fall_as_the_batch_grows():
    steps = [predict("gpt-oss-120b", engine="vllm", phase="decode", batch=b, context=512).metrics["decode_step_s"]
             for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    assert all(b >= a for a, b in zip(steps, steps[1:]))


def test_no_floor_without_a_tiled_kernel(roofline_with):
    engine = _tiled_profile(roofline_with)
    assert _experts(engine, quant="none")["tiles_s"] == 0  # bf16 experts: vLLM's fused Triton MoE
    assert _experts(engine, moe_impl="unfused")["tiles_s"] == 0  # a loop of dense GEMMs
    mixtral = predict("mixtral-8x7b", engine="vllm", phase="decode", batch=1, context=128, quant="fp8")
    assert all(op["tiles_s"] == 0 for op in mixtral.ops)


def test_a_scheme_tile_must_be_positive(schemes_file):
    from perfmodel import quantization

    data = schemes_file.original
    data["schemes"]["mxfp4-moe"]["moe_tile"] = {"n": 0, "k": 128}
    schemes_file.write(data)
    with pytest.raises(SpecError, match="invalid scheme 'mxfp4-moe' in quantization.yaml: moe_tile.n"):
        quantization.load_schemes()


def test_tile_times_for_a_scheme_without_a_tile_are_refused(roofline_with):
    for times in ({"k_step_s": 1e-6}, {"bitmatrix_column_s": 1e-5}):
        with pytest.raises(SpecError, match="quantization.fp8: tile_s, k_step_s .* no moe_tile"):
            load_profile_file(Path(roofline_with(quantization={"fp8": times})))


def test_a_host_time_needs_a_tiled_kernel_or_quantized_activations(roofline_with):
    """host_layer_s is a tiled kernel's launches or the routed experts' activation quantization
    launched from Python: fp8 (W8A8) may carry it, a weight-only scheme without a tile may not."""
    assert load_profile_file(Path(roofline_with(quantization={"fp8": {"host_layer_s": 1e-4}}))) \
        .quant_efficiency("fp8").host_layer_s == 1e-4
    with pytest.raises(SpecError, match="quantization.w4a16: host_layer_s .* neither"):
        load_profile_file(Path(roofline_with(quantization={"w4a16": {"host_layer_s": 1e-4}})))


def test_the_kernel_times_come_from_profiled_steps_of_the_tiled_kernel_at_a_known_routing():
    rows = tile_rows(load_with_what_ifs(RESULTS_DIR / "h200-vllm.jsonl"), "mxfp4-moe")
    assert {r["model"] for r in rows} == {"gpt-oss-20b", "gpt-oss-120b"}
    assert all(r["moe_backend"] in TILE_BACKENDS["mxfp4-moe"] for r in rows)  # never Marlin's kernel
    assert all(row_routing(r) == "uniform_random" or r["batch"] == 1 for r in rows)  # D known
    assert all(r["batch"] * r["input_len"] <= 16384 for r in rows)  # no decodes riding along prefill chunks
    record = load_profile("vllm", "h200-sxm").fit["tiles"]["mxfp4-moe"]
    assert set(record["points"]) == {r["point_id"] for r in rows if r["model"] == "gpt-oss-120b"}
    held = record["held_out"]["errors_pct"]
    assert set(held) == {r["point_id"] for r in rows if r["model"] == "gpt-oss-20b"}
    assert record["held_out"]["mape_pct"] < 10 and max(abs(e) for e in held.values()) < 20


def test_outside_the_band_a_scheme_takes_its_own_held_out_spread_or_the_note_gives_it():
    """gpt-oss's MXFP4 points on Marlin lie outside the band: where enough of them were measured at
    a prediction's regimes, it takes their own p90 |error| (fit.residuals.quantization, own_band);
    where none were, it has no band and the note says how far they scatter at its regimes."""
    from perfmodel.prediction import Workload, error_band
    from perfmodel.specs.hardware import load_gpu

    profile = load_profile("vllm", "h200-sxm")
    check = profile.fit["residuals"]["quantization"]["mxfp4-moe-marlin"]
    assert not check["within"] and not profile.quant_efficiency("mxfp4-moe-marlin").band
    p90 = check["p90_abs_pct"]
    p = predict("gpt-oss-120b", engine="vllm", batch=64, input_len=512, output_len=512, quant="mxfp4-moe-marlin")
    band, note = p.provenance["error_band"], p.provenance["error_band_note"]
    assert band["decode_regime"] == "GPU-bound" and check["counts"]["decode_step GPU-bound"] >= 5
    assert band["decode_step"] == pytest.approx(p90["decode_step GPU-bound"] / 100, rel=1e-3)
    assert band["decode_step"] > profile.error_band.decode_step  # wider than the band: why it is outside
    assert "widened to its held-out mxfp4-moe-marlin points' own 90th percentile" in note
    # no host-bound decode step of theirs was measured, and too few launch-bound prefills
    band, note = error_band(profile, load_gpu("h200-sxm"), Workload(quant="mxfp4-moe-marlin"),
                            regime="launch-bound", decode="host-bound")
    assert band is None and note.startswith("no band: ") and check["counts"]["ttft launch-bound"] < 5
    assert f"TTFT p90 {p90['ttft launch-bound']:.0f}%" in note and "ITL p90" not in note


def _launched(profile: str, model: str = "gpt-oss-20b", quant: str | None = None, input_len: int = 128):
    kw = {"quant": quant} if quant else {}
    p = predict(model, engine=profile, batch=1, input_len=input_len, output_len=16, **kw)
    return p.metrics


def test_a_launched_prefill_pays_the_tiled_kernels_launches_per_layer(launch_profiles):
    """t_moe_host per MoE layer joins the launch floor of a prefill the host launches (gpt-oss's
    MXFP4 experts, launched from Python by triton_kernels); a prefill replayed from a captured
    graph, and the same weights on Marlin's kernel (mxfp4-moe-marlin), pay none of it."""
    host = 1e-3
    plain, with_host = launch_profiles({"mxfp4-moe": {"host_layer_s": host}})
    base, paid = _launched(plain), _launched(with_host)
    assert paid["prefill_launch_s"] - base["prefill_launch_s"] == pytest.approx(LAYERS * host, rel=1e-9)
    assert paid["prefill_uncompiled_s"] == pytest.approx(LAYERS * host, rel=1e-9)
    replayed = _launched(with_host, input_len=32)  # 32 tokens fit the 64-token graph
    assert replayed["prefill_launch_s"] == 0 and replayed["prefill_uncompiled_s"] == 0
    marlin, marlin_base = _launched(with_host, quant="mxfp4-moe-marlin"), _launched(plain, quant="mxfp4-moe-marlin")
    assert marlin["prefill_launch_s"] == pytest.approx(marlin_base["prefill_launch_s"], rel=1e-12)
    assert marlin["prefill_uncompiled_s"] == 0


def test_marlin_rows_of_mxfp4_are_their_own_scheme():
    from perfmodel.measuring.compare import row_quant

    mxfp4 = {"engine": {"quantization": "mxfp4"}}
    assert row_quant(mxfp4) == "mxfp4-moe"
    assert row_quant({**mxfp4, "moe_backend": "triton_unfused"}) == "mxfp4-moe"
    assert row_quant({**mxfp4, "moe_backend": "marlin"}) == "mxfp4-moe-marlin"
    assert row_quant({"engine": {"quantization": "gptq"}, "moe_backend": "marlin"}) == "w4a16"


def test_the_launch_time_comes_from_launched_prefills_of_the_training_model():
    """host_layer_s is fitted on gpt-oss-120b's launched prefills on the tiled kernel's backends at
    B = 1; gpt-oss-20b's are held out, and the record gives their errors."""
    profile = load_profile("vllm", "h200-sxm")
    record = profile.fit["tiles"]["mxfp4-moe"]["host"]
    assert profile.quant_efficiency("mxfp4-moe").host_layer_s > 0
    assert record["points"] and all("|gpt-oss-120b|" in p and "|B=1|" in p for p in record["points"])
    assert all(any(f"moe_backend={b}|" in p for b in TILE_BACKENDS["mxfp4-moe"]) for p in record["points"])
    held = record["held_out"]["errors_pct"]
    assert held and all("|gpt-oss-20b|" in p and "moe_backend=marlin" not in p for p in held)
    assert record["held_out"]["mape_pct"] < 15 and max(abs(e) for e in held.values()) < 30
    assert set(record["points"]) <= set(profile.fit["points"])
