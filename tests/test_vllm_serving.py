"""``measure --serving``: Poisson arrivals, request traces, percentiles, rows and resume.

vLLM is not installed here: the end-to-end cases run the command against a stand-in ``vllm``
package whose async engine serves requests first come, first served, ``max_num_seqs`` at a time,
with a fixed prefill and a fixed time per token. The event loop runs on virtual time (it jumps to
the next timer whenever nothing is ready), so every time is exact and the measured percentiles
are checked against the ones computed by hand from the same arrival schedule.
"""

from __future__ import annotations

import asyncio
import json
import os
import math
import sys
import textwrap

import numpy as np
import pytest

from perfmodel.errors import InputError
from perfmodel.measuring import vllm_serving as vs

S, O, N = 16, 8, 40
#: The stand-in engine's prefill and per-token times, s.
PREFILL_S, TOKEN_S = 0.05, 0.01


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever no callback is ready."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        if not self._ready and not self._stopping:
            live = [h._when for h in self._scheduled if not h._cancelled]
            if not live:
                raise RuntimeError("virtual-time loop: nothing ready and nothing scheduled")
            self._now = max(self._now, min(live))
        super()._run_once()


_FAKE_VLLM = '''
class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw
'''

_FAKE_KIND = '''
import enum
class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2
'''

_FAKE_ARGS = '''
import dataclasses
from typing import Any
@dataclasses.dataclass
class AsyncEngineArgs:
    model: str = ""
    load_format: str = "auto"
    skip_tokenizer_init: bool = False
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enable_expert_parallel: bool = False
    quantization: Any = None
    max_num_seqs: int = 256
    max_model_len: int = 0
    enforce_eager: bool = False
    compilation_config: Any = None
    enable_prefix_caching: bool = True
    disable_log_stats: bool = True
    gpu_memory_utilization: float = 0.9
    seed: int = 0
    hf_overrides: Any = None
    moe_backend: str = "auto"
    distributed_executor_backend: Any = None
    worker_extension_cls: Any = None
'''

_FAKE_DUMMY_LOADER = '''
def initialize_dummy_weights(layer, *args, **kwargs):
    """vLLM's draws every floating-point parameter in +-1e-3; the stand-in draws none."""
'''

_FAKE_USAGE = '''
import enum
class UsageContext(enum.Enum):
    ENGINE_CONTEXT = "ENGINE_CONTEXT"
    OPENAI_API_SERVER = "OPENAI_API_SERVER"
'''

_FAKE_ASYNC_LLM = '''
import asyncio
from types import SimpleNamespace as NS

class AsyncLLM:
    """First come, first served, max_num_seqs at a time: the first token PREFILL_S after a
    request starts, then one token every TOKEN_S; every COALESCE-th output carries two tokens."""

    PREFILL_S = 0.05
    TOKEN_S = 0.01
    COALESCE = 0
    FAIL_AT = None  # request id whose generate raises
    instances = []

    def __init__(self, args, usage_context=None):
        self.args = args
        self.usage_context = usage_context
        self.free = args.max_num_seqs
        self.queue = []
        self.submitted = []
        self.prompt_lens = {}
        self.shut = False
        self.vllm_config = NS(scheduler_config=NS(max_num_batched_tokens=8192, max_num_seqs=args.max_num_seqs,
                                                     stream_interval=1),
                              cache_config=NS(block_size=16))
        AsyncLLM.instances.append(self)

    FAIL_START = None  # message from_engine_args raises
    LAYERS = None  # modules the dummy loader initializes, one call each, at the engine's start

    @classmethod
    def from_engine_args(cls, args, usage_context=None):
        if cls.FAIL_START:
            raise RuntimeError(cls.FAIL_START)
        engine = cls(args, usage_context)
        engine.worker = engine._load()
        return engine

    def _load(self):
        """As vLLM's worker: mix in the extension class (importing its module), then load the
        model through the dummy loader, found by its module's name at call time."""
        import importlib
        bases = ()
        if self.args.worker_extension_cls:
            module, _, name = self.args.worker_extension_cls.rpartition(".")
            bases = (getattr(importlib.import_module(module), name),)
        from vllm.model_executor.model_loader import dummy_loader
        for layer in self.LAYERS or ():
            dummy_loader.initialize_dummy_weights(layer)
        return type("Worker", bases, {})()

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    async def _slot(self):
        if self.free > 0 and not self.queue:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.queue.append(waiter)
        await waiter

    def _release(self):
        while self.queue:
            waiter = self.queue.pop(0)
            if not waiter.done():  # a cancelled request's waiter is skipped
                waiter.set_result(None)
                return
        self.free += 1

    async def generate(self, prompt, params, request_id):
        self.submitted.append(request_id)
        self.prompt_lens[request_id] = len(prompt["prompt_token_ids"])
        if request_id == self.FAIL_AT:
            raise RuntimeError("stand-in failure")
        n = params.kw["max_tokens"]
        delta = "output_kind" in params.kw
        await self._slot()
        try:
            await asyncio.sleep(self.PREFILL_S)
            made, k = 0, 0
            while made < n:
                k += 1
                step = 2 if self.COALESCE and k % self.COALESCE == 0 and made + 2 <= n else 1
                made += step
                ids = [7] * (step if delta else made)
                yield NS(outputs=[NS(token_ids=ids)], finished=made == n, metrics=None)
                if made < n:
                    await asyncio.sleep(self.TOKEN_S * step)
        finally:
            self._release()

    def shutdown(self):
        self.shut = True
'''


