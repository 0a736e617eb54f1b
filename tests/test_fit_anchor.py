"""A GPU measured in fewer kinds of rows is fitted anchored on the reference GPU's vllm fit, and
the transfer between the GPUs is measured with every row held out."""

from __future__ import annotations

import json

import pytest
import yaml

from perfmodel.calibration.fit import profile_differences
from perfmodel.calibration.fit_anchor import (COMPUTE_EFFICIENCIES, HELD_LATENCY, HOST_PACED_BATCH, OWN_HOST_FIELDS,
                                              PROFILE_PINNED, REFERENCE_GPU, anchor_path, carried_entries, held_parameters,
                                              note_carried_checks, own_host_rows, read_anchor, same_compute, seeded)
from perfmodel.calibration.fit_vllm import DENSE_AS, fit_vllm_profile
from perfmodel.commands import main
from perfmodel.errors import SpecError
from perfmodel.host_speed import HOST_LATENCY_FIELDS
from perfmodel.paths import PROFILES_DIR, RESULTS_DIR


@pytest.fixture(scope="module")
def h100():
    return fit_vllm_profile("h100-sxm")


def _committed(gpu: str) -> dict:
    return yaml.safe_load((PROFILES_DIR / f"{gpu}-vllm.yaml").read_text())


def test_committed_h100_profile_is_what_the_data_fits_on_the_h200_anchor(h100):
    assert profile_differences(_committed("h100-sxm"), h100) == []
    reference = _committed(REFERENCE_GPU)
    anchor = h100["fit"]["anchor"]
    assert anchor["gpu"] == REFERENCE_GPU and anchor["profile"].endswith("h200-sxm-vllm.yaml")
    assert {"per_step_s", "per_layer_s", "eager_layer_s", "launch_noise"} <= set(anchor["held"])
    # the host's terms and the fixed GPU times are the reference's, exactly, but the host's times that
    # pace a replayed decode step: the H100's training rows at B >= 256 fit them on its own hosts
    own = anchor["own_host"]
    assert own["fields"] == list(OWN_HOST_FIELDS) and own["min_batch"] == HOST_PACED_BATCH
    assert own["points"] and all(int(p.split("|B=")[1].split("|")[0]) >= HOST_PACED_BATCH for p in own["points"])
    assert set(own["points"]) <= set(h100["fit"]["points"])
    for field in OWN_HOST_FIELDS:
        assert field not in anchor["held"]
        assert h100["latency"][field] != reference["latency"][field], field
    # the H100's lent hosts spend longer per sequence than the H200's at one probe
    assert h100["latency"]["host_seq_s"] > reference["latency"]["host_seq_s"]
    for field in (*HOST_LATENCY_FIELDS, "per_step_s", "per_layer_s", "host_probe_ref_ms", "host_speed_exponent"):
        if field in reference["latency"] and field not in OWN_HOST_FIELDS:
            assert h100["latency"][field] == reference["latency"][field], field
    assert h100["latency"]["launch_noise"] == reference["latency"]["launch_noise"]
    # the H100's own microbenchmark tables give its graph node's cost, not the reference's
    assert "per_kernel_s" not in anchor["held"]
    assert h100["fit"]["per_kernel_source"].startswith("calibration/data/h100-sxm/")
    assert h100["latency"]["per_kernel_s"] != reference["latency"]["per_kernel_s"]
    # the memory efficiencies are the H100's own, fitted on its rows alone, which are all its training
    # points; the compute fractions of the one die the two GPUs share are the reference's
    for name in COMPUTE_EFFICIENCIES:
        assert h100["efficiency"][name]["compute"] == reference["efficiency"][name]["compute"], name
        assert f"efficiency.{name}.compute" in anchor["held"]
    assert h100["efficiency"]["grouped_gemm"]["memory"] != reference["efficiency"]["grouped_gemm"]["memory"]
    # the H100's own kernel profiles (its training models' profiled decode steps) fit what they pin on
    # the H200 too (the fused MoE's exposed overlap, the attention's context half): not held
    profiled = h100["fit"]["kernel_profile"]
    for category, (name, field) in PROFILE_PINNED.items():
        assert profiled[category]["points"] and all(p.startswith("vllm|olmoe-1b-7b|") or
                                                    p.startswith("vllm|qwen1.5-moe-a2.7b|")
                                                    for p in profiled[category]["points"]), category
        assert f"efficiency.{name}.{field}" not in anchor["held"]
    # fp8's multipliers are fitted on the H100's own fp8 rows (Mixtral-8x7B's), both of them
    for field in ("grouped_gemm_compute", "grouped_gemm_memory"):
        assert h100["quantization"]["fp8"][field] != reference["quantization"]["fp8"][field], field
    # and the MXFP4 kernel's tile times on gpt-oss-120b's own profiled decode steps here (fit.tiles)
    named = h100["fit"]["points"]
    assert named and all(p.split("|")[1] in ("olmoe-1b-7b", "qwen1.5-moe-a2.7b") or "quant=fp8|" in p
                         or (p.split("|")[1] == "gpt-oss-120b" and "quant=mxfp4|" in p) for p in named)
    assert set(h100["fit"]["tiles"]["mxfp4-moe"]["points"]) <= set(named)
    assert "carried_from" not in h100["quantization"]["mxfp4-moe"]
    rows = {json.loads(line)["point_id"] for name in ("h100-vllm.jsonl", "h100-vllm-tiles.jsonl")
            for line in open(RESULTS_DIR / name)}
    assert set(named) <= rows
    # Phi-3.5-MoE's fp8 experts meet a table tuned from 256 tokens: the factor comes from the A/B of
    # its profiled decode steps at that table and at vLLM's default rule, and only from it
    assert h100["options"]["moe_off_table_memory"] > 1
    assert h100["fit"]["moe_off_table"]["models"] == ["phi-3.5-moe"]
    assert "moe_off_table_memory" not in reference["options"]
    # fp8 was measured here (Mixtral-8x7B): fitted; the schemes fitted only there are carried, and
    # checked where this GPU has held-out rows of them (fp8-block: DeepSeek-V3's), else not
    assert "fp8" not in anchor["carried"] and h100["quantization"]["fp8"]["reason"].startswith("fitted on")
    assert "quantization.fp8-block" in anchor["carried"] and "kv_cache.fp8" in anchor["carried"]
    block = h100["quantization"]["fp8-block"]
    assert block["band"] is False and block["reason"].startswith("h200-sxm's")
    assert "fit.residuals.quantization.fp8-block, outside the band" in block["reason"]
    assert "not checked here" in h100["quantization"]["w4a16"]["reason"]
    # fp8-block's dense GEMMs take fp8's multipliers: this GPU's, its experts' the reference's
    assert block["gemm_memory"] == h100["quantization"]["fp8"]["gemm_memory"]
    assert block["grouped_gemm_compute"] == reference["quantization"]["fp8-block"]["grouped_gemm_compute"]
    # the serving band is the H100's own: its own runs that kept up, none carried from the anchor
    assert "carried_from" not in h100["serving_error_band"]
    assert "h100-vllm-serving.jsonl" in h100["serving_error_band"]["source"]
    assert h100["error_band"]["decode_step"] > 0


