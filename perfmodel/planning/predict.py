"""Serving latencies of one deployment, as a function: what a validator compares with
measured serving runs (``vllm bench serve`` at a request rate), either under a fresh seeded
draw of arrivals (Poisson, or gamma gaps) or as a replay of a measured run's own submission times."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, Union

import numpy as np

from perfmodel.errors import InputError
from perfmodel.planning.candidates import Engine
from perfmodel.planning.question import PlanQuestion, Search as SearchSpace, Simulation, Traffic
from perfmodel.specs.layout import Layout

#: Most engine steps a replay simulates (a bound for runs without an end time).
REPLAY_MAX_STEPS = 2_000_000
#: Draws of the launch noise a replay averages over (:mod:`perfmodel.host_noise`; one without).
NOISE_DRAWS = 8


def _layout(layout: Any) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, Mapping):
        unknown = set(layout) - {"tp", "ep", "pp", "dp", "expert_parallel"}
        if unknown:
            raise InputError(f"unknown layout key '{sorted(unknown)[0]}' (tp, ep, pp, dp, expert_parallel)")
        return Layout(**{k: bool(v) if k == "expert_parallel" else int(v) for k, v in layout.items()})
    if isinstance(layout, (tuple, list)) and 1 <= len(layout) <= 3:
        return Layout(*(int(v) for v in layout))
    raise InputError(f"layout must be a Layout, a dict of tp/ep/pp/dp/expert_parallel or a (tp, ep, pp) tuple, "
                     f"got {layout!r}")


def predict_serving(model: str, gpu: str, layout: Union[Layout, Mapping[str, int], tuple] = (1, 1, 1),
                    traffic: Union[Traffic, Mapping[str, Any], None] = None, *, replicas: int = 1,
                    dtype: str = "bf16", max_num_seqs: int = 256, max_batched_tokens: int = 8192,
                    engine: str = "vllm", overrides: list[str] | None = None, requests: int = 400,
                    warmup: int = 100, seed: int = 0, arrivals: Sequence[float] | None = None,
                    until_s: float | None = None, kv_tokens: int | None = None,
                    host_probe_ms: float | None = None, graph_tokens: int | None = None,
                    lengths: tuple[Sequence[int], Sequence[int]] | None = None,
                    kv_dtype: str | None = None, routing_ids: bool = False,
                    gpu_memory_utilization: float | None = None,
                    kv_cache_memory_gib: float | None = None) -> dict[str, Any]:
    """Simulated serving latencies of ``replicas`` replicas of one engine configuration.

    ``traffic``: a :class:`Traffic` or its fields (``rate`` req/s, ``burstiness``: the gamma
    shape of the gaps between arrivals, 1 for Poisson; ``input_len``, ``output_len``,
    ``lengths_file``). Returns ``ttft_s``, ``itl_s``, ``tpot_s`` and ``e2e_s``
    (each {p50, p90, p99, mean}, seconds), ``overloaded``, ``mean_batch``,
    ``peak_kv_fraction``, ``preemptions``, ``saturation_rate_per_replica`` (req/s),
    ``closed_form`` (the steady-state estimate, or None above saturation), ``measured_requests``
    and the ``kv_tokens`` of one replica. Bad input raises :class:`InputError`.

    A replay (``arrivals`` given: the requests' submission times, s from the run's start; one
    replica, pp = 1) simulates exactly those requests from an idle engine instead of a seeded
    draw (``requests`` and ``warmup`` are then unused), ends the run at ``until_s`` (s, on the
    same clock; None: when every request has finished), where the requests still running are
    aborted, and holds the engine's KV cache at ``kv_tokens`` tokens where given (else the
    planning's), and gives request i the prompt and output tokens ``lengths[0][i]``,
    ``lengths[1][i]`` where given (else lengths drawn from the traffic with ``seed``; the traffic's
    lengths still set the closed form). Its statistics are computed as a measured row's
    (:meth:`perfmodel.planning.simulate.SimResult.run_summary`): the percentiles are over the
    completed requests, and the result adds ``replay`` (True), ``submitted``, ``completed``,
    ``aborted``, ``output_tokens``, ``window_s``, ``output_tok_s``, ``completion_rate``
    (req/s), ``per_request`` (``submitted_s``, ``ttft_s``, ``e2e_s``, ``output_tokens``),
    ``overload_reason``, ``until_s`` and ``model_kv_tokens`` (the planning's own KV capacity, tokens,
    whatever ``kv_tokens`` the replay held). Where the profile has launch noise, the replay is run
    :data:`NOISE_DRAWS` times, from noise seeds ``seed``, ``seed`` + 1, …: the latency
    statistics and the two rates are their means, the rest the first draw's.
    ``saturation_rate_per_replica`` and ``closed_form`` are the closed form's at the traffic's
    rate with the same limits. ``host_probe_ms``: the host's probe time (ms,
    :mod:`perfmodel.host_speed`); None: the profile's host. ``graph_tokens``: the engine's
    largest captured CUDA graph (tokens; 0: none); None: the profile's
    (``options.cudagraph_max_tokens``). ``kv_dtype``: the KV cache's dtype (fp8: half the bytes
    of a cached token); None: the weights' unquantized dtype. ``routing_ids``: the experts' kernel
    is handed expert ids, as under vLLM's routing simulator
    (:attr:`perfmodel.prediction.Workload.routing_ids`). ``gpu_memory_utilization``: the share of
    each GPU's memory the engine may fill (vLLM's flag; None: the profile's);
    ``kv_cache_memory_gib``: the KV cache per GPU, GiB, the engine is given in its place (vLLM's
    --kv-cache-memory; None: what the memory left after weights and activations holds).
    """
    from pydantic import ValidationError

    from perfmodel.planning.search import Search

    if traffic is None:
        raise InputError("traffic is required: rate (req/s), input_len, output_len")
    lay = _layout(layout)
    times = _replay_inputs(arrivals, until_s, kv_tokens, replicas, lay)
    given = _replay_lengths(lengths, arrivals, times)
    try:
        traffic_obj = traffic if isinstance(traffic, Traffic) else Traffic(**dict(traffic))
        question = PlanQuestion(
            model=model, set=list(overrides or []), engine=engine, traffic=traffic_obj,
            search=SearchSpace(gpus=[gpu], dtypes=[dtype], max_num_seqs=[max_num_seqs],
                               max_batched_tokens=max_batched_tokens, disaggregation=False,
                               max_gpus=lay.gpus * replicas, kv_dtype=kv_dtype,
                               gpu_memory_utilization=gpu_memory_utilization,
                               kv_cache_memory_gib=kv_cache_memory_gib),
            simulation=Simulation(requests=requests, warmup=warmup, seed=seed), host_probe_ms=host_probe_ms)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    if graph_tokens is not None and (isinstance(graph_tokens, bool) or not isinstance(graph_tokens, int)
                                     or graph_tokens < 0):
        raise InputError(f"graph_tokens must be a whole number of tokens >= 0, got {graph_tokens!r}")
    search = Search(question, priced=False, graph_tokens=graph_tokens, routing_ids=bool(routing_ids))
    lay.check(search.model)
    setup = search.setup(search.offers[0], dtype, lay, kv_dtype)
    if setup.failure:
        raise InputError(setup.failure)
    if times is not None:
        return _replay(search, setup, max_num_seqs, max_batched_tokens, times, until_s, kv_tokens, seed, given)
    ev = search.simulated(setup, Engine(setup.offer.name, dtype, lay, max_num_seqs, max_batched_tokens, kv_dtype),
                          replicas)
    return {**{f"{m}_s": ev.metrics[m] for m in ("ttft", "itl", "tpot", "e2e")},
            "overloaded": not ev.stable, "mean_batch": ev.details["mean_batch"],
            "peak_kv_fraction": ev.details["peak_kv_fraction"], "preemptions": ev.details["preemptions"],
            "saturation_rate_per_replica": ev.details["saturation_rate_per_replica"],
            "closed_form": ev.details["closed_form"], "measured_requests": ev.details["measured_requests"],
            "kv_tokens": setup.steps.kv_tokens if setup.steps else 0}


def _replay_inputs(arrivals: Sequence[float] | None, until_s: float | None, kv_tokens: int | None,
                   replicas: int, lay: Layout):
    """The replay's arrival times (s, sorted) after checking its arguments; None without arrivals."""
    if arrivals is None:
        if until_s is not None or kv_tokens is not None:
            raise InputError("until_s and kv_tokens apply to a replay of explicit arrivals")
        return None
    try:
        times = np.sort(np.asarray(list(arrivals), dtype=float))
    except (TypeError, ValueError):
        raise InputError("arrivals must be a list of times in seconds") from None
    if times.ndim != 1 or not len(times):
        raise InputError("arrivals must hold at least one time in seconds")
    if not np.all(np.isfinite(times)) or times[0] < 0:
        raise InputError("arrivals must be finite times >= 0 s")
    if until_s is not None and not (isinstance(until_s, (int, float)) and math.isfinite(until_s) and until_s > 0):
        raise InputError(f"until_s must be a time > 0 s, got {until_s!r}")
    if kv_tokens is not None and not (isinstance(kv_tokens, int) and not isinstance(kv_tokens, bool)
                                      and kv_tokens > 0):
        raise InputError(f"kv_tokens must be a whole number of tokens > 0, got {kv_tokens!r}")
    if replicas != 1 or lay.streams != 1:
        raise InputError("a replay of explicit arrivals simulates one engine stream (replicas 1, pp 1, dp 1)")
    return times


