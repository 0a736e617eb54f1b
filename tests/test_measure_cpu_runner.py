"""The hf runner end to end on CPU with tiny configs, and its pieces (profiler split, capture
check, cache positions, step integration)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from perfmodel.measuring import results
from perfmodel.measuring.hf_build import CaptureSpy, apply_capture_patches, build_model, make_config
from perfmodel.measuring.hf_runner import HFBackend
from perfmodel.measuring.hf_steps import integrate_steps, sample_steps, set_cache_position
from perfmodel.measuring.measure import main
from perfmodel.measuring.profiler_split import CATEGORIES, classify, split_events
from perfmodel.measuring.runner import run_sweep
from perfmodel.measuring.points import FullRunSpec, build_points

torch.set_num_threads(1)  # tiny CPU ops are dominated by thread-pool overhead otherwise

TINY = ["hidden_size=64", "num_heads=4", "num_kv_heads=2", "head_dim=16", "num_experts=4", "top_k=2",
        "moe_intermediate_size=32", "vocab_size=128"]
TINY_MLA = ["hidden_size=64", "num_heads=4", "num_kv_heads=4", "num_experts=4", "top_k=2",
            "moe_intermediate_size=32", "vocab_size=128", "kv_lora_rank=32", "qk_nope_head_dim=16",
            "qk_rope_head_dim=8", "v_head_dim=16", "head_dim=8", "num_shared_experts=1"]


@pytest.fixture(scope="module")
def sweep_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("runner") / "cpu-hf.jsonl"
    points = build_points(["mixtral"], [2], [[8]], overrides=TINY, layers=2,
                          full_run=FullRunSpec.parse("2x8"))
    points += build_points(["deepseek-v2-lite"], [1, 3], [[6]], [5], overrides=TINY_MLA, layers=2)
    backend = HFBackend(device="cpu")
    summary = run_sweep(points, backend, out)
    return points, results.read_rows(out).rows, summary


def test_rows_are_ok_and_sane(sweep_rows):
    points, rows, summary = sweep_rows
    assert summary.measured["ok"] == len(points) == len(rows) == 3
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert results.validate_row(row) == []
        b, s, o = row["batch"], row["input_len"], row["output_len"]
        assert row["engine"]["cuda_graphs"] is False  # no GPU: graphs switched off
        assert row["decode_method"] == "eager"
        assert row["ttft_ms"] > 0 and row["itl_ms"] > 0
        assert row["e2e_ms"] == pytest.approx(row["ttft_ms"] + row["decode_total_ms"])
        assert row["throughput_tok_s"] == pytest.approx(b * (s + o) / (row["e2e_ms"] / 1e3))
        assert row["output_tok_s"] == pytest.approx(b * o / (row["e2e_ms"] / 1e3))
        assert [d["step"] for d in row["decode_samples"]] == sample_steps(o)
        assert all(d["context_len"] == s + d["step"] for d in row["decode_samples"])
        assert row["num_hidden_layers"] == 2 and row["engine"]["max_cache_len"] == s + o
        hist = row["prefill_tokens_per_expert"]
        assert len(hist) == 4 and sum(hist) == b * s * row["top_k"]
        # distinct experts of each MoE layer in the warm-up prefill: the first layer's histogram's
        hit = row["prefill_experts_hit"]
        assert 1 <= len(hit) <= row["num_hidden_layers"] and hit[0] == sum(1 for c in hist if c > 0)
        assert all(min(row["top_k"], 4) <= h <= 4 for h in hit)
        assert 1 <= row["decode_experts_hit_mean"] <= 4


def test_full_run_reported_only_where_asked(sweep_rows):
    _, rows, _ = sweep_rows
    full = [r for r in rows if r["full_run"]]
    assert len(full) == 1 and full[0]["model_type"] == "mixtral"
    r = full[0]
    assert r["full_decode_ms"] > 0
    assert r["full_e2e_ms"] == pytest.approx(r["ttft_ms"] + r["full_decode_ms"])
    assert r["full_vs_sampled"] == pytest.approx(r["full_e2e_ms"] / r["e2e_ms"])
    assert all(x.get("full_decode_ms") is None for x in rows if not x["full_run"])


def test_profile_categories_cover_the_total(sweep_rows):
    _, rows, _ = sweep_rows
    for row in rows:
        for key in ("prefill_profile", "decode_profile"):
            prof = row[key]
            split = prof["split_ms"]
            assert set(split) == set(CATEGORIES)
            assert sum(split.values()) == pytest.approx(prof["kernel_ms"], rel=1e-6)
            # an MoE forward exercises every main category
            for cat in ("attention", "expert_gemm", "dense_gemm", "router_topk", "norm_elementwise"):
                assert split[cat] > 0, (row["model_type"], key, cat, split)


def test_module_entry_point_writes_rows(tmp_path):
    out = tmp_path / "m.jsonl"
    args = ["olmoe", "--batch", "2", "--input-len", "6", "--output-len", "3", "--layers", "1",
            "--no-profile", "--out", str(out), "--allow-cpu"] + [a for kv in TINY for a in ("--set", kv)]
    assert main(args) == 0
    rows = results.read_rows(out).rows
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["prefill_profile"] is None
    assert main(args) == 0  # resume: nothing new
    assert len(results.read_rows(out).rows) == 1


# --------------------------------------------------------------------------- pieces


def test_sample_steps_and_integration():
    assert sample_steps(128) == [1, 33, 65, 97, 127]
    assert sample_steps(2) == [1]
    assert sample_steps(1) == []
    # linear step time t(j) = 3 + 0.5 j: the estimate is exact
    steps = sample_steps(101)
    exact = sum(3 + 0.5 * j for j in range(1, 101))
    assert integrate_steps([(j, 3 + 0.5 * j) for j in steps], 100) == pytest.approx(exact)
    assert integrate_steps([(1, 2.0)], 7) == pytest.approx(14.0)
    assert integrate_steps([], 0) == 0.0


def test_cache_position_guard():
    from transformers import StaticCache

    _, config = make_config("mixtral", TINY, layers=1)
    cache = StaticCache(config=config, max_cache_len=4)
    with pytest.raises(ValueError):
        set_cache_position(cache, 4)
    with pytest.raises(RuntimeError):
        set_cache_position(cache, 2)  # not initialised yet
    set_cache_position(cache, 0)


def test_capture_spy_flags_host_copies_and_syncs():
    spy = CaptureSpy()
    with spy:
        torch.arange(4).to("meta")  # a host tensor copied to an accelerator
        torch.ones(3, device="meta") + torch.tensor(2.0)  # 0-dim host scalars are fine
    assert spy.issues == ["_to_copy (host-to-device copy)"]
    clean = CaptureSpy()
    with clean:
        torch.ones(3) * 2
    assert clean.issues == []


def test_phimoe_rotary_patch_keeps_values():
    _, config = make_config("phi-3.5-moe", TINY, layers=1)
    torch.manual_seed(0)
    model, info = build_model(config, "cpu")
    assert info.patches == ["rotary_cached_inv_freq:PhimoeRotaryEmbedding"]
    from transformers.models.phimoe.modeling_phimoe import PhimoeRotaryEmbedding

    reference = PhimoeRotaryEmbedding(config)
    x = torch.randn(1, 5, 64)
    pos = torch.arange(5)[None]
    for a, b in zip(model.model.rotary_emb(x, pos), reference(x, pos)):
        torch.testing.assert_close(a, b)
    _, mconfig = make_config("mixtral", TINY, layers=1)
    assert apply_capture_patches(build_model(mconfig, "cpu")[0]) == []


@pytest.mark.parametrize("kernel, op, scope, expected", [
    ("nvjet_tst_128x64_64x4_1x2_h_bz_coopB_TNT", "aten::mm", "attn", "dense_gemm"),
    ("nvjet_tst_64x8_64x16_4x1_v_bz_TNN", "aten::mm", "lm_head", "dense_gemm"),
    ("cutlass3x_sm90_gemm_grouped_bf16", "aten::_grouped_mm", "experts", "expert_gemm"),
    ("sm90_xmma_gemm_bf16bf16", "aten::mm", "experts", "expert_gemm"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "aten::_efficient_attention_forward", "attn", "attention"),
    ("void pytorch_flash::flash_fwd_kernel", "aten::_flash_attention_forward", "attn", "attention"),
    ("void at::native::index_copy_kernel_impl", "aten::index_copy_", "attn", "copy"),
    ("Memcpy DtoD (Device -> Device)", "aten::copy_", None, "copy"),
    ("void at::native::sbtopk::gatherTopK", "aten::topk", "router", "router_topk"),
    ("nvjet_tst_64x8", "aten::mm", "router", "router_topk"),
    ("void at_cuda_detail::cub::DeviceRadixSortOnesweepKernel", "aten::sort", "experts", "router_topk"),
    ("void at::native::histogram1D", "aten::histc", "experts", "router_topk"),
    ("void at::native::vectorized_elementwise_kernel", "aten::mul", "norm", "norm_elementwise"),
    ("void at::native::vectorized_elementwise_kernel", "aten::silu", "experts", "norm_elementwise"),
    ("void at::native::vectorized_elementwise_kernel", "aten::add", None, "norm_elementwise"),
    ("void at::native::reduce_kernel<ArgMaxOps>", "aten::argmax", None, "other"),
])
def test_kernel_classification(kernel, op, scope, expected):
    assert classify(kernel, op, scope) == expected


def _ev(name, parent=None, kernels=(), device="CPU", start=0.0, end=0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, kernels=list(kernels), device_type=f"DeviceType.{device}",
                           time_range=SimpleNamespace(start=start, end=end), cpu_children=[],
                           is_user_annotation=name.startswith("pm::"))


def test_split_events_gpu_path_adds_unlinked_time_to_other():
    k = lambda n, us: SimpleNamespace(name=n, device=0, duration=us)  # noqa: E731
    attn = _ev("pm::attn")
    experts = _ev("pm::experts")
    events = [
        attn, experts,
        _ev("aten::mm", attn, [k("nvjet_a", 10.0)]),
        _ev("aten::_efficient_attention_forward", attn, [k("fmha_x", 30.0)]),
        _ev("aten::_grouped_mm", experts, [k("cutlass_grouped", 50.0)]),
        # device-side records: the three linked kernels, an unlinked one, and an annotation
        _ev("nvjet_a", device="CUDA", start=0, end=10), _ev("fmha_x", device="CUDA", start=10, end=40),
        _ev("cutlass_grouped", device="CUDA", start=40, end=90), _ev("mystery", device="CUDA", start=90, end=95),
        _ev("pm::attn", device="CUDA", start=0, end=40),
    ]
    split = split_events(events, "cuda")
    assert split.kernel_ms == pytest.approx(0.095)
    assert split.split_ms["dense_gemm"] == pytest.approx(0.010)
    assert split.split_ms["attention"] == pytest.approx(0.030)
    assert split.split_ms["expert_gemm"] == pytest.approx(0.050)
    assert split.split_ms["other"] == pytest.approx(0.005) == pytest.approx(split.unlinked_ms)
    assert sum(split.split_ms.values()) == pytest.approx(split.kernel_ms)


@pytest.mark.parametrize("model", ["mixtral-8x7b", "qwen3-30b-a3b", "olmoe-1b-7b", "deepseek-v2-lite",
                                   "phi-3.5-moe", "qwen1.5-moe-a2.7b"])
def test_decode_step_is_capture_clean_on_meta(model):
    """The meta device stands in for the GPU: a host tensor reaching it is a host-to-device copy,
    which CUDA-graph capture rejects. PhiMoE's rotary embedding does that until it is patched."""
    from transformers import AutoModelForCausalLM, StaticCache

    _, config = make_config(model, TINY_MLA if model.startswith("deepseek") else TINY, layers=2)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa",
                                             experts_implementation="grouped_mm").eval()

    def decode_issues():
        cache = StaticCache(config=config, max_cache_len=16)
        with torch.inference_mode():
            m(input_ids=torch.zeros(2, 8, dtype=torch.long, device="meta"), past_key_values=cache, logits_to_keep=1)
            spy = CaptureSpy()
            with spy:
                m(input_ids=torch.zeros(2, 1, dtype=torch.long, device="meta"), past_key_values=cache)
        return spy.issues

    before = decode_issues()
    patches = apply_capture_patches(m)
    after = decode_issues()
    assert after == []
    if model == "phi-3.5-moe":
        assert any("host-to-device" in issue for issue in before) and patches
    else:
        assert before == [] and patches == []