def _drop_vllm_modules() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def _no_vllm_left():
    """The stand-in ``vllm`` stays out of ``sys.modules`` for the tests that follow."""
    yield
    _drop_vllm_modules()


def _install(tmp_path, monkeypatch, delta: bool = True):
    root = tmp_path / "fake"
    pkg = root / "vllm"
    for sub in ("engine", "v1/engine", "usage", "model_executor/model_loader"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(_FAKE_VLLM))
    if delta:
        (pkg / "sampling_params.py").write_text(textwrap.dedent(_FAKE_KIND))
    for sub in ("engine", "v1", "v1/engine", "usage", "model_executor", "model_executor/model_loader"):
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "model_executor" / "model_loader" / "dummy_loader.py").write_text(textwrap.dedent(_FAKE_DUMMY_LOADER))
    (pkg / "engine" / "arg_utils.py").write_text(textwrap.dedent(_FAKE_ARGS))
    (pkg / "v1" / "engine" / "async_llm.py").write_text(textwrap.dedent(_FAKE_ASYNC_LLM))
    (pkg / "usage" / "usage_lib.py").write_text(textwrap.dedent(_FAKE_USAGE))
    monkeypatch.syspath_prepend(str(root))
    _drop_vllm_modules()

    def virtual():
        loop = VirtualTimeLoop()
        return loop, loop.time

    monkeypatch.setattr(vs, "new_loop_and_clock", virtual)
    from vllm.v1.engine.async_llm import AsyncLLM

    AsyncLLM.instances.clear()
    return AsyncLLM


def _measure(out, *extra: str) -> int:
    from perfmodel.measuring.measure import main

    return main(["olmoe-1b-7b", "--backend", "vllm", "--serving", "--allow-cpu", "--layers", "2",
                 "--input-len", str(S), "--output-len", str(O), "--num-requests", str(N),
                 "--out", str(out), *extra])


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fifo(arrivals, slots: int, n_tokens: int = O):
    """By hand: first come, first served with ``slots`` servers; TTFT and E2E per request."""
    free = [0.0] * slots
    ttft, e2e = [], []
    for a in arrivals:
        i = min(range(slots), key=lambda j: free[j])
        start = max(a, free[i])
        first = start + PREFILL_S
        done = first + (n_tokens - 1) * TOKEN_S
        free[i] = done
        ttft.append(first - a)
        e2e.append(done - a)
    return np.array(ttft), np.array(e2e)


def test_poisson_schedule_is_seeded_and_keeps_its_rate():
    a = vs.poisson_arrivals(4.0, 20_000, seed=3)
    assert a == vs.poisson_arrivals(4.0, 20_000, seed=3) and a != vs.poisson_arrivals(4.0, 20_000, seed=4)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:]))
    assert (len(a) - 1) / a[-1] == pytest.approx(4.0, rel=0.03)  # 1/sqrt(20000) ~ 0.7 %
    gaps = np.diff(a)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: CV = 1
    # the same unit gaps at every rate: times scale as 1/rate
    assert vs.poisson_arrivals(8.0, 100, seed=3) == pytest.approx([x / 2 for x in a[:100]])


