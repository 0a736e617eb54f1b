"""What users read: tables written to a file or pipe (never cut), --json of every command
(counts as integers, overrides and the GPU count echoed), --version, the warning for a workload
that does not fit, and the error band only where it was measured."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import pytest
import yaml

from perfmodel.commands import main
from perfmodel.paths import PROFILES_DIR
from perfmodel.prediction import COUNT_METRICS, predict
from perfmodel.profile import list_engines, load_profile
from perfmodel.quantization import scheme_names
from perfmodel.specs.hardware import gpu_catalog
from perfmodel.specs.model import load_model
from perfmodel.specs.zoo import load_hf_config, zoo_names
from perfmodel.sweeps import sweep

CALIBRATED = PROFILES_DIR / "h200-sxm-hf.yaml"


def run(argv: list[str], capsys, code: int = 0) -> tuple[str, str]:
    """Run the CLI in-process; returns (stdout, stderr) after checking the exit status."""
    try:
        main(argv)
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    out, err = capsys.readouterr()
    assert status == code, (status, err)
    assert "Traceback" not in err
    return out, err


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


# tables to a file or a pipe

def test_a_table_written_to_a_pipe_cuts_no_value(tmp_path, capsys):
    """Captured stdout is not a terminal: every op name and value is printed whole, however
    long (here a model given by a long path)."""
    folder = tmp_path / ("a-rather-long-folder-name-for-a-config-" * 3)
    folder.mkdir()
    config = folder / "config.json"
    config.write_text(json.dumps(load_hf_config("mixtral-8x7b")))
    out, _ = run(["predict", str(config), "--batch", "4", "--set", "top_k=4"], capsys)
    assert "…" not in out
    p = predict(str(config), batch=4, overrides={"top_k": 4})
    assert str(config) in out
    for op in p.ops:
        if op["time_s"] > 0:  # the table lists the ops that take time
            assert op["name"] in out, op["name"]
    assert f"{p.metrics['ttft_s'] * 1e3:.3f} ms" in out
    assert max(len(line) for line in out.splitlines()) > 80  # wider than a default terminal


def test_sweep_table_to_a_pipe_has_every_column(capsys):
    out, _ = run(["sweep", "mixtral", "--grid", "batch=1,2"], capsys)
    header = out.splitlines()[1].split()
    assert header == [*sweep("mixtral", {"batch": [1, 2]}).columns]


# header and JSON: overrides and GPU count

def test_predict_header_shows_layout_gpus_and_overrides(capsys):
    out, _ = run(["predict", "mixtral", "--tp", "2", "--ep", "2", "--set", "top_k=4",
                  "--set", "num_experts=16"], capsys)
    assert "layout: TP=2 EP=2 PP=1 = 4 GPUs" in out
    assert "overrides: top_k=4, num_experts=16" in out
    out, _ = run(["predict", "mixtral"], capsys)
    assert "= 1 GPU" in out and "overrides: none" in out
    out, _ = run(["predict", "deepseek-v3", "-b", "16", "--tp", "2", "--dp", "4", "--expert-parallel"], capsys)
    assert "layout: TP=2 EP=1 PP=1 DP=4 +EP = 8 GPUs" in out


def test_a_layout_of_several_gpus_shows_its_throughput_per_gpu(capsys):
    p = predict("mixtral-8x7b", batch=64, tp=4)
    out, _ = run(["predict", "mixtral", "-b", "64", "--tp", "4"], capsys)
    assert f"per GPU, of the layout's 4 │ {p.metrics['throughput_tok_s'] / 4:,.0f} tok/s" in " ".join(out.split())
    out, _ = run(["predict", "mixtral", "-b", "64"], capsys)
    assert "per GPU" not in out


def test_predict_json_counts_are_integers_and_echo_overrides_and_gpus(capsys):
    out, _ = run(["predict", "mixtral", "--tp", "2", "--pp", "2", "--set", "top_k=4", "--json"], capsys)
    data = strict_json(out)
    assert data["gpus"] == 4 and type(data["gpus"]) is int
    assert data["overrides"] == {"top_k": 4}
    for key in COUNT_METRICS:
        assert type(data[key]) is int, key
    for key in ("batch", "input_len", "output_len", "tp", "ep", "pp"):
        assert type(data["workload"][key]) is int, key
    api = predict("mixtral", tp=2, pp=2, overrides={"top_k": 4})
    assert data["params"] == round(api.metrics["params"])
    assert f'"params": {round(api.metrics["params"])},' in out  # written as an integer


def test_formula_json(capsys):
    # (the roofline engine runs every expert row as it is; vllm's pads them to its kernel's tiles)
    out, _ = run(["formula", "mixtral", "--op", "moe.experts", "--quantity", "flops", "--json",
                  "--batch", "4", "--input-len", "512", "--engine", "roofline"], capsys)
    data = strict_json(out)
    model = load_model("mixtral")
    coefficient = 2 * 3 * model.hidden * model.moe.expert_intermediate * model.moe.top_k
    assert data["symbolic"] == "6*H*I_e*T*k/(ep*tp)"
    assert data["substitutions"]["T"] == "B*S"
    assert data["with_model_numbers"] == f"{coefficient}*B*S"
    assert data["at"] == {"B": 4, "S": 512}
    assert data["value"] == coefficient * 4 * 512 and data["unit"] == "FLOP"
    assert data["layers_value"] == model.n_layers and "latex" not in data
    out, _ = run(["formula", "mixtral", "--op", "moe.experts", "--quantity", "flops", "--json", "--latex",
                  "--batch", "4", "--input-len", "512", "--engine", "roofline"], capsys)
    assert strict_json(out)["latex"]["with_model_numbers"] == rf"{coefficient} B S"  # --latex is not dropped
    out, _ = run(["formula", "mixtral", "--op", "attn.core", "--quantity", "time", "--phase",
                  "decode", "--context", "4096", "--json"], capsys)
    data = strict_json(out)
    assert data["at"] == {"B": 1, "L": 4096} and data["unit"] == "s" and 0 < data["value"] < 1
    out, _ = run(["formula", "mixtral", "--op", "list", "--json"], capsys)
    ops = strict_json(out)["ops"]
    assert {"moe.experts", "attn.core"} <= {op["name"] for op in ops}


def test_formula_text_ends_with_the_value(capsys):
    out, _ = run(["formula", "mixtral", "--op", "moe.experts", "--quantity", "flops", "-b", "2",
                  "--engine", "roofline"], capsys)
    model = load_model("mixtral")
    value = 6 * model.hidden * model.moe.expert_intermediate * model.moe.top_k * 2 * 128
    assert out.strip().splitlines()[-1] == f"at B=2, S=128: {value:.6g} FLOP per layer"
    # under vllm the 256 tokens' 512 expert rows are padded to the fused-MoE kernel's 64-row
    # tiles, half a tile per expert on average
    out, _ = run(["formula", "mixtral", "--op", "moe.experts", "--quantity", "flops", "-b", "2"], capsys)
    assert float(out.strip().splitlines()[-1].split(": ")[1].split()[0]) > value


def test_sweep_json_rows(capsys):
    out, _ = run(["sweep", "mixtral", "--grid", "batch=1,4", "--grid", "tp=1,2", "--set", "top_k=4",
                  "--json"], capsys)
    data = strict_json(out)
    assert data["overrides"] == {"top_k": 4} and data["phase"] == "request"
    assert data["dropped"] == {"count": 0, "of": 4, "reasons": []}
    rows = data["rows"]
    assert [(r["batch"], r["tp"], r["gpus"]) for r in rows] == [(1, 1, 1), (1, 2, 2), (4, 1, 1), (4, 2, 2)]
    for row in rows:
        assert type(row["batch"]) is int and type(row["params"]) is int
        assert type(row["fits_in_memory"]) is bool
        p = predict("mixtral", batch=row["batch"], tp=row["tp"], overrides={"top_k": 4})
        assert math.isclose(row["e2e_s"], p.metrics["e2e_s"], rel_tol=1e-9)


def test_sweep_json_null_for_missing_metrics(capsys):
    out, _ = run(["sweep", "mixtral", "--grid", "batch=1,2", "--phase", "decode", "--json"], capsys)
    row = strict_json(out)["rows"][0]
    assert "ttft_s" not in row and row["itl_s"] > 0


@pytest.mark.parametrize("what, names", [
    ("models", lambda: zoo_names()),
    ("gpus", lambda: sorted({g.name for g in gpu_catalog().values()})),
    ("engines", lambda: list_engines()),
    ("schemes", lambda: list(scheme_names())),
])
def test_list_json(what, names, capsys):
    out, _ = run(["list", what, "--json"], capsys)
    items = strict_json(out)[what]
    key = "engine" if what == "engines" else "name"
    assert [item[key] for item in items] == names()
    if what == "schemes":  # the checkpoint formats each reads, and which profile measured it
        by_name = {item["name"]: item for item in items}
        profile = load_profile("vllm", "h200-sxm")
        # (the H100's fit carries fp8-block from the H200's, unmeasured there: not listed)
        assert load_profile("vllm", "h100-sxm").quantization["fp8-block"].carried_from == "h200-sxm"
        check = profile.fit["residuals"]["quantization"]["fp8-block"]
        assert by_name["fp8-block"]["measured"] == {profile.name: {
            "band": bool(profile.quantization["fp8-block"].band), "own_band": bool(check.get("own_band"))}}
        assert by_name["fp8-channel"]["measured"] == {} and by_name["none"]["checkpoints"] == []
        assert {"quant_method": "awq", "bits": 4} in by_name["w4a16"]["checkpoints"]
        served = profile.serving_error_band.schemes["w4a16"]  # a GPTQ Qwen3-30B-A3B served on vLLM
        assert by_name["w4a16"]["served"] == {profile.name: {"runs": served.runs, "band": served.within,
                                                             "own_band": served.own_band}}
        assert by_name["fp8-channel"]["served"] == {} and by_name["none"]["served"] == {}
    elif what == "models":
        assert {"model_type", "display_name", "aliases"} <= set(items[0])
    elif what == "gpus":
        h200 = next(g for g in items if g["name"] == "h200-sxm")
        assert h200["hbm_capacity_gib"] > 0 and h200["peak_tflops"]["bf16"] > 0
    else:
        hf = next(e for e in items if e["engine"] == "hf")
        assert any(p["calibrated"] and p["error_band"] for p in hf["profiles"])


def test_version(capsys):
    out, _ = run(["--version"], capsys)
    assert out.strip() == f"perfmodel {importlib.metadata.version('perfmodel')}"


# does not fit in memory

def test_a_workload_that_does_not_fit_is_warned_about(capsys):
    """Not even one sequence's KV cache fits beside the weights (a larger batch alone runs in waves)."""
    argv = ["predict", "mixtral", "--batch", "256", "--input-len", "327680", "--output-len", "8192"]
    p = predict("mixtral", batch=256, input_len=327680, output_len=8192)
    m = p.metrics
    assert not m["fits_in_memory"] and m["kv_waves"] == 0
    # what fits instead: two GPUs, or fp8 weights on one (each then runs the batch in waves)
    on_two = predict("mixtral", batch=256, input_len=327680, output_len=8192, tp=2).metrics
    in_fp8 = predict("mixtral", batch=256, input_len=327680, output_len=8192, quant="fp8").metrics
    assert on_two["fits_in_memory"] and in_fp8["fits_in_memory"]
    for extra in ([], ["--json"]):
        out, err = run(argv + extra, capsys)
        beyond, fit = err.strip().splitlines()  # 335,872 tokens are past Mixtral's 32,768 positions too
        assert beyond.startswith("perfmodel: warning: a sequence reaches 335,872 tokens")
        assert fit == (f"perfmodel: warning: does not fit: needs "
                               f"{m['memory_bytes'] / 2**30:.2f} GiB per GPU of "
                               f"{m['memory_capacity_bytes'] / 2**30:.2f} GiB usable on h200-sxm: not even one "
                               f"sequence fits (weights and activations "
                               f"{(m['weights_bytes'] + m['activation_bytes']) / 2**30:.2f} GiB, one sequence's "
                               f"KV cache {m['kv_cache_bytes'] / 256 / 2**30:.2f} GiB); it fits with --tp 2 "
                               f"({on_two['memory_bytes'] / 2**30:.1f} GiB per GPU) or --quant fp8 "
                               f"({in_fp8['memory_bytes'] / 2**30:.1f} GiB per GPU)")
    assert strict_json(out)["fits_with"] == [  # the warning stays off stdout; the JSON has the ways
        {"flags": "--tp 2", "memory_bytes": pytest.approx(on_two["memory_bytes"])},
        {"flags": "--quant fp8", "memory_bytes": pytest.approx(in_fp8["memory_bytes"])}]
    assert "fits_with" not in strict_json(run(["predict", "mixtral", "--json"], capsys)[0])
    run(argv + ["--strict"], capsys, code=1)
    out, err = run(["predict", "mixtral", "--strict"], capsys)
    assert err == ""


