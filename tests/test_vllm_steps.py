"""The engine's step log in serving runs: what a step scheduled, how long the busy steps took."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perfmodel.measuring import vllm_serving as vs
from perfmodel.measuring.vllm_steps import STEP_COLUMNS, step_summary, step_trace
from tests.test_vllm_serving import N, O, PREFILL_S, TOKEN_S, _drop_vllm_modules, _install, _measure, _rows


def _step(t, ctx=0, gen=4, running=4, waiting=0, preempted=0):
    return (t, 1 if ctx else 0, ctx, gen, gen, running, waiting, 0.25, preempted)


def test_summary_splits_mixed_from_decode_steps_and_leaves_idle_gaps_out():
    steps = [_step(0.000), _step(0.010), _step(0.020), _step(0.050, ctx=512),  # 30 ms mixed
             _step(0.060), _step(0.070, running=0),                             # then idle
             _step(1.000, ctx=256, gen=0, running=1),                          # not a step's time
             _step(1.010, gen=1, running=1, preempted=2), _step(1.030, ctx=128, running=2, waiting=3)]
    out = step_summary(steps)
    assert out["steps"] == len(steps)
    assert out["decode"]["steps"] == 5 and out["decode"]["p50_ms"] == pytest.approx(10.0)
    assert out["mixed"]["steps"] == 2  # the 1.000 s step came after an idle engine
    assert out["mixed"]["mean_ms"] == pytest.approx((30.0 + 20.0) / 2)
    assert out["mixed"]["mean_ctx_tokens"] == pytest.approx((512 + 128) / 2)
    assert out["busy_s"] == pytest.approx(0.070 + 0.030)
    assert out["max_running"] == 4 and out["max_waiting"] == 3 and out["preempted"] == 2
    assert step_summary([]) is None
    trace = step_trace(steps, t0=-1.0)
    assert trace["columns"] == list(STEP_COLUMNS) and trace["steps"][0][0] == pytest.approx(1.0)
    assert len(trace["steps"]) == len(steps) and trace["steps"][3][2] == 512


_LOGGING_ENGINE = '''
_Plain = AsyncLLM


class _Core:
    """The engine client: hands over the outputs of one step."""

    def __init__(self):
        self.next = None

    async def get_output_async(self):
        return self.next


class AsyncLLM(_Plain):
    """As above, and every output is one step of the engine, fetched through its client."""

    instances = _Plain.instances

    def __init__(self, args, usage_context=None):
        super().__init__(args, usage_context)
        self.engine_core = _Core()

    async def generate(self, prompt, params, request_id):
        first = True
        async for out in super().generate(prompt, params, request_id):
            running = self.args.max_num_seqs - self.free - (1 if out.finished else 0)
            details = NS(num_ctx_requests=int(first), num_ctx_tokens=len(prompt["prompt_token_ids"]) if first else 0,
                         num_generation_requests=1, num_generation_tokens=1, is_dummy=False)
            stats = NS(iteration_details=details, num_running_reqs=running, num_waiting_reqs=len(self.queue),
                       kv_cache_usage=0.5)
            self.engine_core.next = NS(timestamp=asyncio.get_running_loop().time(), scheduler_stats=stats,
                                       outputs=[NS(events=[NS(type=NS(name="SCHEDULED"))])])
            await self.engine_core.get_output_async()
            first = False
            yield out
'''


def test_serving_rows_carry_the_engine_steps_and_a_trace_beside_them(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch)
    pkg = tmp_path / "fake" / "vllm"
    args = pkg / "engine" / "arg_utils.py"
    args.write_text(args.read_text() + "    enable_logging_iteration_details: bool = False\n"
                    "    jit_monitor_verbose: bool = False\n")
    engine_file = pkg / "v1" / "engine" / "async_llm.py"
    engine_file.write_text(engine_file.read_text() + _LOGGING_ENGINE)
    _drop_vllm_modules()
    from vllm.v1.engine.async_llm import AsyncLLM

    AsyncLLM.instances.clear()
    out = tmp_path / "serving.jsonl"
    # one slot: at 60 req/s a queue builds, so each prompt's step follows the previous request's last token
    assert _measure(out, "--rate", "60", "--max-num-seqs", "1", "--seed", "5") == 0
    (engine,) = AsyncLLM.instances
    assert engine.args.enable_logging_iteration_details and engine.args.jit_monitor_verbose
    (row,) = _rows(out)
    steps = row["engine_steps"]
    assert steps["steps"] == N * O  # one step per output token of the rate (not the warm-up's)
    assert steps["decode"]["p50_ms"] == pytest.approx(1e3 * TOKEN_S)
    assert steps["mixed"]["p50_ms"] == pytest.approx(1e3 * PREFILL_S)
    assert steps["mixed"]["steps"] >= N // 2 and steps["max_running"] == 1
    (trace,) = [json.loads(line) for line in vs.trace_path(out, "steps").read_text().splitlines()]
    assert trace["point_id"] == row["point_id"] and len(trace["steps"]) == N * O
    assert trace["columns"] == list(STEP_COLUMNS) and trace["steps"][0][0] >= 0.0


def test_a_vllm_without_step_details_gives_rows_without_them(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch)
    out = tmp_path / "serving.jsonl"
    assert _measure(out, "--rate", "20", "--max-num-seqs", "2") == 0
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["engine_steps"] is None
    assert not vs.trace_path(out, "steps").exists()
    # the client's output times of every 16th request come beside the rows whatever the engine reports
    (sample,) = [json.loads(line) for line in vs.trace_path(out, "tokens").read_text().splitlines()]
    assert sample["point_id"] == row["point_id"] and sample["every"] == vs.TOKEN_SAMPLE_EVERY
    assert [r[0] for r in sample["requests"]] == list(range(0, N, vs.TOKEN_SAMPLE_EVERY))
    for index, submitted, outputs, tokens in sample["requests"]:
        assert len(outputs) == O and tokens == [1] * O and outputs[0] > submitted >= 0
        assert np.diff(outputs) == pytest.approx([TOKEN_S] * (O - 1), abs=2e-4)  # the stand-in's time per token


def test_observe_wraps_the_engine_client_and_counts_preemptions():
    import asyncio
    from types import SimpleNamespace as NS

    from perfmodel.measuring.vllm_steps import StepLog, observe

    class Client:
        def __init__(self, outputs):
            self.outputs = list(outputs)

        async def get_output_async(self):
            return self.outputs.pop(0)

    details = NS(num_ctx_requests=1, num_ctx_tokens=100, num_generation_requests=3, num_generation_tokens=3)
    stats = NS(iteration_details=details, num_running_reqs=4, num_waiting_reqs=2, kv_cache_usage=0.9)
    events = [NS(type=NS(name="PREEMPTED")), NS(type=NS(name="SCHEDULED"))]
    outs = [NS(timestamp=5.0, scheduler_stats=stats, outputs=[NS(events=events), NS(events=[events[0]])]),
            NS(timestamp=0.0, scheduler_stats=stats, outputs=[]),  # no stamp: the log's clock
            NS(timestamp=6.0, scheduler_stats=None, outputs=[])]   # no stats: not a step record
    llm = NS(engine_core=Client(outs))
    log = StepLog(clock=lambda: 7.5)
    assert observe(llm, log)
    for _ in outs:
        asyncio.run(llm.engine_core.get_output_async())
    assert [s[0] for s in log.steps] == [5.0, 7.5]
    assert log.steps[0][1:] == (1, 100, 3, 3, 4, 2, 0.9, 2) and log.steps[1][-1] == 0
    assert not observe(NS(), log)