def test_percentiles_match_numpy_and_trace_metrics():
    values = [0.3, 5.0, 1.0, 2.5, 9.0, 4.25, 7.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert vs.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert vs.percentile([], 50) is None and vs.percentile([2.0], 90) == 2.0
    trace = vs.RequestTrace(scheduled_s=0.0, submitted=10.0, token_times=[10.2, 10.25, 10.4, 10.45],
                            token_counts=[1, 1, 2, 1], finished=10.45)
    assert trace.ttft() == pytest.approx(0.2) and trace.e2e() == pytest.approx(0.45)
    assert trace.itls() == pytest.approx([0.05, 0.15, 0.05])
    assert trace.tokens == 5 and trace.tpot() == pytest.approx(0.25 / 4)
    other = vs.RequestTrace(scheduled_s=1.0, submitted=11.0, token_times=[11.1, 11.4], token_counts=[1, 1],
                            finished=11.4)
    late = vs.RequestTrace(scheduled_s=2.0, submitted=12.0, token_times=[12.5], token_counts=[1], aborted=True)
    out = vs.summarize([trace, other, late], 10.0, num_requests=4, output_len=5, ttft_slo_s=0.15)
    assert (out["submitted"], out["completed"], out["aborted"], out["not_submitted"]) == (3, 2, 1, 1)
    assert out["truncated"] and out["multi_token_outputs"] == 1
    assert out["ttft_p50_ms"] == pytest.approx(150.0) and out["ttft_p90_ms"] == pytest.approx(190.0)
    assert out["itl_p50_ms"] == pytest.approx(np.percentile([50, 150, 50, 300], 50))
    assert out["completion_rate"] == pytest.approx(1 / (11.4 - 10.45))
    assert out["achieved_rate"] == pytest.approx(2 / 2.0)
    assert out["window_s"] == pytest.approx(12.5 - 10.0) and out["output_tokens"] == 5 + 2 + 1
    assert out["goodput_fraction"] == pytest.approx(1 / 3)  # only `other` has TTFT <= 0.15 s
    assert out["per_request"]["ttft_ms"] == pytest.approx([200.0, 100.0, 500.0])
    assert out["per_request"]["e2e_ms"][2] is None
    tpot_only = vs.summarize([trace, other], 10.0, num_requests=2, output_len=5, itl_slo_s=0.07)
    assert tpot_only["goodput_fraction"] == 0.5  # TPOT 0.0625 s passes, 0.3 s does not


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from perfmodel.measuring.measure import main

    out = tmp_path / "s.jsonl"
    cases = [
        (["--backend", "vllm", "--serving", "--rate=-2"], "bad rate -2"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--num-requests", "0"], "--num-requests"),
        (["--backend", "vllm", "--serving", "--rate", "2,x"], "bad rate 'x'"),
        (["--backend", "vllm", "--serving"], "--serving needs --rate"),
        (["--backend", "hf", "--serving", "--rate", "2"], "use --backend vllm"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--input-len", "128,512"], "one --input-len"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--duration-s", "0"], "--duration-s"),
        (["--backend", "vllm", "--rate", "2"], "--rate applies to --serving"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--dp", "2"], "without --dp"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--tp", "0"], "--tp must be"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--routing-probe"], "separate runs"),
        (["--backend", "vllm", "--serving", "--rate", "2", "--max-num-seqs", "0"], "--max-num-seqs"),
    ]
    for args, expected in cases:
        assert main(["olmoe", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (args, err)
    assert not out.exists()
    with pytest.raises(InputError):
        vs.poisson_arrivals(0.0, 10)


def test_measured_percentiles_match_the_hand_computed_queue(tmp_path, monkeypatch):
    engine_cls = _install(tmp_path, monkeypatch)
    out = tmp_path / "serving.jsonl"
    # two slots: at 60 req/s the queue builds (each request holds a slot 0.12 s); at 2 req/s it never does
    assert _measure(out, "--rate", "2,60", "--max-num-seqs", "2", "--seed", "5", "--ttft-slo", "0.2") == 0
    (engine,) = engine_cls.instances
    assert engine.shut and engine.args.max_num_seqs == 2 and engine.args.enable_prefix_caching is False
    assert engine.args.load_format == "dummy" and engine.usage_context.name == "OPENAI_API_SERVER"
    assert sum(r.startswith(("warmup-alone", "warmup-burst")) for r in engine.submitted) == 1 + 2  # alone, then a burst of max_num_seqs
    rows = {r["rate"]: r for r in _rows(out)}
    assert set(rows) == {2.0, 60.0}
    for rate, row in rows.items():
        assert row["status"] == "ok" and row["mode"] == "serving" and row["completed"] == N
        assert "rate=" + vs.rate_key(rate) in row["point_id"] and "serving=poisson" in row["point_id"]
        assert row["engine"]["max_num_batched_tokens"] == 8192 and row["engine"]["max_num_seqs"] == 2
        resolved = row["engine_detail"]["resolved"]
        assert resolved["usage_context"] == "OPENAI_API_SERVER" and resolved["stream_interval"] == 1
        arrivals = vs.poisson_arrivals(rate, N, seed=5)
        assert row["per_request"]["arrival_s"] == pytest.approx(arrivals, abs=1e-6)
        ttft, e2e = _fifo(arrivals, slots=2)
        for q in (50, 90, 99):
            assert row[f"ttft_p{q}_ms"] == pytest.approx(1e3 * np.percentile(ttft, q), abs=1e-3)
            assert row[f"e2e_p{q}_ms"] == pytest.approx(1e3 * np.percentile(e2e, q), abs=1e-3)
            assert row[f"itl_p{q}_ms"] == pytest.approx(1e3 * TOKEN_S, abs=1e-3)
            assert row[f"tpot_p{q}_ms"] == pytest.approx(1e3 * TOKEN_S, abs=1e-3)
        assert row["output_tokens"] == N * O and row["multi_token_outputs"] == 0
        assert row["achieved_rate"] == pytest.approx((N - 1) / arrivals[-1])
        # the host's speed: probed before and after the rate, sampled all through it
        assert len(row["host_probe_ms"]) == 2 and row["host_run"]["samples"] >= 1 and row["host_run"]["mean_ms"] > 0
        finish = np.sort(np.array(arrivals) + e2e)
        assert row["completion_rate"] == pytest.approx((N - 1) / (finish[-1] - finish[0]))
        window = max(np.array(arrivals) + e2e)
        assert row["window_s"] == pytest.approx(window) and row["output_tok_s"] == pytest.approx(N * O / window)
        assert row["goodput_fraction"] == pytest.approx(np.mean(ttft <= 0.2))
    # below saturation the engine keeps up; above it, it serves at its capacity, 2 slots / 0.12 s
    assert rows[2.0]["ttft_p50_ms"] == pytest.approx(1e3 * PREFILL_S, abs=1e-3)
    assert rows[60.0]["completion_rate"] == pytest.approx(2 / (PREFILL_S + (O - 1) * TOKEN_S), rel=0.05)
    assert rows[60.0]["completion_rate"] < 0.5 * rows[60.0]["achieved_rate"]


def test_a_run_too_short_for_a_steady_state_says_so(tmp_path, monkeypatch, capsys):
    """At 60 req/s the 40 requests submit for 0.65 s while the queue holds each for far longer:
    the log says the run cannot tell whether the engine keeps up, and how many requests would;
    at 2 req/s (20 s of submissions, E2E 0.12 s) it says nothing."""
    _install(tmp_path, monkeypatch)
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "2,60", "--max-num-seqs", "2", "--seed", "5") == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note  rate")]
    assert len(notes) == 1 and notes[0].startswith("note  rate 60 req/s") and "too short for a steady state" in notes[0]
    row = {r["rate"]: r for r in _rows(out)}[60.0]
    need = int(notes[0].split("--num-requests ")[1].split()[0])
    assert need > N and need >= 2 * row["e2e_p50_ms"] * 1e-3 * row["achieved_rate"]


def test_rows_resume_by_point_id(tmp_path, monkeypatch):
    engine_cls = _install(tmp_path, monkeypatch)
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "4") == 0
    assert _measure(out, "--rate", "4,8") == 0  # 4 is in the file: only 8 is measured
    assert [r["rate"] for r in _rows(out)] == [4.0, 8.0]
    assert len(engine_cls.instances) == 2
    assert _measure(out, "--rate", "4,8") == 0  # nothing left: no engine is started
    assert len(engine_cls.instances) == 2 and len(_rows(out)) == 2
    assert _measure(out, "--rate", "4", "--seed", "1") == 0  # another schedule is another point
    assert len(_rows(out)) == 3


def test_duration_cap_stops_submitting_and_aborts_the_rest(tmp_path, monkeypatch):
    engine_cls = _install(tmp_path, monkeypatch)
    engine_cls.TOKEN_S = 0.5  # each request holds its slot ~3.5 s
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "10", "--max-num-seqs", "1", "--duration-s", "2") == 0
    (row,) = _rows(out)
    arrivals = vs.poisson_arrivals(10.0, N, seed=0)
    assert row["submitted"] == sum(a <= 2.0 for a in arrivals) < N
    assert row["not_submitted"] == N - row["submitted"] and row["truncated"]
    assert row["completed"] == 0 and row["aborted"] == row["submitted"]  # nothing finishes by 3 s
    assert row["duration_cap_s"] == 2.0 and row["window_s"] <= 3.0 + 1e-9
    assert any("not submitted" in n for n in row["notes"])


