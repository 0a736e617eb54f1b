"""The command line: predict (JSON and table), formula, list, sweep --csv, python -m perfmodel."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perfmodel.commands import main
from perfmodel.prediction import predict
from perfmodel.profile import list_engines
from perfmodel.quantization import scheme_names
from perfmodel.specs.hardware import gpu_catalog
from perfmodel.specs.model import load_model
from perfmodel.specs.zoo import zoo_names

ROOT = Path(__file__).resolve().parent.parent

METRIC_KEYS = ("prefill_s", "decode_step_s", "ttft_s", "itl_s", "e2e_s", "throughput_tok_s",
               "output_throughput_tok_s", "params", "active_params", "weights_bytes",
               "kv_cache_bytes", "fits_in_memory")
OP_KEYS = ("name", "flops", "bytes", "comm_bytes", "time_s", "bound")


def cli(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must succeed. Returns stdout."""
    try:
        main(argv)
    except SystemExit as exc:  # typer may exit 0 explicitly
        assert exc.code in (0, None), capsys.readouterr().err
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.out


def strict_json(text: str) -> dict:
    """Parse JSON, refusing NaN/Infinity (not JSON, though Python's json writes them)."""
    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def test_predict_json_has_every_key(capsys):
    out = cli(["predict", "mixtral", "--batch", "8", "--input-len", "1024", "--output-len", "256",
               "--json"], capsys)
    data = strict_json(out)
    for key in METRIC_KEYS:
        assert key in data, key
    assert isinstance(data["fits_in_memory"], bool)
    for key in METRIC_KEYS[:-1]:
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    assert data["ops"], "no op breakdown"
    for op in data["ops"]:
        assert all(k in op for k in OP_KEYS), op
        assert op["bound"] in ("compute", "memory", "link", "latency")
    names = {op["name"] for op in data["ops"]}
    assert {"moe.experts", "moe.router", "attn.core", "lm_head"} <= names
    prov = data["provenance"]
    assert prov["profile"] == "h200-sxm-vllm" and prov["gpu"] == "h200-sxm"  # the default engine: vllm, fitted on the H200
    assert prov["calibrated"] is True
    # the same numbers as the Python API
    api = predict("mixtral", batch=8, input_len=1024, output_len=256)
    for key in METRIC_KEYS:
        assert data[key] == pytest.approx(api.metrics[key], rel=1e-12), key
    assert data["workload"]["batch"] == 8 and data["model"] == "mixtral-8x7b"


def test_predict_json_is_strict_json_with_null_for_missing_metrics(capsys):
    """A prefill has no ITL: the JSON says null, not NaN (which JSON parsers reject)."""
    data = strict_json(cli(["predict", "mixtral", "--phase", "prefill", "--json"], capsys))
    assert data["itl_s"] is None and data["decode_step_s"] is None
    assert data["ttft_s"] > 0 and data["e2e_s"] == data["ttft_s"]
    assert {op["pass"] for op in data["ops"]} == {"prefill"}


def test_predict_table(capsys):
    out = cli(["predict", "mixtral", "--batch", "4", "--tp", "2"], capsys)
    for text in ("TTFT", "ITL", "E2E", "throughput", "fits in memory", "moe.experts", "attn.core",
                 "per-op breakdown", "provenance: profile=h200-sxm-vllm gpu=h200-sxm", "TP=2"):
        assert text in out, text
    m = predict("mixtral", batch=4, tp=2).metrics
    assert f"{m['ttft_s'] * 1e3:.3f} ms" in out


def test_formula_prints_the_expression(capsys):
    # (the roofline engine runs every expert row as it is: the FLOPs read as the model's GEMMs)
    out = cli(["formula", "mixtral", "--op", "moe.experts", "--quantity", "flops", "--engine", "roofline"], capsys)
    model = load_model("mixtral")
    coefficient = 2 * 3 * model.hidden * model.moe.expert_intermediate * model.moe.top_k
    assert "moe.experts" in out and "grouped_gemm" in out
    symbolic = out.split("symbolic", 1)[1].split("prefill:", 1)[0]
    for symbol in ("H", "T", "k", "ep", "tp"):
        assert symbol in symbolic, symbol
    assert "I" in symbolic
    assert "T = B*S" in out
    assert f"{coefficient}⋅B⋅S" in out.split("with this model's numbers", 1)[1]


