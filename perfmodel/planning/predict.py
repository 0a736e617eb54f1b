"""Serving latencies of one deployment, as a function: what a validator compares with
measured serving runs (``vllm bench serve`` at a request rate)."""

from __future__ import annotations

from typing import Any, Mapping, Union

from perfmodel.errors import InputError
from perfmodel.planning.candidates import Engine
from perfmodel.planning.question import PlanQuestion, Search as SearchSpace, Simulation, Traffic
from perfmodel.specs.layout import Layout


def _layout(layout: Any) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, Mapping):
        unknown = set(layout) - {"tp", "ep", "pp"}
        if unknown:
            raise InputError(f"unknown layout key '{sorted(unknown)[0]}' (tp, ep, pp)")
        return Layout(**{k: int(v) for k, v in layout.items()})
    if isinstance(layout, (tuple, list)) and 1 <= len(layout) <= 3:
        return Layout(*(int(v) for v in layout))
    raise InputError(f"layout must be a Layout, a dict of tp/ep/pp or a (tp, ep, pp) tuple, got {layout!r}")


def predict_serving(model: str, gpu: str, layout: Union[Layout, Mapping[str, int], tuple] = (1, 1, 1),
                    traffic: Union[Traffic, Mapping[str, Any], None] = None, *, replicas: int = 1,
                    dtype: str = "bf16", max_num_seqs: int = 256, max_batched_tokens: int = 8192,
                    engine: str = "vllm", overrides: list[str] | None = None, requests: int = 400,
                    warmup: int = 100, seed: int = 0) -> dict[str, Any]:
    """Simulated serving latencies of ``replicas`` replicas of one engine configuration.

    ``traffic``: a :class:`Traffic` or its fields (``rate`` req/s, ``input_len``,
    ``output_len``, ``lengths_file``). Returns ``ttft_s``, ``itl_s``, ``tpot_s`` and ``e2e_s``
    (each {p50, p90, p99, mean}, seconds), ``overloaded``, ``mean_batch``,
    ``peak_kv_fraction``, ``preemptions``, ``saturation_rate_per_replica`` (req/s),
    ``closed_form`` (the steady-state estimate, or None above saturation), ``measured_requests``
    and the ``kv_tokens`` of one replica. Bad input raises :class:`InputError`.
    """
    from pydantic import ValidationError

    from perfmodel.planning.search import Search

    if traffic is None:
        raise InputError("traffic is required: rate (req/s), input_len, output_len")
    lay = _layout(layout)
    try:
        traffic_obj = traffic if isinstance(traffic, Traffic) else Traffic(**dict(traffic))
        question = PlanQuestion(
            model=model, set=list(overrides or []), engine=engine, traffic=traffic_obj,
            search=SearchSpace(gpus=[gpu], dtypes=[dtype], max_num_seqs=[max_num_seqs],
                               max_batched_tokens=max_batched_tokens, disaggregation=False,
                               max_gpus=lay.gpus * replicas),
            simulation=Simulation(requests=requests, warmup=warmup, seed=seed))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    search = Search(question, priced=False)
    lay.check(search.model)
    setup = search.setup(search.offers[0], dtype, lay)
    if setup.failure:
        raise InputError(setup.failure)
    ev = search.simulated(setup, Engine(setup.offer.name, dtype, lay, max_num_seqs, max_batched_tokens), replicas)
    return {**{f"{m}_s": ev.metrics[m] for m in ("ttft", "itl", "tpot", "e2e")},
            "overloaded": not ev.stable, "mean_batch": ev.details["mean_batch"],
            "peak_kv_fraction": ev.details["peak_kv_fraction"], "preemptions": ev.details["preemptions"],
            "saturation_rate_per_replica": ev.details["saturation_rate_per_replica"],
            "closed_form": ev.details["closed_form"], "measured_requests": ev.details["measured_requests"],
            "kv_tokens": setup.steps.kv_tokens if setup.steps else 0}
