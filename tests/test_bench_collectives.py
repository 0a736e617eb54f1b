"""The collectives benchmark (2 CPU processes over gloo), its refusals, and the link fit."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from perfmodel.calibration import bench_collectives as bc
from perfmodel.calibration.fit_collectives import COLLECTIVES, bus_factor, fit_collectives, link_steps
from perfmodel.errors import InputError, SpecError
from perfmodel.measuring import preflight

#: nccl-tests' bus-bandwidth factors and the ring's link steps, written out.
NCCL_TESTS_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "send_recv": lambda n: 1.0,
}
RING_STEPS = {
    "all_reduce": lambda n: 2 * (n - 1),
    "all_gather": lambda n: n - 1,
    "reduce_scatter": lambda n: n - 1,
    "all_to_all": lambda n: n - 1,
    "send_recv": lambda n: 1,
}
H200_LINK = 450e9  # specs/hardware/h200-sxm.yaml, B/s per direction


def _cli(argv):
    from perfmodel.commands import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue().strip()


@pytest.mark.parametrize("n", range(2, 9))
def test_bus_factors_and_steps_are_those_of_nccl_tests(n):
    for name in COLLECTIVES:
        assert float(bus_factor(name, n)) == pytest.approx(NCCL_TESTS_FACTOR[name](n), rel=1e-12), name
        assert float(link_steps(name, n)) == pytest.approx(RING_STEPS[name](n), rel=1e-12), name
    np.testing.assert_allclose(bus_factor("all_reduce", np.array([2, 4, 8])), [1.0, 1.5, 1.75])
    np.testing.assert_allclose(link_steps("send_recv", np.array([2, 8])), [1, 1])


def test_message_sizes_and_byte_options():
    sizes = bc.message_sizes()
    assert sizes[0] == 4096 and sizes[-1] == 2**30 and len(sizes) == 19
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:]))
    assert bc.message_sizes(bc.parse_bytes("20KiB")) == [4096, 8192, 16384]
    assert bc.parse_bytes("64MiB") == bc.parse_bytes("64M") == 64 * 2**20
    assert bc.parse_bytes("1GiB") == bc.parse_bytes(2**30) == 2**30
    for bad in ("2KiB", "2GiB", "lots", "-4096", "1 TB"):
        with pytest.raises(InputError, match="--max-bytes"):
            bc.parse_bytes(bad)


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    before = os.environ.get("NCCL_NVLS_ENABLE")
    code, stdout, err = _cli(["calibrate", "collectives", "--allow-cpu", "--out", str(out), "--max-bytes", "16KiB"])
    assert code in (0, None), err
    return out, stdout, before


def test_a_two_process_gloo_run_writes_a_valid_table(gloo_run):
    out, stdout, _ = gloo_run
    assert f"wrote {out / 'collectives.csv'} (15 rows, gloo, 2 ranks)" in stdout
    with open(out / "collectives.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == bc.COLUMNS
        rows = list(reader)
    assert [(r["collective"], int(r["bytes"])) for r in rows] == [
        (c, b) for b in (4096, 8192, 16384) for c in COLLECTIVES]
    for r in rows:
        assert r["status"] == "ok" and r["error"] == "", r
        assert (r["world_size"], r["dtype"], r["backend"], r["method"]) == ("2", "bf16", "gloo", "wall")
        t, p10, p90 = float(r["time_s"]), float(r["p10_s"]), float(r["p90_s"])
        assert 0 < p10 <= t <= p90 and int(r["reps"]) >= 5 and int(r["inner"]) >= 1
        algbw = float(r["algbw_gb_s"])
        assert algbw == pytest.approx(int(r["bytes"]) / t / 1e9, rel=1e-4)
        assert float(r["busbw_gb_s"]) == pytest.approx(algbw * NCCL_TESTS_FACTOR[r["collective"]](2), rel=1e-4)
    assert not list(out.glob("*.partial"))


def test_the_run_records_its_environment_and_keeps_multicast_off(gloo_run):
    out, _, before = gloo_run
    meta = json.loads((out / "metadata.json").read_text())
    for key in ("gpu_name", "driver", "cuda", "torch", "date", "git_commit", "hostname"):
        assert key in meta
    assert (meta["bench"], meta["backend"], meta["world_size"], meta["dtype"]) == ("collectives", "gloo", 2, "bf16")
    assert meta["env"]["NCCL_NVLS_ENABLE"] == "0" and meta["env"]["NVSHMEM_DISABLE_NVLS"] == "1"
    assert meta["sizes_bytes"] == [4096, 8192, 16384] and meta["rows"] == 15 and meta["truncated"] is False
    assert meta["gpu_spec"] is None  # no link fit of CPU processes
    assert os.environ.get("NCCL_NVLS_ENABLE") == before  # set for the ranks only


def test_a_spent_budget_stops_every_rank_after_the_first_case(tmp_path):
    meta = bc.run_collectives(tmp_path, max_bytes="16KiB", budget_s=1e-9, allow_cpu=True, verbose=False)
    assert meta["truncated"] is True and meta["rows"] == 1 and meta["out_dir"] == str(tmp_path)
    with open(tmp_path / "collectives.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["collective"], r["bytes"], r["status"]) for r in rows] == [("all_reduce", "4096", "ok")]


@pytest.fixture
def never_spawn(monkeypatch):
    torch = pytest.importorskip("torch")
    import torch.multiprocessing as mp

    def spawn(*a, **k):
        raise AssertionError("ranks were started")

    monkeypatch.setattr(mp, "spawn", spawn)
    monkeypatch.delenv(preflight.ALLOW_CPU_ENV, raising=False)
    return torch


def _gpus(monkeypatch, torch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("count, args, message", [
    (0, [], "no CUDA GPU here; calibrate collectives runs on a GPU machine"),
    (1, [], "calibrate collectives needs at least 2 GPUs, 1 visible"),
    (4, ["--world-size", "1"], "--world-size must be between 2 and the 4 GPUs visible, got 1"),
    (4, ["--world-size", "5"], "--world-size must be between 2 and the 4 GPUs visible, got 5"),
    (0, ["--allow-cpu", "--world-size", "1"], "--world-size must be at least 2 (one process per rank), got 1"),
    (0, ["--allow-cpu", "--max-bytes", "1KiB"], "--max-bytes must be between 4KiB and 1GiB, got 1KiB"),
    (0, ["--allow-cpu", "--budget-s", "nan"], "--budget-s must be a finite number of seconds > 0"),
])
def test_refusals_are_one_line_and_start_nothing(never_spawn, monkeypatch, tmp_path, count, args, message):
    _gpus(monkeypatch, never_spawn, count)
    out = tmp_path / "c"
    code, _, err = _cli(["calibrate", "collectives", "--out", str(out), *args])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"perfmodel: error: {message}"), err
    assert not out.exists()


def test_the_api_refuses_alike(never_spawn, monkeypatch, tmp_path):
    _gpus(monkeypatch, never_spawn, 1)
    with pytest.raises(InputError, match="needs at least 2 GPUs, 1 visible"):
        bc.run_collectives(tmp_path / "c")
    _gpus(monkeypatch, never_spawn, 0)
    with pytest.raises(InputError, match="no CUDA GPU"):
        bc.run_collectives(tmp_path / "c")
    with pytest.raises(InputError, match="at least 2"):
        bc.run_collectives(tmp_path / "c", world_size=1, allow_cpu=True)
    with pytest.raises(InputError, match="unknown collective"):
        bc.run_collectives(tmp_path / "c", collectives=("broadcast",), allow_cpu=True)
    with pytest.raises(InputError, match="max_bytes must be between"):
        bc.run_collectives(tmp_path / "c", max_bytes=2**31, allow_cpu=True)
    assert not (tmp_path / "c").exists()


def test_out_must_be_a_folder(never_spawn, tmp_path):
    out = tmp_path / "file"
    out.write_text("")
    code, _, err = _cli(["calibrate", "collectives", "--allow-cpu", "--out", str(out)])
    assert code == 2 and "is a file" in err


def _synthetic(params, world_sizes=(2, 4, 8), noise=0.0, seed=0):
    """A collectives table from t = steps·lat + bytes·factor/(link·η), optionally with noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in world_sizes:
        for nbytes in bc.message_sizes():
            for name in COLLECTIVES:
                eta, lat = params[name]
                t = RING_STEPS[name](n) * lat + nbytes * NCCL_TESTS_FACTOR[name](n) / (H200_LINK * eta)
                t *= 1 + noise * rng.uniform(-1, 1)
                rows.append({"collective": name, "world_size": n, "bytes": nbytes, "time_s": t, "status": "ok"})
    rows.append({"collective": "all_reduce", "world_size": 8, "bytes": 2**30, "time_s": None, "status": "oom"})
    return pd.DataFrame(rows)