def test_a_prediction_in_a_carried_scheme_says_where_its_kernels_come_from():
    from perfmodel import predict

    p = predict("olmoe-1b-7b", engine="vllm", gpu="h100-sxm", quant="w4a16", batch=16, input_len=512,
                output_len=64)
    assert p.provenance["profile"] == "h100-sxm-vllm" and p.provenance["error_band"] is None
    assert "carried from h200-sxm's fit" in p.provenance["error_band_note"]


def test_an_unanchored_fit_takes_every_term_from_its_own_rows():
    own = fit_vllm_profile("h100-sxm", anchor=None)
    assert "anchor" not in own["fit"]
    assert own["latency"]["host_step_s"] != _committed(REFERENCE_GPU)["latency"]["host_step_s"]
    assert "fp8-block" not in own.get("quantization", {})  # never measured on the H100


def test_the_anchor_gives_the_host_times_and_the_fixed_gpu_times():
    assert set(HOST_LATENCY_FIELDS) <= HELD_LATENCY and {"per_step_s", "per_layer_s"} <= HELD_LATENCY
    anchor = {"latency": {"host_step_s": 2e-3, "per_step_s": 4e-4, "per_kernel_s": 1e-6, "host_probe_ref_ms": 36.0,
                          "per_layer_s": 2e-5}}
    tables = {"latency": {"per_kernel_s": 2e-6, "per_step_s": 0.0}}  # a GPU with microbenchmark tables
    base, taken = seeded(tables, anchor)
    assert base["latency"] == {"per_kernel_s": 2e-6, "per_step_s": 4e-4, "per_layer_s": 2e-5,
                               "host_step_s": 2e-3, "host_probe_ref_ms": 36.0}
    assert sorted(taken) == ["host_probe_ref_ms", "host_step_s", "per_layer_s", "per_step_s"]
    _, taken = seeded({"latency": {"per_kernel_s": 0.0}}, anchor)  # none: the anchor's graph node
    assert "per_kernel_s" in taken