def test_cumulative_outputs_and_coalesced_tokens(tmp_path, monkeypatch):
    engine_cls = _install(tmp_path, monkeypatch, delta=False)  # no RequestOutputKind: cumulative outputs
    engine_cls.COALESCE = 3  # every third output carries two tokens
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "1") == 0
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["output_tokens"] == N * O
    # O = 8 tokens arrive in 6 outputs of 1, 1, 2, 1, 1, 2 tokens: two double outputs per request
    assert O == 8 and row["multi_token_outputs"] == N * 2
    assert row["itl_p99_ms"] == pytest.approx(2e3 * TOKEN_S, abs=1e-3)  # the gap before a double output


def test_a_failing_request_makes_an_error_row(tmp_path, monkeypatch):
    engine_cls = _install(tmp_path, monkeypatch)
    engine_cls.FAIL_AT = "r2-3"
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "2,4") == 0
    rows = {r["rate"]: r for r in _rows(out)}
    assert rows[2.0]["status"] == "error" and "1 of 40 requests failed" in rows[2.0]["error"]
    assert rows[2.0]["failed"] == 1 and rows[4.0]["status"] == "ok"


def test_an_engine_that_cannot_start_gives_a_row_per_rate(tmp_path, monkeypatch):
    engine_cls = _install(tmp_path, monkeypatch)
    engine_cls.FAIL_START = "CUDA out of memory. Tried to allocate 2.00 GiB"
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "2,4") == 0
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["oom", "oom"] and [r["rate"] for r in rows] == [2.0, 4.0]
    assert rows[0]["error"].startswith("engine start / warm-up: RuntimeError: CUDA out of memory")
    assert _measure(out, "--rate", "2,4") == 0 and len(_rows(out)) == 2  # final, as oom sweep rows are


