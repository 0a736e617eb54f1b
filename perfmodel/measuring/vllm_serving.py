"""Serving measurements: vLLM's async engine under Poisson arrivals, one JSONL row per rate.

``perfmodel measure MODEL --backend vllm --serving --rate 2,4,8 --num-requests 200`` builds one
``AsyncLLM`` per model with the offline backend's engine arguments
(:func:`perfmodel.measuring.vllm_backend.engine_kwargs`: dummy weights from a config.json, prefix
caching off, CUDA graphs captured up to ``max_num_seqs``, the MoE kernel pinned), and vLLM's
defaults for ``vllm serve`` otherwise (its usage context, so the same prefill chunk a server gets).
It warms the engine up (one request alone, then a burst of up to :data:`WARMUP_BURST` at once,
:data:`WARMUP_OUTPUT` tokens each, then one step of each token count at which the fused-MoE
kernel changes tile config: every prefill and decode shape JIT-compiled before timing), then,
for each rate, submits N requests of S random token ids (:func:`vllm_backend.make_prompts`), each
asking for O tokens, at seeded Poisson arrival times (:func:`poisson_arrivals`), each from its own
asyncio task, and streams their outputs (``RequestOutputKind.DELTA`` where this vLLM has it, else cumulative).

Client-side times (``time.perf_counter``, seconds) per request: submission, every streamed
output, completion. From them, as ``vllm bench serve`` defines them:

- TTFT: first output - submission; E2E: completion - submission;
- ITL: every gap between two consecutive streamed outputs of a request (one token each while the
  client keeps up; ``multi_token_outputs`` counts outputs that carried more);
- TPOT: (E2E - TTFT)/(n - 1) per request of n tokens;
- throughput over the measured window (first submission to last output): ``output_tok_s``,
  ``requests_per_s``; ``completion_rate`` = (completed - 1)/(last completion - first
  completion), the rate completions came at (in a run long enough for a steady state, the
  offered rate below saturation and the engine's capacity above it; in a short run whose
  requests finish together, much more: ``perfmodel validate --serving`` reads capacity from
  ``output_tok_s`` instead); ``achieved_rate`` = (submitted - 1)/(last
  submission - first submission), the rate requests were really offered at;
- goodput (with ``--ttft-slo`` / ``--itl-slo``, seconds): the requests with TTFT and TPOT within
  them, per second of the window and as a fraction of those submitted.

Percentiles (p50/p90/p99, linear interpolation, numpy's default) are over the completed requests
of a rate, all of them (the run starts from an idle engine, as ``vllm bench serve`` does).

A rate's wall time is bounded by ``--duration-s`` D (and by what is left of ``--budget-s``, shared
among the rates still to run in proportion to their expected spans): no request is submitted
later than D after the rate's start, and requests still running at :data:`DRAIN_FACTOR` x D are
aborted (counted in ``aborted``; the row says ``truncated``). A rate that fails gives an ``error``
row (``oom`` for out of memory); rows are appended as in :mod:`perfmodel.measuring.results` and a
rate whose point id is in the file is not measured again (resume).

Row fields beyond the sweep rows' identity and provenance: ``mode`` ("serving"), ``rate``,
``num_requests``, ``input_len``, ``output_len`` (the medians where the lengths were drawn),
``lengths`` (None, or the percentiles they were drawn from: ``--input-len p50=512,p90=2048``
gives each request its own S and O, drawn as ``perfmodel plan`` draws a traffic given so,
:meth:`ServingSpec.lengths`; ``--lengths-file`` draws them from a CSV of input,output token
counts, as ``plan --lengths-file`` does), ``max_num_seqs``, ``seed``, ``duration_cap_s``,
``ttft_slo_s``, ``itl_slo_s``; ``engine`` = {name, cuda_graphs, dtype, tp, ep, pp, quantization,
moe_backend, sampling, max_num_seqs, max_num_batched_tokens (resolved)}; ``engine_detail`` (the
engine arguments and what vLLM resolved); counts ``submitted``, ``completed``, ``aborted``,
``failed``, ``not_submitted``, ``truncated``; ``{ttft,itl,tpot,e2e}_{p50,p90,p99,mean}_ms``;
``output_tokens``, ``window_s``, ``output_tok_s``, ``requests_per_s``, ``completion_rate``,
``achieved_rate``, ``goodput_fraction``, ``goodput_req_s``, ``submit_lag_max_ms``,
``multi_token_outputs``, ``engine_itl_ms`` / ``engine_ttft_ms`` (the engine's own timestamps,
where it reports them), ``warmup_s``, ``per_request`` (columns ``arrival_s``, ``submitted_s``,
``ttft_ms``, ``e2e_ms``, ``output_tokens``, and, where the lengths were drawn, ``input_len`` and
``output_len``), ``notes``, ``host_probe_ms`` (the host's speed before
and after the rate, :func:`perfmodel.host_speed.probe_ms`), ``host_run`` (the host's speed sampled
in a process of its own all through the rate, :func:`perfmodel.host_trace.run_summary`: recorded,
not used to predict), and, where this vLLM describes its
iterations, ``engine_steps`` (:func:`perfmodel.measuring.vllm_steps.step_summary`: the busy steps'
durations, mixed and decode-only apart) with every step of the rate in ``<rows>-steps.jsonl``
beside the rows (:func:`trace_path`), and the client's output times of every
:data:`TOKEN_SAMPLE_EVERY`-th completed request in ``<rows>-tokens.jsonl``. The engine also logs every kernel JIT compilation after
its own warm-up (``jit_monitor_verbose``), with the shape that caused it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import inspect
import logging
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from perfmodel.errors import InputError
from perfmodel.measuring import results
from perfmodel.measuring.points import SweepPoint
from perfmodel.measuring.runner import one_line
from perfmodel.measuring.vllm_dummy import FILL_EXTENSION, FILLED_METHOD, checked_fill_count
from perfmodel.measuring.vllm_steps import StepLog, observe, step_summary, step_trace

#: Requests still running at this multiple of a rate's duration cap are aborted.
DRAIN_FACTOR = 1.5
#: The client's output times are kept for every this-many-th request (``<rows>-tokens.jsonl``).
TOKEN_SAMPLE_EVERY = 16
#: A rate whose share of the time budget is below this (s) is not started.
MIN_RATE_S = 10.0
#: Warm-up: a burst of at most this many requests at once (after one alone) ...
WARMUP_BURST = 64
#: ... of at most this many output tokens each.
WARMUP_OUTPUT = 16
#: Token counts of one engine step at which vLLM's fused-MoE kernel changes tile config (the
#: ``M`` keys of vLLM's tuned config files; it takes the config of the key nearest a step's
#: tokens): each is JIT-compiled by Triton on first use, a stall of about a second, so the
#: warm-up runs one step of each count up to the step's token budget.
FUSED_MOE_CONFIG_TOKENS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
#: Triton compiles a kernel once per divisibility by 16 of its integer arguments, and the fused-MoE
#: kernel's token counts (M·top_k valid rows, the padded sorted length) follow M mod 16: a step
#: run without a CUDA graph (more tokens than the largest captured size) compiles each config
#: once per residue class it meets. The warm-up runs that many consecutive counts from each key.
TRITON_DIVISIBILITY = 16
#: Percentiles reported per metric.
PERCENTILES = (50, 90, 99)
#: Latency metrics of a row (milliseconds).
LATENCY_METRICS = ("ttft", "itl", "tpot", "e2e")
#: Serving defaults (the planning traffic's).
DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 256


# --------------------------------------------------------------------------- the schedule


def poisson_arrivals(rate: float, n: int, seed: int = 0, burstiness: float = 1.0) -> list[float]:
    """Arrival offsets (s) of ``n`` requests at ``rate`` req/s: the first at 0, then exponential
    gaps of mean 1/rate from ``random.Random(seed)``, or with ``burstiness`` k other than 1
    gamma-distributed gaps of shape k and the same mean (``vllm bench serve --burstiness``:
    below 1 burstier, above 1 steadier). The same seed draws the same unit-rate gaps at every
    rate (times scale as 1/rate), as the planning simulation's arrivals do."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise InputError(f"bad rate {rate}: must be a number of requests per second > 0")
    if n < 1:
        raise InputError(f"bad number of requests {n}: must be >= 1")
    check_burstiness(burstiness)
    rng = random.Random(seed)
    out, t = [0.0], 0.0
    for _ in range(n - 1):
        gap = rng.expovariate(1.0) if burstiness == 1.0 else rng.gammavariate(burstiness, 1.0 / burstiness)
        t += gap / rate
        out.append(t)
    return out


