"""Speculative decoding with a draft model (as vLLM runs it), a what-if of the cost model.

One speculative step of the fixed batch of B sequences:

1. the draft proposes γ tokens per sequence: γ decode passes of the draft model at batch B
   (its own op graph, on the same GPUs, under the same engine profile, dtype, quantization
   and MoE implementation, at the target's context);
2. the target checks them in one verify pass over γ+1 tokens per sequence, T = B·(γ+1)
   (:func:`perfmodel.phases.verify_substitutions`): more tokens per pass touch more distinct
   experts;
3. the engine's per-step time (scheduling and sampling, ``t_step``) is paid once per step:
   the verify pass carries it; each draft pass pays the proposer's own host time instead,
   ``t_draft`` (preparing the pass's inputs and sampling its token between graph replays).

With every draft token accepted with probability α, independently, a step yields
τ = (1 − α^(γ+1))/(1 − α) tokens per sequence in expectation (Leviathan et al., 2023): the
accepted prefix and one token of the target's own. A mean accepted length measured on real
traffic (vLLM's "mean acceptance length", tokens per step with the target's own included)
may be given as τ instead. The effective ITL is the step time over τ; E2E and throughputs
follow from it as without speculation (:func:`perfmodel.prediction.request_metrics`). The
prefill's engine step proposes too: after the target's prefill the draft prefills the prompt
and makes γ − 1 more decode passes, inside that step, so TTFT adds the draft's prefill pass
without what the target's step already paid (a step's fixed GPU time ``t_step``, an eager
step's host time and its host time per sequence) and γ − 1 draft passes at their GPU time,
without the proposer's host time ``t_draft`` (vLLM 0.26 on both lent GPUs: at B = 16 the
measured TTFT rose by 2.4–3.1 ms per draft token from γ = 2 to 8, about one such pass of the
1.7B draft). The draft's weights and KV cache (same context, same dtype) add to each GPU's
memory; the activation peak is the larger of the two models'.

Simplifications, stated: the draft's γ passes are costed at the step's context L (its j-th
pass really attends L + j keys); acceptance does not depend on the position in the batch
or the context; the target's KV cache keeps S + O tokens (the γ speculative slots beyond
are not counted). The draft runs on the target's tensor-parallel GPUs (tp of the target,
no ep); pipeline parallelism is refused.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

from perfmodel import symbols as s
from perfmodel.errors import InputError, PerfModelError
from perfmodel.graph import GraphOptions, build_graph
from perfmodel.minmax import Max
from perfmodel.phases import decode_mean_substitutions, decode_substitutions, verify_substitutions
from perfmodel.prediction import (
    METRICS, CompiledModel, Prediction, Workload, check_count, compile_cached, compile_model,
    graph_options, numeric_values, op_rows, options_key, pass_time, request_metrics, structure_key,
)
from perfmodel.profile import EngineProfile
from perfmodel.specs.hardware import GPUSpec
from perfmodel.specs.model import ModelSpec, load_model

gamma = sp.Symbol("gamma", positive=True, integer=True)  #: draft tokens proposed per step, γ
alpha = sp.Symbol("alpha", nonnegative=True)  #: probability that one draft token is accepted, α
tau = sp.Symbol("tau", positive=True)  #: tokens per sequence per step (expected), τ

#: The numbers the speculative metrics are made of, each from a compiled pass of the cost
#: model: pass times (s) of the target (prefill, verify) and of the draft (prefill inside the
#: target's step, :data:`IN_STEP`; one decode pass), and per-GPU memory (bytes) of each.
PARTS = {name: sp.Symbol(name, nonnegative=True) for name in (
    "prefill_s", "verify_s", "draft_prefill_step_s", "draft_step_s",
    "weights_bytes", "kv_cache_bytes", "activation_bytes",
    "draft_weights_bytes", "draft_kv_cache_bytes", "draft_activation_bytes")}

#: Metrics a speculative prediction adds (NaN in a prefill): expected tokens per step, the time
#: of one step (s) and its split into the draft's γ passes and the target's verify pass.
SPEC_METRICS = ("spec_tokens_per_step", "spec_step_s", "spec_draft_s", "spec_verify_s")

#: What the draft's prefill inside the target's prefill step does not pay again: the step's
#: fixed GPU time, an eager step's host time and its host time per sequence (symbol values, s).
IN_STEP = {s.t_step.name: 0.0, s.t_eager_step.name: 0.0, s.t_eager_seq.name: 0.0}
#: What the draft's prefill pays instead: the proposer launches each of its layers, dense or not,
#: at an MoE layer's host time (t_dense_launch = t_eager_layer), not at the time a dense layer of
#: the engine's own compiled prefill costs: the speculative TTFTs measured at B = 1 (held out)
#: stand 25–110 ms above the target's prefill with a 28-layer draft, far above its kernels.
DRAFT_LAUNCH = (s.t_dense_launch.name, s.t_eager_layer.name)

#: Metrics of the plain decode step that no part of a speculative step is: its host floor, its
#: graph's batch (the verify pass runs B·(γ+1) tokens) and its kernel time (the step is a verify
#: and draft passes). A speculative prediction gives them as NaN.
PLAIN_DECODE_ONLY = ("decode_host_s", "decode_graph_batch", "decode_kernels_s")

#: Speculative-decoding options by name (``--spec-draft`` …; ``spec_draft=`` in Python).
SPEC_KEYS = ("spec_draft", "spec_tokens", "spec_accept", "spec_accepted_len")

_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def expected_tokens(acceptance: sp.Expr = alpha, draft_tokens: sp.Expr = gamma) -> sp.Expr:
    """Expected tokens per sequence per step, (1 − α^(γ+1))/(1 − α), for 0 ≤ α < 1: 1 at
    α = 0, γ + 1 as α → 1."""
    return (1 - acceptance ** (draft_tokens + 1)) / (1 - acceptance)


def metric_expressions(phase: str) -> dict[str, sp.Expr]:
    """The metrics of a speculative prediction in :data:`PARTS`, τ, γ, t_step, t_draft and B, S, O.

    Step time = γ·(draft pass − t_step + t_draft) + verify pass; the effective ITL
    (``decode_step_s``) is the step time over τ. TTFT's prefill = target prefill + the draft's
    prefill inside that step + (γ − 1)·(draft pass − t_step) (phase request; a prefill alone has
    no decode pass to cost them by).
    """
    p = PARTS
    draft = gamma * (p["draft_step_s"] - s.t_step + s.t_draft)
    step = draft + p["verify_s"]
    passes: dict[str, sp.Expr] = {}
    if phase != "decode":
        proposed = (gamma - 1) * (p["draft_step_s"] - s.t_step) if phase == "request" else 0
        passes["prefill_s"] = p["prefill_s"] + p["draft_prefill_step_s"] + proposed
    if phase != "prefill":
        passes["decode_step_s"] = step / tau
    out = {**passes, **request_metrics(phase, passes)}
    if phase != "prefill":
        out.update(spec_tokens_per_step=tau, spec_step_s=step, spec_draft_s=draft,
                   spec_verify_s=p["verify_s"])
    out.update(weights_bytes=p["weights_bytes"] + p["draft_weights_bytes"],
               kv_cache_bytes=p["kv_cache_bytes"] + p["draft_kv_cache_bytes"],
               activation_bytes=Max(p["activation_bytes"], p["draft_activation_bytes"]))
    out["memory_bytes"] = out["weights_bytes"] + out["kv_cache_bytes"] + out["activation_bytes"]
    return out


@functools.cache
def _metrics_function(phase: str) -> tuple[tuple[str, ...], tuple[str, ...], Any]:
    """(argument names, output names, numpy function) of :func:`metric_expressions`."""
    exprs = metric_expressions(phase)
    args = sorted(set().union(*[e.free_symbols for e in exprs.values()]), key=lambda x: x.name)
    return tuple(a.name for a in args), tuple(exprs), sp.lambdify(args, list(exprs.values()), "numpy")


@functools.cache
def _tokens_function() -> Any:
    return sp.lambdify([alpha, gamma], expected_tokens(), "numpy")


def tokens_per_step(acceptance: Any, draft_tokens: Any) -> Any:
    """:func:`expected_tokens` at numbers or numpy arrays of α and γ."""
    return _tokens_function()(acceptance, draft_tokens)


@dataclass(frozen=True)
class SpecDecoding:
    """Speculative decoding: the ``draft`` model (zoo name, config.json path or ModelSpec),
    ``tokens`` = γ draft tokens per step, and either ``accept`` = α, the acceptance rate of
    one draft token in [0, 1), or ``accepted_len`` = τ, the mean tokens per step (the
    target's own token included) in [1, γ + 1]."""

    draft: str | ModelSpec
    tokens: int
    accept: float | None = None
    accepted_len: float | None = None

    @property
    def draft_name(self) -> str:
        return self.draft.name if isinstance(self.draft, ModelSpec) else str(self.draft)

    def tokens_per_step(self) -> float:
        """τ: the accepted length given, else (1 − α^(γ+1))/(1 − α)."""
        if self.accepted_len is not None:
            return self.accepted_len
        return float(tokens_per_step(self.accept, self.tokens))


def _fraction(name: str, value: Any, low: float, high: float, high_open: bool) -> float:
    """A number in [low, high) or [low, high], as a float."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    inside = number and low <= value and (value < high if high_open else value <= high)
    if not inside:  # NaN fails the comparisons
        shown = value if number else repr(value)
        raise InputError(f"{name} must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {shown}")
    return float(value)


def check_acceptance(tokens: int, accept: Any = None, accepted_len: Any = None) -> tuple[float | None, float | None]:
    """α in [0, 1) or τ in [1, γ + 1], exactly one of them."""
    if accept is not None and accepted_len is not None:
        raise InputError("give spec-accept (α) or spec-accepted-len (τ), not both")
    if accept is None and accepted_len is None:
        raise InputError("speculative decoding needs spec-accept (α, in [0, 1)) or spec-accepted-len "
                         "(τ, tokens per step)")
    if accept is not None:
        return _fraction("spec-accept", accept, 0.0, 1.0, True), None
    return None, _fraction("spec-accepted-len", accepted_len, 1.0, tokens + 1.0, False)


def check_draft(draft: Any) -> str | ModelSpec:
    """A draft model argument: a ModelSpec, or a zoo name or config path as a string."""
    if isinstance(draft, ModelSpec):
        return draft
    if hasattr(draft, "__fspath__"):
        draft = str(draft.__fspath__())
    if not isinstance(draft, str) or not draft.strip():
        raise InputError(f"spec-draft must be a zoo name, a config.json path or a ModelSpec, got {draft!r}")
    return draft


def speculative_settings(draft: Any = None, tokens: Any = None, accept: Any = None,
                         accepted_len: Any = None) -> SpecDecoding | None:
    """Checked settings from the ``spec_*`` arguments; None when none is given."""
    if draft is None and tokens is None and accept is None and accepted_len is None:
        return None
    if draft is None:
        raise InputError("spec-tokens, spec-accept and spec-accepted-len need a draft model (spec-draft)")
    if tokens is None:
        raise InputError("speculative decoding needs spec-tokens (γ, draft tokens per step, at least 1)")
    draft = check_draft(draft)
    tokens = check_count("spec_tokens", tokens)
    accept, accepted_len = check_acceptance(tokens, accept, accepted_len)
    return SpecDecoding(draft=draft, tokens=tokens, accept=accept, accepted_len=accepted_len)


def load_draft(draft: str | ModelSpec, target: ModelSpec) -> ModelSpec:
    """The draft's spec; its vocabulary must be the target's (draft tokens are target token
    ids)."""
    if isinstance(draft, ModelSpec):
        spec = draft
    else:
        try:
            spec = load_model(draft)
        except PerfModelError as exc:
            raise InputError(f"spec-draft: {exc}") from None
    if spec.vocab != target.vocab:
        raise InputError(f"the draft {spec.name} has a vocabulary of {spec.vocab} tokens, the target "
                         f"{target.name} {target.vocab}: a draft must share the target's vocabulary")
    return spec


def draft_workload(workload: Workload, draft: ModelSpec) -> Workload:
    """The draft's workload: the target's, on its tensor-parallel GPUs (no ep, no pp), a copy of
    it on each data-parallel rank (a dense draft: no expert parallelism)."""
    if workload.pp > 1:
        raise InputError("speculative decoding with pp > 1 is not modelled (the draft would run on "
                         "one pipeline stage): use pp 1")
    draft_w = replace(workload, ep=1, pp=1, expert_parallel=False)
    try:
        draft_w.check(draft)
    except InputError as exc:
        raise InputError(f"the draft {draft.name} at tp={workload.tp}: {exc}") from None
    return draft_w


def compile_verify(model: ModelSpec, phase: str, profile: EngineProfile, options: GraphOptions, *,
                   with_ops: bool = True) -> CompiledModel:
    """The target's verify pass, ``verify_s`` (s), compiled: at context L (phase decode) or
    at the mean of a request's decode steps (phase request), with γ + 1 tokens per sequence;
    ``options``: the target's graph options (:func:`perfmodel.prediction.graph_options`)."""
    span = profile.options.decode_attention_span

    def build() -> tuple[dict[str, sp.Expr], list, list]:
        base = decode_substitutions() if phase == "decode" else decode_mean_substitutions(span)
        subs = verify_substitutions(gamma + 1, base, causal=span == "context")
        graph = build_graph(model, decode=True, options=options)
        total, rows = pass_time(graph, subs)
        return {"verify_s": total}, [("verify", tuple(op.name for _, op in graph.all_ops()))], rows

    key = ("verify", _SOURCE, structure_key(model), phase, options_key(profile.options), options, with_ops)
    return compile_cached(key, "verify", build, with_ops=with_ops)


def speculative_outputs(target: ModelSpec, draft: ModelSpec, phase: str, profile: EngineProfile,
                        workload: Workload, values: dict[str, Any], draft_values: dict[str, Any],
                        target_totals: dict[str, Any], tokens: Any, *, gpu: str | None = None,
                        with_ops: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics of :func:`metric_expressions` (and :data:`SPEC_METRICS`) from the compiled
    passes, numbers or numpy arrays alike, with the verify and draft passes' op values.

    ``workload``: the target's (its graph options; the draft's is :func:`draft_workload`);
    ``values``: the target's symbol values with ``gamma``; ``draft_values``: the draft's;
    ``target_totals``: the target's compiled totals of the phase (prefill time, memory);
    ``tokens``: τ per step; ``gpu``: the GPU predicted (its tuned tile tables; default: the
    profile's own).
    """
    parts = {name: target_totals[name] for name in PARTS if name in target_totals}
    ops: list[dict[str, Any]] = []
    if phase != "prefill":
        options = graph_options(profile, workload, target, gpu)
        verify = compile_verify(target, phase, profile, options, with_ops=with_ops).evaluate(values)
        parts["verify_s"] = verify.totals["verify_s"]
        ops += verify.ops
    draft_options = graph_options(profile, draft_workload(workload, draft), draft, gpu)
    compiled = compile_model(draft, phase, profile, with_ops=with_ops, options=draft_options)
    drafted = compiled.evaluate(draft_values)
    for name in ("weights_bytes", "kv_cache_bytes", "activation_bytes"):
        if name in drafted.totals:
            parts[f"draft_{name}"] = drafted.totals[name]
    if "prefill_s" in drafted.totals:  # its ops (with_ops) are the draft's prefill alone, as listed
        launch, like = DRAFT_LAUNCH
        in_step = {**draft_values, **IN_STEP, launch: draft_values[like]}
        parts["draft_prefill_step_s"] = compiled.evaluate(in_step).totals["prefill_s"]
    if "decode_step_s" in drafted.totals:
        parts["draft_step_s"] = drafted.totals["decode_step_s"]
    ops += [{**op, "pass": f"draft {op['pass']}"} for op in drafted.ops]
    args, names, fn = _metrics_function(phase)
    inputs = {**parts, "gamma": values["gamma"], "tau": tokens,
              **{k: values[k] for k in ("t_step", "t_draft", "t_req", "B", "S", "O", "dp")}}
    out = dict(zip(names, fn(*[inputs[a] for a in args])))
    out.update({name: value for name, value in parts.items() if name.startswith("draft_")})
    return out, ops


def speculative_prediction(base: Prediction, target: ModelSpec, gpu: GPUSpec, profile: EngineProfile,
                           settings: SpecDecoding) -> Prediction:
    """``base`` (the target's prediction without speculation) with speculative decoding:
    metrics, the verify and draft passes in place of the target's decode pass, no error band
    (the band is stated for plain decoding; speculative decoding was measured with one target
    model only, on the H200 and the H100), and a ``speculative`` record."""
    w = base.workload
    draft = load_draft(settings.draft, target)
    draft_values = numeric_values(draft, gpu, profile, draft_workload(w, draft))
    values = {**numeric_values(target, gpu, profile, w), "gamma": settings.tokens}
    tokens = settings.tokens_per_step()
    out, ops = speculative_outputs(target, draft, base.phase, profile, w, values, draft_values,
                                   base.metrics, tokens, gpu=gpu.name, with_ops=True)
    metrics = dict(base.metrics)
    metrics.update({name: float(out[name]) for name in METRICS if name in out})
    metrics.update(dict.fromkeys(PLAIN_DECODE_ONLY, float("nan")))
    metrics["fits_in_memory"] = bool(metrics["memory_bytes"] <= metrics["memory_capacity_bytes"])
    nan = float("nan")
    record = {
        "draft": draft.name, "spec_tokens": settings.tokens, "spec_accept": settings.accept,
        "spec_accepted_len": settings.accepted_len,
        "tokens_per_step": float(out.get("spec_tokens_per_step", nan)),
        "step_s": float(out.get("spec_step_s", nan)), "draft_s": float(out.get("spec_draft_s", nan)),
        "verify_s": float(out.get("spec_verify_s", nan)),
        "draft_weights_bytes": int(round(float(out["draft_weights_bytes"]))),
        "draft_kv_cache_bytes": int(round(float(out["draft_kv_cache_bytes"]))),
    }
    provenance = dict(base.provenance)
    if provenance.get("error_band"):
        provenance["error_band"] = None
        provenance["error_band_note"] = ("no band: speculative decoding was measured with one target model "
                                         "only, and its rows are not in the profile's band (the profile's "
                                         f"{provenance['error_band_note']})")
    kept = [op for op in base.ops if op["pass"] != "decode"]
    return replace(base, metrics=metrics, ops=kept + op_rows(ops), provenance=provenance,
                   speculative=record)

