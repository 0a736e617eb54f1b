"""vLLM's tuned fused-MoE tables made for larger passes: which shapes meet one, the factor on the
experts' memory time at such a shape,
and the A/B pairs the factor is fitted on."""

from __future__ import annotations

import json
import shutil

import pytest

from perfmodel import predict
from perfmodel import moe_tables
from perfmodel.calibration.fit_moe_tables import fit_off_table, off_table_pairs, tiles_file
from perfmodel.errors import SpecError
from perfmodel.profile import load_profile

OPTIONS = {"decode_attention_span": "context", "mla_cache": "latent", "mla_absorb_decode": True,
           "memory_usable_fraction": 0.9, "moe_block_m": 1}


def _experts_memory_s(engine: str, batch: int, dtype: str = "fp8", gpu: str = "h100-sxm", **kw) -> float:
    p = predict("phi-3.5-moe", engine=engine, gpu=gpu, phase="decode", batch=batch, input_len=128, context=128,
                dtype=dtype, **kw)
    return sum(op["memory_s"] for op in p.ops if op["name"] == "moe.experts")


def test_the_listed_tables_are_found_by_gpu_shape_and_scheme():
    assert moe_tables.tuned_from("h100-sxm", 16, 6400, "fp8") == 256  # Phi-3.5-MoE's experts, one GPU
    assert moe_tables.tuned_from("h100-sxm", 16, 3200.0, "fp8") == 256  # ... over two (I/tp)
    assert moe_tables.tuned_from("h100-sxm", 16, 6400, "none") == 0  # bf16: no such table
    assert moe_tables.tuned_from("h200-sxm", 16, 6400, "fp8") == 0
    assert moe_tables.tuned_from(None, 16, 6400, "fp8") == 0


@pytest.mark.parametrize(("batch", "dtype", "kw", "factor"), [
    (1, "fp8", {}, 2.0),
    (64, "fp8", {}, 2.0),
    (128, "fp8", {}, 2.0),  # still the table's first entry, 256 tokens' tiles
    (512, "fp8", {}, 2.0),  # assumed beyond: a step's time never falls as its tokens grow
    (1, "bf16", {}, 1.0),  # no table for these experts in bf16
    (1, "fp8", {"tp": 2}, 2.0),  # I/tp = 3,200 has its table too
])
def test_the_factor_scales_the_experts_memory_time_where_a_table_is_made_for_larger_passes(
        roofline_with, batch, dtype, kw, factor):
    measured = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0})
    base = _experts_memory_s("roofline", batch, dtype, **kw)  # the same options, any GPU: no table read
    assert _experts_memory_s(measured, batch, dtype, **kw) == pytest.approx(factor * base, rel=1e-9)


def test_the_factor_is_its_own_schemes_tables_only(roofline_with, tmp_path):
    """A factor whose A/B ran fp8 tables scales an fp8 table's experts, not a bf16 table's: the
    H100's bf16 table for 32 experts of width 1,792 ran its decode step as the model has it
    without one. A profile that records no schemes gives every listed table the factor."""
    opts = {**OPTIONS, "moe_off_table_memory": 2.0}
    skeleton = ["num_local_experts=32", "intermediate_size=1792", "num_hidden_layers=8"]

    def skeleton_experts(engine):  # the 32-expert bf16 shape of the H100's table from 512 tokens
        p = predict("mixtral-8x7b", engine=engine, gpu="h100-sxm", phase="decode", batch=16, input_len=128,
                    context=128, overrides=skeleton)
        return sum(op["memory_s"] for op in p.ops if op["name"] == "moe.experts")

    phi, plain = _experts_memory_s("roofline", 1), skeleton_experts("roofline")

    def profile(name, **options):  # a file of its own each: profiles are cached by path
        path = tmp_path / f"{name}.yaml"
        shutil.copy(roofline_with(gpu="h100-sxm", options={**opts, **options}), path)
        return str(path)

    fp8_only, bf16_only, every = (profile("fp8", moe_off_table_schemes=["fp8"]),
                                  profile("bf16", moe_off_table_schemes=["none"]), profile("every"))
    assert _experts_memory_s(fp8_only, 1) == pytest.approx(2.0 * phi, rel=1e-9)
    assert skeleton_experts(fp8_only) == pytest.approx(plain, rel=1e-9)
    assert _experts_memory_s(bf16_only, 1) == pytest.approx(phi, rel=1e-9)  # Phi's table is fp8's
    assert skeleton_experts(bf16_only) == pytest.approx(2.0 * plain, rel=1e-9)
    assert skeleton_experts(every) == pytest.approx(2.0 * plain, rel=1e-9)
    # the committed H100 profile: its factor is fp8's, from Phi-3.5-MoE's fp8 A/B
    h100 = load_profile("vllm", "h100-sxm").options
    assert h100.moe_off_table_schemes == ("fp8",) and h100.moe_off_table_memory > 1