def check_burstiness(burstiness: float) -> float:
    """``burstiness`` if it is a gamma shape the schedule takes (> 0, at most
    :data:`perfmodel.planning.question.MAX_BURSTINESS`), else InputError."""
    from perfmodel.planning.question import MAX_BURSTINESS

    if (isinstance(burstiness, bool) or not isinstance(burstiness, (int, float)) or not math.isfinite(burstiness)
            or not 0 < burstiness <= MAX_BURSTINESS):
        raise InputError(f"bad burstiness {burstiness}: the gaps' gamma shape must be > 0 and at most "
                         f"{MAX_BURSTINESS:g} (1: Poisson)")
    return float(burstiness)


def percentile(values: list[float], q: float) -> float | None:
    """Percentile ``q`` (0-100) by linear interpolation between order statistics (numpy's
    default, as the replay's :meth:`perfmodel.planning.simulate.SimResult.run_summary`); None
    for no values."""
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def rate_key(rate: float) -> str:
    """A rate as written in point ids: ``2`` -> "2", ``0.5`` -> "0.5"."""
    return f"{float(rate):g}"


def parse_rates(text: str) -> list[float]:
    """``"2,4,8"`` -> [2.0, 4.0, 8.0] (finite, > 0, order kept, duplicates dropped)."""
    rates: list[float] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise InputError(f"bad rate '{item}': expected a number of requests per second") from None
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"bad rate {item}: must be a number of requests per second > 0")
        if value not in rates:
            rates.append(value)
    if not rates:
        raise InputError("no rate given (--rate, requests per second, e.g. 2,4,8)")
    return rates


# --------------------------------------------------------------------------- what to measure


@dataclass(frozen=True)
class ServingSpec:
    """One model's serving measurement: rates (req/s), N requests of S prompt and O output
    tokens per rate, the engine's limits and settings, the SLOs for goodput (s).

    S and O are fixed, or, with ``input_spread`` / ``output_spread``, spread: ``input_len`` is
    then the median and the spread the higher percentiles, and the requests' lengths are drawn
    as the planning draws a traffic given so (:meth:`lengths`: a lognormal through the median and
    the highest percentile, seeded), the same N lengths at every rate. With ``lengths_file`` (a
    CSV of input,output token counts, as ``plan --lengths-file`` takes) the pairs are drawn from
    it with replacement, seeded, as the planning draws them; ``input_len`` / ``output_len`` are
    then the file's medians and the spreads its 90th and 99th percentiles (what the closed form
    of a replay reads, the file itself not being kept with the rows)."""

    model: str
    rates: tuple[float, ...]
    num_requests: int = 200
    input_len: int = DEFAULT_INPUT_LEN
    output_len: int = DEFAULT_OUTPUT_LEN
    input_spread: tuple[tuple[str, int], ...] = ()  # percentiles above p50, e.g. (("p90", 2048),)
    output_spread: tuple[tuple[str, int], ...] = ()
    lengths_file: str | None = None  # CSV of input,output token counts
    lengths_sha256: str | None = None  # of that file's bytes (the point id carries its first 12 hex digits)
    max_num_seqs: int = 256
    seed: int = 0
    burstiness: float = 1.0  # gamma shape of the gaps between arrivals (1: Poisson)
    duration_s: float | None = None
    ttft_slo_s: float | None = None
    itl_slo_s: float | None = None
    overrides: tuple[str, ...] = ()
    layers: int | None = None
    cuda_graphs: bool = True
    settings: tuple[tuple[str, str], ...] = ()  # vllm_backend.point_settings, sorted

    def point(self, rate: float) -> SweepPoint:
        """The point of one rate (its id: the model, S, O, ``B`` = max_num_seqs, the engine
        settings, and the rate, N and seed of the schedule)."""
        extra = {"serving": "poisson" if self.burstiness == 1.0 else "gamma", "rate": rate_key(rate),
                 **({"burstiness": f"{self.burstiness:g}"} if self.burstiness != 1.0 else {}),
                 "n": str(self.num_requests),
                 "seed": str(self.seed), **{f"s_{q}": str(v) for q, v in self.input_spread},
                 **{f"o_{q}": str(v) for q, v in self.output_spread},
                 **({"lengths": self.lengths_sha256[:12]} if self.lengths_file and self.lengths_sha256 else {})}
        return SweepPoint(model=self.model, batch=self.max_num_seqs, input_len=self.input_len,
                          output_len=self.output_len, backend="vllm", overrides=self.overrides,
                          layers=self.layers, experts_impl="vllm_fused_moe", cuda_graphs=self.cuda_graphs,
                          settings=tuple(sorted({**dict(self.settings), **extra}.items())))

    def setting(self, key: str, default: str) -> str:
        return dict(self.settings).get(key, default)

    @property
    def spread(self) -> bool:
        """Whether the requests' lengths vary (drawn), not all S and O."""
        return bool(self.input_spread or self.output_spread or self.lengths_file)

    def traffic_lengths(self) -> dict[str, Any]:
        """``input_len`` and ``output_len`` as the planning's traffic takes them: a token count,
        or percentiles ``{"p50": .., "p90": ..}``."""
        def one(median: int, spread: tuple[tuple[str, int], ...]) -> Any:
            return {"p50": median, **dict(spread)} if spread else median
        return {"input_len": one(self.input_len, self.input_spread),
                "output_len": one(self.output_len, self.output_spread)}

    def lengths(self) -> tuple[list[int], list[int]]:
        """The N requests' prompt and output tokens: all S and O, or, spread, drawn by
        :class:`perfmodel.planning.question.Lengths` from ``numpy.random.default_rng(seed)``."""
        n = self.num_requests
        if not self.spread:
            return [self.input_len] * n, [self.output_len] * n
        import numpy as np

        from perfmodel.planning.question import Lengths, Traffic

        traffic = (Traffic(rate=1.0, lengths_file=Path(self.lengths_file)) if self.lengths_file
                   else Traffic(rate=1.0, **self.traffic_lengths()))
        s, o = Lengths(traffic).sample(n, np.random.default_rng(self.seed))
        return [int(x) for x in s], [int(x) for x in o]

    def drawn(self) -> str:
        """How the lengths were drawn, for the rows."""
        if self.lengths_file:
            return (f"with replacement from {Path(self.lengths_file).name} (sha256 {self.lengths_sha256}), numpy "
                    "default_rng(seed), as perfmodel plan --lengths-file draws them; input_len and output_len: "
                    "the file's p50 / p90 / p99")
        return "lognormal through p50 and the highest percentile given, numpy default_rng(seed), as perfmodel plan draws them"

    @property
    def longest(self) -> int:
        """Tokens of the longest request (prompt and output), what the KV cache is sized for."""
        s, o = self.lengths()
        return max(a + b for a, b in zip(s, o))


