"""A killed sweep resumes: every point gets exactly one row, a partial last line is dropped."""

from __future__ import annotations

import json

import pytest

from perfmodel.measuring import results
from perfmodel.measuring.fake_backend import FakeBackend, Killed
from perfmodel.measuring.runner import run_sweep
from perfmodel.measuring.points import build_points


def _points():
    return build_points(["olmoe", "qwen3-30b-a3b"], [1, 16, 64], [[128, 512]])


def _ids(path):
    return [r["point_id"] for r in results.read_rows(path).rows]


def test_kill_mid_sweep_then_resume_gives_each_point_once(tmp_path):
    out = tmp_path / "r.jsonl"
    points = _points()
    with pytest.raises(Killed):
        run_sweep(points, FakeBackend(kill_after=5), out)
    assert len(_ids(out)) == 5
    second = FakeBackend()
    summary = run_sweep(points, second, out)
    assert summary.already_done == 5
    assert len(second.measured) == len(points) - 5
    ids = _ids(out)
    assert sorted(ids) == sorted(p.point_id for p in points)
    assert len(set(ids)) == len(ids)
    # a third run measures nothing
    third = FakeBackend()
    assert run_sweep(points, third, out).already_done == len(points)
    assert third.measured == [] and third.builds == 0


def test_partial_trailing_line_is_cut_and_its_point_measured_again(tmp_path):
    out = tmp_path / "r.jsonl"
    points = _points()
    run_sweep(points[:4], FakeBackend(), out)
    lines = out.read_bytes().splitlines(keepends=True)
    # simulate a kill in the middle of writing the 4th row
    out.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    read = results.read_rows(out)
    assert read.partial_tail and len(read.rows) == 3
    backend = FakeBackend()
    run_sweep(points, backend, out)
    assert backend.measured[0] == points[3].point_id
    ids = _ids(out)
    assert sorted(ids) == sorted(p.point_id for p in points)
    for line in out.read_text().splitlines():
        assert results.validate_row(json.loads(line)) == []


def test_only_partial_line_file_is_emptied(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"point_id": "x", "sta')
    assert results.repair_tail(out)
    assert out.read_bytes() == b""
    assert not results.repair_tail(out)


def test_unparsable_middle_line_is_skipped_not_counted(tmp_path):
    out = tmp_path / "r.jsonl"
    points = _points()[:3]
    run_sweep(points, FakeBackend(), out)
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    backend = FakeBackend()
    run_sweep(points, backend, out)
    assert backend.measured == [points[1].point_id]


def test_budget_stops_cleanly_and_resume_completes(tmp_path):
    out = tmp_path / "r.jsonl"
    points = _points()
    ticks = iter(range(0, 10_000, 10))  # each clock read advances 10 s
    summary = run_sweep(points, FakeBackend(estimate=5.0), out, budget_s=60.0, clock=lambda: next(ticks))
    assert summary.stopped == "time budget"
    assert summary.deferred and 0 < len(_ids(out)) < len(points)
    assert not set(summary.deferred) & set(_ids(out))
    run_sweep(points, FakeBackend(), out)
    ids = _ids(out)
    assert sorted(ids) == sorted(p.point_id for p in points)


def test_passes_measure_each_point_again_on_one_build_in_turn(tmp_path):
    out = tmp_path / "r.jsonl"
    points = _points()[:3]
    backend = FakeBackend(failures={points[1].point_id: RuntimeError("CUDA out of memory")})
    run_sweep(points, backend, out, passes=3)
    assert backend.builds == 1
    ids = [p.point_id for p in points]
    # in turn: 1, 2 (oom, not repeated), 3, then 1, 3 twice more
    assert backend.measured == [ids[0], ids[1], ids[2], ids[0], ids[2], ids[0], ids[2]]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["point_id"], r["pass"], r["status"]) for r in rows][:3] == [
        (ids[0], 1, "ok"), (ids[1], 1, "oom"), (ids[2], 1, "ok")]
    assert [r["pass"] for r in rows if r["point_id"] == ids[2]] == [1, 2, 3]
    # resume: a point with any row is done, whatever the passes
    again = FakeBackend()
    assert run_sweep(points, again, out, passes=3).already_done == 3 and again.measured == []


def test_one_pass_rows_carry_no_pass_field(tmp_path):
    out = tmp_path / "r.jsonl"
    run_sweep(_points()[:2], FakeBackend(), out)
    assert all("pass" not in json.loads(line) for line in out.read_text().splitlines())


@pytest.mark.parametrize("passes", [0, -1, 1.5, True])
def test_passes_must_be_a_positive_integer(tmp_path, passes):
    from perfmodel.errors import InputError

    with pytest.raises(InputError, match="passes"):
        run_sweep(_points()[:1], FakeBackend(), tmp_path / "r.jsonl", passes=passes)
