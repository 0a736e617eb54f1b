"""Chunked prefill: a prefill larger than the engine's token budget per step takes ⌈B·S/M⌉ steps,
each paying the per-pass fixed costs and the host's launch time."""

from __future__ import annotations

import pytest
import yaml

from perfmodel import predict, symbols
from perfmodel.paths import PROFILES_DIR
from perfmodel.phases import prefill_steps
from perfmodel.profile import load_profile


@pytest.mark.parametrize(("batch", "seq", "budget", "steps"), [
    (1, 128, 16384, 1), (64, 512, 16384, 2), (64, 256, 16384, 1), (3, 16384, 16384, 3), (5, 100, 128, 4)])
def test_prefill_steps_is_the_ceiling_of_tokens_over_the_budget(batch, seq, budget, steps):
    value = prefill_steps().subs({symbols.B: batch, symbols.S: seq, symbols.M_chunk: budget})
    assert int(value) == steps


def test_the_vllm_profile_chunks_at_vllms_default_budget():
    assert load_profile("vllm", "h200-sxm").options.prefill_chunk_tokens == 16384
    assert load_profile("roofline", "h200-sxm").options.prefill_chunk_tokens is None


def _profile_with_chunk(tmp_path, chunk, graph_tokens=0, piecewise=None):
    """The vllm profile with another chunk, and no captured graph (every step launched from
    the host) unless ``graph_tokens`` says otherwise; ``piecewise``: another host time per layer
    of a replayed step (s)."""
    data = yaml.safe_load((PROFILES_DIR / "h200-sxm-vllm.yaml").read_text())
    data["options"]["prefill_chunk_tokens"] = chunk
    data["options"]["cudagraph_max_tokens"] = graph_tokens
    if piecewise is not None:
        data["latency"]["piecewise_layer_s"] = piecewise
    path = tmp_path / f"chunk-{chunk}-graph-{graph_tokens}-piece-{piecewise}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_each_step_pays_the_host_floor(tmp_path):
    """OLMoE, B=4, S=128: 512 prompt tokens; the host floor of an eager prefill (~26 ms) is far
    above its GPU time, so 4 steps of 128 tokens take 4 floors (the call's admission of its 4
    requests, 4·request_s, once)."""
    admission = 4 * load_profile("vllm", "h200-sxm").latency.request_s
    assert admission > 0
    one = predict("olmoe-1b-7b", engine=_profile_with_chunk(tmp_path, 16384), batch=4, input_len=128,
                  output_len=2).metrics["ttft_s"]
    four = predict("olmoe-1b-7b", engine=_profile_with_chunk(tmp_path, 128), batch=4, input_len=128,
                   output_len=2).metrics["ttft_s"]
    assert four - admission == pytest.approx(4 * (one - admission), rel=0.02)
    # with graphs captured up to 128 tokens, each 128-token step is replayed: no floor at all,
    # its GPU time and, per step, the host's attention launches between the graph's pieces
    replayed, gpu_alone = (predict("olmoe-1b-7b", engine=_profile_with_chunk(tmp_path, 128, 128, piecewise),
                                   batch=4, input_len=128, output_len=2).metrics["ttft_s"] for piecewise in (None, 0.0))
    assert gpu_alone < 0.5 * one
    per_layer = load_profile("vllm", "h200-sxm").latency.piecewise_layer_s
    assert replayed - gpu_alone == pytest.approx(4 * 16 * per_layer, rel=1e-6)  # 4 steps × 16 layers


def test_chunking_never_shortens_a_prefill(tmp_path):
    for batch, seq in ((1, 2048), (16, 2048), (64, 512)):
        whole = predict("qwen3-30b-a3b", engine=_profile_with_chunk(tmp_path, 10**9), batch=batch,
                        input_len=seq, output_len=2).metrics["ttft_s"]
        chunked = predict("qwen3-30b-a3b", engine=_profile_with_chunk(tmp_path, 2048), batch=batch,
                          input_len=seq, output_len=2).metrics["ttft_s"]
        assert chunked >= whole