def test_a_checkpoint_quantized_model_gets_its_dummy_weights_in_the_engine_cores_process(tmp_path, monkeypatch):
    """The serving engine loads in a process of its own: the worker extension patches the dummy
    loader there, and the rows record how many quantized tensors it filled; a start that filled
    none times nothing."""
    torch = pytest.importorskip("torch")
    engine_cls = _install(tmp_path, monkeypatch)
    monkeypatch.delitem(sys.modules, "perfmodel.measuring.vllm_dummy_worker", raising=False)  # a fresh process's import
    layer = torch.nn.Module()  # an fp8 checkpoint's linear layer: vLLM's +-1e-3 would leave zeros
    layer.weight = torch.nn.Parameter(torch.zeros(64, 64, dtype=torch.float8_e4m3fn), requires_grad=False)
    engine_cls.LAYERS = [layer]
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "4", "--quantization", "fp8-block") == 0
    (engine,) = engine_cls.instances
    assert engine.args.worker_extension_cls == "perfmodel.measuring.vllm_dummy_worker.DummyFillExtension"
    (row,) = _rows(out)
    assert row["status"] == "ok" and "quant=fp8-block" in row["point_id"]
    assert row["engine_detail"]["resolved"]["dummy_quantized_filled"] >= 1
    assert (layer.weight.float() != 0).float().mean() > 0.9  # filled where the engine loaded it

    engine_cls.instances.clear()
    engine_cls.LAYERS = [torch.nn.Linear(4, 4)]  # nothing quantized to fill
    monkeypatch.setattr("perfmodel.measuring.vllm_dummy._FILLED", [0])
    assert _measure(out, "--rate", "8", "--quantization", "fp8-block") == 0
    (engine,) = engine_cls.instances
    failed = [r for r in _rows(out) if r["rate"] == 8.0]
    assert [r["status"] for r in failed] == ["error"] and "filled no quantized tensor" in failed[0]["error"]

    engine_cls.instances.clear()  # bf16 and vLLM-quantized-on-load models carry no extension
    assert _measure(out, "--rate", "12", "--quantization", "fp8") == 0
    (engine,) = engine_cls.instances
    assert engine.args.worker_extension_cls is None
    assert "dummy_quantized_filled" not in _rows(out)[-1]["engine_detail"]["resolved"]