# --------------------------------------------------------------------------- one request


@dataclass
class RequestTrace:
    """What the client saw of one request (clock seconds; ``scheduled_s`` relative to the rate's start)."""

    scheduled_s: float
    submitted: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per streamed output with tokens
    token_counts: list[int] = field(default_factory=list)  # tokens each of those outputs carried
    finished: float | None = None
    aborted: bool = False
    error: str | None = None
    final: Any = None  # the last RequestOutput (engine timestamps)

    @property
    def tokens(self) -> int:
        return sum(self.token_counts)

    @property
    def completed(self) -> bool:
        return self.finished is not None and self.error is None and not self.aborted

    def ttft(self) -> float | None:
        if self.submitted is None or not self.token_times:
            return None
        return self.token_times[0] - self.submitted

    def e2e(self) -> float | None:
        return None if not self.completed or self.submitted is None else self.finished - self.submitted

    def tpot(self) -> float | None:
        e2e, ttft = self.e2e(), self.ttft()
        if e2e is None or ttft is None or self.tokens < 2:
            return None
        return (e2e - ttft) / (self.tokens - 1)

    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]


async def _consume(engine, trace: RequestTrace, prompt, params, request_id: str,
                   clock: Callable[[], float], delta: bool) -> None:
    trace.submitted = clock()
    seen = 0
    try:
        async for out in engine.generate(prompt, params, request_id):
            now = clock()
            outputs = getattr(out, "outputs", None) or []
            ids = outputs[0].token_ids if outputs else []
            new = len(ids) if delta else len(ids) - seen
            if new > 0:
                seen += new
                trace.token_times.append(now)
                trace.token_counts.append(new)
            if getattr(out, "finished", False):
                trace.finished = now
                trace.final = out
    except Exception as exc:  # noqa: BLE001 - one failed request is a result of the rate
        trace.error = one_line(exc)


async def run_schedule(engine, prompts: list, arrivals: list[float], make_params: Callable[[int], Any], *,
                       clock: Callable[[], float], delta: bool, request_prefix: str,
                       cap_s: float | None = None) -> tuple[list[RequestTrace], float]:
    """Submit ``prompts[i]`` at ``arrivals[i]`` s after now, with the sampling parameters
    ``make_params(i)``, each from its own task; stop
    submitting after ``cap_s`` and abort what runs at ``DRAIN_FACTOR * cap_s``. Returns the
    traces of the submitted requests and the start time (clock seconds)."""
    t0 = clock()
    traces: list[RequestTrace] = []
    tasks: list[asyncio.Task] = []
    for i, (offset, prompt) in enumerate(zip(arrivals, prompts)):
        if cap_s is not None and offset > cap_s:
            break
        delay = t0 + offset - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        trace = RequestTrace(scheduled_s=offset)
        traces.append(trace)
        tasks.append(asyncio.create_task(
            _consume(engine, trace, prompt, make_params(i), f"{request_prefix}-{i}", clock, delta)))
    if tasks:
        timeout = None if cap_s is None else max(0.0, t0 + DRAIN_FACTOR * cap_s - clock())
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for trace, task in zip(traces, tasks):
            if task.cancelled():
                trace.aborted = True
    return traces, t0


# --------------------------------------------------------------------------- one rate's numbers


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 4)


def _rate(count: int, span: float) -> float | None:
    return (count - 1) / span if count > 1 and span > 0 else None


def _within_slo(trace: RequestTrace, ttft_slo_s: float | None, itl_slo_s: float | None) -> bool:
    """TTFT <= its SLO and TPOT <= the ITL SLO (``vllm bench serve --goodput``), those given."""
    ttft, tpot = trace.ttft(), trace.tpot()
    return ((ttft_slo_s is None or (ttft is not None and ttft <= ttft_slo_s))
            and (itl_slo_s is None or tpot is None or tpot <= itl_slo_s))