def test_gpu_side_imports_need_no_pydantic_or_altair():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pydantic'] = None; sys.modules['altair'] = None\n"
        "import perfmodel.measuring.cli, perfmodel.measuring.measure, perfmodel.measuring.hf_runner, perfmodel.measuring.vllm_backend\n"
        "import perfmodel.measuring.hf_steps, perfmodel.measuring.hf_routing, perfmodel.measuring.hf_estimate\n"
        "import perfmodel.calibration.bench, perfmodel.calibration.bench_gemm, perfmodel.calibration.bench_layers, perfmodel.calibration.bench_attn\n"
        "import perfmodel.calibration.bench_mem, perfmodel.calibration.cli\n"
        "print('ok')\n"
    )
    from perfmodel.paths import ROOT

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_kernels_inside_sdpa_count_as_attention():
    sdpa = _ev("aten::scaled_dot_product_attention", _ev("pm::attn"))
    k = SimpleNamespace(name="void at::native::vectorized_elementwise_kernel", device=0, duration=4.0)
    where = _ev("aten::where", sdpa, [k])
    rep = _ev("aten::copy_", _ev("pm::attn"), [SimpleNamespace(name="copy_kernel", device=0, duration=6.0)])
    split = split_events([where, rep, _ev("x", device="CUDA", start=0, end=10)], "cuda")
    assert split.split_ms["attention"] == pytest.approx(0.004)
    assert split.split_ms["copy"] == pytest.approx(0.006)


