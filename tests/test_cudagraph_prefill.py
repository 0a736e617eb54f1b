"""A prefill that fits the largest captured CUDA graph is replayed: no host launch floor."""

from __future__ import annotations

import pytest

from perfmodel.errors import InputError
from perfmodel.measuring.compare import model_workload, row_graph_tokens
from perfmodel.prediction import Workload, predict
from perfmodel.profile import load_profile
from perfmodel.specs.model import load_model


def _host_floor(model: str) -> float:
    """N_layers·t_eager_layer + t_eager_step + t_eager_seq (one sequence) of the h200 vllm profile, s."""
    latency = load_profile("vllm", "h200-sxm").latency
    return load_model(model).n_layers * latency.eager_layer_s + latency.eager_step_s + latency.eager_seq_s


def _ttft(graph_tokens, batch: int, input_len: int) -> float:
    return predict("olmoe-1b-7b", gpu="h200", engine="vllm", phase="prefill", batch=batch,
                   input_len=input_len, graph_tokens=graph_tokens).metrics["ttft_s"]


def test_the_vllm_profile_states_vllms_default_capture_cap():
    assert load_profile("vllm", "h200-sxm").options.cudagraph_max_tokens == 512


def test_a_prefill_within_the_largest_graph_pays_no_host_floor():
    floor = _host_floor("olmoe-1b-7b")
    eager = _ttft(0, 1, 128)  # no graph captured: the host launches every layer
    request = load_profile("vllm", "h200-sxm").latency.request_s  # the call's one request
    assert eager == pytest.approx(floor + request, rel=1e-9)  # a small prefill is host-bound
    replayed = _ttft(128, 1, 128)  # 128 tokens fit a captured graph of 128
    assert replayed < 0.5 * floor
    assert _ttft(None, 1, 128) == pytest.approx(replayed)  # the profile's cap (512) holds it too
    # one token more than the largest graph: launched from the host again
    assert _ttft(127, 1, 128) == pytest.approx(eager)
    # a prefill above the cap is launched whatever the cap
    assert _ttft(512, 4, 256) == pytest.approx(_ttft(0, 4, 256))


def test_graph_tokens_is_checked():
    assert Workload(graph_tokens=0).graph_tokens == 0
    assert Workload(graph_tokens=512.0).graph_tokens == 512
    for bad in (-1, 1.5, True, "512"):
        with pytest.raises(InputError, match="graph-tokens"):
            Workload(graph_tokens=bad)


def test_a_rows_capture_sizes_set_its_graph_tokens():
    row = {"batch": 16, "engine_detail": {"enforce_eager": False, "resolved": {
        "cudagraph_mode": "FULL_AND_PIECEWISE", "cudagraph_capture_sizes": [1, 2, 4, 8, 16]}}}
    assert row_graph_tokens(row) == 16
    assert model_workload(row)["graph_tokens"] == 16
    assert row_graph_tokens({"engine_detail": {"compilation_config": {"cudagraph_capture_sizes": [1, 64]}}}) == 64
    assert row_graph_tokens({"engine_detail": {"enforce_eager": True}}) == 0
    assert row_graph_tokens({"engine_detail": {"resolved": {"cudagraph_mode": "NONE"}}}) == 0
    assert row_graph_tokens({"engine": {"name": "hf"}}) is None  # the profile's default
