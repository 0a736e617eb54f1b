"""scripts/profile_mixed_steps.py on a stand-in engine: which steps it times, what it adds and
aborts, and the row it writes (no vLLM, no GPU)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from perfmodel.measuring.vllm_kernels import KernelProfile

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_mixed_steps.py"


@pytest.fixture()
def script():
    spec = importlib.util.spec_from_file_location("profile_mixed_steps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Engine:
    """What the script drives of vLLM's ``LLMEngine``: requests in, steps out. A request takes
    one step to prefill, then one output token a step until its ``max_tokens``."""

    def __init__(self):
        self.running: dict[str, list[int]] = {}  # id -> [prompt tokens left to prefill, tokens left]
        self.steps: list[tuple[int, int]] = []  # (prompt tokens, decodes) of each step

    def add_request(self, rid, prompt, params):
        self.running[rid] = [len(prompt["prompt_token_ids"]), params.max_tokens]

    def step(self):
        prompt = sum(p for p, _ in self.running.values())
        decodes = sum(1 for p, _ in self.running.values() if p == 0)
        self.steps.append((prompt, decodes))
        for rid, state in list(self.running.items()):
            state[0] = 0
            state[1] -= 1
            if state[1] <= 0:
                del self.running[rid]
        return []

    def has_unfinished_requests(self):
        return bool(self.running)

    def abort_request(self, ids):
        for rid in ids:
            self.running.pop(rid, None)


class Params:
    def __init__(self, max_tokens, **_):
        self.max_tokens = max_tokens


def test_each_count_times_decode_only_and_mixed_steps_then_aborts_its_decodes(script, monkeypatch):
    engine = Engine()
    monkeypatch.setattr(script, "profile_run", lambda step: (step(), KernelProfile({"k": [1, 0.5]}, 0.5, 1.0))[1])
    monkeypatch.setattr(script, "probe_ms", lambda: 40.0)
    stepper = script.Stepper.__new__(script.Stepper)
    stepper.engine, stepper.vocab, stepper.seed, stepper.next_id, stepper.params = engine, 1000, 0, 0, Params
    args = argparse.Namespace(prompt=100, context=16, steps=50, reps=3, warmup=1)
    row = script.one_count(stepper, 4, args)
    assert row["decodes"] == 4 and len(row["decode_ms"]) == 3 and len(row["mixed_ms"]) == 3
    assert set(row["profiles"]) == {"decode", "mixed"} and row["profiles"]["mixed"]["busy_ms"] == 0.5
    assert row["host_probe_ms"] == [40.0, 40.0]
    mixed = [s for s in engine.steps if s[0] == 100]
    assert len(mixed) == 1 + 3 + 1 and all(d == 4 for _, d in mixed)  # warm-up, timed, profiled: beside 4 decodes
    assert not engine.running  # the decodes were aborted, the prompts finished
    alone = script.one_count(stepper, 0, args)  # D = 0: the prompt's step alone, no decode profile
    assert alone["decode_ms"] == [] and set(alone["profiles"]) == {"mixed"}
    assert json.loads(json.dumps(alone))["mixed_median_ms"] is not None


def test_too_many_decodes_is_one_clear_line(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--model", "olmoe-1b-7b", "--decodes", "0,256", "--out", "x.jsonl"])
    assert "--decodes must stay below 256" in capsys.readouterr().err