def test_second_out_flag_wins(tmp_path, monkeypatch):
    """scripts/device_vllm_serving.sh passes its own --out after device_vllm.sh's."""
    _install(tmp_path, monkeypatch)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert _measure(first, "--rate", "4", "--out", str(second)) == 0
    assert not first.exists() and len(_rows(second)) == 1


def test_budget_share_follows_the_expected_spans():
    spec = vs.ServingSpec(model="olmoe", rates=(2.0, 8.0), num_requests=101, duration_s=None)
    cap = vs.rate_cap(spec, [2.0, 8.0], left_s=150.0)
    assert cap == pytest.approx(150.0 / vs.DRAIN_FACTOR * 50 / (50 + 12.5))
    assert vs.rate_cap(spec, [8.0], left_s=150.0) == pytest.approx(100.0)
    capped = vs.ServingSpec(model="olmoe", rates=(8.0,), num_requests=101, duration_s=30.0)
    assert vs.rate_cap(capped, [8.0], None) == 30.0 and vs.rate_cap(capped, [8.0], 15.0) == pytest.approx(10.0)
    assert math.isclose(vs.rate_cap(capped, [8.0], 1e6), 30.0)


def test_engine_core_process_is_spawned_not_forked(tmp_path, monkeypatch):
    """AsyncLLM starts its engine core in a process of its own after this process has touched
    CUDA: a forked child could not initialise the device again, so the start method is spawn
    (unless the user chose one)."""
    _install(tmp_path, monkeypatch)
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    assert _measure(tmp_path / "serving.jsonl", "--rate", "4") == 0
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    assert _measure(tmp_path / "serving.jsonl", "--rate", "8") == 0
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"


def test_warmup_steps_hold_each_fused_moe_config_size():
    groups = vs.warmup_steps(max_tokens=2048, input_len=1000, graph_tokens=2048)
    assert [sum(g) for g in groups] == [t for t in vs.FUSED_MOE_CONFIG_TOKENS if t <= 2048]
    assert groups[-1] == [1000, 1000, 48] and groups[0] == [1]
    assert all(max(g) <= 1000 for g in groups)


def test_warmup_meets_every_residue_mod_16_beyond_the_captured_graphs():
    """A step larger than the largest captured graph (256 here) runs the fused-MoE kernel at its
    own token count M, and Triton compiles once per divisibility class of M·top_k: from the
    first count past the graphs and from each config key above them, every M mod 16 is run."""
    sizes = [sum(g) for g in vs.warmup_steps(max_tokens=2048, input_len=1024, graph_tokens=256)]
    assert sizes == sorted(set(sizes))
    small = [t for t in vs.FUSED_MOE_CONFIG_TOKENS if t <= 256]
    assert [t for t in sizes if t <= 256] == small  # replayed from graphs: one step each
    for start in (257, 512, 1024, 1536):
        assert {t % 16 for t in sizes if start <= t < start + 16} == set(range(16)), start
    assert max(sizes) == 2048  # the budget
    # without graphs every key gets its 16 counts
    assert {t % 16 for t in map(sum, vs.warmup_steps(64, 1024)) if 32 <= t < 48} == set(range(16))


def test_warm_up_runs_one_step_of_each_config_size(tmp_path, monkeypatch):
    """Before timing, the engine sees one group of prompts per fused-MoE config size up to its
    token budget (8192 in the stand-in) and, beyond its captured graphs, per residue mod 16, so
    no Triton compile lands inside a timed rate."""
    engine_cls = _install(tmp_path, monkeypatch)
    assert _measure(tmp_path / "serving.jsonl", "--rate", "4") == 0
    (engine,) = engine_cls.instances
    sizes = {int(r.split("-")[1].removeprefix("step")) for r in engine.submitted if r.startswith("warmup-step")}
    # the stand-in states no capture sizes: every step may run without a graph
    # (and a step holds at most max_num_seqs prompts)
    expected = {sum(g) for g in vs.warmup_steps(8192, S, 0) if len(g) <= engine.args.max_num_seqs}
    assert sizes == expected and {t for t in vs.FUSED_MOE_CONFIG_TOKENS if t <= max(expected)} <= sizes
    timed = [i for i, r in enumerate(engine.submitted) if not r.startswith("warmup")]
    warm = [i for i, r in enumerate(engine.submitted) if r.startswith("warmup")]
    assert timed and max(warm) < min(timed)


