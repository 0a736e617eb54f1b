"""Measured data is never lost, and measuring refuses at once where it cannot run.

Result files: a complete last row lacking its newline is kept, unreadable rows are skipped with
one warning, appends are locked and readers keep one row per point. Bench tables are replaced
only once new data exists. Budgets must be finite and positive; no torch, no GPU or a report
path that is a file end in one line.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import threading
import time

import pytest

from perfmodel.errors import InputError
from perfmodel.measuring import preflight, results
from perfmodel.measuring.fake_backend import FakeBackend
from perfmodel.measuring.runner import run_sweep
from perfmodel.measuring.points import build_points

fcntl = pytest.importorskip("fcntl")


def _points():
    return build_points(["olmoe"], [1, 16, 32], [[128]])


def _measured(tmp_path, n=3):
    out = tmp_path / "r.jsonl"
    points = _points()
    run_sweep(points[:n], FakeBackend(), out)
    return out, points


# --------------------------------------------------------------------------- results JSONL


def test_complete_last_row_without_newline_is_kept(tmp_path):
    out, points = _measured(tmp_path)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    read = results.read_rows(out)
    assert len(read.rows) == 3 and not read.partial_tail and read.skipped == 0
    assert results.repair_tail(out) == "newline"  # ended, not cut
    assert len(results.read_rows(out).rows) == 3 and out.read_bytes().endswith(b"\n")


def test_resume_after_a_missing_newline_measures_nothing_again(tmp_path):
    out, points = _measured(tmp_path, n=2)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    backend = FakeBackend()
    summary = run_sweep(points, backend, out)
    assert summary.already_done == 2 and backend.measured == [points[2].point_id]
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["point_id"] for x in lines[:-1]] == [p.point_id for p in points]


def test_append_ends_an_unterminated_complete_row_instead_of_joining_it(tmp_path):
    out, points = _measured(tmp_path, n=1)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    row = json.loads(out.read_text())
    results.append_row(out, {**row, "point_id": "other"})
    assert [r["point_id"] for r in results.read_rows(out).rows] == [points[0].point_id, "other"]


def test_unreadable_rows_are_skipped_with_one_warning_naming_file_and_count(tmp_path, caplog):
    out, points = _measured(tmp_path)
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], lines[1][:40], lines[2], "[1, 2]"]) + "\n" + lines[2][:30])
    with caplog.at_level(logging.WARNING, logger="perfmodel.measuring.results"):
        read = results.read_rows(out)
        results.read_rows(out)  # the same file again: no second warning
    assert [r["point_id"] for r in read.rows] == [points[0].point_id, points[2].point_id]
    assert read.bad_lines == [2, 4] and read.partial_tail and read.skipped == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(out) in warnings[0] and "skipped 3 unreadable rows" in warnings[0]
    assert "\n" not in warnings[0]


def test_the_warning_is_one_line_on_stderr(tmp_path):
    out, _ = _measured(tmp_path)
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    code = ("import sys; from perfmodel.measuring.compare import load_measurements\n"
            f"print(len(load_measurements({str(out)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "2"
    assert proc.stderr.strip().splitlines() == [
        f"perfmodel: warning: {out}: skipped 1 unreadable row (line 2)"]


def test_a_shipped_files_repeated_points_are_not_warned_about(caplog):
    """The committed measurements keep repeated measurements of a point on purpose: reading them
    drops the repeats (one row per point) without a warning a user cannot act on."""
    from perfmodel.paths import RESULTS_DIR

    results._warned.clear()
    with caplog.at_level(logging.WARNING, logger="perfmodel.measuring.results"):
        read = results.read_rows(RESULTS_DIR / "h200-vllm.jsonl")
    assert read.duplicates > 0
    assert not [r for r in caplog.records if "duplicate" in r.getMessage()]


def test_readers_keep_one_row_per_point(tmp_path, caplog):
    out, points = _measured(tmp_path)
    rows = results.read_rows(out).rows
    first, second = points[0].point_id, points[1].point_id
    err = {**rows[0], "status": "error", "error": "RuntimeError: busy", "wall_s": 9.0}
    later_ok = {**rows[1], "wall_s": 7.0}
    for row in (err, later_ok):  # a second run appended the same points
        results.append_row(out, row)
    with caplog.at_level(logging.WARNING, logger="perfmodel.measuring.results"):
        read = results.read_rows(out)
    by_id = {r["point_id"]: r for r in read.rows}
    assert [r["point_id"] for r in read.rows] == [p.point_id for p in points]  # first-seen order
    assert read.duplicates == 2
    assert by_id[first]["status"] == "ok"  # measured beats a later error row
    assert by_id[second]["wall_s"] == 7.0  # of two measured rows the last wins
    assert any("dropped 2 duplicate rows" in r.getMessage() for r in caplog.records)
    assert len(results.read_rows(out, unique=False).rows) == 5

    from perfmodel.measuring.compare import load_measurements

    assert len(load_measurements(out)) == 3


def test_dedupe_prefers_ok_whatever_the_order():
    ok = {"point_id": "p", "status": "ok", "n": 1}
    oom = {"point_id": "p", "status": "oom", "n": 2}
    assert results.dedupe([ok, oom]) == ([ok], 1)
    assert results.dedupe([oom, ok]) == ([ok], 1)
    oom2 = {**oom, "n": 3}
    assert results.dedupe([oom, oom2, {"x": 1}]) == ([oom2, {"x": 1}], 1)


def test_append_waits_for_the_file_lock(tmp_path):
    out, points = _measured(tmp_path, n=1)
    row = results.read_rows(out).rows[0]
    before = out.read_bytes()
    with open(out, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=results.append_row, args=(out, {**row, "point_id": "q"}))
        writer.start()
        time.sleep(0.3)
        assert out.read_bytes() == before  # blocked while another run holds the lock
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert [r["point_id"] for r in results.read_rows(out).rows] == [points[0].point_id, "q"]


class _OtherRunWrites(FakeBackend):
    """Measuring its first point, it lets another run record the next one in the same file."""

    def __init__(self, out, other_row):
        super().__init__()
        self.out, self.other_row = out, other_row

    def measure(self, handle, point):
        if self.other_row is not None:
            results.append_row(self.out, self.other_row)
            self.other_row = None
        return super().measure(handle, point)


def test_sweep_skips_a_point_another_run_recorded_meanwhile(tmp_path):
    out, points = _measured(tmp_path, n=1)
    template = results.read_rows(out).rows[0]
    out.unlink()
    other = {**template, "point_id": points[1].point_id, "batch": points[1].batch}
    backend = _OtherRunWrites(out, other)
    summary = run_sweep(points, backend, out)
    assert backend.measured == [points[0].point_id, points[2].point_id]
    assert summary.already_done == 1
    ids = [r["point_id"] for r in results.read_rows(out, unique=False).rows]
    assert sorted(ids) == sorted(p.point_id for p in points)


# --------------------------------------------------------------------------- bench tables


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_table_leaves_the_committed_table_until_commit(tmp_path):
    from perfmodel.calibration.bench_io import CsvTable

    path = tmp_path / "gemm.csv"
    path.write_text("committed\n")
    table = CsvTable(path, ["m"])
    table.add({"m": 1, "status": "ok"})
    table.close()
    assert path.read_text() == "committed\n"  # a kill here loses nothing
    assert _read(table.partial_path)[0]["m"] == "1"
    table = CsvTable(path, ["m"])
    table.add({"m": 2, "status": "ok"})
    table.commit()
    assert [r["m"] for r in _read(path)] == ["2"] and not table.partial_path.exists()


class _Stop(BaseException):
    """Stands in for SIGKILL inside a stage."""


def _earlier_run(out):
    (out / "memory.csv").write_text("family,op\nold,rmsnorm\n")
    (out / "gemm.csv").write_text("family,op\nold,linear\n")
    (out / "metadata.json").write_text(json.dumps({"date": "2026-01-01", "git_commit": "abc",
                                                   "bench_mode": "full", "gpu_name": "NVIDIA H200"}))
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture
def cpu_bench(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(preflight.ALLOW_CPU_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the tiny CPU mode on any machine
    import perfmodel.calibration.bench_mem as bench_mem

    return bench_mem


def test_killed_bench_leaves_committed_tables_and_metadata(tmp_path, cpu_bench, monkeypatch):
    from perfmodel.calibration.bench import run_bench

    before = _earlier_run(tmp_path)

    def killed(plan, device, table, stage, log):
        table.add({"family": "new", "op": "rmsnorm", "status": "ok"})
        raise _Stop()

    monkeypatch.setattr(cpu_bench, "bench_memory", killed)
    with pytest.raises(_Stop):
        run_bench(tmp_path, budget_s=5, stages=("memory",), log=lambda m: None)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    assert _read(tmp_path / "memory.csv.partial")[0]["family"] == "new"


def test_failed_stage_keeps_the_earlier_table(tmp_path, cpu_bench, monkeypatch):
    from perfmodel.calibration.bench import run_bench

    before = _earlier_run(tmp_path)

    def broken(plan, device, table, stage, log):
        table.add({"family": "new", "op": "rmsnorm", "status": "ok"})
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(cpu_bench, "bench_memory", broken)
    meta = run_bench(tmp_path, budget_s=5, stages=("memory",), log=lambda m: None)
    assert (tmp_path / "memory.csv").read_bytes() == before["memory.csv"]
    assert "memory" in meta["kept"] and meta["stages"]["memory"]["error"].startswith("RuntimeError")
    assert (tmp_path / "metadata.json").read_bytes() == before["metadata.json"]  # nothing replaced


def test_completed_stage_replaces_its_table_only(tmp_path, cpu_bench):
    from perfmodel.calibration.bench import run_bench

    before = _earlier_run(tmp_path)
    run_bench(tmp_path, budget_s=5, stages=("memory",), log=lambda m: None)
    rows = _read(tmp_path / "memory.csv")
    assert rows and all(r["family"] != "old" for r in rows)
    assert (tmp_path / "gemm.csv").read_bytes() == before["gemm.csv"]  # its stage did not run
    assert not (tmp_path / "memory.csv.partial").exists()
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["earlier"] == {"gemm": {"date": "2026-01-01", "git_commit": "abc", "bench_mode": "full",
                                        "gpu_name": "NVIDIA H200"}}
    assert meta["rows"]["memory"] == len(rows) and meta["bench_mode"] == "tiny"


# --------------------------------------------------------------------------- refusals


def _cli(argv, capsys):
    from perfmodel.commands import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
def test_budget_must_be_finite_and_positive(value, tmp_path, capsys):
    err = _cli(["measure", "olmoe", "--budget-s", value, "--out", str(tmp_path / "r.jsonl")], capsys)
    assert err == f"perfmodel: error: --budget-s must be a finite number of seconds > 0, got {float(value)}"
    err = _cli(["calibrate", "bench", "--budget-s", value, "--out", str(tmp_path / "b")], capsys)
    assert "--budget-s must be a finite number of seconds > 0" in err
    from perfmodel.calibration.bench import main as bench_main

    assert bench_main(["--budget-s", value, "--out", str(tmp_path / "b")]) == 2
    assert "--budget-s must be a finite" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "r.jsonl").exists()


def test_api_budgets_are_checked_too(tmp_path):
    from perfmodel.calibration.bench import run_bench

    with pytest.raises(InputError, match="finite"):
        run_sweep(_points(), FakeBackend(), tmp_path / "r.jsonl", budget_s=float("nan"))
    with pytest.raises(InputError, match="finite"):
        run_bench(tmp_path / "b", budget_s=float("inf"))
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "b").exists()


@pytest.fixture
def no_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.delenv(preflight.ALLOW_CPU_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    import perfmodel.measuring.hf_runner as hf_runner

    def never(*a, **k):
        raise AssertionError("a model was built without a GPU")

    monkeypatch.setattr(hf_runner, "HFBackend", never)
    return torch


def test_measure_refuses_at_once_without_a_gpu(no_gpu, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    t0 = time.monotonic()
    err = _cli(["measure", "mixtral,olmoe", "--out", str(out)], capsys)
    assert err == ("perfmodel: error: no CUDA GPU here; measure runs on a GPU machine "
                   "(the committed results replay with `perfmodel validate`)")
    assert time.monotonic() - t0 < 30 and not out.exists()


def test_bench_refuses_without_a_gpu(no_gpu, tmp_path, capsys):
    from perfmodel.calibration.bench import main as bench_main, run_bench

    err = _cli(["calibrate", "bench", "--out", str(tmp_path / "b")], capsys)
    assert err.startswith("perfmodel: error: no CUDA GPU here; calibrate bench runs on a GPU machine")
    assert bench_main(["--out", str(tmp_path / "b")]) == 2
    with pytest.raises(InputError, match="no CUDA GPU"):
        run_bench(tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_the_cpu_escape_hatch(no_gpu, monkeypatch):
    with pytest.raises(InputError):
        preflight.require_gpu("measure", "x")
    preflight.require_gpu("measure", "x", allow_cpu=True)
    monkeypatch.setenv(preflight.ALLOW_CPU_ENV, "1")
    preflight.require_gpu("measure", "x")


@pytest.mark.parametrize("missing", ["torch", "transformers"])
def test_refusal_without_the_gpu_extra(missing, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # unimportable, as after a plain pip install .
    expected = f"{missing} is not installed; measure needs the GPU extra (pip install 'perfmodel[gpu]')"
    err = _cli(["measure", "olmoe", "--out", str(tmp_path / "r.jsonl")], capsys)
    assert err == f"perfmodel: error: {expected}"
    err = _cli(["calibrate", "bench", "--out", str(tmp_path / "b")], capsys)
    assert err == f"perfmodel: error: {expected.replace('measure', 'calibrate bench')}"
    from perfmodel.measuring.measure import main as measure_main

    assert measure_main(["olmoe", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == expected
    monkeypatch.setenv(preflight.ALLOW_CPU_ENV, "1")  # waives the GPU, not the libraries
    with pytest.raises(InputError, match="not installed"):
        preflight.require_gpu_stack("measure", "x")
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "b").exists()


def test_measure_out_must_not_be_a_folder(tmp_path, capsys):
    err = _cli(["measure", "olmoe", "--out", str(tmp_path)], capsys)
    assert err == f"perfmodel: error: --out {tmp_path} is a folder; measure appends rows to a JSONL file"


def test_validate_out_that_is_a_file(tmp_path, capsys):
    report = tmp_path / "report.html"
    report.write_text("keep me")
    err = _cli(["validate", "olmoe", "--out", str(report)], capsys)
    assert err == f"perfmodel: error: --out {report} is a file; the report folder must be a folder"
    err = _cli(["validate", "olmoe", "--out", str(report / "sub")], capsys)
    assert err == f"perfmodel: error: --out {report / 'sub'} lies under {report}, a file; the report folder must be a folder"
    assert report.read_text() == "keep me"


def test_measure_module_unknown_option_is_one_line(tmp_path, capsys):
    """The device scripts call the module directly: a mistyped flag is one line and exit 2."""
    from perfmodel.measuring.measure import main as measure_main

    assert measure_main(["olmoe", "--quant", "fp8", "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No such option: --quant") and "\n" not in err
    assert "--quantization" in err  # the option it meant
    assert not (tmp_path / "r.jsonl").exists()