@pytest.mark.parametrize("model, op, batch", [
    ("qwen3-30b-a3b", "moe.experts", 64),  # vLLM's fused-MoE tiles pad each expert's rows
    ("deepseek-v2-lite", "attn.core", 16),  # MLA decode absorbed, over the latent cache
    ("deepseek-v2-lite", "attn.q_absorb", 16)])
def test_formula_gives_the_op_time_predict_takes(capsys, model, op, batch):
    """A formula is the one the prediction evaluates: its value at the engine's options (the
    expert-row tiles, MLA's decode path) is the prediction's time of that op per layer."""
    data = json.loads(cli(["formula", model, "--op", op, "--quantity", "time", "--phase", "decode",
                           "-b", str(batch), "-l", "1024", "--json"], capsys))
    p = predict(model, batch=batch, input_len=1023, output_len=2)  # its decode step at context 1,024
    # (the op's row of the MoE layers, the formula's; DeepSeek-V2-Lite's first layer is dense)
    total = max(o["time_s"] for o in p.ops if o["pass"] == "decode" and o["name"] == op)
    assert total / load_model(model).n_moe_layers == pytest.approx(data["value"], rel=1e-6)


def test_formula_latex(capsys):
    out = cli(["formula", "mixtral", "--op", "moe.experts", "--quantity", "bytes", "--phase",
               "decode", "--latex"], capsys)
    assert "\\frac" in out and "I_{e}" in out and "b_{e}" in out
    assert "⋅" not in out  # no pretty-printed unicode


def test_formula_takes_the_checkpoint_s_quantization_as_predict_does(capsys):
    import json

    def experts(*extra):
        out = cli(["formula", "gpt-oss-120b", "--op", "moe.experts", "--quantity", "weight_bytes",
                   "--phase", "decode", "-b", "64", "--json", *extra], capsys)
        return json.loads(out)

    stored, bf16 = experts(), experts("--quant", "none")
    assert stored["quant"] == "mxfp4-moe" and bf16["quant"] == "none"
    # MXFP4: 4 bits per weight and one 8-bit scale per 32, against bf16's 16 bits
    assert stored["value"] / bf16["value"] == pytest.approx(4.25 / 16, rel=1e-3)
    # the weights a prediction's decode step reads for the op (36 layers, in two groups: the
    # windowed and the full-attention ones), its activations besides
    step = predict("gpt-oss-120b", batch=64, input_len=128, phase="decode")
    read = sum(o["bytes"] for o in step.ops if o["name"] == "moe.experts")
    assert 36 * stored["value"] < read < 1.01 * 36 * stored["value"]
    text = cli(["formula", "gpt-oss-120b", "--op", "moe.experts", "--quantity", "weight_bytes"], capsys)
    assert "(bf16, quant=mxfp4-moe, TP=EP=PP=1" in text
    unfused = cli(["formula", "olmoe", "--op", "moe.dispatch", "--quantity", "time", "--phase", "decode",
                   "--moe-impl", "unfused", "--engine", "hf", "--json"], capsys)
    fused = cli(["formula", "olmoe", "--op", "moe.dispatch", "--quantity", "time", "--phase", "decode",
                 "--engine", "hf", "--json"], capsys)
    assert json.loads(unfused)["moe_impl"] == "unfused"
    assert json.loads(unfused)["value"] > 10 * json.loads(fused)["value"]  # the loop's kernels


def test_formula_op_list(capsys):
    out = cli(["formula", "deepseek-v2-lite", "--op", "list"], capsys)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "moe.shared" in names and "attn.kv_a_proj" in names and "mlp.ffn" in names


@pytest.mark.parametrize("what, expected", [
    ("models", lambda: zoo_names()),
    ("gpus", lambda: sorted({g.name for g in gpu_catalog().values()})),
    ("engines", lambda: list_engines()),
    ("schemes", lambda: list(scheme_names())),
])
def test_list(what, expected, capsys):
    out = cli(["list", what], capsys)
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == expected()
    assert len(listed) >= 1


def test_list_models_includes_the_zoo(capsys):
    out = cli(["list", "models"], capsys)
    for name in ("mixtral-8x7b", "deepseek-v2-lite", "gpt-oss-20b", "qwen3-30b-a3b"):
        assert name in out
    mixtral = next(line for line in out.splitlines() if line.startswith("mixtral-8x7b "))
    assert "(also: " in mixtral and "mixtral" in mixtral.split("(also: ")[1].split(", ")  # the README's name


