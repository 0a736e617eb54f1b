"""Out of memory is a result: the row says oom, memory is freed, the sweep goes on."""

from __future__ import annotations

import torch

from perfmodel.measuring import results
from perfmodel.measuring.fake_backend import FakeBackend
from perfmodel.measuring.hf_runner import HFBackend
from perfmodel.measuring.runner import run_sweep
from perfmodel.measuring.points import build_points


def test_oom_point_is_recorded_and_sweep_continues(tmp_path):
    out = tmp_path / "r.jsonl"
    points = build_points(["mixtral"], [1, 16, 64], [[128, 2048]])
    victim = next(p for p in points if p.batch == 16 and p.input_len == 128)
    backend = FakeBackend(failures={victim.point_id: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")})
    summary = run_sweep(points, backend, out)
    rows = {r["point_id"]: r for r in results.read_rows(out).rows}
    assert len(rows) == len(points)
    assert rows[victim.point_id]["status"] == "oom"
    assert rows[victim.point_id]["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert all(r["status"] == "ok" for pid, r in rows.items() if pid != victim.point_id)
    assert summary.measured == {"ok": len(points) - 1, "oom": 1, "error": 0}
    assert backend.recovers >= 1  # memory freed after the failure
    for r in rows.values():
        assert results.validate_row(r) == []


def test_other_errors_are_one_line_rows(tmp_path):
    out = tmp_path / "r.jsonl"
    points = build_points(["olmoe"], [1, 16], [[128]])
    backend = FakeBackend(failures={points[0].point_id: ValueError("bad shape\nlong traceback text")})
    run_sweep(points, backend, out)
    rows = results.read_rows(out).rows
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert rows[0]["error"] == "ValueError: bad shape"


def test_oom_while_building_marks_the_whole_group(tmp_path):
    out = tmp_path / "r.jsonl"
    points = build_points(["mixtral"], [1, 16], [[128, 512]])
    backend = FakeBackend(build_failure=torch.OutOfMemoryError("CUDA out of memory"))
    run_sweep(points, backend, out)
    rows = results.read_rows(out).rows
    assert len(rows) == 4 and {r["status"] for r in rows} == {"oom"}
    assert all(r["error"].startswith("model build: ") for r in rows)


def test_fatal_device_error_stops_the_sweep_for_a_fresh_process(tmp_path):
    out = tmp_path / "r.jsonl"
    points = build_points(["olmoe"], [1, 16, 32], [[128]])
    backend = FakeBackend(failures={points[1].point_id: RuntimeError("CUDA error: an illegal memory access was encountered")})
    summary = run_sweep(points, backend, out)
    assert summary.stopped == "fatal device error"
    assert [r["status"] for r in results.read_rows(out).rows] == ["ok", "error"]
    assert summary.deferred == [points[2].point_id]


def test_hf_backend_recognises_oom():
    backend = HFBackend(device="cpu")
    assert backend.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert backend.is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not backend.is_oom(ValueError("shape mismatch"))


def test_a_failed_build_keeps_one_line_rows_and_logs_its_traceback(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    points = build_points(["olmoe"], [1, 16], [[128]])
    backend = FakeBackend(build_failure=ValueError("Unsupported: Observed exception"))
    run_sweep(points, backend, out)
    rows = results.read_rows(out).rows
    assert {r["status"] for r in rows} == {"error"}
    assert all(r["error"] == "model build: ValueError: Unsupported: Observed exception" for r in rows)
    assert "Traceback (most recent call last)" in capsys.readouterr().err
