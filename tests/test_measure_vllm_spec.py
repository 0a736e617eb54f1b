"""Speculative decoding in the vLLM runner: settings, engine arguments, counters, and the model
predicting such a row with the acceptance the engine counted (no vLLM needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest

from perfmodel.measuring import vllm_backend as vb
from perfmodel.measuring.compare import row_speculative
from perfmodel.measuring.points import build_points, parse_phases


def _points(**settings):
    return build_points(["qwen3-30b-a3b"], [1, 16], parse_phases("128"), backend="vllm",
                        settings=vb.point_settings(**settings), experts_impl="vllm_fused_moe")


def test_the_draft_and_its_tokens_are_part_of_the_point_id():
    plain, spec = _points()[0], _points(spec_draft="qwen3-1.7b", spec_tokens=4)[0]
    assert "spec=" not in plain.point_id  # ids of rows measured without it are unchanged
    assert "spec=qwen3-1.7b:4" in spec.point_id
    assert vb.spec_setting(dict(spec.settings)) == ("qwen3-1.7b", 4)
    assert vb.spec_setting(dict(plain.settings)) is None
    for bad in ({"spec_draft": "qwen3-1.7b"}, {"spec_tokens": 4}, {"spec_draft": "qwen3-1.7b", "spec_tokens": 0}):
        with pytest.raises(ValueError):
            vb.point_settings(**bad)


def test_engine_arguments_and_the_drafts_config(tmp_path):
    points = _points(spec_draft="qwen3-1.7b", spec_tokens=3)
    cfg = vb.write_model_dir(points, tmp_path)
    draft = json.loads((tmp_path / vb.DRAFT_DIR / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_moe" and draft["architectures"] == ["Qwen3ForCausalLM"]
    assert draft["vocab_size"] == cfg["vocab_size"]  # the draft proposes the target's tokens
    kw = vb.engine_kwargs(points, tmp_path)
    assert kw["speculative_config"] == {"method": "draft_model", "model": str(tmp_path / vb.DRAFT_DIR),
                                        "num_speculative_tokens": 3}
    assert "speculative_config" not in vb.engine_kwargs(_points(), tmp_path)
    # the verify pass of B = 16 holds 16·(γ+1) = 64 tokens: graphs are captured up to it
    assert max(kw["compilation_config"]["cudagraph_capture_sizes"]) >= 64
    assert max(vb.engine_kwargs(_points(), tmp_path)["compilation_config"]["cudagraph_capture_sizes"]) == 16
    plain = tmp_path / "plain"
    plain.mkdir()
    vb.write_model_dir(_points(), plain)
    assert (plain / "config.json").exists() and not (plain / vb.DRAFT_DIR).exists()


def test_a_set_acceptance_draws_each_token_at_alpha(tmp_path):
    points = _points(spec_draft="qwen3-1.7b", spec_tokens=3, spec_accept=0.5)
    assert "spec_accept=0.5" in points[0].point_id
    kw = vb.engine_kwargs(points, tmp_path)["speculative_config"]
    assert kw["rejection_sample_method"] == "synthetic"
    assert kw["synthetic_acceptance_rates"] == pytest.approx([0.5, 0.25, 0.125])  # unconditional: α^i
    tau = 1 + sum(kw["synthetic_acceptance_rates"])  # mean tokens per step = (1 − α^(γ+1)) / (1 − α)
    assert tau == pytest.approx((1 - 0.5 ** 4) / (1 - 0.5))
    for bad in ({"spec_accept": 0.5}, {"spec_draft": "qwen3-1.7b", "spec_tokens": 2, "spec_accept": 1.5}):
        with pytest.raises(ValueError):
            vb.point_settings(**bad)


def test_acceptance_from_the_engines_counters():
    def llm(drafts, tokens, accepted):
        return NS(get_metrics=lambda: [NS(name="vllm:spec_decode_num_drafts_total", value=drafts),
                                       NS(name="vllm:spec_decode_num_draft_tokens", value=tokens),
                                       NS(name="vllm:spec_decode_num_accepted_tokens", value=accepted),
                                       NS(name="vllm:num_requests_running", value=3)])

    before, after = vb.spec_counters(llm(10, 40, 4)), vb.spec_counters(llm(110, 440, 104))
    fields = vb.spec_fields(before, after)
    assert (fields["spec_drafts"], fields["spec_draft_tokens"], fields["spec_accepted_tokens"]) == (100, 400, 100)
    assert fields["spec_acceptance"] == pytest.approx(0.25)
    assert fields["spec_mean_accepted_len"] == pytest.approx(2.0)
    broken = NS(get_metrics=lambda: (_ for _ in ()).throw(RuntimeError("no stats")))
    assert vb.spec_counters(broken) == dict.fromkeys(vb.SPEC_COUNTERS.values(), 0)
    assert vb.spec_fields(before, before)["spec_acceptance"] is None


def test_a_speculative_row_is_predicted_at_its_measured_acceptance():
    point = _points(spec_draft="qwen3-1.7b", spec_tokens=4)[1]
    row = {"point_id": point.point_id, "spec_acceptance": 0.44, "spec_mean_accepted_len": 2.77}
    assert row_speculative(row) == {"spec_draft": "qwen3-1.7b", "spec_tokens": 4, "spec_accepted_len": 2.77}
    assert row_speculative({"point_id": point.point_id})["spec_accept"] == 0.0  # nothing counted
    assert row_speculative({"point_id": _points()[0].point_id}) == {}


def test_spec_flags_are_checked(capsys):
    from perfmodel.commands import main

    cases = [(["--spec-draft", "qwen3-1.7b"], "needs both --spec-draft and --spec-tokens"),
             (["--spec-draft", "qwen3-1.7b", "--spec-tokens", "0"], "--spec-tokens must be a positive integer"),
             (["--spec-draft", "no-such-draft", "--spec-tokens", "2"], "unknown model"),
             (["--backend", "hf", "--spec-draft", "qwen3-1.7b", "--spec-tokens", "2"], "apply to --backend vllm"),
             (["--spec-acceptance", "0.5"], "needs --spec-draft and --spec-tokens"),
             (["--spec-draft", "qwen3-1.7b", "--spec-tokens", "2", "--spec-acceptance", "2"], "must be in [0, 1]")]
    for extra, message in cases:
        args = ["measure", "qwen3-30b-a3b", *(["--backend", "vllm"] if "--backend" not in extra else []), *extra]
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