def test_fatal_errors_are_the_offline_backends_and_a_dead_engine():
    assert vs._is_fatal("CUDA error: an illegal memory access was encountered")
    assert vs._is_fatal(type("EngineDeadError", (RuntimeError,), {})("engine core died"))
    assert not vs._is_fatal("request timed out") and not vs._is_fatal(RuntimeError("out of memory"))


def test_drawn_lengths_are_served_recorded_and_replayed(tmp_path, monkeypatch):
    """Lengths given as percentiles: each request gets its own prompt and output, drawn as the
    planning draws a traffic given so, the same at every rate, written per request and replayed
    with exactly those lengths."""
    from perfmodel.measuring import serving_replay as sr
    from perfmodel.planning.question import Lengths, Traffic

    engine_cls = _install(tmp_path, monkeypatch)
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "2,4", "--input-len", "p50=64,p90=256", "--output-len", "p50=6,p90=20") == 0
    s, o = Lengths(Traffic(rate=1, input_len={"p50": 64, "p90": 256}, output_len={"p50": 6, "p90": 20})).sample(
        N, np.random.default_rng(0))
    assert len(set(s)) > 5 and len(set(o)) > 3  # they do vary
    (engine,) = engine_cls.instances
    assert engine.args.max_model_len >= int((s + o).max())
    rows = _rows(out)
    assert [r["rate"] for r in rows] == [2.0, 4.0]
    for row in rows:
        assert "|s_p90=256|" in row["point_id"] + "|" and "o_p90=20" in row["point_id"]
        assert row["input_len"] == 64 and row["output_len"] == 6
        assert row["lengths"]["input_len"] == {"p50": 64, "p90": 256}
        per = row["per_request"]
        assert per["input_len"] == [int(x) for x in s] and per["output_len"] == [int(x) for x in o]
        assert per["output_tokens"] == per["output_len"]  # each request streamed its own O
        assert row["output_tokens"] == int(o.sum()) and not row["notes"]
        prefix = f"r{vs.rate_key(row['rate'])}-"
        sent = [engine.prompt_lens[f"{prefix}{i}"] for i in range(N)]
        assert sent == per["input_len"]
        assert sr.request_lengths(row) == (per["input_len"], per["output_len"])
        assert sr.mean_lengths(row) == pytest.approx((s.mean(), o.mean()))
        assert sr.lengths_label(row) == "64/6 median, p90 256/20"
        assert sr.traffic_lengths(row) == {"input_len": {"p50": 64, "p90": 256}, "output_len": {"p50": 6, "p90": 20}}


def test_bad_length_percentiles_are_one_line(tmp_path, capsys):
    from perfmodel.measuring.measure import main

    out = tmp_path / "s.jsonl"
    for text, expected in (("p50=64", "p50 and one more"), ("p50=64,p90=32", "must not decrease"),
                           ("p50=64,p80=90", "unknown percentile"), ("p50=64.5,p90=90", "whole numbers")):
        assert main(["olmoe", "--backend", "vllm", "--serving", "--rate", "2", "--input-len", text,
                     "--out", str(out)]) == 2, text
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (text, err)
    assert not out.exists()


