"""The serving validation's KV cache check: the planning's capacity against the engine's."""

import pytest

from perfmodel.validate.serving_memory import kv_capacity, kv_cell, kv_sentence, kv_summary


def _run(rate, engine_tokens, model_tokens, **kw):
    base = {"model": "olmoe-1b-7b", "scheme": "bf16", "gpu": "h100-sxm", "layout": "1 GPU", "max_num_seqs": 256,
            "lengths": "1024/256", "rate": rate, "engine_kv_tokens": engine_tokens,
            "model_kv_tokens": model_tokens}
    return {**base, **kw}


def test_each_engine_configuration_counts_once_whatever_its_rates():
    runs = [_run(4, 200_000, 210_000), _run(8, 200_000, 210_000), _run(4, 100_000, 95_000, model="mixtral-8x7b"),
            _run(4, None, 90_000, model="qwen3-30b-a3b"), _run(4, 100_000, None, model="phi-3.5-moe")]
    entries = kv_capacity(runs)
    assert [(e["model"], e["engine_tokens"], e["model_tokens"]) for e in entries] == [
        ("olmoe-1b-7b", 200_000, 210_000), ("mixtral-8x7b", 100_000, 95_000)]
    assert [e["rel_error"] for e in entries] == pytest.approx([0.05, -0.05])
    s = kv_summary(entries)
    assert (s["n"], s["mape"], s["max"], s["mean"]) == (2, pytest.approx(5.0), pytest.approx(5.0), pytest.approx(0.0))
    assert "2 engine configurations" in kv_sentence(entries) and "5.0%" in kv_sentence(entries)


def test_without_an_engine_capacity_there_is_no_check_and_the_cell_says_whose_it_is():
    assert kv_capacity([_run(4, None, 90_000)]) == [] and kv_summary([]) is None and kv_sentence([]) == ""
    assert kv_cell(_run(4, 200_000, 210_000)) == "200,000 / 210,000 (+5.0%)"
    assert kv_cell(_run(4, None, 90_000)) == "– / 90,000" and kv_cell(_run(4, None, None)) == "–"


def test_a_replay_reports_the_plannings_own_capacity_beside_the_one_it_held():
    from perfmodel.planning import predict_serving

    traffic = {"rate": 1.0, "input_len": 128, "output_len": 8}
    own = predict_serving("olmoe-1b-7b", "h100", (1, 1, 1), traffic, arrivals=[0.0], lengths=([128], [8]))
    held = predict_serving("olmoe-1b-7b", "h100", (1, 1, 1), traffic, arrivals=[0.0], lengths=([128], [8]),
                           kv_tokens=50_000)
    assert own["kv_tokens"] == own["model_kv_tokens"] > 100_000
    assert held["kv_tokens"] == 50_000 and held["model_kv_tokens"] == own["model_kv_tokens"]
