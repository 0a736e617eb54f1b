"""The model's fused-MoE ops against vLLM's fused-MoE kernel timed alone (validate --moe-kernel)."""

from __future__ import annotations

import json
import math

import pytest

from perfmodel.commands import main
from perfmodel.measuring.kernel_timings import KERNEL_OPS
from perfmodel.validate.moe_kernel import compare_kernel, predicted_us, zoo_models


@pytest.fixture(scope="module")
def h100():
    return compare_kernel("h100-sxm")


def test_every_timed_row_is_compared_and_a_taken_tables_rows_are_not_held_out(h100):
    points = h100["points"]
    def spill_fitted(p):  # the L2 term's training rows: Mixtral-8x7B's bf16 shape at compute-bound passes
        return (p["experts"], p["width"], p["top_k"], p["scheme"], p["tiles"]) == (8, 14336, 2, "none", "default") \
            and p["tokens"] >= 1024

    for p in points:  # every table timed is taken: its rows are the difference the profile adds
        assert p["held_out"] == (p["tiles"] == "default" and not spill_fitted(p)), p
        assert p["predicted_us"] > 0 and p["ratio"] == pytest.approx(p["predicted_us"] / p["measured_us"])
    held = [abs(p["ratio"] - 1) for p in points if p["held_out"]]
    assert h100["held_out_points"] == len(held) and h100["held_out_mape_pct"] == pytest.approx(
        100 * sum(held) / len(held))
    mixtral = [s for s in h100["shapes"]
               if (s["experts"], s["width"], s["scheme"], s["tiles"]) == (8, 14336, "fp8", "table")]
    assert mixtral and not mixtral[0]["held_out"] and mixtral[0]["models"] == ["mixtral-8x7b"]
    assert any(s["hidden"] == 3584 for s in h100["shapes"])  # Qwen2-57B-A14B's, on its own zoo model
    bf16 = next(s for s in h100["shapes"]
                if (s["experts"], s["width"], s["top_k"], s["scheme"]) == (8, 14336, 2, "none"))
    assert bf16["held_out"] == "partly"  # its decode-sized passes held out, the rest fitted


def test_a_taken_tables_timing_is_the_difference_the_model_adds(h100):
    """On a table the profile timed, the model's table call less its default-rule call is the
    measured difference at that pass (the extra time, per layer), whatever the model's own error:
    a table made for larger passes (Phi-3.5-MoE's), one tuned from one token (Mixtral-8x7B's), and
    one table at several top-k (the skeleton's bf16 8 experts of 1,792), each at its own top-k."""
    by = {(p["experts"], p["width"], p["scheme"], p["top_k"], p["tokens"], p["tiles"]): p for p in h100["points"]}
    for shape in ((16, 6400, "fp8", 2), (8, 14336, "fp8", 2), (8, 1792, "none", 1), (8, 1792, "none", 8)):
        for tokens in (1, 256, 2048, 16384):
            table, default = by[(*shape, tokens, "table")], by[(*shape, tokens, "default")]
            measured = table["measured_us"] - default["measured_us"]
            assert table["predicted_us"] - default["predicted_us"] == pytest.approx(measured, rel=1e-3, abs=0.05)


def test_the_model_call_sums_the_ops_the_kernel_runs():
    row = {"experts": 16, "width": 6400, "hidden": 4096, "top_k": 2, "scheme": "fp8", "tokens": 64, "tiles": "default"}
    us = predicted_us(row, "h100-sxm")
    assert 10 < us < 10_000 and math.isfinite(us)
    assert predicted_us({**row, "hidden": 3000}, "h100-sxm") is None  # no base model of that hidden size
    assert "moe.router" not in KERNEL_OPS and "moe.shared" not in KERNEL_OPS
    assert zoo_models(16, 3200, 4096, 2) == ["phi-3.5-moe (tp 2)"] and zoo_models(16, 3200, 2048, 2) == []


def test_the_command_writes_the_page_it_shows(tmp_path, capsys):
    out = tmp_path / "kernel.md"
    main(["validate", "all", "--moe-kernel", "--gpu", "h100", "--out", str(out), "--json"])
    shown = json.loads(capsys.readouterr().out)
    page = out.read_text()
    assert shown["path"] == str(out) and f"Held-out MAPE: {shown['held_out_mape_pct']:.1f}%" in page
    assert page.count("\n| ") == len(shown["shapes"]) + 1  # the header and one line per shape and tile choice
    main(["validate", "all", "--moe-kernel", "--gpu", "h100", "--out", str(out)])
    assert "held-out MAPE" in capsys.readouterr().out
    from perfmodel.paths import ROOT

    committed = (ROOT / "validate/results/h100-vllm-moe-kernel-validation.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("Held-out MAPE"))
    assert line in committed  # rerun scripts/regenerate_reports.sh after a refit or new timings


def test_a_kernel_timings_file_is_read_strictly(tmp_path):
    from perfmodel.errors import InputError
    from perfmodel.measuring.kernel_timings import read_kernel_timings

    row = {"experts": 16, "width": 6400, "hidden": 4096, "top_k": 2, "scheme": "fp8", "tokens": 1, "tiles": "table",
           "us": 100.0}
    path = tmp_path / "h100-vllm-moe-kernel.jsonl"
    path.write_text(json.dumps(row) + "\n\n" + json.dumps({**row, "us": None, "error": "OutOfResources"}) + "\n")
    assert read_kernel_timings(path) == [row]  # the failed row left out
    path.write_text(json.dumps(row) + "\n{not json\n")
    with pytest.raises(InputError, match="line 2: not JSON"):
        read_kernel_timings(path)
    path.write_text(json.dumps({k: v for k, v in row.items() if k != "tiles"}) + "\n")
    with pytest.raises(InputError, match="line 1: a timed row without tiles"):
        read_kernel_timings(path)