def test_a_gpu_of_the_anchors_die_takes_its_compute_fractions():
    assert same_compute("h100-sxm", "h200-sxm")  # one GH100 die, other memory
    assert not same_compute("h100-pcie", "h200-sxm")  # fewer SMs, lower clocks
    assert not same_compute("b200", "h200-sxm")
    held = held_parameters(shared_compute=True)
    assert {("efficiency", name, "compute") for name in COMPUTE_EFFICIENCIES} <= held
    assert ("latency", "host_step_s", None) in held and ("efficiency", "gemm", "memory") not in held
    assert not any(section == "efficiency" for section, *_ in held_parameters(shared_compute=False))
    anchor = {"latency": {}, "efficiency": {"gemm": {"compute": 0.5, "memory": 1.1}, "attention": {"compute": 0.7}}}
    base = {"latency": {}, "efficiency": {"gemm": {"compute": 0.8, "memory": 0.8}, "grouped_gemm": {"compute": 0.6}}}
    seeded_base, taken = seeded(base, anchor, shared_compute=True)
    assert seeded_base["efficiency"]["gemm"] == {"compute": 0.5, "memory": 0.8}  # the memory stays this GPU's
    assert seeded_base["efficiency"]["grouped_gemm"] == {"compute": 0.6}  # the anchor states none
    assert seeded_base["efficiency"]["attention"] == {"compute": 0.7}
    assert taken == ["efficiency.gemm.compute", "efficiency.attention.compute"]
    assert base["efficiency"]["gemm"]["compute"] == 0.8  # not changed in place
    assert seeded(base, anchor)[0]["efficiency"] == base["efficiency"]  # another die: none taken
    # a category of kernel profiles the GPU lacks: the term they pin is the anchor's, on any die
    anchor["efficiency"]["grouped_gemm"] = {"exposed": 0.26}
    seeded_base, taken = seeded(base, anchor, unprofiled=("expert_gemm",))
    assert seeded_base["efficiency"]["grouped_gemm"] == {"compute": 0.6, "exposed": 0.26}
    assert taken == ["efficiency.grouped_gemm.exposed"]
    assert ("efficiency", "attention", "context_half") in held_parameters(False, ("attention",))
    assert ("efficiency", "attention", "context_half") not in held_parameters(True)


