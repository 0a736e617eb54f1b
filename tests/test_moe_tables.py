"""vLLM's tuned fused-MoE tables made for larger passes: which shapes meet one, the factor on the
experts' memory time at such a shape, the A/B pairs the factor is fitted on, and the kernel's
timings at the table and at the default rule, whose difference replaces the factor."""

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


@pytest.mark.parametrize(("text", "loader", "ask", "said"), [
    ("tables:\n  - {gpu: h100-sxm, experts: -1}\n", "load_tables", "tuned_from", "invalid table"),
    *[(f"tables: []\nkeys:\n  - {{gpu: h100-sxm, experts: 16, width: 6400, scheme: fp8{keys}}}\n", "load_table_keys",
       "table_keys", "invalid table keys") for keys in (", keys: []", ", keys: [1, 2, 1]", "")]])
def test_a_malformed_table_file_is_one_line(monkeypatch, tmp_path, text, loader, ask, said):
    bad = tmp_path / "tables.yaml"
    bad.write_text(text)
    monkeypatch.setattr(moe_tables, "TABLES_FILE", bad)
    getattr(moe_tables, loader).cache_clear()
    try:
        with pytest.raises(SpecError) as info:
            getattr(moe_tables, ask)("h100-sxm", 16, 6400, "fp8")
        assert "\n" not in str(info.value) and f"tables.yaml: {said}" in str(info.value)
    finally:
        getattr(moe_tables, loader).cache_clear()


def test_a_pass_runs_the_entry_of_the_nearest_key_the_files_first_on_a_tie():
    keys = moe_tables.table_keys("h100-sxm", 16, 6400, "fp8")  # Phi-3.5-MoE's experts in fp8
    assert keys[0] == 3840 and sorted(keys)[:3] == [256, 512, 768]  # the file's order, kept
    assert [moe_tables.nearest_key(m, keys) for m in (1, 640, 896, 1136, 1152, 1153, 10**5)] == \
        [256, 512, 768, 1024, 1280, 1280, 4096]  # 640: 512 before 768; 896: 768 before 1024; 1152: 1280 first
    assert moe_tables.table_keys("h100-sxm", 16, 6400, "none") == ()  # not listed


def test_the_listed_keys_are_those_the_kernel_timings_recorded():
    """The keys in specs/vllm-moe-tables.yaml against the keys bench_moe_tiles.py read from vLLM's
    own files on the GPU machine, for every committed timing that recorded them."""
    from pathlib import Path

    from perfmodel.measuring.kernel_timings import read_kernel_timings

    results = Path(__file__).resolve().parent.parent / "validate/results"
    recorded = {}
    for path in results.glob("*-vllm-moe-kernel.jsonl"):
        gpu = {"h100": "h100-sxm", "h200": "h200-sxm"}[path.name.split("-")[0]]
        for row in read_kernel_timings(path):
            if row.get("table_keys"):
                recorded[(gpu, row["experts"], row["width"], row["scheme"])] = tuple(row["table_keys"])
    assert len(recorded) >= 3
    for (gpu, experts, width, scheme), keys in recorded.items():
        assert moe_tables.table_keys(gpu, experts, width, scheme) == keys


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


def test_a_prediction_says_which_table_its_experts_meet(capsys, roofline_with):
    from perfmodel.commands import main

    p = predict("phi-3.5-moe", gpu="h100-sxm", dtype="fp8", batch=16)  # the committed H100 profile timed it
    table = p.provenance["moe_tile_table"]
    assert set(table) == {"extra"} and len(table["extra"]["tokens"]) == len(table["extra"]["extra_s"]) > 1
    assert max(table["extra"]["extra_s"]) > 0
    assert predict("phi-3.5-moe", gpu="h100-sxm", batch=16).provenance["moe_tile_table"] is None  # bf16
    assert predict("phi-3.5-moe", gpu="h200-sxm", dtype="fp8", batch=16).provenance["moe_tile_table"] is None
    main(["predict", "phi-3.5-moe", "--gpu", "h100", "--dtype", "fp8", "-b", "16"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "timed against its default tile rule" in x)
    extra = dict(zip(table["extra"]["tokens"], table["extra"]["extra_s"]))
    # B = 16, S = 128: a prefill pass of 2,048 tokens and decode steps of 16, each at its timed pass
    assert f"{1e6 * extra[2048]:+.0f} us at the prefill's 2,048 tokens" in line
    assert f"{1e6 * extra[16]:+.0f} us at the decode step's 16 tokens" in line
    factor_only = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0})
    table = predict("phi-3.5-moe", engine=factor_only, gpu="h100-sxm", dtype="fp8", batch=16).provenance
    assert table["moe_tile_table"] == {"from_tokens": 256, "memory_factor": 2.0}
    main(["predict", "phi-3.5-moe", "--engine", factor_only, "--gpu", "h100", "--dtype", "fp8", "-b", "16"])
    assert "tuned tile table for these experts starts at 256 tokens" in capsys.readouterr().out


