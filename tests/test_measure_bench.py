"""The microbenchmark on CPU (tiny mode), and its GPU calls checked for shapes/layouts on meta."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from perfmodel.calibration.bench import STAGES, TABLES, main, run_bench
from perfmodel.calibration.bench_gemm import make_gemm_call, make_grouped_call, route, tokens_per_expert
from perfmodel.calibration.bench_plan import make_plan
from perfmodel.calibration.bench_shapes import gemm_shapes
try:
    from tests.fake_cuda import WallClockEvent
except ImportError:  # run from inside tests/
    from fake_cuda import WallClockEvent

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    meta = run_bench(out, budget_s=60, log=lambda m: None, allow_cpu=True)  # tiny mode on CPU
    return out, meta


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tables_and_metadata(bench_dir):
    out, meta = bench_dir
    assert meta["bench_mode"] == "tiny" and set(meta["stages"]) == set(STAGES)
    on_disk = json.loads((out / "metadata.json").read_text())
    for key in ("gpu_name", "driver", "cuda", "torch", "transformers", "date", "git_commit"):
        assert key in on_disk
    for name in TABLES.values():
        rows = _read(out / name)
        assert rows, name
        for row in rows:
            assert row["status"] in ("ok", "skipped"), row
            if row["status"] == "ok":
                assert float(row["median_ms"]) > 0
                assert float(row["p10_ms"]) <= float(row["median_ms"]) <= float(row["p90_ms"])
                assert int(row["n_reps"]) >= 1 and row["method"] == "wall"
                assert float(row["bytes"]) > 0 and float(row["tbs"]) > 0
    ops = {r["op"] for name in TABLES.values() for r in _read(out / name)}
    assert {"linear", "grouped_mm", "moe_block", "sdpa_prefill", "sdpa_decode", "attn_module",
            "rmsnorm", "silu_and_mul", "residual_add", "copy"} <= ops
    moe = _read(out / "moe_block.csv")
    assert {r["impl"] for r in moe} == {"grouped_mm", "batched_mm", "eager"}
    assert {r["model"] for r in _read(out / "attention.csv") if r["op"] == "attn_module"} == {
        "mixtral-8x7b", "deepseek-v2-lite"}


def test_module_entry(tmp_path):
    assert main(["--out", str(tmp_path), "--stages", "memory,gemm", "--allow-cpu"]) == 0
    assert len(_read(tmp_path / "gemm.csv")) == 3
    assert main(["--out", str(tmp_path), "--stages", "nope", "--allow-cpu"]) == 2


def test_full_plan_covers_the_zoo_shapes():
    plan = make_plan("full")
    assert len(plan.gemm_shapes) == len(gemm_shapes()) >= 25
    assert {(s["n"], s["k"]) for s in plan.gemm_shapes} >= {(28672, 4096), (4096, 14336), (32000, 4096)}
    assert len(plan.gemm_m) == 15 and len(plan.seed_shapes) == 16
    assert {s["source"] for s in plan.grouped_shapes} >= {"mixtral-8x7b", "qwen3-30b-a3b", "olmoe-1b-7b"}
    assert plan.moe_impls == ("grouped_mm", "batched_mm", "eager")


def test_routing_draws_distinct_experts_and_zipf_is_skewed():
    gen = torch.Generator().manual_seed(0)
    ids = route(4096, 64, 8, "uniform", gen)
    assert ids.shape == (4096, 8)
    assert all(len(set(r.tolist())) == 8 for r in ids[:50])
    uni = tokens_per_expert(ids, 64)
    zipf = tokens_per_expert(route(4096, 64, 8, "zipf", gen), 64)
    assert uni.sum() == zipf.sum() == 4096 * 8
    assert zipf.max() > 2 * uni.max()


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_gemm_calls_are_valid_on_meta(dtype):
    for m in (1, 17):
        fn, flops, nbytes = make_gemm_call(m, 576, 2048, dtype, torch.device("meta"), rot=2)
        out = fn(1)
        assert out.shape == (m, 576) and out.dtype == torch.bfloat16
        assert flops == 2 * m * 576 * 2048


@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_calls_mirror_transformers_layout_on_meta(fp8):
    e, h, ffn, rows = 8, 4096, 1792, 40
    meta = torch.device("meta")
    dt = torch.float8_e4m3fn if fp8 else torch.bfloat16
    w_gu = torch.empty(e, 2 * ffn, h, device=meta, dtype=dt)  # stored like transformers' gate_up_proj
    w_dn = torch.empty(e, h, ffn, device=meta, dtype=dt)
    offs = [torch.empty(e, device=meta, dtype=torch.int32)]
    assert make_grouped_call(w_gu, offs, rows, fp8, meta)(0).shape == (rows, 2 * ffn)
    assert make_grouped_call(w_dn, offs, rows, fp8, meta)(0).shape == (rows, h)




class _Graph:
    def __init__(self, calls):
        self.calls = calls
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.calls()

    def reset(self):
        pass


def test_auto_time_graph_and_fallback_paths_with_faked_cuda(monkeypatch):
    import perfmodel.measuring.timing as bt

    monkeypatch.setattr(torch.cuda, "Event", WallClockEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    captured = []

    def capture(fn, inner, warmup=2):
        for i in range(warmup):
            fn(i)
        g = _Graph(lambda: [fn(i) for i in range(inner)])
        captured.append((inner, g))
        return g

    monkeypatch.setattr(bt, "capture_graph", capture)
    calls = []
    x = torch.randn(64, 64)
    stats = bt.auto_time(lambda i: calls.append(i) or x @ x, torch.device("cuda"), target_ms=2.0, min_reps=5)
    assert stats.method == "cuda_graph" and stats.n_reps >= 5 and stats.median_ms > 0
    inner, graph = captured[0]
    assert stats.inner == inner >= 1 and graph.replays == stats.n_reps + 1  # one warm replay
    assert set(calls) >= set(range(inner))  # the rotation index runs through the captured calls

    def broken(fn, inner, warmup=2):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(bt, "capture_graph", broken)
    stats = bt.auto_time(lambda i: x @ x, torch.device("cuda"), target_ms=1.0, min_reps=3)
    assert stats.method == "cuda_events" and stats.n_reps >= 3
    assert bt.auto_time(lambda i: x @ x, torch.device("cuda"), graph=False).method == "cuda_events"