def test_list_schemes_says_which_band_each_measured_scheme_takes(capsys):
    """Per scheme and profile that measured it: the band where its held-out rows lie within it,
    their own where they lie outside it with enough of them (fit.residuals.quantization)."""
    from perfmodel.paths import PROFILES_DIR

    schemes = {s["name"]: s for s in json.loads(cli(["list", "schemes", "--json"], capsys))["schemes"]}
    for gpu in ("h100-sxm", "h200-sxm"):
        profile = yaml.safe_load((PROFILES_DIR / f"{gpu}-vllm.yaml").read_text())
        for name, check in profile["fit"]["residuals"]["quantization"].items():
            listed = schemes[name]["measured"].get(f"{gpu}-vllm")
            if listed is not None:
                assert listed == {"band": check["within"], "own_band": bool(check.get("own_band"))}
    assert schemes["fp8"]["measured"]["h100-sxm-vllm"] == {"band": False, "own_band": True}
    fp8 = next(line for line in cli(["list", "schemes"], capsys).splitlines() if line.startswith("fp8 "))
    assert "h100-sxm-vllm (own band)" in fp8


def test_list_models_says_where_each_model_was_measured(capsys):
    """Per model, each calibrated profile that compared it with committed rows: the points it was
    fitted on and those it was checked on, held out (from the profile's fit.residuals.models)."""
    from perfmodel.paths import PROFILES_DIR

    lines = {line.split()[0]: line for line in cli(["list", "models"], capsys).splitlines() if line.strip()}
    h100 = yaml.safe_load((PROFILES_DIR / "h100-sxm-vllm.yaml").read_text())["fit"]["residuals"]["models"]
    h200 = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())["fit"]["residuals"]["models"]
    dense, dense_h200 = h100["llama-3.1-8b"]["held-out"], h200["llama-3.1-8b"]["held-out"]  # a dense model
    assert lines["llama-3.1-8b"].endswith(f"[h100-sxm vllm {dense} held out; h200-sxm vllm {dense_h200} held out]")
    assert "h100-sxm vllm 6 held out" in lines["qwen2-57b-a14b"] and "fitted on" not in lines["qwen2-57b-a14b"]
    models = {m["name"]: m for m in json.loads(cli(["list", "models", "--json"], capsys))["models"]}
    olmoe = {e["profile"]: e for e in models["olmoe-1b-7b"]["measured"]}
    profile = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    counts = profile["fit"]["residuals"]["models"]["olmoe-1b-7b"]
    assert olmoe["h200-sxm-vllm"] == {"profile": "h200-sxm-vllm", "gpu": "h200-sxm", "engine": "vllm",
                                      "train": counts["train"], "held_out": counts["held-out"]}
    assert "olmoe-1b-7b" in profile["fit"]["train_models"] and counts["train"] > 0
    assert [(e["profile"], e["train"]) for e in models["qwen3-8b"]["measured"]] == [("h100-sxm-vllm", 0),
                                                                                     ("h200-sxm-vllm", 0)]
    scout = {e["profile"]: e for e in models["llama-4-scout-17b-16e"]["measured"]}  # cut to 12 layers
    assert scout["h100-sxm-vllm"]["train"] == 0 and scout["h100-sxm-vllm"]["held_out"] > 0


def test_list_names_gpu_aliases_and_each_engines_profiles(capsys):
    out = cli(["list", "gpus"], capsys)
    h100 = next(line for line in out.splitlines() if line.startswith("h100-sxm "))
    assert "h100" in h100.split("(also: ")[1].split(")")[0].split(", ")
    # per GPU, whether each calibrated engine was fitted on it or is carried from another's fit
    assert h100.endswith("[hf fitted; vllm fitted (anchored on h200-sxm)]")
    b200 = next(line for line in out.splitlines() if line.startswith("b200 "))
    assert b200.endswith("[hf carried from h200-sxm, no band; vllm carried from h200-sxm, no band]")
    gpus = {g["name"]: g for g in json.loads(cli(["list", "gpus", "--json"], capsys))["gpus"]}
    assert gpus["b200"]["profiles"]["vllm"] == {"profile": "h200-sxm-vllm", "fitted_on": "h200-sxm",
                                                "fitted_here": False, "anchored_on": None, "band": False}
    assert gpus["h200-sxm"]["profiles"]["vllm"]["band"] and not gpus["h200-sxm"]["profiles"]["vllm"]["anchored_on"]
    assert "roofline" not in gpus["h100-sxm"]["profiles"]
    engines = {line.split()[0]: line for line in cli(["list", "engines"], capsys).splitlines()}
    assert "h200-sxm-vllm (calibrated, band)" in engines["vllm"] and "h100-sxm-vllm" in engines["vllm"]
    assert engines["roofline"].split(None, 1)[1] == "roofline (uncalibrated)"