def test_the_hosts_decode_times_are_fitted_where_the_gpus_rows_hold_batches_the_host_paces():
    wide = {"point_id": "vllm|olmoe-1b-7b|B=1024|S=16", "batch": 1024}
    narrow = {"point_id": "vllm|olmoe-1b-7b|B=64|S=128", "batch": 64}
    assert own_host_rows([narrow, wide, dict(wide)]) == [wide["point_id"]]
    assert own_host_rows([narrow]) == []
    for field in OWN_HOST_FIELDS:
        assert ("latency", field, None) in held_parameters(True)
        assert ("latency", field, None) not in held_parameters(True, own_host=True)
    # the other host times stay the anchor's either way
    latency = {field for section, field, _ in held_parameters(True, own_host=True) if section == "latency"}
    assert latency == HELD_LATENCY - set(OWN_HOST_FIELDS)


def test_an_anchoring_profile_names_its_gpu(tmp_path):
    (tmp_path / "x-vllm.yaml").write_text("name: x-vllm\nengine: vllm\n")
    with pytest.raises(SpecError, match="x-vllm.yaml: the anchoring profile names no gpu"):
        read_anchor(tmp_path / "x-vllm.yaml")
    assert read_anchor(PROFILES_DIR / "h200-sxm-vllm.yaml")["gpu"] == REFERENCE_GPU


def test_anchor_paths_and_their_errors():
    assert anchor_path(REFERENCE_GPU, "auto") is None  # the reference fits every term itself
    assert anchor_path("h100-sxm", None) is None
    assert anchor_path("h100-sxm", "auto").name == "h200-sxm-vllm.yaml"
    with pytest.raises(SpecError, match="its own GPU"):
        anchor_path("h100-sxm", "h100-sxm")
    with pytest.raises(SpecError, match="no fitted vllm profile of l40s"):
        anchor_path("h100-sxm", "l40s")


def test_carried_entries_keep_what_this_gpu_fitted():
    base = {"gpu": "x", "quantization": {"fp8": {"gemm_memory": 0.5, "gemm_compute": 0.6, "reason": "mine"}}}
    anchor = {"gpu": "y", "quantization": {
        "fp8": {"gemm_memory": 0.9, "gemm_compute": 0.9, "reason": "theirs"},
        "fp8-block": {"gemm_memory": 0.9, "gemm_compute": 0.9, "grouped_gemm_compute": 0.4, "reason": "r"},
        "mxfp4-moe": {"tile_s": 1e-6, "host_layer_s": 1e-3, "reason": "t"}},
        "kv_cache": {"fp8": {"attention_memory": 0.6, "reason": "k"}}}
    carried = carried_entries(base, anchor, DENSE_AS)
    assert carried == ["quantization.fp8-block", "quantization.mxfp4-moe", "kv_cache.fp8"]
    assert base["quantization"]["fp8"] == {"gemm_memory": 0.5, "gemm_compute": 0.6, "reason": "mine"}
    block = base["quantization"]["fp8-block"]
    assert (block["gemm_memory"], block["gemm_compute"], block["grouped_gemm_compute"]) == (0.5, 0.6, 0.4)
    assert block["band"] is False and "y's" in block["reason"]
    assert base["kv_cache"]["fp8"]["attention_memory"] == 0.6
    # this GPU's held-out rows then check two of them: the flag follows, and the carried reason
    # says it was checked here instead of "not checked here"
    note_carried_checks(base, {"quantization": {"mxfp4-moe": {"within": False}, "fp8": {"within": True}},
                               "kv_cache": {"fp8": {"within": True}}})
    mx = base["quantization"]["mxfp4-moe"]
    assert mx["band"] is False and "not checked here" not in mx["reason"]
    assert "fit.residuals.quantization.mxfp4-moe, outside the band" in mx["reason"] and mx["reason"].endswith(": t")
    assert base["kv_cache"]["fp8"]["band"] is True
    assert "fit.residuals.kv_cache.fp8, within the band" in base["kv_cache"]["fp8"]["reason"]
    assert base["quantization"]["fp8"]["reason"] == "mine" and base["quantization"]["fp8"]["band"] is True
    assert "not checked here" in block["reason"]  # no check of it: the reason stands


