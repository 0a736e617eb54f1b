"""A sweep evaluates the batch sizes a batch that outgrows its KV cache needs only at those
points (perfmodel.waves.run_in_waves): its rows stay those of predict, point by point."""

from __future__ import annotations

import numpy as np
import pytest

from perfmodel import predict, sweep
from perfmodel.prediction import METRICS
from perfmodel.kv_schedule import schedule
from perfmodel.waves import WAVE_METRICS, run_in_waves

REL = 1e-9
#: Mixtral-8x7B on one H200 with vLLM: small batches and short prompts fit at once, large ones
#: run in up to dozens of waves (some of them even, the last wave as large as the others).
BATCHES = [1, 8, 32, 64, 72, 128, 140, 144, 256, 300, 512]
INPUT_LENS = [512, 1024, 2048, 4096, 8192]
OUTPUT_LEN = 2048
#: The toy model's prefill chunk (tokens), longer than its prompts.
CHUNK = 1000


@pytest.fixture(scope="module")
def table():
    return sweep("mixtral-8x7b", {"batch": BATCHES, "input_len": INPUT_LENS}, gpu="h200-sxm", engine="vllm",
                 output_len=OUTPUT_LEN)


def test_the_grid_mixes_points_in_waves_and_points_that_fit(table):
    waves = table["kv_waves"]
    assert (waves == 1).sum() >= 10 and (waves > 1).sum() >= 10
    assert (waves > 2).any()
    even = table[(waves > 1) & (table["batch"] % table["concurrent_sequences"] == 0)]
    uneven = table[(waves > 1) & (table["batch"] % table["concurrent_sequences"] != 0)]
    assert len(even) and len(uneven)  # last wave as large as the others, and smaller


def test_every_row_is_the_prediction_of_its_point(table):
    assert len(table) == len(BATCHES) * len(INPUT_LENS)
    for row in table.itertuples(index=False):
        m = predict("mixtral-8x7b", gpu="h200-sxm", engine="vllm", batch=row.batch, input_len=row.input_len,
                    output_len=OUTPUT_LEN).metrics
        got = row._asdict()
        assert {k: got[k] for k in WAVE_METRICS} == {k: m[k] for k in WAVE_METRICS}, (row.batch, row.input_len)
        assert got["fits_in_memory"] == m["fits_in_memory"]
        for name in METRICS:
            assert got[name] == pytest.approx(m[name], rel=REL, nan_ok=True), (name, row.batch, row.input_len)


def test_rows_that_outgrow_the_cache_combine_their_own_predictions(table):
    """Independent of how predict composes them: TTFT is the prefill of all B prompts, the
    memory that of B_run sequences at once, E2E = TTFT + (O − 1)·ITL, and E2E above O − 1 steps
    of one sequence and at most 10% above the waves of B_run run one after another (vLLM's
    admission by prompt starts more sequences at once; its preempted few finish alone, at
    small batches, and are prefilled again)."""
    for row in table[table["kv_waves"] > 1].itertuples(index=False):
        waves, running = row.kv_waves, row.concurrent_sequences
        last_size = row.batch - (waves - 1) * running
        one = {b: predict("mixtral-8x7b", batch=b, input_len=row.input_len, output_len=OUTPUT_LEN).metrics
               for b in (1, running, last_size)}
        full, last = one[running], one[last_size]
        assert full["kv_waves"] == last["kv_waves"] == 1
        prefill = predict("mixtral-8x7b", phase="prefill", batch=row.batch, input_len=row.input_len,
                          output_len=OUTPUT_LEN).metrics
        assert row.ttft_s == pytest.approx(prefill["ttft_s"], rel=REL)
        assert row.memory_bytes == pytest.approx(full["memory_bytes"], rel=REL)
        assert row.e2e_s == pytest.approx(row.ttft_s + (OUTPUT_LEN - 1) * row.itl_s, rel=REL)
        assert row.throughput_tok_s == pytest.approx(row.batch * (row.input_len + OUTPUT_LEN) / row.e2e_s, rel=REL)
        assert row.ttft_s + (OUTPUT_LEN - 1) * one[1]["itl_s"] < row.e2e_s
        assert row.e2e_s < 1.10 * ((waves - 1) * full["e2e_s"] + last["e2e_s"])


def _metrics(batch: np.ndarray, prompt: np.ndarray) -> dict[str, np.ndarray]:
    """One pass's numbers of a toy model: 40 bytes of weights, one KV byte per prompt token of a
    sequence, no activations; TTFT = b·S/100 s, ITL = b/1000 s and E2E = b s at a batch of b."""
    kv = batch * prompt * 1.0
    return {"weights_bytes": np.full_like(kv, 40.0), "activation_bytes": np.zeros_like(kv), "kv_cache_bytes": kv,
            "ttft_s": kv / 100.0, "e2e_s": batch * 1.0 + 0 * prompt, "itl_s": batch / 1000.0 + 0 * prompt,
            "memory_bytes": 40.0 + kv}