# --------------------------------------------------------------------------- the GPU code path, faked


class _FakeEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


class _FakeGraph:
    """Replays by running the step eagerly: same state changes as the real graph (the cache write
    position advances by one per replay, the argmax is fed back)."""

    replays = 0

    def __init__(self, step):
        self.step = step

    def replay(self):
        _FakeGraph.replays += 1
        self.step()

    def reset(self):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    import perfmodel.measuring.hf_steps as hr

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    for name in ("synchronize", "reset_peak_memory_stats", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**30)
    _FakeGraph.replays = 0

    def capture(step, reset):
        reset()
        return _FakeGraph(step)

    monkeypatch.setattr(hr, "capture_step", capture)
    return hr


def test_graph_path_with_faked_cuda(fake_cuda, tmp_path):
    out = tmp_path / "g.jsonl"
    points = build_points(["mixtral"], [2], [[8]], [9], overrides=TINY, layers=2,
                          full_run=FullRunSpec.parse("2x8"))
    backend = HFBackend(device="cpu", gpu=True, decode_reps=4)
    run_sweep(points, backend, out)
    (row,) = results.read_rows(out).rows
    assert row["status"] == "ok", row["error"]
    assert results.validate_row(row) == []
    assert row["decode_method"] == "cuda_graph" and row["engine"]["cuda_graphs"] is True
    assert [d["step"] for d in row["decode_samples"]] == [1, 3, 5, 7, 8]
    assert all(d["reps"] == 4 for d in row["decode_samples"])
    # 5 samples x (1 warm + 4 timed) replays, then the full run's O-1 = 8 (past the cache end would raise)
    assert _FakeGraph.replays == 5 * 5 + 8
    assert row["full_decode_ms"] > 0 and row["full_vs_sampled"] > 0
    assert row["peak_mem_gib"] == 3.0
    assert row["decode_profile"]["graph_ms"] == row["decode_samples"][2]["ms"]