PARAMS = {"all_reduce": (0.82, 2.5e-6), "all_to_all": (0.82, 2.5e-6), "send_recv": (0.82, 2.5e-6),
          "all_gather": (0.61, 4.0e-6), "reduce_scatter": (0.7, 1.5e-6)}


def test_the_fit_recovers_efficiency_and_latency(tmp_path):
    from perfmodel.profile import Efficiency, Latency

    path = tmp_path / "collectives.csv"
    _synthetic(PARAMS).to_csv(path, index=False)
    fitted = fit_collectives(path, "h200")
    assert fitted["gpu"] == "h200-sxm" and fitted["link_gb_s"] == pytest.approx(450)
    for name, (eta, lat) in PARAMS.items():
        got = fitted["collectives"][name]
        assert got["efficiency"] == pytest.approx(eta, rel=1e-6) and got["link_step_s"] == pytest.approx(lat, rel=1e-6)
        assert got["world_sizes"] == [2, 4, 8] and got["rows"] == 57 and got["mape_pct"] < 1e-6
    assert fitted["joint"]["collectives"] == ["all_reduce", "all_to_all", "send_recv"]
    comm = Efficiency(**fitted["profile"]["efficiency"]["comm"])
    latency = Latency(**fitted["profile"]["latency"])
    assert comm.memory == pytest.approx(0.82, rel=1e-6) and latency.link_step_s == pytest.approx(2.5e-6, rel=1e-6)