def test_a_profile_that_measured_no_table_reads_none(roofline_with):
    h200 = roofline_with(gpu="h200-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0})
    assert _experts_memory_s(h200, 1, gpu="h200-sxm") == pytest.approx(_experts_memory_s("roofline", 1, gpu="h200-sxm"))


def test_the_roofline_profile_states_the_options_these_tests_add_to(roofline_with):
    import yaml
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert yaml.safe_load((root / "calibration/profiles/roofline.yaml").read_text())["options"] == OPTIONS


def test_a_malformed_table_file_is_one_line(monkeypatch, tmp_path):
    bad = tmp_path / "tables.yaml"
    bad.write_text("tables:\n  - {gpu: h100-sxm, experts: -1}\n")
    monkeypatch.setattr(moe_tables, "TABLES_FILE", bad)
    moe_tables.load_tables.cache_clear()
    try:
        with pytest.raises(SpecError) as info:
            moe_tables.tuned_from("h100-sxm", 16, 6400, "fp8")
        assert "\n" not in str(info.value) and "tables.yaml: invalid table" in str(info.value)
    finally:
        moe_tables.load_tables.cache_clear()


def _row(point: str, batch: int, expert_ms: float, own_tiles: bool = False) -> dict:
    resolved = {"fused_moe_config_folder": "/tmp/tiles"} if own_tiles else {}
    return {"point_id": point, "status": "ok", "model": "phi-3.5-moe", "batch": batch, "input_len": 128,
            "output_len": 128, "engine": {"quantization": "fp8", "tp": 1}, "point_settings": {},
            "engine_detail": {"resolved": resolved}, "decode_profile": {"split_ms": {"expert_gemm": expert_ms}}}


def test_the_factor_is_the_geometric_mean_of_paired_expert_kernel_times(tmp_path):
    results = tmp_path / "h100-vllm.jsonl"
    shipped = [_row("a", 1, 3.0), _row("b", 16, 8.0), _row("c", 32, 9.0)]  # c: no default-rule twin
    own = [_row("a'", 1, 2.0, True), _row("b'", 16, 4.0, True), _row("d'", 64, 9.0, True)]
    tiles_file(results).write_text("".join(json.dumps(r) + "\n" for r in own))
    assert len(off_table_pairs(shipped, own, "h100-sxm")) == 2
    factor, points, record = fit_off_table(shipped, results, "h100-sxm")
    assert factor == pytest.approx((1.5 * 2.0) ** 0.5, rel=1e-3)
    assert sorted(points) == ["a", "a'", "b", "b'"] and record["models"] == ["phi-3.5-moe"]
    assert record["schemes"] == ["fp8"]  # the scheme the pairs' experts ran at: its tables take the factor
    assert fit_off_table(shipped, tmp_path / "none.jsonl", "h100-sxm") == (None, [], {})


def test_a_workload_at_the_default_tile_rule_reads_no_table(roofline_with):
    from perfmodel.errors import InputError
    from perfmodel.measuring.compare import model_workload

    measured = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0})
    assert _experts_memory_s(measured, 1, moe_tables=False) == pytest.approx(_experts_memory_s("roofline", 1))
    with pytest.raises(InputError, match="moe_tables must be true or false"):
        _experts_memory_s(measured, 1, moe_tables="no")
    row = {**_row("a'", 1, 2.0, True), "engine_detail": {"resolved": {"fused_moe_config_folder": "/tmp/t"}}}
    assert model_workload(row)["moe_tables"] is False
    assert "moe_tables" not in model_workload(_row("a", 1, 3.0))


def test_a_prediction_says_which_table_its_experts_meet(capsys):
    from perfmodel.commands import main

    p = predict("phi-3.5-moe", gpu="h100-sxm", dtype="fp8", batch=16)
    table = p.provenance["moe_tile_table"]
    assert table["from_tokens"] == 256 and table["memory_factor"] > 1
    assert predict("phi-3.5-moe", gpu="h100-sxm", batch=16).provenance["moe_tile_table"] is None  # bf16
    assert predict("phi-3.5-moe", gpu="h200-sxm", dtype="fp8", batch=16).provenance["moe_tile_table"] is None
    main(["predict", "phi-3.5-moe", "--gpu", "h100", "--dtype", "fp8", "-b", "16"])
    assert "tuned tile table for these experts starts at 256 tokens" in capsys.readouterr().out


def test_unfused_experts_meet_no_table(roofline_with):
    measured = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0})
    p = predict("phi-3.5-moe", engine=measured, gpu="h100-sxm", phase="decode", batch=1, dtype="fp8",
                moe_impl="unfused")
    assert p.provenance["moe_tile_table"] is None


def test_list_tables_names_the_models_each_table_meets_and_where_the_factor_was_measured(capsys):
    from perfmodel.commands import main

    main(["list", "tables", "--json"])
    tables = json.loads(capsys.readouterr().out)["tables"]
    phi = {t["width"]: t for t in tables if t["experts"] == 16}
    assert phi[6400]["models"] == ["phi-3.5-moe (tp 1)"] and phi[3200]["models"] == ["phi-3.5-moe (tp 2)"]
    assert phi[6400]["profiles"]["h100-sxm-vllm"]["measured"] is True  # the A/B ran at one GPU
    assert phi[3200]["profiles"]["h100-sxm-vllm"]["measured"] is False  # carried to two: assumed
    skeleton = next(t for t in tables if t["experts"] == 32)  # a bf16 table: the fp8 factor is not its
    assert skeleton["profiles"] == {} and skeleton["no_factor"] == {"h100-sxm-vllm": ["fp8"]}
    main(["list", "tables"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(tables) and "measured on it" in lines[0] and "assumed" in lines[1]
    assert "no factor, its A/B ran fp8 tables" in lines[tables.index(skeleton)]
