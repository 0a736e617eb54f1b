"""``perfmodel report paper``: the seed study's claims as data, the verdict rule, measured effects
from result rows, and the command (on a reduced study, so that it stays fast with a cold cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from perfmodel import paths, predict
from perfmodel.commands import main
from perfmodel.errors import SpecError
from perfmodel.validate.paper import measured
from perfmodel.validate.paper.compute import EFFECTS
from perfmodel.validate.paper.effects import Claim, Measured, load_study
from perfmodel.validate.paper.verdict import (
    NOT_EXPRESSIBLE, REPRODUCED, SIGN_WRONG, SIZE_OFF, effect_verdict, judge_claim, judge_value,
)

STUDY_FILE = paths.STUDIES_DIR / "moe-inference-bench.yaml"


def test_the_seed_study_has_its_ten_effects_with_numbers_where_the_paper_gives_them():
    study = load_study()
    assert [e.id for e in study.effects] == [f"E{i}" for i in range(1, 11)]
    assert set(EFFECTS) == {e.id for e in study.effects}  # each one has a prediction
    e1 = study.effect("E1")
    assert e1.setup.models == ["mixtral-8x7b"] and e1.setup.gpus == 2
    assert [(c.low, c.high) for c in e1.claims] == [(20, 25), (25, 30)]
    assert e1.measured == [Measured(vary="quant", value="fp8", baseline="none")]  # one mapping in the YAML
    e9 = study.effect("E9")
    assert not e9.numbers and all(c.low is None and c.high is None and c.direction for c in e9.claims)
    assert study.effect("E10").missing and "acceptance" in study.effect("E10").missing
    assert study.study.gpu == "h100-sxm" and study.study.tolerance_pp == 10


def test_a_malformed_study_is_one_clear_error(tmp_path):
    data = yaml.safe_load(STUDY_FILE.read_text())
    data["effects"][0]["claims"][0]["low"] = 40  # above its high (25)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="low .40.0. is above high"):
        load_study(bad)
    bad.write_text("effects: [")
    with pytest.raises(SpecError, match="bad.yaml"):
        load_study(bad)


@pytest.mark.parametrize("value, verdict", [
    (22, REPRODUCED), (33, REPRODUCED), (12, REPRODUCED),  # in the range, or within 10 pp of it
    (40, SIZE_OFF), (2, SIZE_OFF),                          # right sign, too far
    (-5, SIGN_WRONG),
])
def test_verdict_of_a_claimed_range(value, verdict):
    assert judge_value(value, Claim(id="x", text="", quantity="q", low=20, high=25), 10) == verdict


@pytest.mark.parametrize("value, verdict", [
    (-3, REPRODUCED), (-6, REPRODUCED), (-18, REPRODUCED), (-19, SIZE_OFF), (0.5, SIGN_WRONG), (4, SIGN_WRONG),
])
def test_a_negative_range_wants_a_negative_value(value, verdict):
    """−8…−5% with 10 pp of tolerance: +4% is near in size but of the wrong sign."""
    assert judge_value(value, Claim(id="x", text="", quantity="q", low=-8, high=-5), 10) == verdict


def test_flat_open_and_sign_only_claims():
    flat_to_15 = Claim(id="a", text="", quantity="q", low=0, high=15)
    assert judge_value(-8, flat_to_15, 10) == REPRODUCED  # "flat" takes a small loss
    assert judge_value(-12, flat_to_15, 10) == SIGN_WRONG
    assert judge_value(30, flat_to_15, 10) == SIZE_OFF
    flat = Claim(id="b", text="", quantity="q", low=0, high=0)
    assert judge_value(-9, flat, 10) == REPRODUCED and judge_value(-11, flat, 10) == SIZE_OFF
    more_than_2x = Claim(id="c", text="", quantity="q", low=100, high=None)
    assert judge_value(500, more_than_2x, 10) == REPRODUCED and judge_value(80, more_than_2x, 10) == SIZE_OFF
    lower = Claim(id="d", text="", quantity="q", direction="-")
    assert judge_value(-0.1, lower, 10) == REPRODUCED and judge_value(0.1, lower, 10) == SIGN_WRONG


def test_a_claim_takes_its_worst_point_or_its_statistic_and_an_effect_its_worst_claim():
    claim = Claim(id="x", text="", quantity="q", low=20, high=25)
    every = judge_claim(claim, [22, 40, 21], 10)
    assert every.verdict == SIZE_OFF and every.values == (22, 40, 21) and every.shown == "+21…+40%"
    assert judge_claim(claim.model_copy(update={"statistic": "mean"}), [22, 40, 21], 10).values == (pytest.approx(83 / 3),)
    assert judge_claim(claim, [22, -1], 10).verdict == SIGN_WRONG
    can_lower = Claim(id="y", text="", quantity="q", direction="-", statistic="min")
    assert judge_claim(can_lower, [3, -0.5, 8], 10).verdict == REPRODUCED
    reproduced, off = judge_claim(claim, [22], 10), judge_claim(claim, [60], 10)
    assert effect_verdict([reproduced, off]) == SIZE_OFF
    assert effect_verdict([reproduced]) == REPRODUCED
    assert effect_verdict([reproduced], missing="the acceptance rate") == NOT_EXPRESSIBLE


def _row(point: str, overrides: list[str], throughput: float, sampling: str | None) -> dict:
    tags = "|quant=none" + (f"|sampling={sampling}" if sampling else "") + "|tp=1"
    return {"schema_version": 1, "status": "ok", "point_id": f"vllm|olmoe-1b-7b|{point}{tags}",
            "model": "olmoe-1b-7b", "overrides": overrides, "layers": 4, "batch": 16, "input_len": 128,
            "output_len": 128, "engine": {"quantization": "none", "tp": 1}, "throughput_tok_s": throughput}


def test_a_measured_effect_is_the_relative_change_of_two_rows_beside_the_model_at_those_points(tmp_path):
    results = tmp_path / "h200-vllm.jsonl"
    rows = [_row("k1", ["top_k=1"], 3000.0, "random"), _row("k8g", ["top_k=8"], 2600.0, None),
            _row("k8r", ["top_k=8"], 2500.0, "random"), _row("k4", ["top_k=4"], 2700.0, "random")]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (tmp_path / "h200-vllm-whatif.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    loaded = measured.load_rows(path=results)
    assert len(loaded) == 4
    (pair,) = measured.pairs(loaded, Measured(vary="top_k", value=1, baseline=8), "vllm")
    assert pair.sampling == "random"  # the random row of top-8 is taken, beside the random top-1 row
    assert pair.measured_pct == pytest.approx(100 * (3000 / 2500 - 1))
    one, eight = (predict("olmoe-1b-7b", gpu="h200-sxm", engine="vllm", batch=16, input_len=128, output_len=128,
                          overrides=[f"top_k={k}", "num_layers=4"]).metrics["throughput_tok_s"] for k in (1, 8))
    assert pair.predicted_pct == pytest.approx(100 * (one / eight - 1))
    assert "L=4" in pair.label and "k=" not in pair.label
    greedy = [r for r in loaded if r["point_id"].endswith("|tp=1") and "sampling" not in r["point_id"]]
    (mixed,) = measured.pairs([loaded[0], *greedy], Measured(vary="top_k", value=1, baseline=8), "vllm")
    assert mixed.sampling == "mixed: random vs greedy" and mixed.measured_pct == pytest.approx(100 * (3000 / 2600 - 1))


def _reduced_study(tmp_path: Path) -> Path:
    """The seed study with the Mixtral-skeleton effects only (one model to compile) on a smaller grid."""
    data = yaml.safe_load(STUDY_FILE.read_text())
    data["effects"] = [e for e in data["effects"] if e["id"] in ("E2", "E3", "E4")]
    for effect in data["effects"]:
        effect["setup"]["grid"] = {"ffn": [1792, 3584, 7168, 14336], "num_experts": [8, 32, 64], "top_k": [1, 2, 8]}
    path = tmp_path / "reduced.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_command_writes_both_files_and_prints_one_json_object(tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", "paper", "--study", str(_reduced_study(tmp_path)), "--out", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert data["report_html"] == str(out / "report.html") and data["gpu"] == "h100-sxm"
    assert data["provenance"]["note"] == "calibrated on h100-sxm"  # the H100's own vllm fit
    assert [e["id"] for e in data["effects"]] == ["E2", "E3", "E4"]
    e2 = data["effects"][0]
    assert e2["setup"]["layout"] == {"tp": 4} and e2["measured"]["pairs"]
    assert all(c["verdict"] in (REPRODUCED, SIZE_OFF, SIGN_WRONG) for e in data["effects"] for c in e["claims"])
    # top-1 is faster than top-8 in the model: the sign of E2 is the paper's
    assert all(v > 0 for c in e2["claims"] for v in c["predicted"])
    html = (out / "report.html").read_text()
    assert "chart-E2-0" in html and "chart-E4-0" in html and "E4: total experts" in html
    # measured points are marked by their GPU: a square on the H100, a circle on the H200
    assert '"domain": ["measured (H100)", "measured (H200)", "model at the measured points"]' in html
    assert '"range": ["square", "circle", "diamond"]' in html
    md = (out / "report.md").read_text()
    assert "| effect | paper | predicted (h100-sxm) | measured | verdict | model vs measured |" in md
    # the bottom line counts the effects reproduced and the measured pairs the model follows
    assert data["standing"].startswith("The model reproduces ") and data["standing"] in md
    for e in data["effects"]:
        gaps = e["measured"]["gaps_pp"]
        assert len(gaps) == len(e["measured"]["pairs"])
        assert gaps == pytest.approx([abs(p["predicted_pct"] - p["measured_pct"]) for p in e["measured"]["pairs"]])


def test_the_terminal_table(tmp_path, capsys):
    main(["report", "paper", "--study", str(_reduced_study(tmp_path)), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    for column in ("effect", "paper", "predicted (h100-sxm)", "measured", "verdict", "model vs measured"):
        assert column in out
    assert "E3 FFN width" in out and "report:" in out
    # where the measurements come from: each GPU's files, the H100 named as the paper's GPU
    md = (tmp_path / "r" / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("- **Measurements**"))
    assert "H200 (validate/results/h200-vllm.jsonl, validate/results/h200-vllm-whatif.jsonl;" in line
    assert "H100 80GB HBM3 (the paper's GPU; validate/results/h100-vllm.jsonl" in line
    assert "H200 (validate/results/h200-hf.jsonl" in line and "predicted with the hf profile" in line


@pytest.mark.parametrize("argv, fragment", [
    (["--gpu", "nope"], "unknown GPU 'nope'"),
    (["--engine", "nope"], "unknown engine 'nope'"),
    (["--study", "nope"], "no study file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "paper", "--out", str(tmp_path), *argv])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in out + err
    (line,) = err.splitlines()
    assert line.startswith("perfmodel: error: ") and fragment in line