def test_unfused_experts_meet_no_table(roofline_with):
    measured = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0})
    p = predict("phi-3.5-moe", engine=measured, gpu="h100-sxm", phase="decode", batch=1, dtype="fp8",
                moe_impl="unfused")
    assert p.provenance["moe_tile_table"] is None


def test_list_tables_names_the_models_each_table_meets_and_where_its_cost_was_measured(capsys):
    from perfmodel.commands import main

    main(["list", "tables", "--json"])
    tables = json.loads(capsys.readouterr().out)["tables"]
    phi = {t["width"]: t for t in tables if t["experts"] == 16}
    assert phi[6400]["models"] == ["phi-3.5-moe (tp 1)"] and phi[3200]["models"] == ["phi-3.5-moe (tp 2)"]
    for table in tables:  # the H100's kernel timings cover every listed table: they replace the factor
        timed = table["timed"]["h100-sxm-vllm"]
        assert timed["passes"] > 1 and timed["extra_us"][1] > 0 and table["profiles"] == {}
    main(["list", "tables"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(tables) and all("h100-sxm-vllm: timed at" in line for line in lines)


def test_list_tables_shows_the_factor_where_a_profile_has_no_timing(monkeypatch, capsys, roofline_with):
    from perfmodel import cli
    from perfmodel.commands import main
    from pathlib import Path

    from perfmodel.profile import load_profile_file

    factor_only = load_profile_file(Path(roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0,
                                                               "moe_off_table_schemes": ["fp8"]})))
    monkeypatch.setattr(cli, "_committed_profiles", lambda: [factor_only])
    main(["list", "tables"])
    lines = capsys.readouterr().out.splitlines()
    assert "memory x 2.00, assumed" in lines[0]  # no A/B of its own in that profile's fit record
    assert "no factor, its A/B ran fp8 tables" in next(line for line in lines if "E=32" in line)


def test_table_extra_takes_the_measured_pass_nearest_the_tokens():
    import sympy as sp

    from perfmodel.ops.moe import table_extra

    tokens = sp.Symbol("T")
    extra = table_extra(tokens, ((1, 1e-5), (16, 2e-5), (256, 3e-5), (2048, -1e-5)))
    values = {t: float(extra.subs(tokens, t)) for t in (1, 8, 9, 135, 136, 1151, 1152, 10**6)}
    assert values == pytest.approx({1: 1e-5, 8: 1e-5, 9: 2e-5, 135: 2e-5, 136: 3e-5, 1151: 3e-5,
                                    1152: -1e-5, 10**6: -1e-5})
    assert table_extra(tokens, ()) == 0


def test_with_its_keys_a_tables_extra_time_steps_where_its_entry_changes():
    import sympy as sp

    from perfmodel.ops.moe import table_extra

    tokens = sp.Symbol("T")
    points = ((768, 1.0), (896, 3.0), (1024, 10.0), (1136, 12.0), (1152, 4.0), (1280, 6.0), (4096, 9.0))
    keys = (1280, 768, 1024, 256)  # the file's order: 1,152 is 1,280's, 896 is 768's
    extra = table_extra(tokens, points, keys)
    values = {t: float(extra.subs(tokens, t)) for t in (1, 800, 896, 897, 1080, 1151, 1152, 1216, 2000, 10**5)}
    assert values == pytest.approx({1: 1.0,  # 256's entry: not timed, the pass nearest 256
                                    800: 1.5, 896: 3.0,  # 768's: linear between its passes 768 and 896
                                    897: 10.0, 1080: 11.0, 1151: 12.0,  # 1,024's: flat below 1,024
                                    1152: 4.0, 1216: 5.0, 2000: 6.0 + 3.0 * 720 / 2816, 10**5: 9.0})  # 1,280's
    assert table_extra(tokens, ((1024, 2.0),), (1024,)) == pytest.approx(2.0)  # one entry, one pass


def test_a_running_median_of_three_pulls_one_pass_to_its_neighbours():
    from perfmodel.calibration.fit_moe_tables import running_median

    assert running_median([-240.0, -300.0, -100.0, -120.0, 90.0, -130.0]) == [-240.0, -240.0, -120.0, -100.0,
                                                                               -120.0, -130.0]
    assert running_median([1.0, 5.0]) == [1.0, 5.0] and running_median([]) == []