def test_lengths_from_a_file_are_drawn_as_plan_draws_them(tmp_path, monkeypatch, capsys):
    """``--lengths-file``: each request's (input, output) drawn from the CSV with replacement,
    seeded, as ``plan --lengths-file`` draws them; the file's digest is in the point id and its
    percentiles in the row, for the replay's closed form."""
    import hashlib

    from perfmodel.measuring import serving_replay as sr
    from perfmodel.measuring.measure import main
    from perfmodel.planning.question import Lengths, Traffic

    csv = tmp_path / "lengths.csv"
    csv.write_text("input,output\n40,3\n90,12\n200,7\n33,25\n")
    engine_cls = _install(tmp_path, monkeypatch)
    out = tmp_path / "serving.jsonl"
    assert main(["olmoe-1b-7b", "--backend", "vllm", "--serving", "--allow-cpu", "--layers", "2", "--rate", "3",
                 "--num-requests", str(N), "--lengths-file", str(csv), "--out", str(out)]) == 0
    s, o = Lengths(Traffic(rate=1, lengths_file=csv)).sample(N, np.random.default_rng(0))
    (row,) = _rows(out)
    per = row["per_request"]
    assert per["input_len"] == [int(x) for x in s] and per["output_len"] == [int(x) for x in o]
    assert set(zip(per["input_len"], per["output_len"])) <= {(40, 3), (90, 12), (200, 7), (33, 25)}
    assert per["output_tokens"] == per["output_len"]
    (engine,) = engine_cls.instances
    assert [engine.prompt_lens[f"r3-{i}"] for i in range(N)] == per["input_len"]
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert f"lengths={digest[:12]}" in row["point_id"] and digest in row["lengths"]["drawn"]
    assert row["input_len"] == 65 and row["lengths"]["input_len"]["p50"] == 65  # the file's median
    assert sr.request_lengths(row) == (per["input_len"], per["output_len"])
    replay = sr.predict_row(row, "h200-sxm")  # each request with its own lengths, the file's percentiles beside
    assert sorted(replay["per_request"]["output_tokens"]) == sorted(per["output_len"])
    # with the file: no --input-len / --output-len; without --serving: refused
    for extra, expected in ((["--serving", "--rate", "3", "--input-len", "64"], "leave out --input-len"),
                            (["--batch", "1"], "--lengths-file applies to --serving"),
                            (["--serving", "--rate", "3"], "cannot read lengths file")):
        bad = tmp_path / "missing.csv" if expected.startswith("cannot") else csv
        assert main(["olmoe", "--backend", "vllm", *extra, "--lengths-file", str(bad), "--out",
                     str(tmp_path / "x.jsonl")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (extra, err)


def test_bursty_arrivals_are_gamma_gaps_of_the_same_mean_and_poisson_ids_stay(tmp_path, monkeypatch, capsys):
    """--burstiness k draws gamma gaps of shape k (squared CV 1/k) at the rate's mean; k = 1 is
    the Poisson schedule as before, whose point ids do not change; the row records k and its id
    carries it; k <= 0 or a k off a serving run is one line, exit 2."""
    poisson = vs.poisson_arrivals(4.0, 20_000, seed=3)
    assert vs.poisson_arrivals(4.0, 20_000, seed=3, burstiness=1.0) == poisson
    for k in (0.25, 4.0):
        a = vs.poisson_arrivals(4.0, 20_000, seed=3, burstiness=k)
        gaps = np.diff(a)
        assert (len(a) - 1) / a[-1] == pytest.approx(4.0, rel=0.05)
        assert np.var(gaps) / np.mean(gaps) ** 2 == pytest.approx(1 / k, rel=0.1)
    spec = vs.ServingSpec(model="olmoe-1b-7b", rates=(2.0,))
    assert "burstiness" not in spec.point(2.0).point_id and "serving=poisson" in spec.point(2.0).point_id
    bursty = vs.ServingSpec(model="olmoe-1b-7b", rates=(2.0,), burstiness=0.5)
    assert "serving=gamma" in bursty.point(2.0).point_id and "burstiness=0.5" in bursty.point(2.0).point_id
    _install(tmp_path, monkeypatch)
    out = tmp_path / "bursty.jsonl"
    assert _measure(out, "--rate", "2", "--seed", "5", "--burstiness", "0.5") == 0
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["burstiness"] == 0.5 and "burstiness=0.5" in row["point_id"]
    assert row["per_request"]["arrival_s"] == pytest.approx(vs.poisson_arrivals(2.0, N, 5, 0.5), abs=1e-6)
    capsys.readouterr()
    for extra, expected in ((["--serving", "--rate", "2", "--burstiness", "0"], "bad burstiness 0"),
                            (["--serving", "--rate", "2", "--burstiness", "nan"], "bad burstiness nan"),
                            (["--burstiness", "0.5"], "--burstiness applies to --serving runs")):
        from perfmodel.measuring.measure import main

        assert main(["olmoe", "--backend", "vllm", *extra, "--out", str(tmp_path / "x.jsonl")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (extra, err)
