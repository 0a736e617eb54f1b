"""The environment of a run (driver by torch.utils.collect_env, recorded field names) and the
timing glue to Triton's do_bench_cudagraph, with the GPU and Triton faked."""

from __future__ import annotations

import sys
import types

import pytest

torch = pytest.importorskip("torch")

from perfmodel.measuring import env, timing  # noqa: E402
try:
    from tests.fake_cuda import WallClockEvent
except ImportError:  # run from inside tests/
    from fake_cuda import WallClockEvent

SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |
|-----------------------------------------+------------------------+----------------------+
"""

#: The provenance fields of every result row (perfmodel.measuring.results), GPU facts aside.
FIELDS = ("gpu_name", "gpu_count", "driver", "cuda", "torch", "transformers", "triton", "vllm",
          "python", "hostname", "date", "git_commit")


@pytest.fixture
def fresh_driver():
    env.driver_version.cache_clear()
    yield
    env.driver_version.cache_clear()


def test_driver_version_is_read_by_collect_env(monkeypatch, fresh_driver):
    calls = []

    def smi(command, timeout_s=5.0):
        calls.append(command)
        return 0, SMI, ""

    monkeypatch.setattr(env, "run_command", smi)
    assert env.driver_version() == "580.159.04"
    assert calls and "nvidia-smi" in calls[0]


def test_driver_version_is_none_without_nvidia_smi(monkeypatch, fresh_driver):
    monkeypatch.setattr(env, "run_command", lambda command, timeout_s=5.0: (127, "", "not found"))
    assert env.driver_version() is None


def test_run_command_never_raises_and_has_a_time_limit():
    assert env.run_command(["/nonexistent/tool"]) == (1, "", "")
    code, out, _ = env.run_command("echo ok")
    assert (code, out) == (0, "ok")
    assert env.run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.2)[0] == 1


def test_provenance_keeps_the_recorded_field_names():
    prov = env.provenance()
    assert tuple(prov)[:len(FIELDS)] == FIELDS  # then the GPU's facts, on a GPU
    assert prov["torch"] == torch.__version__ and prov["cuda"] == torch.version.cuda


def test_call_times_on_cpu_runs_before_untimed():
    order = []
    times = timing.call_times(lambda: order.append("call"), gpu=False, reps=3,
                              before=lambda: order.append("before"))
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert order == ["before", "call"] * 3


# --- do_bench_cudagraph, faked ------------------------------------------------------------------



@pytest.fixture
def fake_triton(monkeypatch):
    """A GPU and a do_bench_cudagraph that, like Triton's, warms up, 'captures' n calls (the
    stream reports capturing meanwhile) and returns 10 per-call samples in return_mode 'all'."""
    state = {"capturing": False, "rep": None, "n": 7}

    def do_bench_cudagraph(fn, rep=20, grad_to_none=None, quantiles=None, return_mode="mean"):
        assert return_mode == "all"
        state["rep"] = rep
        for _ in range(1 + 5):
            fn()
        state["capturing"] = True
        for _ in range(state["n"]):
            fn()
        state["capturing"] = False
        return [0.25 + 0.01 * i for i in range(10)]

    testing = types.ModuleType("triton.testing")
    testing.do_bench_cudagraph = do_bench_cudagraph
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setitem(sys.modules, "triton.testing", testing)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(torch.cuda, "Event", WallClockEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    return state


def test_auto_time_uses_do_bench_cudagraph_where_available(fake_triton):
    calls = []
    x = torch.randn(8, 8)
    stats = timing.auto_time(lambda i: calls.append(i) or x @ x, torch.device("cuda"), target_ms=20.0)
    assert stats.method == "cuda_graph" and stats.inner == fake_triton["n"] and stats.n_reps == 10
    assert stats.median_ms == pytest.approx(0.295) and stats.p10_ms < stats.median_ms < stats.p90_ms
    assert fake_triton["rep"] >= 20.0 / timing.CUDAGRAPH_REPLAYS
    # the running call index reaches fn (input rotation): 3 calls of the events estimate first
    assert calls == list(range(3)) + list(range(1 + 5 + fake_triton["n"]))


def test_auto_time_falls_back_when_capture_fails(fake_triton):
    def broken(fn, rep=20, grad_to_none=None, quantiles=None, return_mode="mean"):
        raise RuntimeError("operation not permitted when stream is capturing")

    sys.modules["triton.testing"].do_bench_cudagraph = broken
    x = torch.randn(8, 8)
    stats = timing.auto_time(lambda i: x @ x, torch.device("cuda"), target_ms=1.0, min_reps=3)
    assert stats.method == "cuda_events" and stats.n_reps >= 3


def test_without_triton_the_torch_graph_path_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton.testing", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not timing.cudagraph_bench_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not timing.cudagraph_bench_available()
