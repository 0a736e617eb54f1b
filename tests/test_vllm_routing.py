"""The routing probe of the vllm backend: which experts a router picks, and the skew it implies.

vLLM is not installed here: the end-to-end case runs the backend against a stand-in ``vllm``
package whose engine is a tiny torch model with routers named like vLLM's (``*.mlp.gate``).
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from perfmodel.measuring import vllm_routing
from perfmodel.measuring.vllm_routing import effective_skew


class _Moe(torch.nn.Module):
    def __init__(self, hidden: int, experts: int, collapse: bool) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(hidden, experts, bias=False)
        if collapse:  # equal logits for every token: top-k ties resolve alike
            torch.nn.init.zeros_(self.gate.weight)

    def forward(self, x):
        return self.gate(x)


def _model(collapse: bool, layers: int = 3, hidden: int = 16, experts: int = 8):
    torch.manual_seed(0)
    return torch.nn.ModuleDict({f"l{i}": torch.nn.ModuleDict({"mlp": _Moe(hidden, experts, collapse)})
                                for i in range(layers)})


def _run(model, tokens: int, hidden: int = 16) -> None:
    x = torch.randn(tokens, hidden)
    for layer in model.values():
        layer["mlp"](x)


def test_uniform_and_collapsed_routers_give_skew_zero_and_one():
    for collapse, expected in ((False, 0.0), (True, 1.0)):
        model = _model(collapse)
        assert vllm_routing.install(model, num_experts=8, top_k=2) == 3
        _run(model, 64)
        records = vllm_routing.collect(model)
        assert len(records) == 3 and all(src == "logits" and t == 64 for src, t, _, _ in records)
        (summary,) = vllm_routing.summarize(records, 8, 2)
        assert summary["router_calls"] == 3
        if collapse:
            assert summary["distinct_experts"] == 2 and summary["hottest_share"] == 0.5
        else:
            assert summary["distinct_experts"] == 8
        assert summary["skew"] == pytest.approx(expected, abs=0.05)
        _run(model, 64)
        assert vllm_routing.collect(model) == []  # hooks removed


class _Router:
    """Stand-in for vLLM's fused-MoE router: softmax of the logits in their own dtype, then top-k,
    and the capture callback vLLM calls with the selected ids."""

    def __init__(self, top_k: int) -> None:
        self.top_k, self.capture_fn = top_k, None

    def set_capture_fn(self, fn) -> None:
        self.capture_fn = fn

    def select(self, logits):
        ids = torch.softmax(logits, dim=-1).topk(self.top_k, dim=-1).indices
        if self.capture_fn is not None:
            self.capture_fn(ids)
        return ids


class _TinyBf16Moe(torch.nn.Module):
    """A layer with vLLM's dummy weights (uniform ±1e-3) and bf16 arithmetic."""

    def __init__(self, hidden: int = 2048, experts: int = 64, top_k: int = 6) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(hidden, experts, bias=False, dtype=torch.bfloat16)
        torch.nn.init.uniform_(self.gate.weight, -1e-3, 1e-3)
        self.experts = torch.nn.Module()
        self.experts.router = _Router(top_k)

    def forward(self, x):
        return self.experts.router.select(self.gate(x))


def test_selected_ids_tie_where_the_bf16_softmax_ties_though_the_logits_differ():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"l0": _TinyBf16Moe()})
    assert vllm_routing.install(model, num_experts=64, top_k=6) == 1
    hidden = torch.rand(64, 2048, dtype=torch.bfloat16) * 3.4 - 1.7  # a normed dummy embedding
    hidden = hidden * (torch.rand(2048, dtype=torch.bfloat16) * 2e-3 - 1e-3)  # × dummy norm weight
    model["l0"](hidden)
    by_source = {r["source"]: r for r in vllm_routing.summarize(vllm_routing.collect(model), 64, 6)}
    assert by_source["selected"]["distinct_experts"] == 6 and by_source["selected"]["skew"] == 1.0
    assert by_source["logits"]["distinct_experts"] > 50 and by_source["logits"]["skew"] < 0.1
    assert model["l0"].experts.router.capture_fn is None  # callback removed by collect


def test_a_router_bias_outweighs_the_dummy_logits_and_every_token_picks_the_same_experts():
    """gpt-oss's router has a bias: under vLLM's dummy weights (every float uniform in ±1e-3) it
    is tens of times the token-dependent part W·x of the logits (a normed hidden state times a
    dummy norm weight, ~6e-4 per element, against ±1e-3 weights over 2,880 inputs: ~1.5e-5), so
    the top-4 of 32 is the bias's top-4 for every token: skew 1, whatever the hidden states."""
    torch.manual_seed(0)
    hidden, experts, top_k, tokens = 2880, 32, 4, 64
    gate = torch.nn.Linear(hidden, experts, bias=True, dtype=torch.bfloat16)
    torch.nn.init.uniform_(gate.weight, -1e-3, 1e-3)
    torch.nn.init.uniform_(gate.bias, -1e-3, 1e-3)
    x = torch.randn(tokens, hidden, dtype=torch.bfloat16)  # normed: unit RMS per row
    x = x * (torch.rand(hidden, dtype=torch.bfloat16) * 2e-3 - 1e-3)  # × dummy norm weight
    with torch.no_grad():
        logits = gate(x).float()
        token_part = x.float() @ gate.weight.float().T
    assert gate.bias.float().abs().mean() > 20 * token_part.abs().mean()
    picked = torch.topk(logits, top_k, dim=-1).indices
    assert len(torch.unique(picked)) <= top_k + 1  # uniform routing: ~32 of 32 at 64 tokens
    assert effective_skew(tokens, float(len(torch.unique(picked))), experts, top_k) > 0.95
    assert len(torch.unique(torch.topk(token_part, top_k, dim=-1).indices)) > 28  # W·x alone spreads