def test_what_fits_instead_is_the_smallest_layout_and_fp8_below_it():
    from perfmodel.fit_hint import hint_text, ways_to_fit

    # Mixtral with 32 experts (about 339 GiB of bf16 weights) on the H100: 8 GPUs, or 4 in fp8
    arguments = dict(model="mixtral", gpu="h100-sxm", overrides=["num_experts=32"])
    ways = ways_to_fit(arguments)
    assert [w["flags"] for w in ways] == ["--tp 8", "--tp 4 --quant fp8"]
    for way, change in zip(ways, ({"tp": 8}, {"tp": 4, "quant": "fp8"})):
        m = predict(**arguments, **change).metrics
        assert m["fits_in_memory"] and way["memory_bytes"] == pytest.approx(m["memory_bytes"])
    assert not predict(**arguments, tp=4).metrics["fits_in_memory"]
    assert not predict(**arguments, tp=2, quant="fp8").metrics["fits_in_memory"]
    # DeepSeek-V3 (its checkpoint already fp8 in blocks) fits on no single host of H100s
    assert ways_to_fit(dict(model="deepseek-v3", gpu="h100-sxm")) == []
    assert hint_text([]) == "; no --tp up to 8 GPUs fits it"


def test_sweep_warns_about_rows_that_do_not_fit_and_dropped_points(capsys):
    _, err = run(["sweep", "mixtral", "--grid", "input_len=8192,327680", "--grid", "top_k=2,9",
                  "--batch", "512", "--output-len", "8192"], capsys)
    lines = err.strip().splitlines()
    assert lines[0].startswith("perfmodel: warning: dropped 2 of 4 combinations that predict refuses")
    assert "top_k=9" in lines[0]
    assert lines[1] == "perfmodel: warning: 1 of 2 rows do not fit in memory (fits_in_memory False)"