def test_sweep_csv(tmp_path, capsys):
    path = tmp_path / "sweep.csv"
    out = cli(["sweep", "mixtral", "--grid", "batch=1,4,16", "--grid", "top_k=1,2,4,16",
               "--grid", "dtype=bf16,fp8", "--csv", str(path)], capsys)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 3 * 3 * 2  # top_k=16 > 8 experts is dropped
    assert f"wrote {len(rows)} rows" in out
    assert list(rows[0])[:3] == ["batch", "top_k", "dtype"]
    assert {r["top_k"] for r in rows} == {"1", "2", "4"}
    assert {r["dtype"] for r in rows} == {"bf16", "fp8"}
    row = next(r for r in rows if r["batch"] == "4" and r["top_k"] == "4" and r["dtype"] == "fp8")
    p = predict("mixtral", batch=4, dtype="fp8", overrides={"top_k": 4})
    assert math.isclose(float(row["e2e_s"]), p.metrics["e2e_s"], rel_tol=1e-9)


def test_predict_warns_of_a_sequence_beyond_the_models_positions(capsys):
    """S + O past max_position_embeddings is predicted, with one warning line saying so."""
    main(["predict", "qwen3-30b-a3b", "-s", "40000", "-o", "1000", "--json"])
    err = capsys.readouterr().err
    assert err.strip() == ("perfmodel: warning: a sequence reaches 41,000 tokens, beyond the model's "
                           "max_position_embeddings (40,960): predicted as if its positions reached that far")
    main(["predict", "qwen3-30b-a3b", "-s", "39000", "-o", "1000", "--json"])
    assert capsys.readouterr().err == ""


def test_a_sweeps_csv_rows_stand_alone(tmp_path, capsys):
    """What the header says of every row (model, GPU, engine, phase, the workload's fixed and
    default values) is a column of the CSV too."""
    path = tmp_path / "sweep.csv"
    cli(["sweep", "mixtral", "--gpu", "h100", "--grid", "batch=1,4", "--output-len", "64", "--csv", str(path)], capsys)
    rows = list(csv.DictReader(path.open()))
    assert [r["batch"] for r in rows] == ["1", "4"]
    assert {(r["model"], r["gpu"], r["engine"], r["phase"], r["input_len"], r["output_len"]) for r in rows} == {
        ("mixtral-8x7b", "h100-sxm", "vllm", "request", "128", "64")}


def test_a_sweep_says_so_when_a_row_holds_a_number_that_is_not_finite(capsys, monkeypatch):
    """numpy's warnings of the open mesh's discarded branches stay quiet; a kept row whose metric
    is not finite is said in one line."""
    import numpy as np

    from perfmodel import sweeps

    real = sweeps.sweep

    def with_a_nan(*args, **kwargs):
        table = real(*args, **kwargs)
        table.loc[table.index[0], "ttft_s"] = np.nan
        return table

    main(["sweep", "olmoe", "--grid", "batch=1,2", "--json"])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sweeps, "sweep", with_a_nan)
    main(["sweep", "olmoe", "--grid", "batch=1,2", "--json"])
    assert "some rows hold a number that is not finite (ttft_s)" in capsys.readouterr().err


def test_columns_a_kind_of_row_has_no_value_in_are_not_said_to_be_broken(capsys):
    """Rows without a draft have no speculative columns, speculative rows no host floor of a plain
    decode step, a prefill no ITL: empty by design, no warning."""
    main(["sweep", "qwen3-30b-a3b", "-b", "16", "--grid", "spec_draft=none,qwen3-1.7b", "--grid", "spec_tokens=3",
          "--grid", "spec_accept=0.7", "--json"])
    main(["sweep", "olmoe", "--phase", "prefill", "--grid", "batch=1,2", "--json"])
    assert "not finite" not in capsys.readouterr().err