def test_skew_solves_the_models_distinct_experts():
    from perfmodel import symbols
    from perfmodel.ops.moe import distinct_experts

    for sigma in (0.2, 0.5, 0.9):
        distinct = float(distinct_experts(symbols.T).subs(
            {symbols.T: 16, symbols.E: 64, symbols.k: 6, symbols.sigma: sigma}))
        assert effective_skew(16, distinct, 64, 6) == pytest.approx(sigma, abs=1e-4)
    assert effective_skew(16, 64.0, 64, 6) == 0.0 and effective_skew(16, 3.0, 64, 6) == 1.0


_FAKE_VLLM = '''
import dataclasses, time
from types import SimpleNamespace as NS
import torch

class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw

class _Gate(torch.nn.Module):
    def __init__(self, experts):
        super().__init__()
        self.w = torch.nn.Linear(8, experts, bias=False)
        torch.nn.init.normal_(self.w.weight)
    def forward(self, x):
        return self.w(x), None

class LLM:
    def __init__(self, **kw):
        self.kw = kw
        cfg = __import__("json").load(open(kw["model"] + "/config.json"))
        experts = cfg.get("num_experts") or cfg.get("num_local_experts")
        self.model = torch.nn.ModuleDict({f"layer{i}": torch.nn.ModuleDict({"mlp": torch.nn.ModuleDict(
            {"gate": _Gate(experts)})}) for i in range(2)})
        self.llm_engine = NS(vllm_config=NS(scheduler_config=NS(max_num_batched_tokens=16384)))
    def apply_model(self, func):
        return [func(self.model)]
    def generate(self, prompts, params, use_tqdm=False):
        n = params.kw["max_tokens"]
        rows = [len(prompts[0]["prompt_token_ids"]) * len(prompts)] + [len(prompts)] * (n - 1)
        for step, t in enumerate(rows):  # greedy decode: every sequence feeds the same token
            x = torch.randn(t, 8) if step == 0 or params.kw["temperature"] > 0 else torch.ones(t, 8)
            for layer in self.model.values():
                layer["mlp"]["gate"](x)
        return [NS(outputs=[NS(token_ids=[1] * n)], metrics=None) for _ in prompts]
'''

_FAKE_ARGS = '''
import dataclasses
@dataclasses.dataclass
class EngineArgs:
    model: str = ""
    enforce_eager: bool = False
    moe_backend: str = "auto"
    enable_prefix_caching: bool = False
'''


def test_routing_probe_end_to_end_with_a_stand_in_engine(tmp_path, monkeypatch):
    pkg = tmp_path / "fake" / "vllm"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(_FAKE_VLLM))
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "arg_utils.py").write_text(textwrap.dedent(_FAKE_ARGS))
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    from perfmodel.measuring.measure import main

    out = tmp_path / "routing.jsonl"
    rc = main(["olmoe-1b-7b", "--backend", "vllm", "--routing-probe", "--allow-cpu", "--batch", "4",
               "--input-len", "8", "--layers", "2", "--out", str(out)])
    assert rc == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert row["status"] == "ok" and "probe=routing" in row["point_id"]
    assert row["routers_hooked"] == [2] and row["engine_detail"]["enforce_eager"] is True
    assert "sampling=random" in row["point_id"] and row["routing"] == row["routing_by_sampling"]["random"]
    greedy = {r["tokens"]: r for r in row["routing_by_sampling"]["greedy"]}
    sampled = {r["tokens"]: r for r in row["routing_by_sampling"]["random"]}
    assert set(greedy) == set(sampled) == {32, 4}  # the prefill (B*S) and the decode steps (B)
    assert greedy[4]["router_calls"] == 2 * 7  # two routers, O - 1 decode steps
    assert greedy[4]["distinct_experts"] == 8 and greedy[4]["skew"] == 1.0  # OLMoE: top-8 of 64, one token
    assert sampled[4]["distinct_experts"] > 8 and sampled[4]["skew"] < 1.0
    assert greedy[32]["skew"] < 1.0  # distinct prompt tokens


def test_the_routing_floor_reads_decode_steps_only():
    """A row of one output token has no decode step (its itl_ms is 0): it never flags its group;
    a decode step faster than reading uniform routing's experts does."""
    from perfmodel.measuring.routing_floor import floor_ratios

    row = {"status": "ok", "model": "gpt-oss-20b", "batch": 128, "input_len": 16, "output_len": 1,
           "itl_ms": 0.0, "engine": {"quantization": "mxfp4"}}
    assert floor_ratios([row], "h200-sxm") == {}
    fast = {**row, "output_len": 16, "itl_ms": 0.5}
    ratios = floor_ratios([fast], "h200-sxm")
    assert list(ratios) == [("gpt-oss-20b", "mxfp4-moe", "model")] and 0 < ratios[list(ratios)[0]] < 1