# error band

def _profile(tmp_path: Path, name: str, edit) -> str:
    data = yaml.safe_load(CALIBRATED.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_band_applies_where_it_was_measured():
    p = predict("qwen3-30b-a3b", engine="hf", gpu="h200", batch=16)
    band = p.provenance["error_band"]
    assert band and p.intervals()
    assert p.provenance["error_band_scope"] == {"gpu": "h200-sxm", "dtype": "bf16", "gpus": 1}
    assert "from held-out h200-sxm bf16 points on 1 GPU" in p.provenance["error_band_note"]
    assert "no band" not in p.provenance["error_band_note"]
    # the H100 has an hf fit of its own, and its band
    h100 = predict("qwen3-30b-a3b", engine="hf", gpu="h100", batch=16)
    assert h100.provenance["error_band_scope"]["gpu"] == "h100-sxm" and h100.intervals()


@pytest.mark.parametrize("kwargs", [dict(phase="prefill", input_len=4096), dict(output_len=1)],
                         ids=["prefill", "one output token"])
def test_where_e2e_is_the_prefill_it_takes_ttfts_band(kwargs):
    p = predict("qwen3-30b-a3b", batch=64, **kwargs)
    band = p.provenance["error_band"]
    assert band["e2e"] == band["throughput"] == band["ttft"] and "E2E, throughput: TTFT's" in p.provenance[
        "error_band_note"]
    assert p.intervals()["e2e_s"] == p.intervals()["ttft_s"]
    request = predict("qwen3-30b-a3b", batch=64, output_len=2).provenance["error_band"]
    assert request["e2e"] != request["ttft"]  # a decode step's share: the decode band


@pytest.mark.parametrize("model, model_type", [("llama-4-scout", "llama4_text"), ("qwen2-7b", "qwen2")])
def test_no_band_for_an_architecture_no_measured_model_had(model, model_type):
    """The band's held-out models are new shapes of the architectures measured; Llama 4's text
    model and the dense Qwen2 were never measured as a target on the H200."""
    from perfmodel.prediction import measured_model_types
    from perfmodel.profile import load_profile

    assert model_type not in measured_model_types(load_profile("vllm", "h200-sxm"))
    p = predict(model)
    assert p.provenance["error_band"] is None and p.intervals() is None
    assert f"no {model_type} model measured" in p.provenance["error_band_note"]
    # a hypothetical shape of a measured architecture keeps it
    assert predict("mixtral-8x7b", overrides=["num_experts=16"]).provenance["error_band"] is not None


def test_a_decode_steps_throughput_takes_the_steps_band():
    band = predict("qwen3-30b-a3b", batch=64, phase="decode").provenance["error_band"]
    assert band["throughput"] == band["decode_step"]


@pytest.mark.parametrize("kwargs, why", [
    (dict(gpu="mi300x"), "not measured on mi300x"),
    (dict(gpu="b200"), "not measured on b200"),
    (dict(dtype="fp8"), "not measured at fp8 weights with a bf16 KV cache"),
    (dict(kv_dtype="fp8"), "not measured at bf16 weights with a fp8 KV cache"),
    (dict(tp=2), "not measured on 2 GPUs (TP=2 EP=1 PP=1)"),
    (dict(ep=2, pp=2), "not measured on 4 GPUs (TP=1 EP=2 PP=2)"),
    (dict(dp=2, expert_parallel=True), "not measured on 2 GPUs (TP=1 EP=1 PP=1 DP=2 +EP)"),
])
def test_no_band_where_it_was_not_measured(kwargs, why):
    p = predict("qwen3-30b-a3b", engine="hf", batch=16, **kwargs)
    note = p.provenance["error_band_note"]
    assert p.provenance["error_band"] is None and p.intervals() is None
    assert note.startswith(f"no band: {why}") and "(the profile's band, ±" in note
    assert "from held-out h200-sxm bf16 points on 1 GPU" in note


def test_the_band_scope_is_read_from_the_profile(tmp_path):
    """Where a profile says it was measured (fit dtype, GPU count) is data, not code."""
    def edit(data):
        data["fit"]["kernel_fit"]["dtype"] = "float16"
        data["fit"]["gpu_count"] = 2
    engine = _profile(tmp_path, "fp16-2gpus.yaml", edit)
    assert predict("olmoe-1b-7b", engine=engine, dtype="fp16", tp=2).provenance["error_band"]
    assert predict("olmoe-1b-7b", engine=engine, dtype="bf16", tp=2).provenance["error_band"] is None
    assert predict("olmoe-1b-7b", engine=engine, dtype="fp16").provenance["error_band"] is None
    unstated = _profile(tmp_path, "unstated.yaml", lambda d: d["fit"]["kernel_fit"].pop("dtype"))
    p = predict("olmoe-1b-7b", engine=unstated)
    assert p.provenance["error_band"] is None
    assert "does not say which dtype" in p.provenance["error_band_note"]


def test_the_terminal_says_why_there_is_no_band(capsys):
    out, _ = run(["predict", "qwen3-30b-a3b", "--engine", "hf", "--gpu", "mi300x"], capsys)
    assert "not measured on mi300x" in out and "no band" in out
    table = out.split("fits in memory")[0]
    assert "%" not in table.split("± band", 1)[1]  # no band in the metrics table
    out, _ = run(["predict", "qwen3-30b-a3b", "--engine", "hf"], capsys)
    assert "from held-out h200-sxm bf16 points on 1 GPU" in out and "no band" not in out
    assert "±" in out.split("± band", 1)[1].split("fits in memory")[0]
    out, _ = run(["predict", "qwen3-30b-a3b", "--engine", "roofline"], capsys)
    assert "no error band: uncalibrated profile" in out


def test_sweep_sort_orders_the_rows_by_a_column(capsys):
    out, _ = run(["sweep", "mixtral", "--grid", "batch=1,16,64", "--grid", "tp=1,2",
                  "--sort", "-throughput_per_gpu_tok_s", "--json"], capsys)
    rows = json.loads(out)["rows"]
    per_gpu = [r["throughput_per_gpu_tok_s"] for r in rows]
    assert per_gpu == sorted(per_gpu, reverse=True) and len(rows) == 6
    out, _ = run(["sweep", "mixtral", "--grid", "batch=1,16,64", "--sort", "itl_s", "--json"], capsys)
    itl = [r["itl_s"] for r in json.loads(out)["rows"]]
    assert itl == sorted(itl)
    _, err = run(["sweep", "mixtral", "--grid", "batch=1,16", "--sort", "speed"], capsys, code=2)
    assert "--sort speed: no such column" in err and "throughput_tok_s" in err