def test_sweep_warns_of_rows_that_outgrow_the_kv_cache(capsys):
    """A row whose batch the KV cache does not hold at once runs as vLLM's scheduler runs it,
    with preemptions; the sweep says how many rows do, on stderr."""
    main(["sweep", "mixtral", "--gpu", "h100", "--dtype", "fp8", "-s", "2048", "-o", "2048",
          "--grid", "batch=1,128", "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["rows"]
    assert [r["kv_waves"] > 1 for r in rows] == [False, True]
    assert [r["kv_preemptions"] > 0 for r in rows] == [False, True]
    assert "1 of 2 rows outgrow the KV cache (kv_waves > 1)" in captured.err


def test_sweep_table_to_stdout(capsys):
    out = cli(["sweep", "mixtral", "--grid", "batch=1,2", "--output-len", "64", "--set", "top_k=4"], capsys)
    lines = out.strip().splitlines()
    assert lines[0] == ("mixtral-8x7b on h200-sxm · vllm · phase request · input_len=128 output_len=64 · "
                        "overrides: top_k=4")
    header = lines[1].split()
    assert header[0] == "batch" and "e2e_s" in header and "fits_in_memory" in header
    assert len(lines) == 4


def test_python_dash_m_help(tmp_path):
    env = {**os.environ, "PERFMODEL_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "perfmodel", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("predict", "formula", "sweep", "list"):
        assert command in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("model, batch, input_len", [
    ("qwen1.5-moe-a2.7b", 1, 1024),   # launch-bound: 24 layers, each with shared experts run uncompiled
    ("mixtral-8x7b", 16, 2048),       # two engine steps of 16,384 tokens, hidden behind the GPU
    ("mixtral-8x7b", 1, 128),         # 128 tokens fit a captured CUDA graph: no launch
])
def test_formula_launch_is_the_floor_predict_takes(capsys, model, batch, input_len):
    """``--op launch`` is the host's launch floor of the prefill as the prediction builds it."""
    data = json.loads(cli(["formula", model, "--op", "launch", "--quantity", "time", "-b", str(batch),
                           "-s", str(input_len), "--json"], capsys))
    p = predict(model, phase="prefill", batch=batch, input_len=input_len)
    assert data["value"] == pytest.approx(p.metrics["prefill_launch_s"], rel=1e-9, abs=1e-12)
    assert data["per"] == "pass" and "t_eager_layer" in data["symbolic"]
    assert ("t_uncompiled" in data["with_model_numbers"]) == (model == "qwen1.5-moe-a2.7b")
    text = cli(["formula", model, "--op", "launch", "--quantity", "time", "-b", str(batch),
                "-s", str(input_len)], capsys)
    assert text.splitlines()[0].startswith(f"{load_model(model).name} · launch · the host's time")


def test_formula_launch_shows_how_a_launch_varies_in_a_serving_run(capsys):
    """``--op launch`` under a profile with launch noise writes its covariance and the factor's
    spread; an engine without it (hf) says nothing of it."""
    from perfmodel.profile import load_profile

    args = ["formula", "qwen1.5-moe-a2.7b", "--op", "launch", "--quantity", "time", "-s", "1024"]
    noise = load_profile("vllm", "h200-sxm").latency.launch_noise
    data = json.loads(cli([*args, "--json"], capsys))["serving_noise"]
    assert data["covariance"] == "sigma_f**2*exp(-Delta_t/tau_f) + sigma_s**2*exp(-Delta_t/tau_s)"
    assert data["values"]["tau_s"] == noise.tau_slow_s and data["values"]["sigma_w"] == noise.sigma_white
    sd = (noise.sigma_white**2 + noise.sigma_fast**2 + noise.sigma_slow**2) ** 0.5
    assert data["factor_p90"] == pytest.approx(math.exp(1.2815515655 * sd), rel=1e-3)
    assert data["factor_p10"] * data["factor_p90"] == pytest.approx(1.0, rel=1e-3)  # median 1
    text = cli(args, capsys)
    assert "in a serving run each launch takes this × e^z" in text and f"τ_s = {noise.tau_slow_s:g} s" in text
    assert json.loads(cli([*args, "--engine", "hf", "--json"], capsys))["serving_noise"] is None
    assert "in a serving run" not in cli([*args, "--engine", "hf"], capsys)


def test_a_layout_beyond_one_node_is_said_to_cost_its_links_as_one_nodes(capsys):
    main(["predict", "mixtral", "--tp", "16"])
    err = capsys.readouterr().err
    assert "the layout's 16 GPUs span 2 nodes of 8 h200-sxm" in err and err.count("\n") == 1
    main(["predict", "mixtral", "--tp", "8"])
    assert "nodes" not in capsys.readouterr().err
