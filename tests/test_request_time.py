"""An offline batch call's host time per request (``latency.request_s``, symbol t_req): TTFT and
E2E pay B of them once, the passes and the serving planner's step times none."""

from __future__ import annotations

import math

import pytest

from perfmodel import symbols as s
from perfmodel.planning.steptime import build_step_times
from perfmodel.prediction import Workload, evaluate, request_metrics
from perfmodel.profile import load_profile
from perfmodel.specs.hardware import load_gpu
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import load_model


def _without_request_time(profile):
    return profile.model_copy(update={"latency": profile.latency.model_copy(update={"request_s": 0.0})})


def test_ttft_and_e2e_pay_each_requests_host_time_once():
    profile = load_profile("vllm", "h200-sxm")
    t_req = profile.latency.request_s
    assert t_req > 0
    model, gpu = load_model("mixtral-8x7b"), load_gpu("h200-sxm")
    w = Workload(batch=64, input_len=128, output_len=16)
    with_term, bare = (evaluate(model, gpu, p, w, "request").metrics
                       for p in (profile, _without_request_time(profile)))
    assert with_term["ttft_s"] - bare["ttft_s"] == pytest.approx(64 * t_req, rel=1e-9)
    assert with_term["e2e_s"] - bare["e2e_s"] == pytest.approx(64 * t_req, rel=1e-9)
    assert with_term["itl_s"] == bare["itl_s"]
    assert with_term["request_host_s"] == pytest.approx(64 * t_req, rel=1e-12) and bare["request_host_s"] == 0
    bare_profile = _without_request_time(profile)
    prefill, bare_prefill = (evaluate(model, gpu, p, w, "prefill").metrics for p in (profile, bare_profile))
    assert prefill["ttft_s"] - bare_prefill["ttft_s"] == pytest.approx(64 * t_req, rel=1e-9)
    decode, bare_decode = (evaluate(model, gpu, p, w, "decode").metrics for p in (profile, bare_profile))
    assert decode["itl_s"] == bare_decode["itl_s"] and math.isnan(decode["request_host_s"])
    # the formula: TTFT = prefill pass + B·t_req
    ttft = request_metrics("prefill", {"prefill_s": s.S})["ttft_s"]
    assert ttft == s.S + s.B * s.t_req


def test_the_hf_and_roofline_profiles_have_no_request_time():
    for engine in ("hf", "roofline"):
        assert load_profile(engine, "h200-sxm").latency.request_s == 0.0


def test_the_serving_planners_step_times_do_not_hold_it():
    """A serving engine admits each request as it arrives, beside its steps."""
    profile = load_profile("vllm", "h200-sxm")
    kw = dict(max_tokens=4096, max_seqs=64, max_context=2048)
    a, b = (build_step_times(load_model("olmoe-1b-7b"), load_gpu("h200-sxm"), p, "bf16", Layout(1, 1, 1), **kw)
            for p in (profile, _without_request_time(profile)))
    assert a.floor_s == b.floor_s and a.fixed_s == b.fixed_s and a.piecewise_s == b.piecewise_s
    assert (a.pre_s_per_token == b.pre_s_per_token).all() and (a.token_s == b.token_s).all()


def test_the_terminal_report_shows_the_calls_share_of_ttft(capsys):
    from perfmodel.commands import main

    assert main(["predict", "olmoe-1b-7b", "-b", "64", "-s", "128", "-o", "16"]) in (0, None)
    out = capsys.readouterr().out
    assert "of it, the call's 64 requests on the host" in out
    assert main(["predict", "olmoe-1b-7b", "--engine", "hf", "-b", "64", "-s", "128", "-o", "16"]) in (0, None)
    assert "requests on the host" not in capsys.readouterr().out


def test_the_terminal_report_says_whether_the_hosts_time_sets_a_decode_step(capsys):
    """Under ITL, the host's time for the step's B sequences (``decode_host_s``), and whether it
    sets the step: at B = 1,024 OLMoE-1B-7B's decode step is the host's, at B = 16 Mixtral's is
    the GPU's; the hf profile has no such time."""
    from perfmodel.commands import main

    assert main(["predict", "olmoe-1b-7b", "-b", "1024", "-s", "16", "-o", "32"]) in (0, None)
    assert "the host's time for its 1024 sequences, which sets it" in capsys.readouterr().out
    assert main(["predict", "mixtral-8x7b", "-b", "16"]) in (0, None)
    assert "the host's time for its 16 sequences, hidden behind the GPU's" in capsys.readouterr().out
    assert main(["predict", "olmoe-1b-7b", "--engine", "hf", "-b", "1024", "-s", "16", "-o", "32"]) in (0, None)
    assert "the host's time for its" not in capsys.readouterr().out