def _kernel_row(experts, width, scheme, tokens, tiles, us, **kw):
    return {"experts": experts, "width": width, "hidden": 4096, "top_k": 2, "scheme": scheme, "tokens": tokens,
            "tiles": tiles, "us": us, **kw}


def test_the_kernel_timings_give_every_timed_tables_extra_time(tmp_path):
    from perfmodel.calibration.fit_moe_tables import fit_table_extra
    from perfmodel.paths import moe_kernel_file as kernel_file

    results = tmp_path / "h100-vllm.jsonl"
    assert fit_table_extra(results, "h100-sxm") == ([], {})  # no timings: nothing
    rows = [_kernel_row(16, 6400, "fp8", 1, "table", 130.0), _kernel_row(16, 6400, "fp8", 1, "default", 100.0),
            _kernel_row(16, 6400, "fp8", 2048, "table", 1600.0), _kernel_row(16, 6400, "fp8", 2048, "table", 1600.0),
            _kernel_row(16, 6400, "fp8", 2048, "default", 1000.0),
            _kernel_row(16, 6400, "fp8", 4096, "default", 1800.0),  # one side only: not a pass of the record
            _kernel_row(16, 6400, "fp8", 8192, "table", 1.0, error="RuntimeError: out of resources"),
            _kernel_row(16, 6400, "fp8", 1, "table", 150.0, top_k=4),  # another top-k: a timing of its own
            _kernel_row(16, 6400, "fp8", 1, "default", 100.0, top_k=4),
            _kernel_row(8, 14336, "fp8", 1, "table", 160.0), _kernel_row(8, 14336, "fp8", 1, "default", 170.0),
            *[_kernel_row(8, 14336, "fp8", m, tiles, us) for m, table in ((1040, 900.0), (1104, 1090.0), (1152, 880.0))
              for tiles, us in (("table", table), ("default", 1000.0))],  # one entry (1,024): 1,104 pulled in
            _kernel_row(128, 768, "none", 1, "default", 40.0)]  # no table: no pair
    kernel_file(results).write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    extra, record = fit_table_extra(results, "h100-sxm")
    mixtral, phi = (list(moe_tables.table_keys("h100-sxm", *shape, "fp8")) for shape in ((8, 14336), (16, 6400)))
    assert extra == [{"experts": 8, "width": 14336, "scheme": "fp8", "hidden": 4096, "top_k": 2,
                      "tokens": [1, 1040, 1104, 1152], "keys": mixtral,  # a table faster than the default rule
                      "extra_s": [pytest.approx(-10e-6), pytest.approx(-100e-6), pytest.approx(-100e-6),
                                  pytest.approx(-120e-6)]},  # 1,104's +90 µs: its neighbours' median
                     {"experts": 16, "width": 6400, "scheme": "fp8", "hidden": 4096, "top_k": 2, "tokens": [1, 2048],
                      "extra_s": [pytest.approx(30e-6), pytest.approx(600e-6)], "keys": phi},
                     {"experts": 16, "width": 6400, "scheme": "fp8", "hidden": 4096, "top_k": 4, "tokens": [1],
                      "extra_s": [pytest.approx(50e-6)], "keys": phi}]
    assert record["file"] == "h100-vllm-moe-kernel.jsonl" and len(record["shapes"]) == 3
    assert "1.30-1.60 (made for larger passes; 16 keys)" in record["shapes"][1]
    assert "(tuned from small passes; 17 keys)" in record["shapes"][0]  # Mixtral's fp8 table starts at one token


