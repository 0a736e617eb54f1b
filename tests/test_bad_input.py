"""Bad input of every kind ends the CLI with exactly one stderr line and exit code 2.

Each case runs ``perfmodel.commands.main(argv)`` in-process (a few run ``python -m perfmodel`` in a
subprocess) and checks: exit status 2, stderr is one non-empty line starting with
``perfmodel: error:`` that names the problem, and no traceback on either stream. Files the
cases need (hardware specs, engine profiles, config.json) are written to ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perfmodel.commands import main
from perfmodel.paths import HARDWARE_DIR, PROFILES_DIR
from perfmodel.specs.zoo import load_hf_config

ROOT = Path(__file__).resolve().parent.parent

TINY_MIXTRAL = {
    "model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4,
    "num_experts_per_tok": 2, "vocab_size": 256,
}


def _hardware(tmp: Path, name: str, edit) -> str:
    data = yaml.safe_load((HARDWARE_DIR / "h200-sxm.yaml").read_text())
    edit(data)
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _profile(tmp: Path, name: str, edit) -> str:
    data = yaml.safe_load((PROFILES_DIR / "roofline.yaml").read_text())
    edit(data)
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _config(tmp: Path, name: str, content) -> str:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _directory(tmp: Path, name: str) -> str:
    path = tmp / name
    path.mkdir()
    return str(path)


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _zoo_config(tmp: Path, model: str, **fields) -> str:
    """A zoo model's config.json with raw fields set."""
    return _config(tmp, "config.json", {**load_hf_config(model), **fields})


def _not_utf8(tmp: Path, name: str, source: Path | None = None) -> str:
    """A valid spec or config file (a copy of ``source``, else a tiny Mixtral config.json) with
    one byte that is not UTF-8 inside a string."""
    data = source.read_bytes() if source else json.dumps(TINY_MIXTRAL).encode()
    marker = b"name: " if source else b'"mixtral'
    path = tmp / name
    path.write_bytes(data.replace(marker, marker + b"\xff", 1))
    return str(path)


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit


