"""A measured serving run replayed through the planning simulation, and whether it kept up.

The pieces :mod:`perfmodel.validate.serving` compares with, and
:mod:`perfmodel.calibration.fit_serving_band` fits a band from: the run a row measured
(:func:`measured_schedule`, :func:`drain_limit`, :func:`engine_kv_tokens`, the GPU, layout and
dtype it ran), its replay by :func:`perfmodel.planning.predict_serving` (:func:`predict_row`),
the compared values of both (:func:`replayed_values`), and the overload rule of the validation
applied to either (:func:`overload`; both are described in :mod:`perfmodel.validate.serving`).
Latencies in seconds unless a name says ms.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from perfmodel.errors import InputError, PerfModelError
from perfmodel.specs.layout import Layout

#: Overloaded when the last quarter's median TTFT is at least this many times the first quarter's.
QUEUE_GROWTH = 2.0
#: Fewest submitted requests for the TTFT-growth test (two per quarter).
MIN_GROWTH_REQUESTS = 8
#: A run that kept up shows a steady state where its submissions span at least this many of its
#: requests' median E2E: the engine's batch fills within one E2E of the first submission, so the
#: later half of a shorter run's requests met an engine still filling, whatever the rate.
STEADY_E2E_SPANS = 2.0
#: Compared latency metrics: name -> (measured field, ms; predicted metric, percentile).
LATENCY = {
    "ttft_p50": ("ttft_p50_ms", "ttft_s", "p50"),
    "ttft_p90": ("ttft_p90_ms", "ttft_s", "p90"),
    "itl_p50": ("itl_p50_ms", "itl_s", "p50"),
    "itl_p90": ("itl_p90_ms", "itl_s", "p90"),
    "itl_mean": ("itl_mean_ms", "itl_s", "mean"),
}
METRICS = (*LATENCY, "served_tok_s")
#: The |relative error| a replayed run's metric should be within: latencies 15%, served output
#: tokens/s 10% (the serving check's targets; the validation and the serving band count the runs
#: that kept up and are within them).
TARGETS = {"ttft_p50": 0.15, "ttft_p90": 0.15, "itl_p50": 0.15, "itl_p90": 0.15, "itl_mean": 0.15,
           "served_tok_s": 0.10}
#: The planning's engine profile the predictions use.
ENGINE = "vllm"


def gpu_spec_name(gpu_name: str | None, default: str) -> str:
    """The spec name of a measured GPU (``NVIDIA H200`` -> h200-sxm, ``NVIDIA H100 80GB HBM3`` ->
    h100-sxm through its ``h100-80gb`` alias): the longest leading part of the short name that
    is a known GPU; ``default`` when none is."""
    from perfmodel.measuring.env import gpu_short_name
    from perfmodel.specs.hardware import load_gpu

    if gpu_name and gpu_name != "cpu":
        parts = gpu_short_name(gpu_name).split("-")
        for n in range(len(parts), 0, -1):
            try:
                return load_gpu("-".join(parts[:n])).name
            except PerfModelError:
                continue
    return load_gpu(default).name


def serving_layout(row: dict[str, Any]) -> Layout:
    """The model's layout for a row: tp and pp as measured, vLLM's expert parallelism (whole
    experts over the tp GPUs, :mod:`perfmodel.specs.layout`) where its engine ran it."""
    from perfmodel.measuring.compare import row_layout

    lay = row_layout(row)
    return Layout(int(lay["tp"]), 1, int(lay["pp"]), expert_parallel=bool(lay["ep"]))


def serving_weights(row: dict[str, Any]) -> str:
    """The weight choice a row is replayed at (:func:`perfmodel.planning.steptime.weight_choice`):
    the quantization scheme its engine ran (:func:`perfmodel.measuring.compare.row_quant`:
    ``fp8`` for ``--quantization fp8``, ``w4a16`` for a GPTQ checkpoint, ``fp8-block``…), else
    ``none``: the model unquantized, as the run loaded it, even where the model's own checkpoint
    is stored quantized (DeepSeek-V3's fp8 blocks)."""
    from perfmodel.measuring.compare import row_quant
    from perfmodel.quantization import NO_QUANT

    return row_quant(row) or NO_QUANT


def serving_dtype(row: dict[str, Any]) -> str:
    """What a row ran as, as a plan labels it: its quantization scheme (:func:`serving_weights`),
    bf16 where it ran none."""
    from perfmodel.quantization import ALIAS_BASE_DTYPE, NO_QUANT

    weights = serving_weights(row)
    return ALIAS_BASE_DTYPE if weights == NO_QUANT else weights


def serving_kv_dtype(row: dict[str, Any]) -> str | None:
    """The KV cache's dtype of a row where vLLM stored it quantized (``fp8``), else None (the
    weights' unquantized dtype)."""
    from perfmodel.measuring.compare import row_kv_dtype

    return row_kv_dtype(row)


def serving_scheme(row: dict[str, Any]) -> str:
    """What a serving run ran as, in ``perfmodel plan``'s labels: its weights' scheme
    (:func:`serving_dtype`, ``bf16`` unquantized), with `` kv-fp8`` where its KV cache was
    stored in fp8."""
    from perfmodel.planning.candidates import weights_text

    return weights_text(serving_dtype(row), serving_kv_dtype(row))


def model_label(model: str, scheme: str | None, burstiness: float | None = None) -> str:
    """A report's name for a run: the model, with its scheme in brackets where it is not bf16
    and its arrivals' gamma shape where they were not Poisson (``burstiness`` other than 1)."""
    from perfmodel.planning.question import burstiness_text

    notes = [n for n in ((None if scheme in (None, "bf16") else scheme), burstiness_text(burstiness)) if n]
    return f"{model} ({', '.join(notes)})" if notes else model


def offered_rate(row: dict[str, Any]) -> float:
    """The rate a row's requests were offered at, req/s: its achieved rate, else its nominal one."""
    achieved = row.get("achieved_rate")
    return float(achieved) if isinstance(achieved, (int, float)) and achieved > 0 else float(row["rate"])


# --------------------------------------------------------------------------- the measured run


def row_burstiness(row: dict[str, Any]) -> float:
    """The gamma shape of a row's arrival gaps (rows before the field: 1, Poisson)."""
    value = row.get("burstiness")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 1.0


def measured_schedule(row: dict[str, Any]) -> tuple[list[float], str]:
    """The submission times (s from the rate's start) of a row's submitted requests, and where
    they come from: ``submitted`` (its per-request data) or ``scheduled`` (the seeded schedule the
    measurement drew, at its burstiness, cut at its duration cap, where the row lacks them)."""
    per = row.get("per_request")
    if isinstance(per, dict) and per.get("submitted_s") is not None:
        return [float(t) for t in per["submitted_s"] if t is not None], "submitted"
    from perfmodel.measuring.vllm_serving import poisson_arrivals

    cap = row.get("duration_cap_s")
    times = poisson_arrivals(float(row["rate"]), int(row["num_requests"]), int(row.get("seed") or 0),
                             row_burstiness(row))
    return [t for t in times if cap is None or t <= cap], "scheduled"


def traffic_lengths(row: dict[str, Any]) -> dict[str, Any]:
    """A row's ``input_len`` and ``output_len`` as the planning's traffic takes them: its S and O,
    or, where its lengths were drawn (``lengths``), their percentiles."""
    spread = row.get("lengths")
    if isinstance(spread, dict):
        return {k: spread[k] for k in ("input_len", "output_len")}
    return {"input_len": int(row["input_len"]), "output_len": int(row["output_len"])}


def lengths_label(row: dict[str, Any]) -> str:
    """A row's lengths as S/O: ``1024/256``, or, drawn, the medians and the higher percentiles,
    ``512/128 median, p90 2048/512``."""
    spread = traffic_lengths(row)
    s, o = spread["input_len"], spread["output_len"]
    if not isinstance(s, dict) and not isinstance(o, dict):
        return f"{s}/{o}"
    s, o = (x if isinstance(x, dict) else {"p50": x} for x in (s, o))
    def tok(v: Any) -> str:
        return "–" if v is None else f"{float(v):g}"
    higher = [q for q in ("p90", "p95", "p99") if q in s or q in o]
    return ", ".join([f"{tok(s.get('p50'))}/{tok(o.get('p50'))} median",
                      *(f"{q} {tok(s.get(q))}/{tok(o.get(q))}" for q in higher)])


def request_lengths(row: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """Prompt and output tokens of each submitted request of a row whose lengths were drawn (in
    the order of :func:`measured_schedule`'s times), None for a row of fixed S and O."""
    per = row.get("per_request")
    if not isinstance(per, dict) or per.get("input_len") is None:
        return None
    kept = [i for i, t in enumerate(per.get("submitted_s") or []) if t is not None]
    return [int(per["input_len"][i]) for i in kept], [int(per["output_len"][i]) for i in kept]


def mean_lengths(row: dict[str, Any]) -> tuple[float, float]:
    """Mean prompt and output tokens of a row's submitted requests (its S and O where fixed)."""
    given = request_lengths(row)
    if not given or not given[0]:
        return float(row["input_len"]), float(row["output_len"])
    return statistics.fmean(given[0]), statistics.fmean(given[1])


def drain_limit(row: dict[str, Any]) -> float | None:
    """When the measurement aborted the requests still running, s from the rate's start:
    ``DRAIN_FACTOR`` x its duration cap; None for a run without a cap."""
    from perfmodel.measuring.vllm_serving import DRAIN_FACTOR

    cap = row.get("duration_cap_s")
    return None if cap is None else DRAIN_FACTOR * float(cap)


def engine_kv_tokens(row: dict[str, Any]) -> int | None:
    """Tokens of KV cache the measured engine allocated (``num_gpu_blocks`` x ``block_size`` of
    ``engine_detail.resolved``), None where the row does not say."""
    resolved = (row.get("engine_detail") or {}).get("resolved") or {}
    blocks, size = resolved.get("num_gpu_blocks"), resolved.get("block_size")
    if isinstance(blocks, int) and isinstance(size, int) and blocks > 0 and size > 0:
        return blocks * size
    return None


def predict_row(row: dict[str, Any], gpu: str, *, at_probe: bool = True, engine: str = ENGINE,
                rate_factor: float = 1.0) -> dict[str, Any]:
    """:func:`perfmodel.planning.predict_serving` replaying the run a row measured (each request
    at its submission time, with its own lengths where they were drawn), with the
    engine's own largest CUDA graph (:func:`perfmodel.measuring.compare.row_graph_tokens`), on the
    host's speed it measured where it has one (sampled through the rate, else its probes:
    :func:`perfmodel.host_speed.row_host_ms`), or
    on the profile's reference host with ``at_probe=False``; ``engine``: the profile (an engine
    name, or a profile YAML's path). ``rate_factor``: the same requests offered that many times
    faster (each submission time, and the drain limit, divided by it)."""
    from perfmodel import planning
    from perfmodel.host_speed import row_host_ms
    from perfmodel.measuring.compare import row_graph_tokens, row_overrides, row_routing_ids

    settings = row.get("engine") or {}
    kwargs: dict[str, Any] = {}
    if isinstance(settings.get("max_num_batched_tokens"), int):
        kwargs["max_batched_tokens"] = settings["max_num_batched_tokens"]
    if not rate_factor > 0:
        raise InputError(f"a rate factor must be positive, not {rate_factor}")
    arrivals, _ = measured_schedule(row)
    if not arrivals:
        raise InputError("no request was submitted")
    until = drain_limit(row)
    return planning.predict_serving(
        row["model"], gpu, serving_layout(row),
        {"rate": offered_rate(row) * rate_factor, "burstiness": row_burstiness(row), **traffic_lengths(row)},
        lengths=request_lengths(row),
        dtype=serving_weights(row), kv_dtype=serving_kv_dtype(row), max_num_seqs=int(row["max_num_seqs"]), engine=engine,
        overrides=row_overrides(row), seed=int(row.get("seed") or 0), arrivals=[t / rate_factor for t in arrivals],
        until_s=None if until is None else until / rate_factor, kv_tokens=engine_kv_tokens(row),
        host_probe_ms=row_host_ms(row) if at_probe else None, graph_tokens=row_graph_tokens(row),
        routing_ids=row_routing_ids(row), **kwargs)


def overload(submitted: Sequence[float | None], ttft: Sequence[float | None],
             completed: Sequence[bool]) -> dict[str, Any]:
    """The overload rule (:mod:`perfmodel.validate.serving`) on per-request data: submission
    times (None: not submitted), TTFTs (None: no first token; any unit) and whether each
    completed.

    Returns ``overloaded`` (None when it cannot be told), ``aborted`` (submitted, not completed),
    ``never_prefilled`` (submitted, no first token), ``ttft_growth`` (last-quarter over
    first-quarter median TTFT; None with fewer than :data:`MIN_GROWTH_REQUESTS` requests) and
    ``why`` (one line)."""
    rows = sorted((s, t, c) for s, t, c in zip(submitted, ttft, completed) if s is not None)
    aborted = sum(1 for _, _, c in rows if not c)
    never = sum(1 for _, t, _ in rows if t is None)
    growth = None
    if len(rows) >= MIN_GROWTH_REQUESTS:
        q = len(rows) // 4
        first = statistics.median(math.inf if t is None else t for _, t, _ in rows[:q])
        last = statistics.median(math.inf if t is None else t for _, t, _ in rows[-q:])
        growth = last / first if first > 0 else None
    if aborted:
        why = f"{aborted} of {len(rows)} requests unfinished at the drain limit ({never} never prefilled)"
        return {"overloaded": True, "aborted": aborted, "never_prefilled": never, "ttft_growth": growth,
                "why": why}
    if growth is None:
        return {"overloaded": None, "aborted": 0, "never_prefilled": never, "ttft_growth": None,
                "why": "too few requests to tell"}
    grew = growth >= QUEUE_GROWTH
    why = f"late/early median TTFT {growth:.2f}x {'>=' if grew else '<'} {QUEUE_GROWTH:g}x"
    return {"overloaded": grew, "aborted": 0, "never_prefilled": never, "ttft_growth": growth, "why": why}


def measured_overload(row: dict[str, Any]) -> dict[str, Any]:
    """:func:`overload` of a measured row (from its ``aborted`` count alone where it lacks
    per-request data)."""
    per = row.get("per_request")
    if isinstance(per, dict) and per.get("submitted_s") is not None:
        return overload(per["submitted_s"], per["ttft_ms"], [e is not None for e in per["e2e_ms"]])
    aborted = row.get("aborted")
    if isinstance(aborted, int) and aborted > 0:
        return {"overloaded": True, "aborted": aborted, "never_prefilled": None, "ttft_growth": None,
                "why": f"{aborted} requests aborted at the drain limit"}
    return {"overloaded": None, "aborted": aborted, "never_prefilled": None, "ttft_growth": None,
            "why": "no per-request data"}


def steady_span(row: dict[str, Any]) -> bool | None:
    """Whether a measured run lasted long enough to show a steady state: its submissions span
    (the last submission's time less the first's, s; N over the offered rate without per-request
    data) at least :data:`STEADY_E2E_SPANS` times its median E2E; None without an E2E."""
    e2e = row.get("e2e_p50_ms")
    if not isinstance(e2e, (int, float)) or e2e <= 0:
        return None
    per = row.get("per_request")
    times = [t for t in (per or {}).get("submitted_s") or () if t is not None] if isinstance(per, dict) else []
    span = max(times) - min(times) if len(times) > 1 else (int(row.get("num_requests") or 0) - 1) / offered_rate(row)
    return span >= STEADY_E2E_SPANS * e2e * 1e-3


def predicted_overload(prediction: dict[str, Any]) -> dict[str, Any]:
    """:func:`overload` of a replay's per-request data (None fields where it has none)."""
    per = prediction.get("per_request")
    if not isinstance(per, dict):
        return {"overloaded": None, "aborted": prediction.get("aborted"), "never_prefilled": None,
                "ttft_growth": None, "why": "no per-request data"}
    return overload(per["submitted_s"], per["ttft_s"], [e is not None for e in per["e2e_s"]])


def replayed_values(row: dict[str, Any], pred: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """Metric of :data:`METRICS` -> (measured, predicted) of one replay of a row: latencies in s,
    served_tok_s in tokens/s; None where a side has no value."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for metric, (field, predicted, pct) in LATENCY.items():
        value = (pred.get(predicted) or {}).get(pct)
        measured = row.get(field)
        out[metric] = (None if measured is None else measured * 1e-3, None if value is None else float(value))
    out["served_tok_s"] = (row.get("output_tok_s"), pred.get("output_tok_s"))
    return out
