"""vLLM's scheduler on a batch that outgrows its KV cache (perfmodel.kv_schedule)."""

from __future__ import annotations

import json

import pytest

from perfmodel.kv_schedule import schedule
from perfmodel.measuring.serving_replay import engine_kv_tokens
from perfmodel.paths import results_file


def test_a_batch_that_fits_runs_at_once_without_preemption():
    run = schedule(16, 100, 50, 16 * 150, 16)
    assert run.steps_by_running == ((16, 49),) and run.preemptions == 0
    assert run.prefill_tokens == 16 * 100 and run.max_running == 16


def test_every_decode_token_is_run_once():
    """Each request runs O − 1 decode steps after its prefill, less one for each recompute,
    whose prefill samples the next token; the recomputes prefill the tokens already held."""
    for args in [(128, 2048, 2048, 462000, 128), (64, 2048, 2048, 134512, 64), (300, 512, 700, 90000, 256)]:
        batch, prompt, output = args[:3]
        run = schedule(*args)
        assert run.preemptions > 0
        tokens = sum(n * steps for n, steps in run.steps_by_running)
        assert tokens == batch * (output - 1) - run.preemptions
        assert run.prefill_tokens > batch * prompt + run.preemptions * prompt
        assert run.max_running <= min(batch, args[4])


def test_prompts_are_admitted_by_the_tokens_they_hold_now():
    # 64 prompts of 2,048 fit a cache of 134,512 tokens, 32 whole sequences of 4,096 do
    run = schedule(64, 2048, 2048, 134512, 64)
    assert run.max_running == 64 and run.steps_by_running[0][0] == 1
    assert run.preemptions == 64 - 134512 // 4096  # the decodes grow: 32 of them preempted
    limited = schedule(64, 2048, 2048, 134512, 40)
    assert limited.max_running == 40


def test_the_engines_preemptions_are_played():
    """vLLM 0.26's own count of preempted requests per run (the rows' ``preemptions``, on one
    H100) against the schedule on the cache the engine allocated (its blocks of 16 tokens)."""
    rows = [json.loads(line) for line in results_file("vllm", "h100-sxm").read_text().splitlines()]
    measured = [r for r in rows if r.get("preemptions")]
    assert len(measured) >= 4
    for r in measured:
        run = schedule(r["batch"], r["input_len"], r["output_len"], engine_kv_tokens(r), r["batch"])
        assert abs(run.preemptions - r["preemptions"]) <= 1, r["point_id"]


def test_knot_weights_give_a_linear_step_time_exactly():
    run = schedule(128, 2048, 2048, 462000, 128)
    knots = (1, 112, 128)
    weights = run.knot_weights(knots)
    assert sum(weights) == pytest.approx(run.decode_steps)
    tokens = sum(n * steps for n, steps in run.steps_by_running)
    assert sum(w * k for w, k in zip(weights, knots)) == pytest.approx(tokens)
    # beyond the last knot a step counts at the last one's time
    assert schedule(16, 10, 10, 320, 16).knot_weights((1, 8)) == (0.0, 9.0)


def test_a_cache_without_room_for_one_sequence_is_refused():
    with pytest.raises(ValueError, match="no schedule"):
        schedule(4, 100, 100, 150, 4)
