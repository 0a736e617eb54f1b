"""The model's engine step against vLLM's profiled steps that add a prompt to running decodes
(validate --mixed-steps)."""

from __future__ import annotations

import json

import pytest

from perfmodel.commands import main
from perfmodel.profile import load_profile
from perfmodel.validate.mixed_steps import compare_mixed_steps, markdown


@pytest.fixture(scope="module")
def h100():
    return compare_mixed_steps("h100-sxm")


def test_every_profiled_step_is_compared_and_the_mla_terms_rows_are_not_held_out(h100):
    points = h100["points"]
    assert len(points) == 74 and {p["decodes"] for p in points} == {0, 16, 64, 128}
    fit = load_profile("vllm", "h200-sxm").fit
    serial = {r["row"].split(": ", 1)[1] + " D=0" for r in fit["launch_serial"]["rows"]}
    serial |= {r["row"].split(": ", 1)[1] for r in fit["launch_serial_seq"]["rows"]}
    assert len(serial) == 12
    for p in points:  # DeepSeek-V2-Lite as built is what the MLA term was fitted on; its cut is a check;
        # the training models' GPU-bound steps are what the launched step's serial part was
        fitted = (p["group"] == "deepseek-v2-lite"
                  or f"{p['group']} {p['quantization']} D={p['decodes']}" in serial)
        assert p["held_out"] == (not fitted), p
        assert p["predicted_ms"] == pytest.approx(max(p["gpu_ms"], p["host_ms"]))
        assert p["ratio"] == pytest.approx(p["predicted_ms"] / p["measured_ms"])
        assert p["launched"]  # 1,024 prompt tokens: beyond the engine's largest graph (256)
    held = [abs(p["ratio"] - 1) for p in points if p["held_out"]]
    assert h100["held_out_points"] == len(held) == 58
    assert h100["held_out_mape_pct"] == pytest.approx(100 * sum(held) / len(held))


def test_a_prompt_alone_sets_whether_its_steps_are_host_or_gpu_bound(h100):
    bound = {(p["group"], p["quantization"]): p["host_bound"] for p in h100["points"]}
    assert bound[("olmoe-1b-7b", "none")] is True  # kernels busy 8.5 of 20.3 ms
    assert bound[("phi-3.5-moe", "fp8")] is False  # 43.5 of 48.0 ms
    assert bound[("qwen3-30b-a3b num_hidden_layers=8", "none")] is True
    assert sum(s["points"] for s in h100["summary"].values()) == h100["held_out_points"]


def test_the_gpu_bound_steps_gpu_time_is_set_against_the_profiled_busy_time(h100):
    side = h100["gpu_side"]
    gpu_bound = [p for p in h100["points"] if p["held_out"] and p["host_bound"] is False]
    assert sum(s["points"] for s in side.values()) == len(gpu_bound) > 0
    built = [p for p in gpu_bound if " " not in p["group"]]
    assert side["as built"]["mape_pct"] == pytest.approx(
        100 * sum(abs(p["kernels_ms"] / p["busy_ms"] - 1) for p in built) / len(built))
    assert side["as built"]["median_gap_ms"] > 0  # the wall holds host time the GPU does not hide
    for p in h100["points"]:  # a launched step's GPU part: its kernels and the host's part they do not hide
        assert p["gpu_ms"] == pytest.approx(p["kernels_ms"] + p["serial_ms"])
        assert p["serial_ms"] > 0
    assert "median wall − busy" in markdown(h100)


def test_the_model_adds_mla_s_split_only_beside_decodes(h100):
    dsv2 = {p["decodes"]: p for p in h100["points"] if p["group"] == "deepseek-v2-lite"}
    qwen = {p["decodes"]: p for p in h100["points"] if p["group"] == "qwen3-30b-a3b num_hidden_layers=8"}
    # the prompt's step grows more from 0 to 16 decodes with MLA's second attention than without
    assert dsv2[16]["host_ms"] - dsv2[0]["host_ms"] > 3 * (qwen[16]["host_ms"] - qwen[0]["host_ms"])


def test_the_page_names_its_source_and_every_row(h100, tmp_path):
    page = markdown(h100)
    assert "h100-vllm-mixed-steps.jsonl" in page and "7e32506" in page
    assert page.count("\n| ") >= 36 + 4


def test_the_command_writes_the_page_and_refuses_what_does_not_apply(tmp_path, capsys):
    out = tmp_path / "mixed.md"
    main(["validate", "all", "--mixed-steps", "--gpu", "h100-sxm", "--out", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert out.read_text().startswith("# A prompt's engine step") and data["held_out_points"] == 58
    from perfmodel.paths import ROOT

    committed = (ROOT / "validate/results/h100-vllm-mixed-steps-validation.md").read_text()
    line = next(x for x in out.read_text().splitlines() if x.startswith("Held-out MAPE"))
    assert line in committed  # rerun scripts/regenerate_reports.sh after a refit or new profiles
    for argv in (["validate", "mixtral-8x7b", "--mixed-steps"], ["validate", "all", "--mixed-steps", "--changes"],
                 ["validate", "all", "--mixed-steps", "--gpu", "h100-sxm", "--out", str(tmp_path)],
                 ["validate", "all", "--mixed-steps", "--gpu", "l40s"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("perfmodel: error:") and len(err.splitlines()) == 1 and "Traceback" not in err