def summarize(traces: list[RequestTrace], t0: float, *, num_requests: int, output_len: int | Sequence[int],
              ttft_slo_s: float | None = None, itl_slo_s: float | None = None,
              input_len: Sequence[int] | None = None) -> dict[str, Any]:
    """The measured fields of one rate's row from its request traces (see the module docstring).

    ``output_len``: O, or each request's (in submission order, as the traces); ``input_len``,
    each request's prompt tokens where they vary: then ``per_request`` also holds
    ``input_len`` and ``output_len`` of each submitted request."""
    wanted = [output_len] * len(traces) if isinstance(output_len, int) else list(output_len)[:len(traces)]
    done = [t for t in traces if t.completed and t.token_times]
    values = {
        "ttft": [t.ttft() for t in done],
        "e2e": [t.e2e() for t in done],
        "tpot": [x for x in (t.tpot() for t in done) if x is not None],
        "itl": [gap for t in done for gap in t.itls()],
    }
    out: dict[str, Any] = {
        "submitted": len(traces),
        "completed": len(done),
        "aborted": sum(t.aborted for t in traces),
        "failed": sum(t.error is not None for t in traces),
        "not_submitted": num_requests - len(traces),
    }
    out["truncated"] = out["not_submitted"] > 0 or out["aborted"] > 0
    for metric in LATENCY_METRICS:
        xs = values[metric]
        for q in PERCENTILES:
            out[f"{metric}_p{q}_ms"] = _ms(percentile(xs, q))
        out[f"{metric}_mean_ms"] = _ms(sum(xs) / len(xs)) if xs else None
    submits = [t.submitted for t in traces if t.submitted is not None]
    token_times = [x for t in traces for x in t.token_times]
    finishes = sorted(t.finished for t in done)
    window = (max(token_times) - min(submits)) if token_times and submits else 0.0
    tokens = sum(t.tokens for t in traces)
    out.update({
        "output_tokens": tokens,
        "window_s": round(window, 6),
        "output_tok_s": tokens / window if window > 0 else None,
        "requests_per_s": len(done) / window if window > 0 else None,
        "completion_rate": _rate(len(finishes), finishes[-1] - finishes[0]) if finishes else None,
        "achieved_rate": _rate(len(submits), max(submits) - min(submits)) if submits else None,
        "submit_lag_max_ms": _ms(max((t.submitted - t0 - t.scheduled_s for t in traces
                                      if t.submitted is not None), default=0.0)),
        "multi_token_outputs": sum(1 for t in traces for n in t.token_counts if n > 1),
        "ttft_slo_s": ttft_slo_s,
        "itl_slo_s": itl_slo_s,
        "goodput_fraction": None,
        "goodput_req_s": None,
    })
    if ttft_slo_s is not None or itl_slo_s is not None:
        good = sum(1 for t in done if _within_slo(t, ttft_slo_s, itl_slo_s))
        out["goodput_fraction"] = good / len(traces) if traces else None
        out["goodput_req_s"] = good / window if window > 0 else None
    out["per_request"] = {
        "arrival_s": [round(t.scheduled_s, 6) for t in traces],
        "submitted_s": [None if t.submitted is None else round(t.submitted - t0, 6) for t in traces],
        "ttft_ms": [_ms(t.ttft()) for t in traces],
        "e2e_ms": [_ms(t.e2e()) for t in traces],
        "output_tokens": [t.tokens for t in traces],
    }
    if input_len is not None:
        out["per_request"]["input_len"] = [int(x) for x in list(input_len)[:len(traces)]]
        out["per_request"]["output_len"] = [int(x) for x in wanted]
    notes = []
    if out["not_submitted"]:
        notes.append(f"duration cap: {out['not_submitted']} of {num_requests} requests not submitted")
    if out["aborted"]:
        notes.append(f"{out['aborted']} requests still running at the drain limit were aborted; "
                     "percentiles are of the completed ones")
    short = [(t.tokens, o) for t, o in zip(traces, wanted) if t.completed and t.token_times and t.tokens != o]
    if short:
        notes.append(f"{len(short)} requests generated other lengths than asked (first: {short[0][0]} of {short[0][1]})")
    out["notes"] = notes
    return out


def engine_request_times(traces: list[RequestTrace]) -> dict[str, float | None]:
    """The engine's own per-request timestamps (``RequestOutput.metrics`` of the final outputs),
    where this vLLM reports them: mean ITL and mean TTFT from scheduling, ms, each request's ITL
    over the tokens it streamed."""
    from perfmodel.measuring.vllm_backend import engine_times

    done = [t for t in traces if t.completed and t.final is not None]
    try:
        return engine_times([t.final for t in done], [t.tokens for t in done])
    except Exception:  # noqa: BLE001 - optional detail
        return {"engine_itl_ms": None, "engine_ttft_ms": None}


# --------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """A started AsyncLLM and what the rows record of it."""

    llm: Any
    vocab: int
    kwargs: dict[str, Any]
    settings: dict[str, Any]
    delta: bool
    make_params: Callable[[int], Any]
    tmp: tempfile.TemporaryDirectory | None = None
    steps: StepLog | None = None


def _usage_context() -> dict[str, Any]:
    """``usage_context`` of ``vllm serve`` (its defaults, e.g. the prefill chunk), where importable."""
    try:
        from vllm.usage.usage_lib import UsageContext

        return {"usage_context": UsageContext.OPENAI_API_SERVER}
    except Exception:  # noqa: BLE001
        return {}


def _async_llm_class():
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:
        from vllm import AsyncLLMEngine as AsyncLLM
    return AsyncLLM


def _step_details(accepted: set[str]) -> dict[str, Any]:
    """Engine arguments that make the engine core describe each iteration (for the step log) and
    log every post-warm-up JIT compilation with its shape, where this vLLM has them."""
    return {name: True for name in ("enable_logging_iteration_details", "jit_monitor_verbose") if name in accepted}


