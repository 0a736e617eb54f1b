"""Speculative decoding: the expected-tokens formula, the verify pass, the cost of a step, the
metrics that follow, sweeps over γ and α, and bad input (one line, exit 2 / InputError)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sympy as sp
import yaml

from perfmodel import predict, sweep
from perfmodel.commands import main
from perfmodel.errors import InputError
from perfmodel.paths import PROFILES_DIR
from perfmodel.phases import decode_substitutions, verify_substitutions
from perfmodel.profile import load_profile
from perfmodel.specs.model import load_model
from perfmodel.speculative import PLAIN_DECODE_ONLY, alpha, expected_tokens, gamma
from perfmodel.symbols import B, C, Cw, L, P, Pw, T, W

TARGET, DRAFT = "qwen3-30b-a3b", "qwen3-0.6b"
WORK = dict(batch=16, input_len=512, output_len=256)
SPEC = dict(spec_draft=DRAFT, spec_tokens=3)
T_STEP = load_profile("vllm", "h200-sxm").latency.per_step_s
T_DRAFT = load_profile("vllm", "h200-sxm").latency.draft_pass_s


# --- the formula ------------------------------------------------------------------------------

def test_expected_tokens_is_one_when_nothing_is_accepted():
    assert sp.simplify(expected_tokens().subs(alpha, 0)) == 1


@pytest.mark.parametrize("draft_tokens", [1, 3, 5])
def test_expected_tokens_tends_to_all_draft_tokens_plus_one(draft_tokens):
    assert sp.limit(expected_tokens().subs(gamma, draft_tokens), alpha, 1, "-") == draft_tokens + 1


def test_expected_tokens_at_a_value_worked_by_hand():
    # α = 0.5, γ = 3: 1 + 0.5 + 0.25 + 0.125 = 1.875
    assert expected_tokens().subs({alpha: sp.Rational(1, 2), gamma: 3}) == sp.Rational(15, 8)


# --- the verify pass --------------------------------------------------------------------------

def test_verify_pass_of_one_query_is_a_decode_step():
    decode, verify = decode_substitutions(), verify_substitutions(sp.Integer(1))
    for symbol in (T, P, C, Pw, Cw):
        assert sp.simplify(verify[symbol] - decode[symbol]) == 0


def test_verify_pass_counts_tokens_pairs_and_keys():
    subs = verify_substitutions(gamma + 1)
    at = {B: 16, L: 1000, gamma: 3, W: 4096}
    assert subs[T].subs(at) == 64  # B·(γ+1)
    assert subs[P].subs(at) == 4 * 1000 + 6  # 1000 + 1001 + 1002 + 1003
    assert subs[C].subs(at) == 1003
    assert subs[Pw].subs({**at, W: 500}) == 4 * 500  # every query beyond the window
    assert subs[Cw].subs({**at, W: 500}) == 500


# --- the cost and the metrics -----------------------------------------------------------------

@pytest.fixture(scope="module")
def plain():
    return predict(TARGET, **WORK)


@pytest.fixture(scope="module")
def spec():
    return predict(TARGET, **WORK, **SPEC, spec_accept=0.7)


def test_no_acceptance_is_slower_than_no_speculation(plain):
    none_accepted = predict(TARGET, **WORK, **SPEC, spec_accept=0.0)
    assert none_accepted.speculative["tokens_per_step"] == 1.0
    assert none_accepted.metrics["itl_s"] > plain.metrics["itl_s"]
    assert none_accepted.metrics["ttft_s"] > plain.metrics["ttft_s"]
    assert none_accepted.metrics["throughput_tok_s"] < plain.metrics["throughput_tok_s"]


def test_itl_falls_as_acceptance_rises():
    table = sweep(TARGET, {"spec_accept": np.linspace(0, 0.95, 20)}, **WORK, **SPEC)
    itl = table["itl_s"].to_numpy()
    assert np.all(np.diff(itl) < 0)
    assert np.allclose(table["spec_tokens_per_step"] * table["itl_s"], table["spec_step_s"], rtol=1e-12)


def test_a_step_is_the_drafts_passes_and_one_verify_pass(spec, tmp_path):
    """The draft part is γ decode passes of the draft at the request's mean context, less the
    engine's per-step time, which the verify pass alone pays, plus the proposer's host time per
    draft pass."""
    assert T_DRAFT > 0  # the calibrated vllm profile states it
    draft_alone = predict(DRAFT, **WORK)
    record = spec.speculative
    assert math.isclose(record["draft_s"], 3 * (draft_alone.metrics["decode_step_s"] - T_STEP + T_DRAFT),
                        rel_tol=1e-9)
    assert math.isclose(record["step_s"], record["draft_s"] + record["verify_s"], rel_tol=1e-12)
    assert math.isclose(spec.metrics["itl_s"], record["step_s"] / record["tokens_per_step"], rel_tol=1e-12)
    assert math.isclose(record["tokens_per_step"], (1 - 0.7**4) / 0.3, rel_tol=1e-12)
    # TTFT: the target's prefill, then inside its step the draft's prefill without what the step
    # already paid (its fixed GPU time, an eager step's host time and host time per sequence:
    # the draft alone under a profile without them, its dense layers launched at an MoE layer's
    # host time: speculative.DRAFT_LAUNCH) and γ − 1 draft passes at their GPU time (no proposer
    # host time)
    data = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    data["latency"].update(per_step_s=0.0, eager_step_s=0.0, eager_seq_s=0.0,
                           dense_layer_s=data["latency"]["eager_layer_s"])
    (tmp_path / "in-step.yaml").write_text(yaml.safe_dump(data))
    in_step = predict(DRAFT, **WORK, engine=str(tmp_path / "in-step.yaml"), gpu="h200-sxm", phase="prefill")
    target_alone = predict(TARGET, **WORK)  # its TTFT holds the call's requests, once
    passes = 2 * (draft_alone.metrics["decode_step_s"] - T_STEP)
    # 8,192 prompt tokens: launched from the host, every layer at an MoE layer's host time (the
    # step's own host times are zero in this profile)
    layers = load_model(DRAFT).n_layers
    assert in_step.metrics["prefill_launch_s"] == pytest.approx(layers * data["latency"]["eager_layer_s"], rel=1e-9)
    assert 0 < in_step.metrics["prefill_s"]
    assert math.isclose(spec.metrics["ttft_s"], target_alone.metrics["ttft_s"]
                        + in_step.metrics["prefill_s"] + passes, rel_tol=1e-9)
    one_more = predict(TARGET, **WORK, **{**SPEC, "spec_tokens": 4}, spec_accept=0.7)
    assert math.isclose(one_more.metrics["ttft_s"] - spec.metrics["ttft_s"],
                        draft_alone.metrics["decode_step_s"] - T_STEP, rel_tol=1e-9)
    m = spec.metrics
    assert math.isclose(m["e2e_s"], m["ttft_s"] + (WORK["output_len"] - 1) * m["itl_s"], rel_tol=1e-12)


def test_verify_pass_with_more_tokens_costs_more_than_a_decode_step(plain, spec):
    """γ+1 tokens per sequence touch more experts than one: a verify pass is dearer than the
    decode step it replaces, and cheaper than γ+1 of them."""
    verify, step = spec.speculative["verify_s"], plain.metrics["decode_step_s"]
    assert step < verify < 4 * step


def test_memory_adds_the_drafts_weights_and_kv_cache(plain, spec):
    draft_alone = predict(DRAFT, **WORK)
    for name in ("weights_bytes", "kv_cache_bytes"):
        assert math.isclose(spec.metrics[name], plain.metrics[name] + draft_alone.metrics[name], rel_tol=1e-12)
    assert spec.speculative["draft_weights_bytes"] == round(draft_alone.metrics["weights_bytes"])


def test_the_band_is_dropped_and_the_passes_replaced(spec):
    assert spec.provenance["error_band"] is None and spec.intervals() is None
    assert "speculative decoding was measured with one target model only" in spec.provenance["error_band_note"]
    assert {op["pass"] for op in spec.ops} == {"prefill", "verify", "draft prefill", "draft decode"}


def test_accepted_length_stands_for_tokens_per_step():
    tau = (1 - 0.7**4) / 0.3
    by_length = predict(TARGET, **WORK, **SPEC, spec_accepted_len=tau)
    by_rate = predict(TARGET, **WORK, **SPEC, spec_accept=0.7)
    assert math.isclose(by_length.metrics["throughput_tok_s"], by_rate.metrics["throughput_tok_s"], rel_tol=1e-12)
    assert by_length.speculative["spec_accepted_len"] == tau


def test_sweep_rows_equal_predictions():
    table = sweep(TARGET, {"spec_tokens": [1, 3], "spec_accept": [0.5, 0.9], "spec_draft": ["none", DRAFT]},
                  **WORK)
    assert len(table) == 8
    for _, row in table.iterrows():
        extra = {} if row.spec_draft == "none" else dict(
            spec_draft=row.spec_draft, spec_tokens=int(row.spec_tokens), spec_accept=float(row.spec_accept))
        p = predict(TARGET, **WORK, **extra)
        for name in ("ttft_s", "itl_s", "throughput_tok_s", "memory_bytes"):
            assert math.isclose(row[name], p.metrics[name], rel_tol=1e-9), name
        assert (row.spec_draft == "none") == math.isnan(row.spec_tokens_per_step)
        for name in PLAIN_DECODE_ONLY:  # the plain decode step's own numbers: NaN under speculation, as predict
            assert (row.spec_draft != "none") == math.isnan(row[name]) == math.isnan(p.metrics[name]), name


def test_cli_prints_the_step_split_and_json_carries_it(capsys):
    args = ["predict", TARGET, "-b", "16", "-s", "512", "-o", "256", "--spec-draft", DRAFT,
            "--spec-tokens", "3", "--spec-accept", "0.7"]
    main(args)
    out = capsys.readouterr().out
    assert "2.533 tokens per target step" in out and "draft" in out and "verify" in out
    main([*args, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["speculative"]["draft"] == DRAFT and data["speculative"]["spec_tokens"] == 3
    assert data["speculative"]["tokens_per_step"] == pytest.approx(2.533)
    assert data["pruning"] is None


# --- bad input --------------------------------------------------------------------------------

BAD = [
    ("alpha-one", dict(spec_draft=DRAFT, spec_tokens=3, spec_accept=1.0), "spec-accept must be in [0, 1)"),
    ("alpha-negative", dict(spec_draft=DRAFT, spec_tokens=3, spec_accept=-0.1), "spec-accept must be in [0, 1)"),
    ("gamma-zero", dict(spec_draft=DRAFT, spec_tokens=0, spec_accept=0.5), "spec-tokens must be a positive integer"),
    ("unknown-draft", dict(spec_draft="qwen9-1b", spec_tokens=3, spec_accept=0.5), "spec-draft: unknown model"),
    ("both", dict(spec_draft=DRAFT, spec_tokens=3, spec_accept=0.5, spec_accepted_len=2.0), "not both"),
    ("neither", dict(spec_draft=DRAFT, spec_tokens=3), "needs spec-accept"),
    ("no-draft", dict(spec_tokens=3, spec_accept=0.5), "need a draft model"),
    ("no-tokens", dict(spec_draft=DRAFT, spec_accept=0.5), "needs spec-tokens"),
    ("length-too-long", dict(spec_draft=DRAFT, spec_tokens=3, spec_accepted_len=4.5), "spec-accepted-len must be in [1, 4]"),
    ("other-vocabulary", dict(spec_draft="olmoe-1b-7b", spec_tokens=3, spec_accept=0.5), "vocabulary"),
    ("pipeline", dict(spec_draft=DRAFT, spec_tokens=3, spec_accept=0.5, pp=2), "pp > 1"),
]


@pytest.mark.parametrize("kwargs, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_input_error(kwargs, fragment):
    with pytest.raises(InputError) as info:
        predict(TARGET, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _flags(kwargs: dict) -> list[str]:
    return [x for k, v in kwargs.items() for x in (f"--{k.replace('_', '-')}", str(v))]


@pytest.mark.parametrize("kwargs, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(kwargs, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", TARGET, *_flags(kwargs)])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith("perfmodel: error: ") and fragment in err


@pytest.mark.parametrize("grid, fixed, fragment", [
    ({"spec_accept": [0.5, 1.0]}, dict(spec_draft=DRAFT, spec_tokens=3), "spec-accept must be in [0, 1)"),
    ({"spec_tokens": [0, 1]}, dict(spec_draft=DRAFT, spec_accept=0.5), "spec_tokens' must be positive"),
    ({"spec_tokens": [1, 3]}, dict(spec_accept=0.5), "needs a draft model"),
    ({"spec_tokens": [1, 3]}, dict(spec_draft=DRAFT, spec_accepted_len=3.0), "spec-accepted-len must be in [1, 2]"),
    ({"spec_accept": [0.5]}, dict(spec_draft=DRAFT, spec_tokens=3, spec_accept=0.7), "both swept"),
    ({"tp": [1, 2]}, dict(spec_draft=DRAFT, spec_tokens=3, spec_accept=0.7), "tp is a fixed value"),
    ({"spec_draft": ["none", "nope-7b"]}, dict(spec_tokens=3, spec_accept=0.7), "spec-draft: unknown model"),
])
def test_bad_sweep_input_raises_input_error(grid, fixed, fragment):
    with pytest.raises(InputError) as info:
        sweep(TARGET, grid, **fixed)
    assert fragment in str(info.value)