def test_only_the_points_in_waves_are_evaluated_again():
    batch = np.array([1.0, 2.0, 8.0, 15.0])[:, None]
    prompt = np.array([1.0, 2.0, 4.0])[None, :]
    output = 10
    calls = []

    def rerun(b, where):
        calls.append((b.copy(), where.copy()))
        return _metrics(b, np.broadcast_to(prompt, where.shape)[where])

    # 8 bytes for the KV cache: B_run = 8, 4, 2 sequences at S = 1, 2, 4; 8/S·(S + O) tokens
    out = run_in_waves(_metrics(batch, prompt), batch, prompt, output, 48.0, CHUNK, None, rerun)
    running = np.minimum(batch, 8 // prompt)
    waves = np.ceil(batch / running)
    assert (out["concurrent_sequences"] == running).all() and (out["kv_waves"] == waves).all()
    split = waves > 1
    points = list(zip(*np.nonzero(split)))
    runs = {p: schedule(int(batch[p[0], 0]), int(prompt[0, p[1]]), output,
                        int(8 / prompt[0, p[1]] * (prompt[0, p[1]] + output)), int(batch[p[0], 0])) for p in points}
    # evaluated again at B_run, then at running counts the schedule's steps fall on: powers of four
    # below the most at once, capped there, and the most where that is not B
    assert len(calls) >= 2 and all((where == split).all() for _, where in calls)
    assert calls[0][0].tolist() == running[split].tolist()
    for n, p in enumerate(points):
        most = runs[p].max_running
        knots = {most, *(min(4 ** j, most) for j in range(6))}
        assert {int(b[n]) for b, _ in calls[1:]} <= knots
    # E2E: every token prefilled at the batch's rate, then every decode step at its own count
    for p in points:
        b, s = batch[p[0], 0], prompt[0, p[1]]
        decode = sum(n * steps for n, steps in runs[p].steps_by_running) / 1000.0  # the toy's ITL is linear
        e2e = b * s / 100.0 * runs[p].prefill_tokens / (b * s) + decode
        assert out["e2e_s"][p] == pytest.approx(e2e, rel=REL)
        assert out["ttft_s"][p] == pytest.approx(b * s / 100.0, rel=REL)
        assert out["itl_s"][p] == pytest.approx((e2e - b * s / 100.0) / (output - 1), rel=REL)
    assert out["e2e_s"][~split].tolist() == np.broadcast_to(batch, split.shape)[~split].tolist()
    assert out["memory_bytes"].tolist() == (40.0 + np.where(split, running, batch) * prompt).tolist()


def test_a_batch_that_fits_at_once_is_not_evaluated_again():
    batch, prompt = np.array([16.0, 4.0]), 1.0
    calls = []

    def rerun(b, where):
        calls.append(b.tolist())
        return _metrics(b, prompt)

    out = run_in_waves(_metrics(batch, prompt), batch, prompt, 10.0, 48.0, CHUNK, None, rerun)
    # B_run = 8, then powers of four below the most where steps ran; all 16 prompts fit at once (88
    # tokens), so B is the most at once, whose numbers are the batch's own
    assert calls[0] == [8.0] and all(c in ([1.0], [4.0]) for c in calls[1:])
    assert out["kv_waves"].tolist() == [2, 1]

    def never(b, where):
        raise AssertionError("a batch that fits at once is not evaluated again")

    fits = run_in_waves(_metrics(batch, prompt), batch, prompt, 10.0, 64.0, CHUNK, None, never)
    assert fits["kv_waves"].tolist() == [1, 1] and fits["e2e_s"].tolist() == [16.0, 4.0]


def test_a_sweep_that_fits_at_once_runs_the_model_once(monkeypatch):
    import perfmodel.sweeps as sweeps

    calls = []
    original = sweeps.run_in_waves

    def counting(metrics, batch, input_len, output_len, usable, chunk, limit, rerun, **kw):
        def counted(b, where):
            calls.append(int(where.sum()))
            return rerun(b, where)
        return original(metrics, batch, input_len, output_len, usable, chunk, limit, counted, **kw)

    monkeypatch.setattr(sweeps, "run_in_waves", counting)
    small = sweep("mixtral-8x7b", {"batch": [1, 8, 32], "input_len": [512, 2048]}, output_len=OUTPUT_LEN)
    assert (small["kv_waves"] == 1).all() and calls == []
    mixed = sweep("mixtral-8x7b", {"batch": [8, 300], "input_len": [512, 2048]}, output_len=OUTPUT_LEN)
    waved = int((mixed["kv_waves"] > 1).sum())
    assert waved == 2 and calls and all(n == waved for n in calls)


def test_the_metrics_alone_at_another_batch_are_the_full_evaluations():
    from dataclasses import replace

    from perfmodel.prediction import Workload, evaluate, evaluate_metrics, numeric_values
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    spec, gpu = load_model("qwen3-30b-a3b"), load_gpu("h100-sxm")
    profile = load_profile("vllm", gpu.name)
    base = Workload(batch=5, input_len=2048, output_len=512, dtype="fp8").stored_as(spec)
    like = numeric_values(spec, gpu, profile, base)
    for batch in (1, 64, 300):
        w = replace(base, batch=batch)
        full = evaluate(spec, gpu, profile, w).metrics
        alone = evaluate_metrics(spec, gpu, profile, w, like=like)
        assert alone.keys() == full.keys()
        for name, value in full.items():
            assert alone[name] == pytest.approx(value, rel=1e-9, nan_ok=True), name