#: (id, argv builder taking tmp_path, a fragment the error line must contain).
CASES = [
    # names
    ("unknown-gpu", lambda t: ["predict", "mixtral", "--gpu", "h999"], "unknown GPU 'h999'"),
    ("unknown-model", lambda t: ["predict", "no-such-model"], "unknown model 'no-such-model'"),
    ("unknown-engine", lambda t: ["predict", "mixtral", "--engine", "warp9"], "unknown engine 'warp9'"),
    ("unknown-dtype", lambda t: ["predict", "mixtral", "--dtype", "fp7"], "unknown dtype 'fp7'"),
    ("unknown-kv-dtype", lambda t: ["predict", "mixtral", "--kv-dtype", "fp3"], "unknown kv-dtype 'fp3'"),
    ("unknown-phase", lambda t: ["predict", "mixtral", "--phase", "middle"],
     "Invalid value for '--phase': 'middle' is not one of"),
    ("speculative-prefill", lambda t: ["predict", "qwen3-30b-a3b", "--spec-draft", "qwen3-0.6b", "--spec-tokens",
                                       "3", "--spec-accept", "0.7", "--phase", "prefill"],
     "speculative decoding changes decode steps only"),
    ("speculative-sweep-prefill", lambda t: ["sweep", "qwen3-30b-a3b", "--phase", "prefill", "--grid",
                                             "spec_draft=none,qwen3-0.6b", "--spec-tokens", "3", "--spec-accept",
                                             "0.7"], "speculative decoding changes decode steps only"),
    ("speculative-drafts-past-the-end", lambda t: ["predict", "qwen3-30b-a3b", "--spec-draft", "qwen3-0.6b",
                                                   "--spec-tokens", "128", "--spec-accept", "0.7", "-o", "128"],
     "spec-tokens (γ = 128) must be below the output length (128)"),
    ("hf-fit-anchored-on-itself", lambda t: ["calibrate", "fit", "--engine", "hf", "--anchor", "h200-sxm", "--check"],
     "an hf fit of h200-sxm cannot be anchored on its own fit"),
    ("hf-fit-without-microbenchmarks", lambda t: ["calibrate", "fit", "--gpu", "b200", "--check"],
     "calibration data"),
    ("serving-with-the-hf-backend", lambda t: ["validate", "olmoe", "--serving", "--backend", "hf"],
     "--serving replays vLLM serving runs: --backend hf does not apply"),
    ("config-without-model-type", lambda t: ["predict", _config(t, "c.json", {
        k: v for k, v in TINY_MIXTRAL.items() if k != "model_type"})], "the config has no model_type (supported: "),
    ("config-without-top-k", lambda t: ["predict", _config(t, "c.json", {
        k: v for k, v in TINY_MIXTRAL.items() if k != "num_experts_per_tok"})],
     "config is missing 'num_experts_per_tok' (top_k)"),
    ("results-a-folder", lambda t: ["validate", "olmoe", "--results", _directory(t, "rows")],
     "is a folder; give the measured rows' JSONL file"),
    ("study-a-folder", lambda t: ["report", "paper", "--study", _directory(t, "study")], "is a folder, not a study file"),
    ("dense-layers-beyond-the-model", lambda t: ["predict", "deepseek-v3", "--set", "first_k_dense=62"],
     "config field 'first_k_dense_replace' (62) exceeds num_hidden_layers (61)"),
    ("calibrate-alone", lambda t: ["calibrate"], "missing command (see 'perfmodel --help')"),
    ("zero-kv-heads-by-config-name", lambda t: ["predict", "olmoe", "--set", "num_key_value_heads=0"],
     "invalid model: config field 'num_key_value_heads': Input should be greater than 0"),
    ("zero-experts-by-the-familys-name", lambda t: ["predict", "deepseek-v2-lite", "--set", "num_experts=0"],
     "config field 'n_routed_experts'"),
    ("unknown-command", lambda t: ["frobnicate"], "frobnicate"),
    ("missing-model-argument", lambda t: ["predict"], "model"),
    ("list-unknown-category", lambda t: ["list", "teapots"], "teapots"),
    ("dtype-without-gpu-peak", lambda t: ["predict", "mixtral", "--gpu", "h100", "--dtype", "fp4"],
     "no fp4 peak"),
    # workload values
    ("batch-zero", lambda t: ["predict", "mixtral", "--batch", "0"], "batch must be a positive integer"),
    ("batch-negative", lambda t: ["predict", "mixtral", "-b", "-4"], "batch must be a positive integer"),
    ("batch-not-a-number", lambda t: ["predict", "mixtral", "--batch", "lots"], "--batch"),
    ("batch-too-large", lambda t: ["predict", "mixtral", "--batch", str(10**20)], "too large"),
    ("input-len-zero", lambda t: ["predict", "mixtral", "--input-len", "0"], "input-len must be a positive"),
    ("output-len-zero", lambda t: ["predict", "mixtral", "--output-len", "0"], "output-len must be a positive"),
    ("context-zero", lambda t: ["predict", "mixtral", "--phase", "decode", "--context", "0"],
     "context must be a positive"),
    ("tp-zero", lambda t: ["predict", "mixtral", "--tp", "0"], "tp must be a positive integer"),
    ("ep-negative", lambda t: ["predict", "mixtral", "--ep", "-2"], "ep must be a positive integer"),
    ("pp-zero", lambda t: ["predict", "mixtral", "--pp", "0"], "pp must be a positive integer"),
    ("skew-above-one", lambda t: ["predict", "mixtral", "--skew", "1.5"], "skew must be in [0, 1]"),
    ("skew-negative", lambda t: ["predict", "mixtral", "--skew", "-0.1"], "skew must be in [0, 1]"),
    ("skew-nan", lambda t: ["predict", "mixtral", "--skew", "nan"], "skew must be in [0, 1]"),
    ("ep-not-dividing-experts", lambda t: ["predict", "mixtral", "--ep", "3"],
     "ep (3) must divide the number of experts (8)"),
    ("pp-not-dividing-layers", lambda t: ["predict", "mixtral", "--pp", "5"],
     "pp (5) must divide the number of layers (32)"),
    ("ep-on-dense-model", lambda t: ["predict", "llama-3.1-8b", "--ep", "2"], "needs a model with experts"),
    # --set overrides
    ("set-top-k-above-experts", lambda t: ["predict", "mixtral", "--set", "top_k=9"],
     "top_k (9) exceeds num_experts (8)"),
    ("set-negative-experts", lambda t: ["predict", "mixtral", "--set", "num_experts=-1"], "must not be negative"),
    ("set-zero-hidden", lambda t: ["predict", "mixtral", "--set", "hidden_size=0"], "must be positive"),
    ("set-zero-head-dim", lambda t: ["predict", "mixtral", "--set", "head_dim=0"], "head_dim"),
    ("set-without-equals", lambda t: ["predict", "mixtral", "--set", "top_k"], "expected KEY=VALUE"),
    ("set-empty-value", lambda t: ["predict", "mixtral", "--set", "top_k="], "empty"),
    ("set-empty-key", lambda t: ["predict", "mixtral", "--set", "=4"], "bad --set key"),
    ("set-unknown-key", lambda t: ["predict", "mixtral", "--set", "warp_factor=9"], "unknown --set key 'warp_factor'"),
    ("set-unknown-key-names-config-fields", lambda t: ["predict", "deepseek-v2-lite", "--set", "warp_factor=9"],
     "or a field of its config.json: first_k_dense_replace, head_dim, hidden_size, intermediate_size, kv_lora_rank, "
     "max_position_embeddings,"),
    ("set-non-numeric", lambda t: ["predict", "mixtral", "--set", "top_k=abc"], "must be an integer"),
    ("set-bool-for-int", lambda t: ["predict", "mixtral", "--set", "top_k=true"], "must be an integer"),
    ("set-fraction-for-int", lambda t: ["predict", "mixtral", "--set", "top_k=1.5"], "must be an integer"),
    ("set-infinite", lambda t: ["predict", "mixtral", "--set", "top_k=.inf"], "must be an integer"),
    ("set-nan", lambda t: ["predict", "mixtral", "--set", "num_layers=.nan"], "must be an integer"),
    ("set-list-for-int", lambda t: ["predict", "mixtral", "--set", "top_k=[1, 2]"], "must be an integer"),
    ("set-kv-heads-not-dividing", lambda t: ["predict", "mixtral", "--set", "num_kv_heads=7"],
     "must be a multiple of num_key_value_heads"),
    ("set-expert-field-on-dense", lambda t: ["predict", "llama-3.1-8b", "--set", "top_k=2"], "has no experts"),
    # hardware files
    ("gpu-file-malformed-yaml", lambda t: ["predict", "mixtral", "--gpu", _write(t, "bad.yaml", "name: x\n  oops: [\n")],
     "malformed YAML"),
    ("gpu-file-not-a-mapping", lambda t: ["predict", "mixtral", "--gpu", _write(t, "list.yaml", "- 1\n- 2\n")],
     "expected a mapping"),
    ("gpu-file-missing-field", lambda t: ["predict", "mixtral", "--gpu", _hardware(t, "gpu.yaml", lambda d: d.pop("hbm_bandwidth_tb_s"))],
     "hbm_bandwidth_tb_s"),
    ("gpu-file-extra-field", lambda t: ["predict", "mixtral", "--gpu", _hardware(t, "gpu.yaml", lambda d: d.update(flux_capacitor=1))],
     "flux_capacitor"),
    ("gpu-file-negative-bandwidth", lambda t: ["predict", "mixtral", "--gpu", _hardware(t, "gpu.yaml", lambda d: d.update(hbm_bandwidth_tb_s=-4.8))],
     "hbm_bandwidth_tb_s"),
    ("gpu-file-infinite-bandwidth", lambda t: ["predict", "mixtral", "--gpu", _hardware(t, "gpu.yaml", lambda d: d.update(hbm_bandwidth_tb_s=float("inf")))],
     "finite"),
    ("gpu-file-is-directory", lambda t: ["predict", "mixtral", "--gpu", _directory(t, "d.yaml")],
     "cannot read"),
    ("predict-report-into-a-file", lambda t: ["predict", "mixtral", "--out", _write(t, "r.html", "kept")],
     "is a file; the report folder must be a folder"),
    ("sweep-report-under-a-file", lambda t: ["sweep", "mixtral", "--grid", "batch=1,2", "--out",
                                             _write(t, "r", "kept") + "/sub"], "lies under"),
    # engine profiles
    ("profile-malformed-yaml", lambda t: ["predict", "mixtral", "--engine", _write(t, "p.yaml", "efficiency: [1\n")],
     "malformed YAML"),
    ("profile-missing-op-class", lambda t: ["predict", "mixtral", "--engine", _profile(t, "p.yaml", lambda d: d["efficiency"].pop("comm"))],
     "missing op classes: comm"),
    ("profile-efficiency-out-of-range", lambda t: ["predict", "mixtral", "--engine", _profile(t, "p.yaml", lambda d: d["efficiency"]["gemm"].update(compute=7))],
     "efficiency.gemm.compute"),
    ("profile-negative-latency", lambda t: ["predict", "mixtral", "--engine", _profile(t, "p.yaml", lambda d: d["latency"].update(per_kernel_s=-1))],
     "per_kernel_s"),
    ("profile-nonexistent-file", lambda t: ["predict", "mixtral", "--engine", str(t / "none.yaml")], "cannot read profile"),
    # config.json files
    ("config-invalid-json", lambda t: ["predict", _config(t, "config.json", "{not json")], "malformed config file"),
    ("config-not-an-object", lambda t: ["predict", _config(t, "config.json", [1, 2, 3])], "expected a JSON object"),
    ("config-unsupported-model-type", lambda t: ["predict", _config(t, "config.json", {**TINY_MIXTRAL, "model_type": "bert"})],
     "unsupported model_type 'bert'"),
    ("config-missing-hidden-size", lambda t: ["predict", _config(t, "config.json", {k: v for k, v in TINY_MIXTRAL.items() if k != "hidden_size"})],
     "missing 'hidden_size'"),
    ("config-heads-not-divisible", lambda t: ["predict", _config(t, "config.json", {**TINY_MIXTRAL, "num_key_value_heads": 3})],
     "must be a multiple of num_key_value_heads"),
    ("config-string-for-int", lambda t: ["predict", _config(t, "config.json", {**TINY_MIXTRAL, "num_hidden_layers": "2"})],
     "must be an integer"),
    ("config-nonexistent-path", lambda t: ["predict", str(t / "nowhere" / "config.json")], "cannot read"),
    ("config-directory-without-file", lambda t: ["predict", str(t)], "cannot read"),
    # formula
    ("formula-unknown-op", lambda t: ["formula", "mixtral", "--op", "moe.teleport"], "unknown op 'moe.teleport'"),
    ("formula-unknown-quantity", lambda t: ["formula", "mixtral", "--op", "moe.experts", "--quantity", "joules"],
     "joules"),
    ("formula-request-phase", lambda t: ["formula", "mixtral", "--op", "moe.experts", "--phase", "request"],
     "prefill or decode"),
    ("formula-unknown-quant", lambda t: ["formula", "mixtral", "--op", "moe.experts", "--quant", "fp3"],
     "unknown quant 'fp3'"),
    ("formula-unknown-moe-impl", lambda t: ["formula", "mixtral", "--op", "moe.experts", "--moe-impl", "looped"],
     "looped"),
    # sweep
    ("grid-without-equals", lambda t: ["sweep", "mixtral", "--grid", "batch"], "expected KEY=V1,V2"),
    ("grid-no-values", lambda t: ["sweep", "mixtral", "--grid", "batch=,"], "has no values"),
    ("grid-unknown-key", lambda t: ["sweep", "mixtral", "--grid", "warp=1,2"], "unknown grid key 'warp'"),
    ("grid-non-numeric", lambda t: ["sweep", "mixtral", "--grid", "batch=1,two"], "bad --grid values for 'batch'"),
    ("grid-negative", lambda t: ["sweep", "mixtral", "--grid", "batch=-1,2"], "must be positive"),
    ("grid-fraction", lambda t: ["sweep", "mixtral", "--grid", "batch=1.5"], "must be integers"),
    ("grid-infinite", lambda t: ["sweep", "mixtral", "--grid", "input_len=inf"], "must be finite"),
    ("grid-skew-out-of-range", lambda t: ["sweep", "mixtral", "--grid", "skew=0,2"], "skew must be in [0, 1]"),
    ("grid-no-valid-combination", lambda t: ["sweep", "mixtral", "--grid", "top_k=9,10"], "no valid combination"),
    ("grid-expert-key-on-dense", lambda t: ["sweep", "llama-3.1-8b", "--grid", "top_k=1,2"], "needs a model with experts"),
    ("grid-unknown-dtype", lambda t: ["sweep", "mixtral", "--grid", "dtype=bf16,fp7"], "unknown dtype 'fp7'"),
    ("grid-unknown-gpu", lambda t: ["sweep", "mixtral", "--grid", "gpu=h200,h999"], "unknown GPU 'h999'"),
    ("sweep-models-empty-name", lambda t: ["sweep", "mixtral,,olmoe", "--grid", "batch=1"], "an empty name"),
    ("sweep-models-unknown", lambda t: ["sweep", "mixtral,nope", "--grid", "batch=1"], "nope: unknown model"),
    ("grid-model-key", lambda t: ["sweep", "mixtral", "--grid", "model=olmoe"], "comma-separated"),
    ("baseline-without-value", lambda t: ["sweep", "mixtral", "--grid", "quant=none,fp8", "--baseline", "quant"],
     "expected KEY=VALUE"),
    ("baseline-key-not-swept", lambda t: ["sweep", "mixtral", "--grid", "quant=none,fp8", "--baseline", "batch=1"],
     "not a swept key"),
    ("baseline-value-not-swept",
     lambda t: ["sweep", "mixtral", "--grid", "quant=none,fp8", "--baseline", "quant=w4a16"],
     "not among the swept values of quant"),
    ("baseline-number-as-text", lambda t: ["sweep", "mixtral", "--grid", "batch=1,16", "--baseline", "batch=one"],
     "batch takes a number"),
    # per-layer list fields of config.json, each family that reads one
    ("config-qwen2-moe-mlp-only-layers-int", lambda t: ["predict", _zoo_config(t, "qwen1.5-moe-a2.7b", mlp_only_layers=5)],
     "'mlp_only_layers' must be a list of layer indices"),
    ("config-qwen3-moe-mlp-only-layers-strings", lambda t: ["predict", _zoo_config(t, "qwen3-30b-a3b", mlp_only_layers=["0"])],
     "'mlp_only_layers' must be a list of layer indices"),
    ("config-mlp-only-layers-out-of-range", lambda t: ["predict", _zoo_config(t, "qwen3-30b-a3b", mlp_only_layers=[48])],
     "names layer 48"),
    ("config-gpt-oss-layer-types-string", lambda t: ["predict", _zoo_config(t, "gpt-oss-20b", layer_types="sliding_attention")],
     "'layer_types' must be a list with one entry per layer"),
    ("config-gpt-oss-layer-types-too-short", lambda t: ["predict", _zoo_config(t, "gpt-oss-20b", layer_types=["sliding_attention"])],
     "'layer_types' has 1 entries, but the model has 24 layers"),
    ("config-gpt-oss-layer-types-unknown-kind", lambda t: ["predict", _zoo_config(t, "gpt-oss-20b", layer_types=["chunked_attention"] * 24)],
     "each entry must be one of full_attention, sliding_attention"),
    ("config-llama4-moe-layers-int", lambda t: ["predict", _zoo_config(t, "llama-4-scout-17b-16e", moe_layers=3)],
     "'moe_layers' must be a list of layer indices"),
    ("config-llama4-moe-layers-repeated", lambda t: ["predict", _zoo_config(t, "llama-4-scout-17b-16e", moe_layers=[1, 1])],
     "'moe_layers' names a layer twice"),
    ("config-llama4-no-rope-layers-string", lambda t: ["predict", _zoo_config(t, "llama-4-scout-17b-16e", no_rope_layers="1")],
     "'no_rope_layers' must be a list"),
    ("config-llama4-no-rope-layers-not-flags", lambda t: ["predict", _zoo_config(t, "llama-4-scout-17b-16e", no_rope_layers=[2] * 48)],
     "'no_rope_layers' must hold only 0 or 1"),
    ("config-llama4-layer-types-sliding", lambda t: ["predict", _zoo_config(t, "llama-4-scout-17b-16e", layer_types=["sliding_attention"] * 48)],
     "each entry must be one of full_attention, chunked_attention"),
    ("config-qwen2-layer-types-int", lambda t: ["predict", _zoo_config(t, "qwen2-7b", use_sliding_window=True, layer_types=3)],
     "'layer_types' must be a list"),
    ("config-qwen3-layer-types-mapping", lambda t: ["predict", _zoo_config(t, "qwen3-8b", use_sliding_window=True, layer_types={"0": "full_attention"})],
     "'layer_types' must be a list"),
    ("config-qwen2-moe-layer-types-too-short", lambda t: ["predict", _zoo_config(t, "qwen1.5-moe-a2.7b", use_sliding_window=True, layer_types=["full_attention"])],
     "'layer_types' has 1 entries"),
    ("config-bool-field-string", lambda t: ["predict", _zoo_config(t, "llama-3.1-8b", mlp_bias="yes")],
     "'mlp_bias' must be true or false"),
    # files that crash a parser: too deep, too long a number, not UTF-8
    ("config-nested-100000-deep", lambda t: ["predict", _config(t, "config.json", DEEP)], "nested too deeply"),
    ("config-integer-too-long", lambda t: ["predict", _config(t, "config.json", '{"hidden_size": 1' + "0" * 5000 + "}")],
     "malformed config file"),
    ("gpu-file-nested-100000-deep", lambda t: ["predict", "mixtral", "--gpu", _write(t, "gpu.yaml", DEEP)], "nested too deeply"),
    ("profile-nested-100000-deep", lambda t: ["predict", "mixtral", "--engine", _write(t, "p.yaml", DEEP)], "nested too deeply"),
    ("set-integer-too-long", lambda t: ["predict", "mixtral", "--set", "top_k=1" + "0" * 5000],
     "bad --set value for 'top_k': '1000"),
    ("set-value-nested-100000-deep", lambda t: ["predict", "mixtral", "--set", "top_k=" + DEEP], "bad --set value for 'top_k'"),
    ("config-not-utf8-predict", lambda t: ["predict", _not_utf8(t, "config.json")], "not UTF-8"),
    ("config-not-utf8-formula", lambda t: ["formula", _not_utf8(t, "config.json"), "--op", "list"], "not UTF-8"),
    ("config-not-utf8-sweep", lambda t: ["sweep", _not_utf8(t, "config.json"), "--grid", "top_k=1,2"], "not UTF-8"),
    ("config-not-utf8-measure", lambda t: ["measure", _not_utf8(t, "config.json")], "not UTF-8"),
    ("gpu-file-not-utf8-predict", lambda t: ["predict", "mixtral", "--gpu", _not_utf8(t, "gpu.yaml", HARDWARE_DIR / "h200-sxm.yaml")],
     "not UTF-8"),
    ("gpu-file-not-utf8-sweep", lambda t: ["sweep", "mixtral", "--grid", "top_k=1,2", "--gpu", _not_utf8(t, "gpu.yaml", HARDWARE_DIR / "h200-sxm.yaml")],
     "not UTF-8"),
    ("gpu-file-not-utf8-validate", lambda t: ["validate", "mixtral", "--gpu", _not_utf8(t, "gpu.yaml", HARDWARE_DIR / "h200-sxm.yaml")],
     "not UTF-8"),
    ("profile-not-utf8-predict", lambda t: ["predict", "mixtral", "--engine", _not_utf8(t, "p.yaml", PROFILES_DIR / "roofline.yaml")],
     "not UTF-8"),
    ("profile-not-utf8-sweep", lambda t: ["sweep", "mixtral", "--grid", "top_k=1,2", "--engine", _not_utf8(t, "p.yaml", PROFILES_DIR / "roofline.yaml")],
     "not UTF-8"),
    # engine names are names, not patterns or paths
    ("engine-glob-star", lambda t: ["predict", "mixtral", "--engine", "*"], "unknown engine '*'"),
    ("engine-glob-class", lambda t: ["predict", "mixtral", "--engine", "[h]f"], "unknown engine '[h]f'"),
    ("engine-glob-question-mark", lambda t: ["predict", "mixtral", "--engine", "h?"], "unknown engine 'h?'"),
    ("engine-path-without-suffix", lambda t: ["predict", "mixtral", "--engine", "../profiles/vllm"],
     "unknown engine '../profiles/vllm'"),
    ("engine-tail-of-a-profile-name", lambda t: ["predict", "mixtral", "--engine", "sxm-hf", "--gpu", "h100"],
     "unknown engine 'sxm-hf'"),
    # parallel layouts
    ("tp-not-dividing-heads", lambda t: ["predict", "mixtral", "--tp", "3"],
     "tp (3) must divide the number of attention heads (32)"),
    ("tp-above-heads", lambda t: ["predict", "llama-3.1-8b", "--tp", "64"],
     "tp (64) must divide the number of attention heads (32)"),
    ("tp-not-dividing-kv-heads", lambda t: ["predict", "mixtral", "--set", "num_heads=12", "--set", "num_kv_heads=3", "--tp", "2"],
     "tp (2) must divide the number of KV heads (3) or be a multiple of it"),
    ("tp-not-dividing-expert-width", lambda t: ["predict", "mixtral", "--set", "ffn=1000", "--tp", "16"],
     "tp (16) must divide the experts' FFN width (1000)"),
    ("tp-not-dividing-shared-width", lambda t: ["predict", "qwen1.5-moe-a2.7b", "--set", "shared_expert_intermediate_size=5630", "--tp", "4"],
     "tp (4) must divide the shared experts' FFN width"),
    ("tp-not-dividing-dense-width", lambda t: ["predict", "llama-3.1-8b", "--set", "dense_intermediate_size=1001", "--tp", "2"],
     "tp (2) must divide the dense MLP width (1001)"),
    ("pp-above-layers", lambda t: ["predict", "mixtral", "--pp", "64"], "pp (64) must divide the number of layers (32)"),
    # --set of a field the family does not read
    ("set-shared-experts-on-mixtral", lambda t: ["predict", "mixtral", "--set", "num_shared_experts=2"],
     "--set num_shared_experts: this mixtral model does not use 'n_shared_experts'"),
    ("set-sliding-window-on-olmoe", lambda t: ["predict", "olmoe-1b-7b", "--set", "sliding_window=128"],
     "this olmoe model does not use 'sliding_window'"),
    ("set-sliding-window-while-sliding-is-off", lambda t: ["predict", "qwen3-30b-a3b", "--set", "sliding_window=1024"],
     "this qwen3_moe model does not use 'sliding_window'"),
    ("set-head-dim-on-mla", lambda t: ["predict", "deepseek-v2-lite", "--set", "head_dim=64"],
     "this deepseek_v2 model does not use 'head_dim'"),
    ("set-kv-heads-on-mla", lambda t: ["predict", "deepseek-v2-lite", "--set", "num_kv_heads=4"],
     "does not use 'num_key_value_heads'"),
    ("set-attention-bias-on-mixtral", lambda t: ["predict", "mixtral", "--set", "attention_bias=true"],
     "this mixtral model does not use 'attention_bias'"),
    ("set-shared-width-on-deepseek", lambda t: ["predict", "deepseek-v2-lite", "--set", "shared_expert_intermediate_size=512"],
     "does not use 'shared_expert_intermediate_size'"),
    ("set-first-k-dense-on-qwen", lambda t: ["predict", "qwen3-30b-a3b", "--set", "first_k_dense=1"],
     "does not use 'first_k_dense_replace'"),
    ("set-dense-width-without-dense-layers", lambda t: ["predict", "qwen3-30b-a3b", "--set", "dense_intermediate_size=1024"],
     "does not use 'intermediate_size'"),
    ("formula-set-unused-key", lambda t: ["formula", "mixtral", "--op", "list", "--set", "num_shared_experts=2"],
     "does not use 'n_shared_experts'"),
    # --set values of per-layer fields, layer steps and windows
    ("set-mlp-only-layers-int", lambda t: ["predict", "qwen1.5-moe-a2.7b", "--set", "mlp_only_layers=5"],
     "'mlp_only_layers' must be a list of layer indices, got 5"),
    ("set-mlp-only-layers-letters", lambda t: ["predict", "qwen1.5-moe-a2.7b", "--set", "mlp_only_layers=abc"],
     "'mlp_only_layers' must be a list of layer indices, got 'abc'"),
    ("set-mlp-only-layers-fraction", lambda t: ["predict", "qwen1.5-moe-a2.7b", "--set", "mlp_only_layers=[1.5]"],
     "'mlp_only_layers' must be a list of layer indices"),
    ("set-layer-types-letters", lambda t: ["predict", "gpt-oss-20b", "--set", "layer_types=abc"],
     "'layer_types' must be a list"),
    ("set-moe-layers-out-of-range", lambda t: ["predict", "llama-4-scout-17b-16e", "--set", "moe_layers=[0, 48]"],
     "'moe_layers' names layer 48"),
    ("set-decoder-sparse-step-zero", lambda t: ["predict", "qwen1.5-moe-a2.7b", "--set", "decoder_sparse_step=0"],
     "'decoder_sparse_step' must be at least 1, got 0"),
    ("set-decoder-sparse-step-negative", lambda t: ["predict", "qwen3-30b-a3b", "--set", "decoder_sparse_step=-2"],
     "'decoder_sparse_step' must be at least 1, got -2"),
    ("set-interleave-moe-layer-step-zero", lambda t: ["predict", "llama-4-scout-17b-16e", "--set", "interleave_moe_layer_step=0"],
     "'interleave_moe_layer_step' must be at least 1"),
    ("set-attention-chunk-size-zero", lambda t: ["predict", "llama-4-scout-17b-16e", "--set", "attention_chunk_size=0"],
     "'attention_chunk_size' must be at least 1"),
    ("set-no-rope-layer-interval-zero", lambda t: ["predict", "llama-4-scout-17b-16e", "--set", "no_rope_layer_interval=0"],
     "'no_rope_layer_interval' must be at least 1"),
    ("set-moe-layer-freq-zero", lambda t: ["predict", "deepseek-v2-lite", "--set", "moe_layer_freq=0"],
     "'moe_layer_freq' must be at least 1"),
    ("set-gpt-oss-window-zero", lambda t: ["predict", "gpt-oss-20b", "--set", "sliding_window=0"],
     "'sliding_window' must be at least 1"),
    ("set-mla-nope-dim-zero", lambda t: ["predict", "deepseek-v2-lite", "--set", "qk_nope_head_dim=0"],
     "MLA needs positive"),
    ("set-bool-field-letters", lambda t: ["predict", "llama-4-scout-17b-16e", "--set", "use_qk_norm=abc"],
     "'use_qk_norm' must be true or false"),
    ("set-bool-field-number", lambda t: ["predict", "mixtral", "--set", "tie_word_embeddings=2"],
     "'tie_word_embeddings' must be true or false"),
    ("set-use-sliding-window-number", lambda t: ["predict", "qwen3-30b-a3b", "--set", "use_sliding_window=1"],
     "'use_sliding_window' must be true or false"),
    ("set-mlp-bias-on-deepseek-v2", lambda t: ["predict", "deepseek-v2-lite", "--set", "mlp_bias=true"],
     "not modelled for deepseek_v2"),
    ("changes-of-one-model", lambda t: ["validate", "mixtral", "--changes", "--gpu", "h100"],
     "--changes pairs every model's rows"),
    ("changes-of-hf", lambda t: ["validate", "all", "--changes", "--backend", "hf"], "--backend hf does not apply"),
    ("changes-with-serving", lambda t: ["validate", "all", "--changes", "--serving"], "--serving does not apply"),
    ("changes-out-is-a-folder", lambda t: ["validate", "all", "--changes", "--gpu", "h100", "--out", str(t)],
     "writes one JSON file"),
    ("changes-out-into-missing-directory",
     lambda t: ["validate", "all", "--changes", "--gpu", "h100", "--out", str(t / "no" / "dir" / "c.json")],
     "cannot write"),
    ("changes-unknown-gpu", lambda t: ["validate", "all", "--changes", "--gpu", "a100-pcie-7"], "a100-pcie-7"),
    ("moe-kernel-of-one-model", lambda t: ["validate", "phi-3.5-moe", "--moe-kernel", "--gpu", "h100"],
     "--moe-kernel compares every timed expert shape"),
    ("moe-kernel-with-changes", lambda t: ["validate", "all", "--moe-kernel", "--changes", "--gpu", "h100"],
     "give one"),
    ("moe-kernel-with-results", lambda t: ["validate", "all", "--moe-kernel", "--gpu", "h100", "--results",
                                           str(t / "r.jsonl")], "--results does not apply"),
    ("moe-kernel-out-is-a-folder", lambda t: ["validate", "all", "--moe-kernel", "--gpu", "h100", "--out", str(t)],
     "writes one markdown file"),
    ("moe-kernel-not-timed", lambda t: ["validate", "all", "--moe-kernel", "--gpu", "h200"],
     "no fused-MoE kernel timings for h200-sxm"),
    ("moe-kernel-out-into-missing-directory",
     lambda t: ["validate", "all", "--moe-kernel", "--gpu", "h100", "--out", str(t / "no" / "dir" / "k.md")],
     "cannot write"),
    ("sweep-csv-into-missing-directory", lambda t: ["sweep", "mixtral", "--grid", "batch=1,2", "--csv", str(t / "no" / "dir" / "out.csv")],
     "cannot write"),
]


def _check_one_line(code, out: str, err: str, fragment: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in out and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("perfmodel: error: ") and len(line) > len("perfmodel: error: "), line
    assert fragment in line, line
    return line


@pytest.mark.parametrize("argv_of, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv_of, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path / "cache"))
    argv = argv_of(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    _check_one_line(exit_info.value.code, captured.out, captured.err, fragment)


def test_case_ids_are_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) >= 30


def _run_module(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PERFMODEL_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "perfmodel", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("args, fragment", [
    (["predict", "mixtral", "--gpu", "h999"], "unknown GPU"),
    (["sweep", "mixtral", "--grid", "batch=0"], "must be positive"),
    ([], "missing command"),
], ids=["unknown-gpu", "grid-zero", "no-arguments"])
def test_bad_input_through_python_dash_m(args, fragment, tmp_path):
    """The real process: exit status 2 and one stderr line (the 'no arguments' case also prints
    the help on stdout)."""
    proc = _run_module(args, tmp_path)
    _check_one_line(proc.returncode, proc.stdout, proc.stderr, fragment)