def test_validate_fitted_on_another_gpu_holds_out_every_row(tmp_path, capsys):
    main(["validate", "qwen3-30b-a3b", "--backend", "vllm", "--gpu", "h100-sxm", "--fitted-on", "h200-sxm",
          "--json", "--out", str(tmp_path)])
    result = json.loads(capsys.readouterr().out)
    assert result["source"]["calibrated_engine"] == "h200-sxm-vllm"
    assert result["source"]["fitted_on"].startswith("h200-sxm (every term from its own GPU's rows), "
                                                    "transferred to h100-sxm")
    assert result["source"]["train_models"] == []
    mine = [p for p in result["points"] if p["engine"] == "h200-sxm-vllm"]
    assert mine and all(p["split"].startswith("held-out") for p in mine)
    # the H100's own fit: its training points are its own rows, the transfer line is absent
    main(["validate", "qwen3-30b-a3b", "--backend", "vllm", "--gpu", "h100-sxm", "--json", "--out", str(tmp_path)])
    own = json.loads(capsys.readouterr().out)
    assert own["source"]["calibrated_engine"] == "h100-sxm-vllm" and "fitted_on" not in own["source"]
    # each predicted with its own profile: the H200's fit on the H100's peaks, and the H100's
    theirs = {(p["point_id"], p["metric"]): p["predicted"] for p in mine}
    ours = {(p["point_id"], p["metric"]): p["predicted"] for p in own["points"] if p["engine"] == "h100-sxm-vllm"}
    assert theirs.keys() == ours.keys() and all(theirs[k] != ours[k] for k in theirs if k[1] == "decode_step")
    main(["validate", "olmoe-1b-7b", "--backend", "vllm", "--gpu", "h100-sxm", "--json", "--out", str(tmp_path)])
    assert any(p["split"] == "train" for p in json.loads(capsys.readouterr().out)["points"])


@pytest.mark.parametrize("gpu, fitted_on, expected", [
    ("h100-sxm", "l40s", "no vllm profile fitted on l40s"), ("h100-sxm", "b300", "unknown GPU"),
    ("h200-sxm", "h100-sxm", "anchored on h200-sxm's fit")])  # the H200's rows fitted the H100's anchor
def test_validate_fitted_on_a_gpu_without_a_fit_is_one_line(gpu, fitted_on, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "olmoe-1b-7b", "--backend", "vllm", "--gpu", gpu, "--fitted-on", fitted_on])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_a_regime_too_few_of_its_prefills_state_takes_the_anchors_ttft_band_where_they_lie_within_it():
    from perfmodel.calibration.fit_anchor import carried_regime_bands

    anchor = {"gpu": "h200-sxm", "error_band": {"ttft": 0.1, "ttft_launch_bound": 0.3, "ttft_graph_replayed": 0.31}}
    points = {"ttft GPU-bound": {"n": 30, "p90_abs_pct": 8.0}, "ttft graph-replayed": {"n": 4, "p90_abs_pct": 5.2}}
    band = {"ttft": 0.15, "ttft_launch_bound": 0.2, "source": "own"}
    assert carried_regime_bands(band, points, anchor) == ["ttft_graph_replayed"]
    assert band["ttft_graph_replayed"] == 0.31 and band["ttft"] == 0.15  # its own bands stay its own
    assert "h200-sxm's" in band["source"] and "held-out graph-replayed prefills (4)" in band["source"]
    # the GPU's prefills outside the anchor's half-width, none of them, or no split by regime: nothing
    for own, mine in (({"n": 4, "p90_abs_pct": 40.0}, {"ttft": 0.15, "ttft_launch_bound": 0.2}),
                      ({}, {"ttft": 0.15, "ttft_launch_bound": 0.2}),
                      ({"n": 4, "p90_abs_pct": 5.2}, {"ttft": 0.15})):
        assert carried_regime_bands(mine, {"ttft graph-replayed": own}, anchor) == []
        assert "ttft_graph_replayed" not in mine
    # a band not split by decode regime: the host-bound steps take the anchor's three half-widths
    # where this GPU's host-bound steps lie within them in ITL and throughput
    host = {"decode_step_host_bound": 0.29, "e2e_host_bound": 0.28, "throughput_host_bound": 0.34}
    anchor["error_band"].update(host)
    steps = {"decode_step host-bound": {"n": 1, "p90_abs_pct": 2.0},
             "throughput host-bound": {"n": 1, "p90_abs_pct": 1.8}}
    mine = {"ttft": 0.15, "decode_step": 0.08}
    assert carried_regime_bands(mine, steps, anchor) == list(host) and all(mine[f] == v for f, v in host.items())
    assert "held-out host-bound decode steps (1)" in mine["source"]
    outside = {**steps, "throughput host-bound": {"n": 1, "p90_abs_pct": 40.0}}
    assert carried_regime_bands(mine := {"decode_step": 0.08}, outside, anchor) == [] and len(mine) == 1
    own_split = {"decode_step": 0.08, **dict.fromkeys(host, 0.2)}  # its own split stays its own
    assert carried_regime_bands(own_split, steps, anchor) == [] and own_split["e2e_host_bound"] == 0.2