def test_capture_failure_falls_back_to_kernel_sum(fake_cuda, tmp_path, monkeypatch):
    def broken(step, reset):
        raise RuntimeError("Cannot copy between CPU and CUDA tensors during CUDA graph capture")

    monkeypatch.setattr(fake_cuda, "capture_step", broken)
    out = tmp_path / "k.jsonl"
    points = build_points(["phi-3.5-moe"], [2], [[8]], overrides=TINY, layers=1, full_run=FullRunSpec.parse("2x8"))
    run_sweep(points, HFBackend(device="cpu", gpu=True), out)
    (row,) = results.read_rows(out).rows
    assert row["status"] == "ok" and results.validate_row(row) == []
    assert row["decode_method"] == "kernel_sum"
    assert all(d["reps"] == 1 and d["ms"] > 0 for d in row["decode_samples"])
    assert any("capture failed" in n for n in row["notes"])
    assert any("full run skipped" in n for n in row["notes"]) and row.get("full_decode_ms") is None


def test_oom_during_capture_is_an_oom_row(fake_cuda, tmp_path, monkeypatch):
    def oom(step, reset):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fake_cuda, "capture_step", oom)
    out = tmp_path / "o.jsonl"
    points = build_points(["mixtral"], [2, 3], [[8]], overrides=TINY, layers=1)
    run_sweep(points, HFBackend(device="cpu", gpu=True), out)
    rows = results.read_rows(out).rows
    assert [r["status"] for r in rows] == ["oom", "oom"]
    assert all(results.validate_row(r) == [] for r in rows)