def _replay_lengths(lengths, arrivals, times):
    """A replay's (prompt, output) tokens per request as integer arrays in the order of its
    sorted arrival ``times``; None where no lengths are given."""
    if lengths is None:
        return None
    if times is None:
        raise InputError("lengths apply to a replay of explicit arrivals")
    try:
        s, o = (np.asarray(list(x), dtype=float) for x in lengths)
    except (TypeError, ValueError):
        raise InputError("lengths must be two lists of token counts: prompts and outputs") from None
    if s.shape != (len(times),) or o.shape != (len(times),):
        raise InputError(f"lengths must give a prompt and an output length for each of the {len(times)} arrivals")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(o)) and np.all(s >= 1) and np.all(o >= 1)
            and np.all(s == np.rint(s)) and np.all(o == np.rint(o))):
        raise InputError("lengths must be whole numbers of tokens >= 1")
    order = np.argsort(np.asarray(list(arrivals), dtype=float), kind="stable")
    return s[order].astype(np.int64), np.maximum(o[order], 2).astype(np.int64)


def _mean_over_draws(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's statistics over several draws of the launch noise: the latency statistics
    (s) and the rates (tok/s, req/s) each the mean over the draws; the counts and the
    per-request data the first draw's."""
    out = dict(summaries[0])
    for metric in ("ttft", "itl", "tpot", "e2e"):
        out[metric] = {q: float(np.mean([d[metric][q] for d in summaries])) for q in out[metric]}
    for rate in ("output_tok_s", "completion_rate"):
        values = [d[rate] for d in summaries if d[rate] is not None]
        out[rate] = float(np.mean(values)) if values else None
    return out


def _replay(search, setup, max_num_seqs: int, max_batched_tokens: int, times, until_s: float | None,
            kv_tokens: int | None, seed: int, given=None) -> dict[str, Any]:
    """Simulate the given arrivals on one replica (see :func:`predict_serving`)."""
    from perfmodel.planning.serving import serving_curve
    from perfmodel.planning.simulate import EngineLimits, Requests, simulate

    kv = int(kv_tokens) if kv_tokens is not None else setup.steps.kv_tokens
    s, o = given if given is not None else search.lengths.sample(len(times), np.random.default_rng(seed))
    longest = int((s + o).max()) if given is not None else search.longest
    if kv < longest:
        raise InputError(f"a KV cache of {kv:,} tokens cannot hold the longest request ({longest:,})")
    limits = EngineLimits(max_num_seqs, max_batched_tokens, kv, setup.profile.options.async_scheduling)
    steps = search.engine_steps(setup, max_num_seqs)[0]  # the given largest graph, else the engine's default
    draws = NOISE_DRAWS if steps.launch_noise is not None else 1
    results = [simulate(steps, limits, Requests(times, s, o), max_steps=REPLAY_MAX_STEPS, until_s=until_s,
                        record_tokens=True, noise_seed=seed + k) for k in range(draws)]
    result = results[0]
    stats = _mean_over_draws([r.run_summary() for r in results])
    curve = serving_curve(steps, limits, search.mean_in, search.mean_out)
    state = curve.at(search.rate)
    return {**{f"{m}_s": stats[m] for m in ("ttft", "itl", "tpot", "e2e")},
            "replay": True, "overloaded": result.overloaded, "overload_reason": result.reason,
            **{k: stats[k] for k in ("submitted", "completed", "aborted", "output_tokens", "window_s",
                                     "output_tok_s", "completion_rate", "per_request")},
            "mean_batch": result.mean_batch, "peak_kv_fraction": result.peak_kv_fraction,
            "preemptions": result.preemptions, "saturation_rate_per_replica": curve.saturation_rate,
            "closed_form": state.metrics() if state.stable else None, "measured_requests": len(times),
            "kv_tokens": kv, "model_kv_tokens": setup.steps.kv_tokens, "until_s": until_s}