def test_a_timing_at_the_models_top_k_is_taken_before_the_nearest_one(roofline_with):
    from perfmodel.prediction import Workload, moe_table_extra
    from perfmodel.profile import TableExtra, load_profile
    from perfmodel.specs.model import load_model

    timings = [{"experts": 8, "width": 1792, "scheme": "none", "hidden": 4096, "top_k": k, "tokens": [1],
                "extra_s": [k * 1e-6]} for k in (1, 2, 8)]
    profile = load_profile(roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_table_extra": timings}), "h100-sxm")
    extra = {k: moe_table_extra(profile, Workload(), load_model("mixtral-8x7b", {"ffn": 1792, "top_k": k})).points()
             for k in (1, 2, 3, 4, 6, 8)}
    assert extra == {1: ((1, 1e-6),), 2: ((1, 2e-6),), 3: ((1, 2e-6),), 4: ((1, 2e-6),), 6: ((1, 8e-6),),
                     8: ((1, 8e-6),)}  # 3 and 4 nearest 2; 6 nearest 8
    assert moe_table_extra(profile, Workload(), load_model("mixtral-8x7b", {"ffn": 3584})) is None  # not timed
    other_hidden = (TableExtra(**{**timings[1], "hidden": 2048}),)
    options = profile.options.model_copy(update={"moe_table_extra": other_hidden})
    profile = profile.model_copy(update={"options": options})
    assert moe_table_extra(profile, Workload(), load_model("mixtral-8x7b", {"ffn": 1792})) is None  # another hidden


def test_a_timed_table_adds_its_extra_time_to_the_experts_in_place_of_the_factor(roofline_with):
    extra = {"experts": 16, "width": 6400, "scheme": "fp8", "tokens": [1, 256, 2048], "extra_s": [1e-5, 2e-5, 4e-5]}
    timed = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0, "moe_table_extra": [extra]})
    layers = 32  # Phi-3.5-MoE's MoE layers

    def experts(engine, batch=1, **kw):
        p = predict("phi-3.5-moe", engine=engine, gpu="h100-sxm", phase="decode", batch=batch, input_len=128,
                    context=128, dtype="fp8", **kw)
        return next(op for op in p.ops if op["name"] == "moe.experts")

    for batch, added in ((1, 1e-5), (64, 1e-5), (200, 2e-5)):
        plain, with_table = experts("roofline", batch), experts(timed, batch)
        assert with_table["memory_s"] == pytest.approx(plain["memory_s"], rel=1e-9)  # no factor: the timing
        assert with_table["latency_s"] - plain["latency_s"] == pytest.approx(layers * added, rel=1e-6)
    prefill = predict("phi-3.5-moe", engine=timed, gpu="h100-sxm", phase="prefill", batch=16, input_len=128,
                      dtype="fp8")
    plain = predict("phi-3.5-moe", engine="roofline", gpu="h100-sxm", phase="prefill", batch=16, input_len=128,
                    dtype="fp8")
    ops = [next(op for op in p.ops if op["name"] == "moe.experts") for p in (prefill, plain)]
    assert ops[0]["latency_s"] - ops[1]["latency_s"] == pytest.approx(layers * 4e-5, rel=1e-6)  # 2,048 tokens
    for kw in ({"moe_tables": False}, {"moe_impl": "unfused"}, {"tp": 2}):  # default rule; no fused kernel;
        assert experts(timed, **kw)["latency_s"] == pytest.approx(experts("roofline", **kw)["latency_s"])  # I/2


@pytest.mark.parametrize("bad", [{"tokens": [1, 2], "extra_s": [1e-5]}, {"tokens": [16, 1], "extra_s": [0.0, 0.0]},
                                 {"tokens": [], "extra_s": []}])
def test_a_malformed_table_timing_is_refused(bad):
    from pydantic import ValidationError

    from perfmodel.profile import TableExtra

    with pytest.raises(ValidationError):
        TableExtra(experts=16, width=6400, scheme="fp8", **bad)


def test_a_tables_timing_holds_on_the_gpu_it_was_timed_on_alone(roofline_with):
    """Another GPU runs a table of its own: a profile's timed extra time is not carried to it, and
    the table a pass meets there is that GPU's."""
    from perfmodel.prediction import Workload, graph_options, moe_table_extra, moe_table_start, moe_tuned_from
    from perfmodel.profile import load_profile
    from perfmodel.specs.model import load_model

    extra = {"experts": 16, "width": 6400, "scheme": "fp8", "tokens": [1, 256], "extra_s": [1e-5, 2e-5]}
    timed = roofline_with(gpu="h100-sxm", options={**OPTIONS, "moe_off_table_memory": 2.0, "moe_table_extra": [extra]})
    profile, phi, fp8 = load_profile(timed, "h100-sxm"), load_model("phi-3.5-moe"), Workload(quant="fp8")
    assert moe_table_extra(profile, fp8, phi) is not None and moe_table_extra(profile, fp8, phi, "h100-sxm")
    assert moe_table_extra(profile, fp8, phi, "h200-sxm") is None
    assert graph_options(profile, fp8, phi, "h200-sxm").moe_table_extra_s == ()
    assert moe_tuned_from(profile, fp8, phi, "h200-sxm") == moe_table_start("h200-sxm", fp8, phi)

    def experts(engine, gpu):
        p = predict("phi-3.5-moe", engine=engine, gpu=gpu, phase="decode", batch=64, input_len=128, context=128,
                    dtype="fp8")
        return next(op for op in p.ops if op["name"] == "moe.experts")["latency_s"]

    assert experts(timed, "h100-sxm") - experts("roofline", "h100-sxm") == pytest.approx(32 * 1e-5, rel=1e-6)
    assert experts(timed, "h200-sxm") == pytest.approx(experts("roofline", "h200-sxm"))
