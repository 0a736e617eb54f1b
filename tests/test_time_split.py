"""`predict`'s line on where the time goes: each pass's leading ops, and the host where it sets a pass."""

from __future__ import annotations

import re

import pytest

from perfmodel.commands import main
from perfmodel.prediction import predict
from perfmodel.report_terminal import leading_ops, merged_ops, time_split_text


def test_the_leading_ops_are_the_longest_with_their_share_of_the_pass():
    p = predict("mixtral-8x7b", batch=16, input_len=2048, output_len=2048)
    for pass_name in ("prefill", "decode"):
        ops = [op for op in p.ops if op["pass"] == pass_name]
        total = sum(op["time_s"] for op in ops)
        lead = leading_ops(p, pass_name, 3)
        assert [op["name"] for op in lead] == [op["name"] for op in sorted(ops, key=lambda o: -o["time_s"])[:3]]
        assert lead[0]["share"] == pytest.approx(lead[0]["time_s"] / total)
        assert lead[0]["share"] >= lead[1]["share"] >= lead[2]["share"]


def test_a_gpu_bound_request_names_its_passes_and_the_decodes_share():
    p = predict("mixtral-8x7b", batch=16, input_len=2048, output_len=2048)
    line = time_split_text(p)
    share = 1 - p.metrics["ttft_s"] / p.metrics["e2e_s"]
    assert line.startswith(f"where the time goes: decode {share:.0%} of E2E · prefill ")
    assert re.search(r"decode step [\d.]+ ms: moe\.experts \d+% \(memory-bound\)", line), line
    assert "host" not in line


def test_a_host_bound_decode_step_says_the_host_sets_it():
    p = predict("olmoe-1b-7b", batch=1)
    assert p.metrics["decode_host_s"] >= p.metrics["itl_s"] * (1 - 1e-9)
    assert re.search(r"decode step [\d.]+ ms: the host's time for it, over its kernels: \S+ \d+%", time_split_text(p))


def test_waves_and_phases():
    waves = predict("qwen3-30b-a3b", gpu="h100-sxm", batch=128, input_len=2048, output_len=2048)
    assert waves.metrics["kv_waves"] > 1
    line = time_split_text(waves)
    assert line.startswith("where the time goes (the passes of the sequences whose whole cache fits at once): "
                           "prefill ") and "of E2E" not in line
    prefill = time_split_text(predict("mixtral-8x7b", batch=4, phase="prefill"))
    assert prefill.startswith("where the time goes: prefill ") and "decode" not in prefill
    decode = time_split_text(predict("mixtral-8x7b", batch=4, phase="decode"))
    assert decode.startswith("where the time goes: decode step ") and "prefill" not in decode


def test_the_json_holds_it(capsys):
    import json

    main(["predict", "olmoe", "-b", "1", "--json"])
    split = json.loads(capsys.readouterr().out)["time_split"]
    assert split["decode_share_of_e2e"] > 0.9 and split["first_wave"] is False
    prefill, decode = split["passes"]
    assert prefill["pass"] == "prefill" and prefill["set_by"] == "gpu"
    assert decode["set_by"] == "host" and decode["leading"][0]["op"] == "moe.experts"
    assert 0 < decode["leading"][1]["share"] <= decode["leading"][0]["share"] < 1


def test_predict_prints_it_and_its_report_shows_it(capsys, tmp_path):
    main(["predict", "mixtral", "-b", "16", "--out", str(tmp_path)])
    assert "where the time goes: decode " in capsys.readouterr().out
    for page in ("summary.md", "report.html"):
        assert "where the time goes: decode " in (tmp_path / page).read_text(), page


def test_an_op_of_several_layer_groups_is_named_once_with_its_whole_time():
    # DeepSeek-V2-Lite: a dense first layer beside 26 MoE layers, so its attention ops come twice
    p = predict("deepseek-v2-lite", batch=16)
    groups = [op for op in p.ops if op["pass"] == "decode" and op["name"] == "attn.core"]
    assert len(groups) == 2
    merged = {op["name"]: op for op in merged_ops(p.ops) if op["pass"] == "decode"}
    assert merged["attn.core"]["time_s"] == pytest.approx(sum(op["time_s"] for op in groups))
    assert merged["attn.core"]["bytes"] == pytest.approx(sum(op["bytes"] for op in groups))
    assert sum(op["time_s"] for op in merged.values()) == pytest.approx(
        sum(op["time_s"] for op in p.ops if op["pass"] == "decode"))
    names = [op["name"] for op in leading_ops(p, "decode", 5)]
    assert len(names) == len(set(names))