def test_the_h100_states_a_regimes_band_from_five_points_and_carries_it_from_fewer(h100):
    """With at least MIN_REGIME_POINTS held-out points of a regime the H100 states its own band for
    it (the 90th percentile of their |error|: its graph-replayed prefills, five since its
    seventeenth lease); with fewer it carries the H200's, where its points lie within it (its
    host-bound decode steps: four since its own host times per decode step, which put a fifth
    step, Mixtral-8x7B's 8-layer skeleton at B = 16, on the GPU's side)."""
    from perfmodel.calibration.fit import MIN_REGIME_POINTS

    reference = _committed(REFERENCE_GPU)
    points = h100["fit"]["residuals"]["band points"]
    regimes = (("ttft graph-replayed", "ttft_graph_replayed"),
               ("decode_step host-bound", "decode_step_host_bound"),
               ("throughput host-bound", "throughput_host_bound"))
    assert points["ttft graph-replayed"]["n"] >= MIN_REGIME_POINTS
    for regime, field in regimes:
        own = points[regime]
        if own["n"] >= MIN_REGIME_POINTS:
            assert h100["error_band"][field] == pytest.approx(own["p90_abs_pct"] / 100, rel=1e-3)
        else:
            assert h100["error_band"][field] == reference["error_band"][field]
            assert own["p90_abs_pct"] / 100 <= reference["error_band"][field]
            assert "h200-sxm's" in h100["error_band"]["source"]


@pytest.mark.parametrize("name", ["h100-sxm-vllm", "h200-sxm-vllm", "h100-sxm-hf", "h200-sxm-hf"])
def test_each_schemes_verdict_is_against_the_band_predictions_carry(name):
    """A scheme's (and a KV dtype's) check reads the profile's final band, the regimes it carries
    from its anchor included: where every regime's 90th percentile lies within that band's
    half-width, the scheme is within, and the other way round (the H100's fp8 rows were once
    checked before its host-bound band was carried, and took the GPU-bound steps' for it)."""
    from perfmodel.calibration.fit import DECODE_BAND_SUFFIX, TTFT_BAND_FIELDS

    profile = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    band = profile["error_band"]
    residuals = profile["fit"]["residuals"]
    checks = {**residuals.get("quantization", {}), **residuals.get("kv_cache", {})}
    assert checks or name.endswith("hf")
    for check in checks.values():
        if check.get("why", "").startswith("fewer than"):
            continue
        inside = True
        for key, p90 in check["p90_abs_pct"].items():
            metric, regime = key.split(" ", 1)
            limit = (band.get(TTFT_BAND_FIELDS.get(regime, "ttft")) if metric == "ttft"
                     else band.get(metric + DECODE_BAND_SUFFIX[regime], band[metric]))
            inside &= limit is not None and p90 <= 100 * limit
        assert check["within"] == inside, (name, check)