def start_engine(spec: ServingSpec, log: Callable[[str], None],
                 clock: Callable[[], float] = time.perf_counter) -> Engine:
    """An AsyncLLM for ``spec``'s model (needs vLLM; call it inside the running event loop); where
    this vLLM allows, with a :class:`StepLog` of its steps (``clock`` where a step has no stamp)."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs

    from perfmodel.measuring import vllm_backend as vb

    point = spec.point(spec.rates[0])
    accepted = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    stored = vb.checkpoint_quantization(point) is not None
    if stored and "worker_extension_cls" not in accepted:
        raise ValueError(f"--quantization {spec.setting('quant', 'none')}: this vLLM takes no worker extension, "
                         "through which the engine core's own process fills the checkpoint's dummy weights")
    cls = _async_llm_class()
    takes_context = "usage_context" in inspect.signature(cls.from_engine_args).parameters
    context = _usage_context() if takes_context else {}
    tmp = tempfile.TemporaryDirectory(prefix="perfmodel-vllm-serving-")
    try:
        cfg = vb.write_model_dir([point], tmp.name)
        kwargs = vb.engine_kwargs([point], tmp.name, accepted=accepted)
        kwargs["max_model_len"] = max(int(kwargs.get("max_model_len") or 0), spec.longest)
        kwargs.update(_step_details(accepted))
        if stored:  # the engine core loads in a process of its own: patch its dummy loader there
            kwargs["worker_extension_cls"] = FILL_EXTENSION
        log(f"vllm async engine: {kwargs} {context}")
        t0 = time.perf_counter()
        vb.apply_routing(point)
        # AsyncLLM always runs its engine core in a process of its own; this process has already
        # initialised CUDA (provenance, GPU checks), and a forked child cannot use it again.
        os.environ.setdefault(vb.WORKER_METHOD_ENV, "spawn")
        llm = cls.from_engine_args(AsyncEngineArgs(**kwargs), **context)
    except BaseException:
        tmp.cleanup()
        raise
    startup_s = time.perf_counter() - t0
    steps = StepLog(clock)
    if not (kwargs.get("enable_logging_iteration_details") and observe(llm, steps)):
        steps = None
    else:  # vLLM's own stat logger would print one line per iteration once the details are on
        logging.getLogger("vllm.v1.metrics.loggers").setLevel(logging.WARNING)
    settings = vb.engine_settings(_Wrapped(llm))
    settings["startup_s"] = round(startup_s, 1)
    usage = context.get("usage_context")
    settings["usage_context"] = str(getattr(usage, "value", usage)) if usage is not None else "default"
    interval = getattr(getattr(getattr(llm, "vllm_config", None), "scheduler_config", None), "stream_interval", None)
    if isinstance(interval, int):
        settings["stream_interval"] = interval  # tokens per streamed output (1: every token)
    settings.update(vb.tuned_moe_config(cfg, point, int(spec.setting("tp", "1"))))
    log(f"vllm async engine ready in {startup_s:.0f} s: {settings}")
    try:
        from vllm.sampling_params import RequestOutputKind

        kind: dict[str, Any] = {"output_kind": RequestOutputKind.DELTA}
    except ImportError:
        kind = {}
    sampling = spec.setting("sampling", "random")

    def make_params(output_len: int):
        return SamplingParams(**vb.sampling_kwargs(output_len, sampling), **kind)

    return Engine(llm, int(cfg["vocab_size"]), kwargs, settings, bool(kind), make_params, tmp, steps)


async def check_dummy_fill(engine: Engine, log: Callable[[str], None]) -> None:
    """Where the engine carries the dummy-fill worker extension (a checkpoint-quantized model),
    record how many quantized tensors its worker filled (``settings["dummy_quantized_filled"]``);
    raise where none was: the run would time the weights vLLM left unfilled."""
    if engine.kwargs.get("worker_extension_cls") != FILL_EXTENSION:
        return
    filled = checked_fill_count(await engine.llm.collective_rpc(FILLED_METHOD))
    engine.settings["dummy_quantized_filled"] = filled
    log(f"dummy weights: {filled} quantized tensors filled in the engine core's process")


@dataclass
class _Wrapped:
    """What :func:`vllm_backend.engine_settings` reads (``llm.llm_engine.vllm_config``) over an AsyncLLM."""

    llm_engine: Any


async def stop_engine(engine: Engine | None) -> None:
    if engine is None:
        return
    try:
        stopped = engine.llm.shutdown()
        if inspect.isawaitable(stopped):
            await stopped
    finally:
        if engine.tmp is not None:
            engine.tmp.cleanup()


def warmup_steps(max_tokens: int, input_len: int, graph_tokens: int = 0) -> list[list[int]]:
    """Prompt lengths of the warm-up's single-step groups: one group per fused-MoE config token
    count K (:data:`FUSED_MOE_CONFIG_TOKENS`) up to ``max_tokens`` (the engine's
    max_num_batched_tokens), and, where a step runs without a CUDA graph (more tokens than
    ``graph_tokens``, the largest captured size), 16 consecutive counts (:data:`TRITON_DIVISIBILITY`)
    from each such K and from the first count past the graphs. Each group is made of prompts of
    at most ``input_len`` tokens that together hold exactly that many tokens, so that its
    prefill is one step of that size."""
    starts = [graph_tokens + 1] + [k for k in FUSED_MOE_CONFIG_TOKENS if k > graph_tokens]
    eager = {t for start in starts for t in range(start, start + TRITON_DIVISIBILITY)}
    counts = sorted(t for t in eager | set(FUSED_MOE_CONFIG_TOKENS) if t <= max_tokens)
    groups = []
    for tokens in counts:
        full, rest = divmod(tokens, input_len)
        groups.append([input_len] * full + ([rest] if rest else []))
    return groups


async def warm_up(engine: Engine, spec: ServingSpec, clock: Callable[[], float]) -> float:
    """One request alone, a burst of min(max_num_seqs, WARMUP_BURST) at once, then one step of
    each fused-MoE config size, and of the 15 sizes after it where a step runs without a CUDA
    graph (:func:`warmup_steps`, one output token each); seconds taken."""
    from perfmodel.measuring.vllm_backend import make_requests

    t0 = clock()
    o = min(spec.output_len, WARMUP_OUTPUT)
    burst = min(spec.max_num_seqs, WARMUP_BURST)
    prompts = make_requests(1 + burst, spec.input_len, engine.vocab, seed=spec.seed + 1)
    groups = [("warmup-alone", prompts[:1], o), ("warmup-burst", prompts[1:], o)]
    budget = engine.settings.get("max_num_batched_tokens")
    budget = budget if isinstance(budget, int) and budget > 0 else spec.input_len
    sizes = engine.settings.get("cudagraph_capture_sizes") or []
    graph = max((int(x) for x in sizes), default=0) if isinstance(sizes, (list, tuple)) else 0
    for i, lengths in enumerate(warmup_steps(budget, spec.input_len, graph)):
        if len(lengths) > spec.max_num_seqs:
            break
        group = [make_requests(1, n, engine.vocab, seed=spec.seed + 2 + i + j)[0] for j, n in enumerate(lengths)]
        groups.append((f"warmup-step{sum(lengths)}", group, 1))
    for name, group, tokens in groups:
        traces, _ = await run_schedule(engine.llm, group, [0.0] * len(group),
                                       lambda _, tokens=tokens: engine.make_params(tokens),
                                       clock=clock, delta=engine.delta, request_prefix=name)
        failed = [t.error for t in traces if t.error]
        if failed:
            raise RuntimeError(f"warm-up request failed: {failed[0]}")
    return clock() - t0


# --------------------------------------------------------------------------- the whole run


@dataclass
class ServingSummary:
    """What a serving run did, per status, and the rates left for a later run."""

    measured: dict[str, int] = field(default_factory=lambda: {s: 0 for s in results.STATUSES})
    already_done: int = 0
    deferred: list[str] = field(default_factory=list)
    stopped: str | None = None
    elapsed_s: float = 0.0


def new_loop_and_clock() -> tuple[asyncio.AbstractEventLoop, Callable[[], float]]:
    """A fresh event loop, and the clock request times are read from."""
    return asyncio.new_event_loop(), time.perf_counter


def _is_oom(exc: BaseException) -> bool:
    from perfmodel.measuring.vllm_backend import VLLMBackend

    return VLLMBackend().is_oom(exc)


def _is_fatal(error: BaseException | str) -> bool:
    """Whether an error leaves the engine or the device unusable for the rest of the process:
    the offline backend's fatal errors, or a dead engine core."""
    from perfmodel.measuring.vllm_backend import VLLMBackend

    exc = error if isinstance(error, BaseException) else RuntimeError(error)
    return VLLMBackend().is_fatal(exc) or "enginedead" in f"{type(exc).__name__}: {exc}".lower()


