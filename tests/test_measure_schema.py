"""The measurement row schema: valid rows pass, broken ones are caught, provenance is recorded."""

from __future__ import annotations

import copy

import pytest

from perfmodel.measuring import results
from perfmodel.measuring.fake_backend import FakeBackend
from perfmodel.measuring.runner import run_sweep
from perfmodel.measuring.points import FullRunSpec, SweepPoint, build_points, parse_phases

PROVENANCE = ("gpu_name", "driver", "cuda", "torch", "transformers", "vllm", "date", "git_commit")


def _rows(tmp_path, **kw):
    points = build_points(["olmoe", "mixtral"], [1, 16], [[128], [512]], backend="hf", **kw)
    out = tmp_path / "r.jsonl"
    run_sweep(points, FakeBackend(), out)
    return results.read_rows(out).rows


def test_sweep_rows_are_valid_and_carry_provenance(tmp_path):
    rows = _rows(tmp_path)
    assert len(rows) == 8
    for row in rows:
        assert results.validate_row(row) == []
        for key in PROVENANCE:
            assert key in row
        for key in results.ENGINE_KEYS:
            assert key in row["engine"]
        assert row["engine"]["max_cache_len"] == row["input_len"] + row["output_len"]


def test_phases_order_all_models_before_longer_inputs(tmp_path):
    rows = _rows(tmp_path)
    order = [(r["model"], r["input_len"]) for r in rows]
    assert [s for _, s in order] == [128] * 4 + [512] * 4
    assert parse_phases("128,512;2048") == [[128, 512], [2048]]


def _good():
    return copy.deepcopy(_GOOD)


_GOOD = {
    "schema_version": results.SCHEMA_VERSION, "point_id": "hf|x|B=1", "status": "ok", "error": None,
    "backend": "hf", "model": "x", "model_type": "mixtral", "overrides": [], "layers": None,
    "batch": 2, "input_len": 8, "output_len": 4, "full_run": False,
    "engine": {"cuda_graphs": True, "experts_implementation": "grouped_mm", "attn_implementation": "sdpa",
               "dtype": "bfloat16", "max_cache_len": 12},
    "gpu_name": "g", "driver": None, "cuda": None, "torch": "2", "transformers": "5", "vllm": None,
    "date": "2026-01-01", "git_commit": None, "wall_s": 1.0,
    "ttft_ms": 10.0, "e2e_ms": 16.0, "itl_ms": 2.0, "decode_total_ms": 6.0, "throughput_tok_s": 1500.0,
    "output_tok_s": 500.0, "decode_method": "cuda_graph",
    "decode_samples": [{"step": 1, "context_len": 9, "ms": 2.0, "p10_ms": 2.0, "p90_ms": 2.0, "reps": 5}],
    "decode_profile": {"kernel_ms": 3.0, "split_ms": {"attention": 1.0, "expert_gemm": 2.0}},
}


def test_good_row_passes():
    assert results.validate_row(_good()) == []


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.pop("git_commit"), "git_commit: missing"),
    (lambda r: r.pop("gpu_name"), "gpu_name: missing"),
    (lambda r: r["engine"].pop("max_cache_len"), "engine.max_cache_len"),
    (lambda r: r.update(ttft_ms=None), "ttft_ms: required"),
    (lambda r: r.update(e2e_ms=5.0), "smaller than ttft"),
    (lambda r: r.update(status="done"), "status"),
    (lambda r: r.update(decode_method="magic"), "decode_method"),
    (lambda r: r.update(batch=0), "batch"),
    (lambda r: r.update(batch=True), "batch"),
    (lambda r: r.update(ttft_ms=float("nan")), "not finite"),
    (lambda r: r["decode_profile"]["split_ms"].update(attention=5.0), "categories sum"),
    (lambda r: r["decode_profile"]["split_ms"].update(gpu_magic=0.0), "unknown category"),
    (lambda r: r["decode_samples"][0].pop("ms"), "decode_samples[0]"),
    (lambda r: r.update(decode_profile="x"), "decode_profile: expected dict"),
    (lambda r: r.update(input_len=10**12), "input_len: must be from 1 to 10,000,000"),
    (lambda r: r.update(layers=0), "layers: must be >= 1"),
    (lambda r: r.update(overrides=[5]), "overrides: expected KEY=VALUE strings"),
    (lambda r: r["engine"].update(experts_implementation=5), "engine.experts_implementation: expected str"),
])
def test_broken_rows_are_rejected(mutate, fragment):
    row = _good()
    mutate(row)
    errors = results.validate_row(row)
    assert any(fragment in e for e in errors), errors


def test_failed_rows_need_a_message_but_no_metrics():
    row = {k: v for k, v in _good().items() if k not in results.REQUIRED_OK and k != "decode_profile"}
    row.update(status="oom", error=None)
    assert any("one-line message" in e for e in results.validate_row(row))
    row["error"] = "OutOfMemoryError: CUDA out of memory"
    assert results.validate_row(row) == []


def test_point_ids_are_stable_and_distinguish_settings():
    a = SweepPoint("OLMoE", 16, 128, 128, overrides=("top_k=2", "num_experts=8"))
    b = SweepPoint("olmoe", 16, 128, 128, overrides=("num_experts=8", "top_k=2"))
    assert a.point_id == b.point_id
    assert a.point_id != SweepPoint("olmoe", 16, 128, 128).point_id
    assert a.point_id != SweepPoint("olmoe", 16, 128, 128, overrides=a.overrides, cuda_graphs=False).point_id
    spec = FullRunSpec.parse("16x128,mixtral:1x512")
    assert spec.matches("olmoe", 16, 128) and spec.matches("Mixtral", 1, 512)
    assert not spec.matches("olmoe", 1, 512)