def test_the_fit_holds_under_noise_and_one_world_size():
    fitted = fit_collectives(_synthetic(PARAMS, world_sizes=(8,), noise=0.03, seed=1), "h200-sxm")
    for name, (eta, lat) in PARAMS.items():
        got = fitted["collectives"][name]
        assert got["efficiency"] == pytest.approx(eta, rel=0.03), name
        assert got["link_step_s"] == pytest.approx(lat, rel=0.15), name
        assert 0 < got["mape_pct"] < 3


def test_the_fit_refuses_what_it_cannot_fit(tmp_path):
    one_size = _synthetic(PARAMS)
    with pytest.raises(InputError, match="at least 2 message sizes"):
        fit_collectives(one_size[one_size["bytes"] == 4096], "h200")
    with pytest.raises(InputError, match="lacks column"):
        fit_collectives(one_size.drop(columns="time_s"), "h200")
    with pytest.raises(InputError, match="cannot read"):
        fit_collectives(tmp_path / "missing.csv", "h200")
    with pytest.raises(SpecError, match="unknown GPU"):
        fit_collectives(one_size, "no-such-gpu")
    flat = one_size.assign(time_s=1e-3)
    with pytest.raises(InputError, match="do not grow with the message size"):
        fit_collectives(flat, "h200")


def test_the_command_prints_the_fit_on_a_known_gpu(monkeypatch, tmp_path):
    _synthetic(PARAMS, world_sizes=(8,)).to_csv(tmp_path / "collectives.csv", index=False)
    meta = {"out_dir": str(tmp_path), "rows": 95, "backend": "nccl", "world_size": 8, "truncated": False,
            "gpu_spec": "h200-sxm"}
    monkeypatch.setattr(bc, "run_collectives", lambda *a, **k: meta)
    code, stdout, err = _cli(["calibrate", "collectives"])
    assert code in (0, None), err
    assert "link fit against h200-sxm (450 GB/s per direction):" in stdout
    line = next(x for x in stdout.splitlines() if x.strip().startswith("joint"))
    assert "efficiency 0.820" in line and "link step    2.50 us" in line


def test_a_failing_fit_is_reported_not_raised(monkeypatch, tmp_path):
    meta = {"out_dir": str(tmp_path), "rows": 0, "backend": "nccl", "world_size": 2, "truncated": True,
            "gpu_spec": "h200-sxm"}
    monkeypatch.setattr(bc, "run_collectives", lambda *a, **k: meta)
    code, stdout, _ = _cli(["calibrate", "collectives"])
    assert code in (0, None) and "no link fit: cannot read" in stdout and "cut short by the budget" in stdout