def _describe(spec: ServingSpec) -> dict[str, Any]:
    from perfmodel.measuring.vllm_backend import model_type_of

    return {
        "model_type": model_type_of(spec.model),
        "moe_backend": spec.setting("moe_backend", "triton"),
        "engine": {
            "name": "vllm", "api": "AsyncLLM", "cuda_graphs": spec.cuda_graphs, "dtype": "bfloat16",
            "tp": int(spec.setting("tp", "1")), "ep": spec.setting("ep", "0") == "1", "pp": 1,
            "quantization": spec.setting("quant", "none"), "moe_backend": spec.setting("moe_backend", "triton"),
            "sampling": spec.setting("sampling", "random"), "max_num_seqs": spec.max_num_seqs,
            "max_cache_len": spec.longest,
        },
    }


def short_run_note(row: dict[str, Any]) -> str | None:
    """A line for a measured run too short to show a steady state
    (:func:`perfmodel.measuring.serving_replay.steady_span`: its submissions span under
    STEADY_E2E_SPANS of its median E2E), with the requests a rate would need; None otherwise."""
    from perfmodel.measuring.serving_replay import STEADY_E2E_SPANS, offered_rate, steady_span

    if steady_span(row) is not False:
        return None
    e2e_s = row["e2e_p50_ms"] * 1e-3
    need = math.ceil(STEADY_E2E_SPANS * e2e_s * offered_rate(row)) + 1
    return (f"its submissions spanned less than {STEADY_E2E_SPANS:g}x its median E2E ({e2e_s:.2f} s): too "
            f"short for a steady state, so whether the engine keeps up at this rate is not known "
            f"(--num-requests {need} or more would tell)")


def base_row(spec: ServingSpec, rate: float, prov: dict[str, Any]) -> dict[str, Any]:
    """Identity, settings and provenance of one rate's row (any status)."""
    point = spec.point(rate)
    row: dict[str, Any] = {
        "schema_version": results.SCHEMA_VERSION, "point_id": point.point_id, "status": "ok",
        "error": None, "backend": "vllm", "mode": "serving", "model": spec.model,
        "overrides": list(spec.overrides), "layers": spec.layers, "rate": float(rate),
        "num_requests": spec.num_requests, "input_len": spec.input_len, "output_len": spec.output_len,
        "lengths": ({"drawn": spec.drawn(), **spec.traffic_lengths()} if spec.spread else None),
        "max_num_seqs": spec.max_num_seqs, "seed": spec.seed, "burstiness": spec.burstiness,
        "duration_cap_s": spec.duration_s,
        "ttft_slo_s": spec.ttft_slo_s, "itl_slo_s": spec.itl_slo_s,
    }
    row.update(prov)
    row.update(_describe(spec))
    return row


def rate_cap(spec: ServingSpec, remaining: list[float], left_s: float | None) -> float | None:
    """The duration cap of the next rate, ``remaining[0]``: ``--duration-s``, and with a budget
    its share of what is left (after the drain allowance), in proportion to the rates' expected
    submission spans (N - 1)/rate."""
    cap = spec.duration_s
    if left_s is None:
        return cap
    spans = [(spec.num_requests - 1) / r if spec.num_requests > 1 else 1.0 / r for r in remaining]
    share = left_s / DRAIN_FACTOR * spans[0] / sum(spans)
    return share if cap is None else min(cap, share)


def client_token_sample(traces: list[RequestTrace], t0: float, every: int = TOKEN_SAMPLE_EVERY) -> dict[str, Any]:
    """The client's output times of every ``every``-th request that completed (seconds from the
    rate's start ``t0``, 0.1 ms): columns ``request`` (its index), ``submitted_s``, ``output_s``
    (one per streamed output) and ``tokens`` (what each output carried)."""
    picked = [(i, t) for i, t in enumerate(traces) if i % every == 0 and t.completed and t.submitted is not None]
    return {"every": every, "columns": ["request", "submitted_s", "output_s", "tokens"],
            "requests": [[i, round(t.submitted - t0, 4), [round(x - t0, 4) for x in t.token_times], t.token_counts]
                         for i, t in picked]}


async def measure_rate(engine: Engine, spec: ServingSpec, rate: float, prompts: list,
                       cap_s: float | None, clock: Callable[[], float], outputs: list[int] | None = None
                       ) -> tuple[str, dict[str, Any], str | None, dict[str, dict[str, Any]]]:
    """One rate on a warm engine: (status, the row's measured fields, error or None, the traces
    written beside the rows: ``steps``, the engine's steps where it reports them, and ``tokens``,
    the client's output times of a sample of requests, :func:`client_token_sample`); the fields
    include ``engine_steps`` (:func:`vllm_steps.step_summary`). ``outputs``: each request's
    output tokens (default: all O)."""
    outputs = outputs if outputs is not None else [spec.output_len] * len(prompts)
    arrivals = poisson_arrivals(rate, spec.num_requests, spec.seed, spec.burstiness)
    first_step = engine.steps.mark() if engine.steps is not None else 0
    traces, t0 = await run_schedule(engine.llm, prompts, arrivals, lambda i: engine.make_params(outputs[i]),
                                    clock=clock, delta=engine.delta, request_prefix=f"r{rate_key(rate)}",
                                    cap_s=cap_s)
    fields = summarize(traces, t0, num_requests=spec.num_requests, output_len=outputs,
                       ttft_slo_s=spec.ttft_slo_s, itl_slo_s=spec.itl_slo_s,
                       input_len=[len(p["prompt_token_ids"]) for p in prompts] if spec.spread else None)
    fields.update(engine_request_times(traces))
    fields["duration_cap_s"] = None if cap_s is None else round(cap_s, 1)
    steps = engine.steps.since(first_step) if engine.steps is not None else []
    fields["engine_steps"] = step_summary(steps)
    written = {"tokens": client_token_sample(traces, t0), **({"steps": step_trace(steps, t0)} if steps else {})}
    errors = [t.error for t in traces if t.error]
    if not errors:
        return "ok", fields, None, written
    status = "oom" if _is_oom(RuntimeError(errors[0])) else "error"
    return status, fields, f"{len(errors)} of {len(traces)} requests failed: {errors[0]}", written


