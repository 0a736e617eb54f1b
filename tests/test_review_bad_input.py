"""Bad input to the commands of quantization, MoE implementation, pruning, speculative decoding,
capacity planning, the paper report and serving validation: one ``perfmodel: error:`` line on
stderr, exit code 2, no traceback.

Each case runs ``perfmodel.commands.main(argv)`` in-process. The cases that would otherwise
predict or simulate fail before any model is compiled, so the table stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from perfmodel import paths
from perfmodel.commands import main

#: An ok serving row as ``perfmodel measure --serving`` writes it (the fields a replay reads).
SERVING_ROW = {
    "schema_version": 1, "point_id": "vllm|olmoe-1b-7b|rate=2|tp=1", "status": "ok", "mode": "serving",
    "backend": "vllm", "model": "olmoe-1b-7b", "overrides": [], "layers": None, "rate": 2.0,
    "num_requests": 50, "input_len": 128, "output_len": 32, "max_num_seqs": 64, "seed": 0,
    "engine": {"name": "vllm", "tp": 1, "pp": 1, "ep": False}, "ttft_p50_ms": 20.0, "ttft_p90_ms": 30.0,
    "itl_p50_ms": 3.0, "itl_p90_ms": 4.0, "achieved_rate": 2.0, "completion_rate": 2.0,
}


def _serving_file(tmp: Path, **fields) -> str:
    """A serving results file of one row: :data:`SERVING_ROW` with ``fields`` set (None: removed)."""
    row = {k: v for k, v in {**SERVING_ROW, **fields}.items() if v is not None or k not in fields}
    path = tmp / "serving.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return str(path)


def _validate(tmp: Path, **fields) -> list[str]:
    return ["validate", "all", "--serving", "--results", _serving_file(tmp, **fields), "--out", str(tmp / "rep")]


def _study(tmp: Path, effect: str, edit) -> str:
    """The seed study reduced to one effect, its setup edited by ``edit``."""
    data = yaml.safe_load((paths.STUDIES_DIR / "moe-inference-bench.yaml").read_text())
    data["effects"] = [e for e in data["effects"] if e["id"] == effect]
    edit(data["effects"][0]["setup"])
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _paper(tmp: Path, *args: str) -> list[str]:
    return ["report", "paper", "--out", str(tmp / "paper"), *args]


def _file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


#: (id, argv builder taking tmp_path, a fragment the error line must contain).
CASES = [
    # predict: quantization, MoE implementation, pruning, speculative decoding
    ("quant-unknown", lambda t: ["predict", "mixtral", "--quant", "nope"], "unknown quant 'nope'"),
    ("moe-impl-unknown", lambda t: ["predict", "mixtral", "--moe-impl", "x"], "unknown moe-impl 'x'"),
    ("prune-experts-one", lambda t: ["predict", "mixtral", "--prune-experts", "1"], "prune-experts must be in [0, 1)"),
    ("prune-ffn-negative", lambda t: ["predict", "mixtral", "--prune-ffn", "-0.1"], "prune-ffn must be in [0, 1)"),
    ("prune-experts-nan", lambda t: ["predict", "mixtral", "--prune-experts", "nan"], "prune-experts must be in [0, 1)"),
    ("spec-draft-unknown", lambda t: ["predict", "qwen3-30b-a3b", "--spec-draft", "nope", "--spec-tokens", "3",
                                      "--spec-accept", "0.5"], "spec-draft: unknown model 'nope'"),
    ("spec-draft-without-tokens", lambda t: ["predict", "mixtral", "--spec-draft", "nope"], "needs spec-tokens"),
    ("spec-accept-without-draft", lambda t: ["predict", "mixtral", "--spec-accept", "1.5"], "need a draft model"),
    ("spec-tokens-zero", lambda t: ["predict", "qwen3-30b-a3b", "--spec-draft", "qwen3-0.6b", "--spec-tokens", "0",
                                    "--spec-accept", "0.5"], "spec-tokens must be a positive integer"),
    ("spec-accept-above-one", lambda t: ["predict", "qwen3-30b-a3b", "--spec-draft", "qwen3-0.6b", "--spec-tokens",
                                         "3", "--spec-accept", "1.5"], "spec-accept must be in [0, 1)"),
    ("spec-draft-folder", lambda t: ["predict", "qwen3-30b-a3b", "--spec-draft", str(t), "--spec-tokens", "3",
                                     "--spec-accept", "0.5"], "spec-draft: cannot read"),
    ("formula-launch-not-a-time", lambda t: ["formula", "mixtral", "--op", "launch"],
     "give --phase prefill --quantity time"),
    ("formula-launch-without-a-floor", lambda t: ["formula", "mixtral", "--op", "launch", "--quantity", "time",
                                                  "--engine", "roofline"], "has no host launch floor"),
    ("validate-empty-model", lambda t: ["validate", "", "--out", str(t / "v")], "no model given"),
    # plan
    ("plan-empty-model", lambda t: ["plan", "--config", _file(t, "e.yaml", 'model: ""\ntraffic: {rate: 1}\n')],
     "no model given"),
    ("plan-rate-negative", lambda t: ["plan", "mixtral", "--rate", "-1"], "greater than 0"),
    ("plan-rate-not-a-number", lambda t: ["plan", "mixtral", "--rate", "abc"], "--rate"),
    ("plan-rate-nan", lambda t: ["plan", "mixtral", "--rate", "nan"], "finite"),
    ("plan-input-len-percentile", lambda t: ["plan", "mixtral", "--rate", "1", "--input-len", "p50=x"],
     "bad --input-len 'p50=x'"),
    ("plan-gpu-unknown", lambda t: ["plan", "mixtral", "--rate", "1", "--gpu", "nope"], "unknown GPU 'nope'"),
    ("plan-config-missing", lambda t: ["plan", "--config", str(t / "none.yaml")], "cannot read"),
    ("plan-config-a-list", lambda t: ["plan", "--config", _file(t, "l.yaml", "- a\n- b\n")], "expected a mapping"),
    ("plan-config-a-folder", lambda t: ["plan", "--config", str(t)], "cannot read"),
    ("plan-lengths-file-negative", lambda t: ["plan", "mixtral", "--rate", "1", "--lengths-file",
                                              _file(t, "l.csv", "input,output\n-5,10\n")], "integers from 1 to"),
    ("plan-out-is-a-file", lambda t: ["plan", "mixtral", "--rate", "1", "--out", _file(t, "f", "")], "must be a folder"),
    # report paper
    ("paper-gpu-unknown", lambda t: _paper(t, "--gpu", "nope"), "unknown GPU 'nope'"),
    ("paper-engine-unknown", lambda t: _paper(t, "--engine", "nope"), "unknown engine 'nope'"),
    ("paper-study-missing", lambda t: _paper(t, "--study", str(t / "none")), "no study file"),
    ("paper-study-a-list", lambda t: _paper(t, "--study", _file(t, "s.yaml", "- a\n")), "expected a mapping"),
    ("paper-setup-without-layouts", lambda t: _paper(t, "--study", _study(t, "E7", lambda s: s.pop("layouts"))),
     "effect E7: its setup needs layouts"),
    ("paper-setup-without-grid", lambda t: _paper(t, "--study", _study(t, "E2", lambda s: s.pop("grid"))),
     "effect E2: its setup needs grid"),
    ("paper-setup-empty-batch", lambda t: _paper(t, "--study", _study(t, "E1", lambda s: s.update(batch=[]))),
     "setup.batch: List should have at least 1 item"),
    ("paper-setup-unknown-layout-axis",
     lambda t: _paper(t, "--study", _study(t, "E1", lambda s: s.update(layout={"xx": 2}))),
     "Input should be 'tp', 'ep', 'pp', 'dp' or 'expert_parallel'"),
    ("paper-setup-empty-layouts", lambda t: _paper(t, "--study", _study(t, "E7", lambda s: s.update(layouts={}))),
     "setup.layouts: Dictionary should have at least 2 items"),
    ("paper-setup-ratio-above-one", lambda t: _paper(t, "--study", _study(t, "E9", lambda s: s.update(ratios=[2.0]))),
     "ratios: each must lie in (0, 1)"),
    ("paper-setup-accept-above-one", lambda t: _paper(t, "--study", _study(t, "E10", lambda s: s.update(
        assumed_accept={"qwen3-1.7b": 1.5}))), "each acceptance rate must lie in [0, 1)"),
    ("paper-setup-gamma-zero", lambda t: _paper(t, "--study", _study(t, "E10", lambda s: s.update(spec_tokens=0))),
     "setup.spec_tokens: Input should be greater than 0"),
    # validate --serving
    ("serving-results-missing", lambda t: ["validate", "all", "--serving", "--results", str(t / "none.jsonl")],
     "no serving measurements at"),
    ("serving-row-without-model", lambda t: _validate(t, model=None), "malformed serving row"),
    ("serving-row-without-point-id", lambda t: _validate(t, point_id=None), "no 'point_id'"),
    ("serving-row-rate-text", lambda t: _validate(t, rate="abc"), "'rate' must be a number"),
    ("serving-row-input-len-fraction", lambda t: _validate(t, input_len=12.5), "'input_len' must be a whole number"),
    ("serving-row-latency-text", lambda t: _validate(t, ttft_p50_ms="x"), "'ttft_p50_ms' must be a number"),
    ("serving-row-engine-tp-text", lambda t: _validate(t, engine={"tp": "x"}), "'engine.tp' must be a whole number"),
    ("serving-row-engine-a-list", lambda t: _validate(t, engine=[1]), "'engine' must be a mapping"),
    ("serving-row-overrides-number", lambda t: _validate(t, overrides=5), "'overrides' must be a list"),
    ("serving-row-gpu-name-number", lambda t: _validate(t, gpu_name=5), "'gpu_name' must be a string"),
    ("serving-row-seed-text", lambda t: _validate(t, seed="q"), "'seed' must be a whole number"),
    # measure --serving (checked before vLLM is needed)
    ("serving-rate-zero", lambda t: ["measure", "olmoe", "--backend", "vllm", "--serving", "--rate", "0",
                                     "--out", str(t / "m.jsonl")], "bad rate 0"),
    ("serving-rate-text", lambda t: ["measure", "olmoe", "--backend", "vllm", "--serving", "--rate", "abc",
                                     "--out", str(t / "m.jsonl")], "bad rate 'abc'"),
]


@pytest.mark.parametrize("argv_of, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv_of, fragment, tmp_path, capsys):
    argv = argv_of(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2, (argv, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if not line.startswith("perfmodel: warning:")]
    assert len(lines) == 1 and lines[0].startswith("perfmodel: error: "), err
    assert fragment in lines[0], lines[0]


def test_case_ids_are_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_the_serving_row_of_the_table_is_accepted(tmp_path, monkeypatch):
    """The unedited row replays (so each case above fails on its one edited field)."""
    from perfmodel import planning
    from perfmodel.validate import serving

    def predict_serving(model, gpu, layout, traffic, **kw):
        return {"ttft_s": {"p50": 0.02, "p90": 0.03}, "itl_s": {"p50": 0.003, "p90": 0.004},
                "overloaded": False, "saturation_rate_per_replica": 5.0, "output_tok_s": 64.0}

    monkeypatch.setattr(planning, "predict_serving", predict_serving, raising=False)
    result = serving.run_serving_validation("all", results=Path(_serving_file(tmp_path)), out_dir=tmp_path / "r")
    by = {p["metric"]: p for p in result["points"]}
    assert by["ttft_p50"]["rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert by["served_tok_s"]["predicted"] == pytest.approx(2.0 * 32)