async def _measure(spec: ServingSpec, out_path: Path, budget_s: float | None,
                   log: Callable[[str], None], clock: Callable[[], float]) -> ServingSummary:
    from perfmodel.host_speed import probe_ms
    from perfmodel.host_trace import RunSampler, run_summary
    from perfmodel.measuring import env
    from perfmodel.measuring.vllm_backend import make_prompts

    started = clock()
    summary = ServingSummary()
    repaired = results.repair_tail(out_path)
    if repaired:
        log(f"{out_path}: {'removed a partial last line' if repaired == 'cut' else 'ended the last row'}")

    def recorded(rate: float) -> bool:
        ids = results.completed_ids(results.read_rows(out_path, warn=False).rows)
        return spec.point(rate).point_id in ids

    todo = [r for r in spec.rates if not recorded(r)]
    summary.already_done = len(spec.rates) - len(todo)
    log(f"serving {spec.model}: rates {', '.join(rate_key(r) for r in spec.rates)} req/s, "
        f"{summary.already_done} already done, {len(todo)} to measure")
    if not todo:
        return summary
    prov: dict[str, Any] = {}
    engine: Engine | None = None
    warmup_s: float | None = None

    def write(rate: float, status: str, fields: dict[str, Any], error: str | None, t_start: float) -> None:
        row = base_row(spec, rate, prov or env.provenance())
        if engine is not None:
            row["engine"]["max_num_batched_tokens"] = engine.settings.get("max_num_batched_tokens")
            row["engine_detail"] = {**{k: v for k, v in engine.kwargs.items() if k != "model"},
                                    "resolved": engine.settings}
        row["warmup_s"] = None if warmup_s is None else round(warmup_s, 3)
        row.update(fields)
        row["status"], row["error"] = status, error
        row["wall_s"] = round(clock() - t_start, 3)
        row["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        results.append_row(out_path, row)
        summary.measured[status] += 1
        if status == "ok":
            log(f"ok    rate {rate_key(rate)} req/s: {row['completed']}/{spec.num_requests} completed, "
                f"ttft p50 {row['ttft_p50_ms']} ms, itl p50 {row['itl_p50_ms']} ms, "
                f"{row['completion_rate'] or 0:.2f} req/s served ({row['wall_s']:.0f} s)")
            short = short_run_note(row)
            if short:
                log(f"note  rate {rate_key(rate)} req/s: {short}")
        else:
            log(f"{status:5s} rate {rate_key(rate)} req/s: {error}")
        if error and _is_fatal(error):
            summary.stopped = "fatal device error"

    t_build = clock()
    try:
        engine = start_engine(spec, log, clock)
        await check_dummy_fill(engine, log)
        prov = env.provenance()  # after the engine: vLLM starts its workers before CUDA is touched here
        warmup_s = await warm_up(engine, spec, clock)
        log(f"warm-up done in {warmup_s:.1f} s")
    except Exception as exc:  # noqa: BLE001 - a failed start is a result of every rate
        status = "oom" if _is_oom(exc) else "error"
        for rate in todo:
            write(rate, status, {}, "engine start / warm-up: " + one_line(exc), t_build)
        await stop_engine(engine)
        summary.elapsed_s = clock() - started
        return summary
    try:
        inputs, outputs = spec.lengths()
        prompts = make_prompts(inputs, engine.vocab, seed=spec.seed)
        for i, rate in enumerate(todo):
            if summary.stopped:
                summary.deferred.append(spec.point(rate).point_id)
                continue
            if recorded(rate):  # by another run meanwhile
                summary.already_done += 1
                continue
            left = None if budget_s is None else budget_s - (clock() - started)
            cap = rate_cap(spec, todo[i:], left)
            if left is not None and cap is not None and cap < MIN_RATE_S:
                summary.deferred += [spec.point(r).point_id for r in todo[i:]]
                summary.stopped = "time budget"
                log(f"skip  rates {', '.join(rate_key(r) for r in todo[i:])}: {max(left, 0):.0f} s left")
                break
            t_rate = clock()
            written: dict[str, dict[str, Any]] = {}
            probes = [probe_ms()]  # the host's speed, before and after the rate, and sampled throughout
            with RunSampler() as sampler:
                try:
                    status, fields, error, written = await measure_rate(engine, spec, rate, prompts, cap, clock,
                                                                        outputs)
                except Exception as exc:  # noqa: BLE001 - a failed rate is a row
                    status, fields, error = ("oom" if _is_oom(exc) else "error"), {}, one_line(exc)
            fields["host_probe_ms"] = [round(ms, 3) for ms in (*probes, probe_ms())]
            fields["host_run"] = run_summary(sampler.samples)
            write(rate, status, fields, error, t_rate)
            for kind, trace in written.items():
                results.append_row(trace_path(out_path, kind), {"point_id": spec.point(rate).point_id, **trace})
    finally:
        await stop_engine(engine)
    summary.elapsed_s = clock() - started
    return summary


def trace_path(out_path: Path, kind: str) -> Path:
    """Where a rows file's traces of one kind go, one line per measured rate: ``<stem>-steps.jsonl``
    (the engine's steps, :func:`vllm_steps.step_trace`), ``<stem>-tokens.jsonl`` (the client's
    output times of a sample of requests, :func:`client_token_sample`)."""
    return out_path.with_name(f"{out_path.stem}-{kind}.jsonl")


def _run(loop: asyncio.AbstractEventLoop, coro) -> Any:
    """Run ``coro`` to the end on ``loop``, then cancel what is left and close the loop."""
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def measure_serving(spec: ServingSpec, out_path: Path, *, budget_s: float | None = None,
                    log: Callable[[str], None] | None = None) -> ServingSummary:
    """Measure ``spec`` (one engine), appending one row per rate to ``out_path``."""
    log = log or (lambda msg: print(msg, flush=True))
    loop, clock = new_loop_and_clock()
    return _run(loop, _measure(spec, Path(out_path), budget_s, log, clock))


# --------------------------------------------------------------------------- the command


def _positive(value: float | None, option: str, integer: bool = False) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{option} must be {'an integer' if integer else 'a number'} > 0, got {value}")
    if integer and int(value) != value:
        raise InputError(f"{option} must be an integer > 0, got {value}")
    return int(value) if integer else float(value)


def _one_length(text: str | None, default: int, option: str) -> tuple[int, tuple[tuple[str, int], ...]]:
    """A serving length: ``"1024"`` -> (1024, ()), or percentiles ``"p50=512,p90=2048"`` ->
    (512, (("p90", 2048),)), checked as the planning's traffic checks them."""
    from pydantic import ValidationError

    from perfmodel.errors import validation_message
    from perfmodel.measuring.points import parse_int_list
    from perfmodel.planning.question import LENGTH_QUANTILES, Traffic, parse_length

    if text is None:
        return default, ()
    if "=" not in text and ":" not in text:
        values = parse_int_list(text, option.lstrip("-").replace("-", " "))
        if len(values) != 1:
            raise InputError(f"--serving takes one {option} (got {text}); run one command per length")
        return values[0], ()
    spec = parse_length(text, option)
    try:
        Traffic(rate=1.0, input_len=spec)
    except ValidationError as exc:
        raise InputError(f"bad {option} '{text}': {validation_message(exc)}") from None
    if any(not float(v).is_integer() for v in spec.values()):
        raise InputError(f"bad {option} '{text}': percentiles must be whole numbers of tokens")
    spread = tuple((q, int(spec[q])) for q in LENGTH_QUANTILES if q in spec and q != "p50")
    return int(spec["p50"]), spread


def _file_lengths(path: Path) -> dict[str, Any]:
    """What a spec keeps of a lengths file (:func:`perfmodel.planning.question.read_lengths_file`):
    its path, the sha256 of its bytes, and the medians and higher percentiles (p90, p99, made
    non-decreasing) of its inputs and outputs (outputs at least 2 tokens, as the planning draws
    them)."""
    import hashlib

    import numpy as np

    from perfmodel.planning.question import read_lengths_file

    pairs = read_lengths_file(Path(path))
    out: dict[str, Any] = {"lengths_file": str(path),
                           "lengths_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    for name, column in (("input", pairs[:, 0]), ("output", np.maximum(pairs[:, 1], 2))):
        p50, p90, p99 = np.maximum.accumulate(np.rint(np.percentile(column, [50, 90, 99])).astype(int))
        out[f"{name}_len"], out[f"{name}_spread"] = int(p50), (("p90", int(p90)), ("p99", int(p99)))
    return out


def build_specs(*, models: list[str], rates: str | None, num_requests: int, input_len: str | None,
                output_len: str | None, max_num_seqs: int, seed: int, duration_s: float | None,
                ttft_slo_s: float | None, itl_slo_s: float | None, overrides: list[str],
                layers: int | None, cuda_graphs: bool, settings: dict[str, str],
                lengths_file: Path | None = None, burstiness: float = 1.0) -> list[ServingSpec]:
    """The serving specs of the command's arguments; bad values raise InputError (one line)."""
    if rates is None:
        raise InputError("--serving needs --rate (requests per second, e.g. 2,4,8)")
    rate_list = parse_rates(rates)
    n = _positive(num_requests, "--num-requests", integer=True)
    seqs = _positive(max_num_seqs, "--max-num-seqs", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"--seed must be an integer, got {seed}")
    if lengths_file is not None:
        if input_len is not None or output_len is not None:
            raise InputError("--lengths-file gives each request's lengths: leave out --input-len and --output-len")
        lengths = _file_lengths(lengths_file)
    else:
        s, s_spread = _one_length(input_len, DEFAULT_INPUT_LEN, "--input-len")
        o, o_spread = _one_length(output_len, DEFAULT_OUTPUT_LEN, "--output-len")
        lengths = dict(input_len=s, output_len=o, input_spread=s_spread, output_spread=o_spread)
    common = dict(rates=tuple(rate_list), num_requests=n, max_num_seqs=seqs, **lengths,
                  seed=seed, burstiness=check_burstiness(burstiness),
                  duration_s=_positive(duration_s, "--duration-s"),
                  ttft_slo_s=_positive(ttft_slo_s, "--ttft-slo"), itl_slo_s=_positive(itl_slo_s, "--itl-slo"),
                  overrides=tuple(overrides), layers=layers, cuda_graphs=cuda_graphs,
                  settings=tuple(sorted(settings.items())))
    return [ServingSpec(model=m, **common) for m in models]


def default_out() -> Path:
    """``validate/results/<gpu-short-name>-vllm-serving.jsonl``."""
    from perfmodel.measuring.env import gpu_short_name
    from perfmodel.paths import RESULTS_DIR

    return RESULTS_DIR / f"{gpu_short_name()}-vllm-serving.jsonl"


def run_command(specs: list[ServingSpec], out: Path | None, budget_s: float | None,
                log: Callable[[str], None]) -> ServingSummary:
    """Measure each spec in turn (one engine each) into ``out``; the summary of them all."""
    out_path = Path(out) if out is not None else default_out()
    log(f"writing {out_path}")
    total = ServingSummary()
    t0 = time.monotonic()
    for spec in specs:
        left = None if budget_s is None else budget_s - (time.monotonic() - t0)
        if total.stopped or (left is not None and left <= MIN_RATE_S):
            total.deferred += [spec.point(r).point_id for r in spec.rates]
            total.stopped = total.stopped or "time budget"
            continue
        one = measure_serving(spec, out_path, budget_s=left, log=log)
        for status, count in one.measured.items():
            total.measured[status] += count
        total.already_done += one.already_done
        total.deferred += one.deferred
        total.stopped = total.stopped or one.stopped
    total.elapsed_s = time.monotonic() - t0
    log(f"done in {total.elapsed_s:.0f} s: " + ", ".join(f"{k} {v}" for k, v in total.measured.items())
        + f", already there {total.already_done}, not started {len(total.deferred)}"
        + (f" (stopped: {total.stopped})" if total.stopped else ""))
    if total.stopped == "fatal device error":
        print("the device is in an unusable state; run the same command again to resume", file=sys.stderr)
    return total


def check_engine_args(backend: str, routing_probe: bool, dp: int) -> None:
    """Refuse (one line) what a serving run cannot take: another backend, the routing probe,
    data-parallel replicas (a serving run is one engine)."""
    if backend != "vllm":
        raise InputError(f"--serving measures vLLM's async engine: use --backend vllm (got '{backend}')")
    if routing_probe is True:
        raise InputError("--serving and --routing-probe are separate runs; give one of them")
    if dp != 1:
        raise InputError("--serving runs one engine: give it without --dp")


def serving_command(*, models: list[str], out: Path | None, budget_s: float | None, allow_cpu: bool,
                    **spec_args: Any) -> ServingSummary:
    """``measure --serving`` after :func:`check_engine_args`: the serving arguments (one line,
    exit 2, before anything starts), then the machine (vLLM, a GPU), then each model in turn;
    exit code 3 after a fatal device error. ``spec_args``: :func:`build_specs`'s keywords other
    than ``models``."""
    import typer

    from perfmodel.measuring import vllm_backend
    from perfmodel.measuring.preflight import require_gpu, require_gpu_libraries

    specs = build_specs(models=models, **spec_args)
    require_gpu_libraries("measure")
    if not vllm_backend.vllm_available():
        from perfmodel.measuring.cli import VLLM_MISSING

        raise InputError(VLLM_MISSING)
    require_gpu("measure", "the committed results replay with `perfmodel validate --serving`",
                allow_cpu=allow_cpu is True)
    summary = run_command(specs, out, budget_s, lambda msg: print(msg, flush=True))
    if summary.stopped == "fatal device error":
        raise typer.Exit(code=3)
    return summary
