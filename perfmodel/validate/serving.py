"""``perfmodel validate MODEL|all --serving``: the planning simulation against measured serving.

Reads the rows of ``perfmodel measure --serving`` (``validate/results/<gpu>-vllm-serving.jsonl``,
or ``--results FILE``) and replays them: always a labelled replay, on any machine (a serving run
takes minutes of GPU time; it is measured by ``measure --serving``, not by ``validate``).

**A replay of the measured schedule.** Each row is predicted by
:func:`perfmodel.planning.predict_serving` simulating the very run the row measured, from an
idle engine:

- requests: the row's submitted requests at their real submission times
  (``per_request.submitted_s``; those never submitted under the duration cap are left out), S and
  O tokens each, or, where the run drew each request's lengths (``lengths``), each its own
  (``per_request.input_len`` / ``output_len``; the report names such runs' S/O by their
  percentiles, :func:`perfmodel.measuring.serving_replay.lengths_label`, and served req/s is
  output tok/s ÷ their mean O); a row without per-request data gets the schedule the measurement drew
  (:func:`perfmodel.measuring.vllm_serving.poisson_arrivals` of its rate, N and seed, cut at its
  duration cap);
- the end of the run: requests still running at the measurement's drain limit
  (:data:`perfmodel.measuring.vllm_serving.DRAIN_FACTOR` x ``duration_cap_s`` after the start)
  are aborted, as the measured ones were; a row without a cap runs until every request finishes;
- the engine: model, ``--set`` overrides and layers of the row; GPU from the row's ``gpu_name``
  (``NVIDIA H200`` -> h200-sxm: the longest leading part of the name that is a known GPU or alias),
  else ``--gpu``; tp and pp as measured, and vLLM's expert parallelism where the engine ran it
  (as :mod:`perfmodel.measuring.compare` does for the offline rows); dtype (fp8 for
  ``--quantization fp8``); ``max_num_seqs``; the engine's resolved ``max_num_batched_tokens``
  and its KV cache (``num_gpu_blocks`` x ``block_size`` of ``engine_detail.resolved``; the
  planning's own estimate where the row lacks them; the planning's is reported beside the
  engine's, :mod:`perfmodel.validate.serving_memory`); each launched step's host time drawn about
  the run's level as the profile's launch noise says (:mod:`perfmodel.host_noise`), the mean of
  :data:`perfmodel.planning.predict.NOISE_DRAWS` draws seeded from the row's seed.

**Compared like with like** (relative error = predicted/measured - 1, MAPE over the finite
ones): TTFT p50/p90 and ITL p50/p90 and mean over the completed requests (ITL: every gap
between two outputs of a completed request; linear-interpolated percentiles), and the served throughput
``served_tok_s``: every output token produced, aborted requests' included, over the window from
the first submission to the last token (the row's ``output_tok_s``). The prediction computes
them from its own per-request token times exactly as ``summarize`` computes the measured ones
(:meth:`perfmodel.planning.simulate.SimResult.run_summary`). Completed and aborted counts are
reported beside them. Where the client's output times of a sample of requests are kept beside
the rows (``<rows>-tokens.jsonl``), each ITL percentile also gets the measured band
p(q − 5)…p(q + 5) and whether the replay falls inside it
(:mod:`perfmodel.validate.serving_quantiles`): under load the gaps have two modes, and a
percentile near their boundary moves by a factor of two when a few percent of the gaps change
mode.

**Overload, from the per-request data** (:func:`perfmodel.measuring.serving_replay.overload`, the same rule for the measured run and
for its replay). A rate is *overloaded* when

1. requests submitted were still unfinished at the drain limit (aborted; those never given a
   first token among them): the engine did not do the offered work in 1.5 x the submission
   time; or
2. the queue grew: the median TTFT of the last quarter of the submitted requests (in submission
   order) is at least :data:`~perfmodel.measuring.serving_replay.QUEUE_GROWTH` times that of the first quarter. An engine that keeps
   up gives a late request about the TTFT of an early one (the rest of the running step plus
   the prompt's own steps, which lengthen only as the batch fills); when requests arrive faster
   than the engine admits them, each waits for all those queued before it, and the TTFT grows
   with the time into the run. The ratio is reported per rate, so how far each rate is from
   the threshold can be read.

A row without per-request data is overloaded when it reports aborted requests, and unknown
otherwise.

**Capacity.** The measured capacity is the engine's output throughput, req/s =
``output_tok_s`` / O, at the overloaded rates whose runs ended with aborted requests: the engine
held a queue from the ramp-up to the drain limit, so the tokens it produced over the window are
what it can produce (every token counted, those of aborted requests too; a request needs O of
them). Completions are not used: in a finite run the requests admitted together finish
together, so (completed - 1)/(last - first completion) says little (a short run whose requests
all fit in the batch "serves" twice its offered rate). An overloaded rate that finished every request is left out: its window
ends with the batch draining, not with the engine's limit, so its token rate is not the
capacity. The window still holds the ramp from an idle engine; the replay's capacity at the
same rates is computed the same way (like with like), the closed form's saturation rate is a
steady state (without that ramp).

Saturation, per group of rows that differ only in rate (a bursty group apart from a Poisson
one): the measured bracket (the highest offered rate not overloaded in a run long enough for a
steady state, the lowest overloaded one; a run that kept up for less than two of its requests'
E2E is listed beside it: :func:`perfmodel.measuring.serving_replay.steady_span`), the measured capacity, and beside them
the planning's closed-form saturation rate (where it falls relative to the bracket, its error
against the capacity) and the replay's capacity at the same rates and its own bracket (by the
same rule).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from perfmodel.errors import InputError, PerfModelError
from perfmodel.measuring.serving_replay import (ENGINE, LATENCY, METRICS, QUEUE_GROWTH, TARGETS, drain_limit,
                                               engine_kv_tokens, gpu_spec_name, lengths_label,
                                               mean_lengths, measured_overload,
                                               measured_schedule, offered_rate, predict_row,
                                               model_label, predicted_overload, replayed_values,
                                               row_burstiness, serving_layout, serving_scheme, steady_span)
from perfmodel.limits import MAX_LEN
from perfmodel.planning.predict import NOISE_DRAWS
from perfmodel.validate.serving_charts import lengths_text as _lengths
from perfmodel.validate.serving_memory import kv_capacity, kv_cell, kv_sentence

#: The latency percentiles whose measured band a client sample gives
#: (:mod:`perfmodel.validate.serving_quantiles`): metric -> percentile.
ITL_PERCENTILES = {"itl_p50": 50.0, "itl_p90": 90.0}
#: Per-request columns of a measured row (``per_request``).
_PER_REQUEST = ("arrival_s", "submitted_s", "ttft_ms", "e2e_ms", "output_tokens")
#: Per-request columns of a run whose lengths were drawn: each request's prompt and output tokens.
_PER_REQUEST_LENGTHS = ("input_len", "output_len")


def results_path(gpu: str) -> Path:
    """The committed serving rows of a GPU: ``validate/results/<gpu>-vllm-serving.jsonl``."""
    from perfmodel.paths import RESULTS_DIR

    return RESULTS_DIR / f"{gpu.split('-')[0]}-vllm-serving.jsonl"


def capacity_rps(output_tok_s: float | None, output_len: float) -> float | None:
    """Requests per second an output token rate serves: tok/s / O (the mean O where it varies)."""
    return None if output_tok_s is None or not math.isfinite(output_tok_s) else output_tok_s / output_len


def _rel(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured <= 0 or not math.isfinite(predicted):
        return None
    return predicted / measured - 1.0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _position(rate: float | None, below: float | None, above: float | None) -> str | None:
    """Where ``rate`` lies relative to the bracket (below, inside, above), None when unknown."""
    if rate is None or (below is None and above is None):
        return None
    if below is not None and rate < below:
        return "below"
    if above is not None and rate > above:
        return "above"
    return "inside"


def saturation(runs: list[dict[str, Any]], predicted_rate: float | None) -> dict[str, Any]:
    """The measured saturation of one group of runs (one per rate, as :func:`compare_serving`
    lists them in ``rates``) beside the closed form's saturation rate (req/s) and the replay's.

    The bracket is the highest rate kept up with below the lowest overloaded one, and that rate;
    runs kept up with above it, or kept up in a run too short to reach a steady state (``steady``
    False: :func:`perfmodel.measuring.serving_replay.steady_span`), are listed apart
    (``kept_up_above``) and bound neither side. The closed form is also taken at each bracketing run's own host
    (``closed_form_at_hosts``: each run's ``predicted_saturation_rps``), where two runs of a
    bracket ran on hosts of different speeds: ``closed_form_host_position`` is ``inside`` where
    it agrees with both runs (at least the rate the kept-up run was offered, at most the rate the
    overloaded run was), ``below`` where it says the kept-up run should have overloaded, ``above``
    where it says the overloaded run should have kept up, with ``closed_form_host_rel_error``
    against that run's offered rate."""
    runs = sorted(runs, key=lambda r: r["rate"])

    def bracket(flag: str) -> tuple[dict | None, dict | None, list[dict]]:
        lost = [r for r in runs if r[flag] is True]
        first = min(lost, key=lambda r: r["rate"]) if lost else None
        kept = [r for r in runs if r[flag] is False]
        under = [r for r in kept if (first is None or r["rate"] < first["rate"]) and r.get("steady") is not False]
        return (max(under, key=lambda r: r["rate"]) if under else None, first,
                [r for r in kept if r not in under])

    below, above, kept_above = bracket("measured_overloaded")
    p_below, p_above, _ = bracket("predicted_overloaded")
    busy = [r for r in runs if r["measured_overloaded"] and (r["measured_aborted"] or 0) > 0
            and r["measured_capacity_rps"] is not None]
    capacity = _mean([r["measured_capacity_rps"] for r in busy])
    replay = [r["predicted_capacity_rps"] for r in busy if r["predicted_capacity_rps"] is not None]
    replay_capacity = _mean(replay) if len(replay) == len(busy) else None
    low = below["offered_rate"] if below else None
    high = above["offered_rate"] if above else None
    at_low = below.get("predicted_saturation_rps") if below else None
    at_high = above.get("predicted_saturation_rps") if above else None
    host_position, host_error = None, None
    if at_low is not None and low is not None and at_low < low:
        host_position, host_error = "below", _rel(at_low, low)
    elif at_high is not None and high is not None and at_high > high:
        host_position, host_error = "above", _rel(at_high, high)
    elif at_low is not None or at_high is not None:
        host_position = "inside"
    return {
        "rates": [r["rate"] for r in runs],
        "followed_up_to": low, "followed_up_to_nominal": below["rate"] if below else None,
        "saturated_from": high, "saturated_from_nominal": above["rate"] if above else None,
        "spans": below is not None and above is not None,
        "kept_up_above": [r["offered_rate"] for r in kept_above],
        "overloaded_rates": [r["rate"] for r in runs if r["measured_overloaded"]],
        "capacity_rates": [r["rate"] for r in busy],
        "measured_capacity_rps": capacity,
        "predicted_saturation_rps": predicted_rate,
        "closed_form_position": _position(predicted_rate, low, high),
        "closed_form_rel_error": _rel(predicted_rate, capacity),
        "closed_form_at_hosts": {"kept_up": at_low, "kept_up_host_ms": below.get("host_ms") if below else None,
                                 "overloaded": at_high, "overloaded_host_ms": above.get("host_ms") if above else None},
        "closed_form_host_position": host_position, "closed_form_host_rel_error": host_error,
        "replay_capacity_rps": replay_capacity,
        "replay_capacity_rel_error": _rel(replay_capacity, capacity),
        "replay_followed_up_to": p_below["offered_rate"] if p_below else None,
        "replay_saturated_from": p_above["offered_rate"] if p_above else None,
        "replay_agrees": all(r["predicted_overloaded"] == r["measured_overloaded"] for r in runs
                             if r["measured_overloaded"] is not None),
    }


# --------------------------------------------------------------------------- rows


def _canonical(model: str) -> str:
    from perfmodel.specs.model import load_model

    try:
        return load_model(model).name
    except PerfModelError:
        return model.lower()


def _source(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    from perfmodel.paths import ROOT
    from perfmodel.validate.report_metrics import measured_span

    ok = [r for r in rows if r.get("status") == "ok"]
    first = ok[0] if ok else {}
    span = measured_span(ok)
    try:
        shown = str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {
        "mode": "replay", "results_file": shown, "gpu": first.get("gpu_name", ""),
        "driver": first.get("driver", ""), "torch": first.get("torch", ""), "vllm": first.get("vllm", ""),
        "git_commit": span["git_commit"], "date": span["date"],
        "predicted_by": f"perfmodel.planning.predict_serving (engine profile {ENGINE})",
        "comparison": "replay of the measured schedule: each row's submitted requests at their real "
                      "submission times, from an idle engine, aborted at the row's drain limit, each "
                      "launched step's host time drawn from the profile's launch noise (the mean of "
                      f"{NOISE_DRAWS} seeded draws)",
        "queue_growth": QUEUE_GROWTH,
    }


#: Fields an ok serving row must hold as numbers: the nominal rate (req/s) and the integers of
#: the run (tokens, sequences, requests).
_ROW_NUMBERS = {"rate": False, "input_len": True, "output_len": True, "max_num_seqs": True,
                "num_requests": True}
#: Measured fields that are numbers when present (ms, req/s, tok/s, s).
_ROW_MEASURED = (*(field for field, _, _ in LATENCY.values()), "achieved_rate", "completion_rate",
                 "output_tok_s", "duration_cap_s")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_per_request(name: str, per: Any) -> None:
    if not isinstance(per, dict):
        raise InputError(f"malformed serving row {name}: 'per_request' must be a mapping of columns")
    columns = {k: per.get(k) for k in _PER_REQUEST if k != "arrival_s"}
    columns.update({k: per[k] for k in _PER_REQUEST_LENGTHS if per.get(k) is not None})
    for key, column in columns.items():
        if not isinstance(column, list):
            raise InputError(f"malformed serving row {name}: 'per_request.{key}' must be a list")
        whole = key == "output_tokens" or key in _PER_REQUEST_LENGTHS
        for value in column:
            if (value is None and not whole) or (_number(value) and (not whole or float(value).is_integer())):
                continue
            raise InputError(f"malformed serving row {name}: 'per_request.{key}' holds {value!r}, "
                             f"not a {'whole ' if whole else ''}number")
    if len({len(c) for c in columns.values()}) > 1:
        raise InputError(f"malformed serving row {name}: the 'per_request' columns differ in length")


def check_row(row: dict[str, Any]) -> None:
    """Refuse (:class:`perfmodel.errors.InputError`, one line) an ok serving row that lacks the
    fields a replay reads, or holds them in another form."""
    name = row.get("point_id") or "without a point_id"
    if not isinstance(row.get("model"), str) or not row["model"]:
        raise InputError(f"malformed serving row {name}: no 'model'")
    if not isinstance(row.get("point_id"), str):
        raise InputError(f"malformed serving row of {row['model']}: no 'point_id'")
    for field, whole in _ROW_NUMBERS.items():
        value = row.get(field)
        if not _number(value) or (whole and not float(value).is_integer()) or not 0 < value <= MAX_LEN:
            raise InputError(f"malformed serving row {name}: '{field}' must be a "
                             f"{'whole number from 1' if whole else 'number above 0'} to {MAX_LEN:,}, got {value!r}")
    for field in _ROW_MEASURED:
        value = row.get(field)
        if field != "duration_cap_s" and value is not None and (not _number(value) or value < 0):
            raise InputError(f"malformed serving row {name}: '{field}' must be a number >= 0, got {value!r}")
    layers = row.get("layers")
    if layers is not None and not (_number(layers) and float(layers).is_integer() and layers >= 1):
        raise InputError(f"malformed serving row {name}: 'layers' must be a whole number >= 1, got {layers!r}")
    cap = row.get("duration_cap_s")
    if cap is not None and not (_number(cap) and cap > 0):
        raise InputError(f"malformed serving row {name}: 'duration_cap_s' must be > 0 s, got {cap!r}")
    engine = row.get("engine") or {}
    if not isinstance(engine, dict):
        raise InputError(f"malformed serving row {name}: 'engine' must be a mapping")
    for field, value, least in [*((f"engine.{k}", engine.get(k), 1) for k in ("tp", "pp", "dp")),
                                ("seed", row.get("seed"), 0)]:
        if value is not None and not (_number(value) and float(value).is_integer() and value >= least):
            raise InputError(f"malformed serving row {name}: '{field}' must be a whole number >= {least}, "
                             f"got {value!r}")
    detail = row.get("engine_detail") or {}
    resolved = detail.get("resolved") or {} if isinstance(detail, dict) else None
    if not isinstance(resolved, dict):
        raise InputError(f"malformed serving row {name}: 'engine_detail' must be a mapping")
    for key in ("num_gpu_blocks", "block_size"):
        value = resolved.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise InputError(f"malformed serving row {name}: 'engine_detail.resolved.{key}' must be a whole "
                             f"number > 0, got {value!r}")
    overrides = row.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise InputError(f"malformed serving row {name}: 'overrides' must be a list of KEY=VALUE strings")
    if row.get("gpu_name") is not None and not isinstance(row["gpu_name"], str):
        raise InputError(f"malformed serving row {name}: 'gpu_name' must be a string")
    if row.get("per_request") is not None:
        _check_per_request(name, row["per_request"])
    spread = row.get("lengths")
    if spread is not None and not (isinstance(spread, dict) and "input_len" in spread and "output_len" in spread):
        raise InputError(f"malformed serving row {name}: 'lengths' must be a mapping with input_len and output_len")
    per = row.get("per_request") or {}
    if spread is not None and any(per.get(k) is None for k in _PER_REQUEST_LENGTHS):
        raise InputError(f"malformed serving row {name}: its lengths were drawn, but 'per_request' "
                         "lacks each request's input_len and output_len")


def _group_key(row: dict[str, Any], gpu: str) -> tuple:
    engine = row.get("engine") or {}
    return (row["model"], tuple(row.get("overrides") or ()), row.get("layers"), lengths_label(row),
            row["max_num_seqs"], gpu, serving_layout(row), serving_scheme(row), row_burstiness(row),
            engine.get("max_num_batched_tokens"))


def _run(row: dict[str, Any], pred: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """One rate's run, measured and replayed: counts, overload and capacity, and the host's
    speed it was replayed at (``host_ms``, ms; ``host_from``: "sampled" through the rate or its
    "probes", :func:`perfmodel.host_speed.row_host`)."""
    from perfmodel.host_speed import row_host

    O = mean_lengths(row)[1]
    host_ms, host_from = row_host(row)
    m, p = measured_overload(row), predicted_overload(pred)
    _, schedule = measured_schedule(row)
    return {
        **key, "offered_rate": offered_rate(row), "schedule": schedule, "until_s": drain_limit(row),
        "engine_kv_tokens": engine_kv_tokens(row), "model_kv_tokens": pred.get("model_kv_tokens"),
        "submitted": row.get("submitted"), "measured_completed": row.get("completed"),
        "measured_aborted": m["aborted"] if m["aborted"] is not None else row.get("aborted"),
        "predicted_submitted": pred.get("submitted"), "predicted_completed": pred.get("completed"),
        "predicted_aborted": pred.get("aborted"),
        "measured_overloaded": m["overloaded"], "measured_ttft_growth": m["ttft_growth"], "measured_why": m["why"],
        "steady": steady_span(row),
        "predicted_overloaded": p["overloaded"], "predicted_ttft_growth": p["ttft_growth"], "predicted_why": p["why"],
        "measured_capacity_rps": capacity_rps(row.get("output_tok_s"), O),
        "predicted_capacity_rps": capacity_rps(pred.get("output_tok_s"), O),
        "predicted_saturation_rps": pred.get("saturation_rate_per_replica"),
        "preemptions": pred.get("preemptions"), "host_ms": host_ms, "host_from": host_from,
    }


def compare_serving(rows: Iterable[dict[str, Any]], *, gpu: str = "h200-sxm",
                    model: str = "all", client_gaps: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predicted vs measured for every ok serving row (of ``model``, or all): ``points`` (one
    per row and metric), ``rates`` (one run per row: counts, overload, capacity), ``mape`` (per
    metric), ``saturation`` (per group of rows differing only in rate), ``host_speed`` (per metric,
    over the rows that measured the host's speed: the MAPE replayed at it,
    :func:`perfmodel.host_speed.row_host_ms`, and at the profile's reference host,
    :func:`host_speed_mape`). ``client_gaps``: point
    id -> the client's gaps of that run (s,
    :func:`perfmodel.validate.serving_quantiles.load_client_gaps`); an ITL percentile point of
    such a run carries ``band`` (its measured p(q ± 5), s) and ``in_band``."""
    from perfmodel.host_speed import row_host_ms
    from perfmodel.validate.serving_quantiles import band
    from perfmodel.measuring.compare import layout_label, row_layout

    wanted = None if model == "all" else _canonical(model)
    points: list[dict[str, Any]] = []
    rates: list[dict[str, Any]] = []
    groups: dict[tuple, dict[str, Any]] = {}
    probed: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []  # row, at probe, at reference
    for row in rows:
        if row.get("status") != "ok" or row.get("mode") != "serving":
            continue
        check_row(row)
        if wanted is not None and _canonical(row["model"]) != wanted:
            continue
        spec_gpu = gpu_spec_name(row.get("gpu_name"), gpu)
        key = dict(model=row["model"], input_len=row["input_len"], output_len=row["output_len"],
                   lengths=lengths_label(row), max_num_seqs=row["max_num_seqs"], rate=row["rate"], gpu=spec_gpu,
                   layout=layout_label(row), scheme=serving_scheme(row), burstiness=row_burstiness(row),
                   point_id=row["point_id"])
        try:
            if int(row_layout(row)["dp"]) > 1:
                raise InputError("a replay simulates one engine; this row ran data-parallel replicas")
            pred = predict_row(row, spec_gpu)
            if row_host_ms(row) is not None:
                probed.append((row, pred, predict_row(row, spec_gpu, at_probe=False)))
        except PerfModelError as exc:
            rates.append({**key, "error": str(exc)})
            continue
        for metric, (measured, value) in replayed_values(row, pred).items():
            point = {**key, "metric": metric, "measured": measured, "predicted": value,
                     "rel_error": _rel(value, measured)}
            gaps = (client_gaps or {}).get(row["point_id"])
            measured_band = band(gaps, ITL_PERCENTILES[metric]) if metric in ITL_PERCENTILES and gaps is not None \
                else None
            if measured_band is not None:
                lo, hi = measured_band
                point.update(band=(lo, hi), in_band=value is not None and lo <= value <= hi)
            points.append(point)
        run = _run(row, pred, key)
        rates.append(run)
        group = groups.setdefault(_group_key(row, spec_gpu), {"runs": [], "key": key, "sat": None})
        group["runs"].append(run)
        group["sat"] = pred.get("saturation_rate_per_replica")
    if wanted is not None and not rates:
        raise InputError(f"no serving measurements of {wanted}")
    mape = []
    kept = {r["point_id"] for r in rates if r.get("measured_overloaded") is False}
    for metric in METRICS:
        errs = [abs(p["rel_error"]) * 100 for p in points if p["metric"] == metric and p["rel_error"] is not None]
        left_out = sum(1 for p in points if p["metric"] == metric and p["rel_error"] is None)
        kept_errs = [abs(p["rel_error"]) for p in points
                     if p["metric"] == metric and p["rel_error"] is not None and p["point_id"] in kept]
        mape.append({"metric": metric, "mape": sum(errs) / len(errs) if errs else None,
                     "max": max(errs) if errs else None, "count": len(errs), "left_out": left_out,
                     "target": TARGETS[metric], "kept_up": len(kept_errs),
                     "within_target": sum(e <= TARGETS[metric] for e in kept_errs)})
    sat = []
    for group in groups.values():
        k = group["key"]
        sat.append({"model": k["model"], "input_len": k["input_len"], "output_len": k["output_len"],
                    "lengths": k["lengths"],
                    "max_num_seqs": k["max_num_seqs"], "gpu": k["gpu"], "layout": k["layout"], "scheme": k["scheme"],
                    "burstiness": k["burstiness"],
                    **saturation(group["runs"], group["sat"])})
    return {"points": points, "rates": rates, "mape": mape, "saturation": sat,
            "host_speed": host_speed_mape(probed), "kv_capacity": kv_capacity(r for r in rates if not r.get("error"))}


def _prediction_errors(row: dict[str, Any], pred: dict[str, Any]) -> dict[str, float | None]:
    """Metric of :data:`METRICS` -> predicted/measured − 1 of one replay of a row."""
    return {metric: _rel(value, measured) for metric, (measured, value) in replayed_values(row, pred).items()}


def host_speed_mape(probed: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per metric, over the rows that measured the host's speed (``(row, replay at that speed,
    replay at the reference host)``): ``mape_probe`` (at the row's own speed, sampled through the
    rate or probed) and ``mape_reference`` (%) and ``count``; [] without such rows."""
    if not probed:
        return []
    at_probe = [_prediction_errors(row, pred) for row, pred, _ in probed]
    at_reference = [_prediction_errors(row, ref) for row, _, ref in probed]
    out = []
    for metric in METRICS:
        pairs = [(a[metric], b[metric]) for a, b in zip(at_probe, at_reference)
                 if a[metric] is not None and b[metric] is not None]
        out.append({"metric": metric, "count": len(pairs),
                    "mape_probe": sum(abs(a) for a, _ in pairs) * 100 / len(pairs) if pairs else None,
                    "mape_reference": sum(abs(b) for _, b in pairs) * 100 / len(pairs) if pairs else None})
    return out


def run_serving_validation(model: str, *, gpu: str = "h200-sxm", results: Path | None = None,
                           out_dir: Path | None = None) -> dict[str, Any]:
    """Replay the serving rows of ``model`` (or ``all``) against the planning's predictions;
    writes ``summary.md`` and ``report.html`` (:func:`report_html`) into ``out_dir`` (default
    ``reports/validate/serving-<model>``). Where the rows have the engine's step traces beside
    them, ``engine_steps`` sets each traced run's steps beside the model's
    (:mod:`perfmodel.validate.serving_steps`; the summary's last section). ``rate_errors``: each
    kept-up run's TTFT percentiles read as a rate (:mod:`perfmodel.validate.serving_rate`)."""
    from perfmodel.measuring.results import read_rows
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.validate.serving_quantiles import load_client_gaps
    from perfmodel.validate.serving_rate import rate_errors, rate_markdown
    from perfmodel.validate.serving_steps import engine_step_comparison, engine_steps_markdown

    gpu = load_gpu(gpu).name
    path = Path(results) if results is not None else results_path(gpu)
    if path.is_dir():
        raise InputError(f"--results {path} is a folder; give the serving rows' JSONL file")
    if not path.exists():
        raise InputError(f"no serving measurements at {path} (measure them with `perfmodel measure MODEL "
                         "--backend vllm --serving --rate ...`, or give --results FILE)")
    rows = [r for r in read_rows(path).rows if r.get("mode") == "serving"]
    if not any(r.get("status") == "ok" for r in rows):
        raise InputError(f"no measured serving rows in {path}")
    result = {"source": _source(rows, path),
              **compare_serving(rows, gpu=gpu, model=model, client_gaps=load_client_gaps(path))}
    result["rate_errors"] = rate_errors(rows, result["rates"], gpu)
    result["engine_steps"] = engine_step_comparison(path, gpu, {p["model"] for p in result["points"]})
    from perfmodel.validate.validation import REPORTS_DIR

    out_dir = Path(out_dir) if out_dir is not None else REPORTS_DIR / f"serving-{model}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, html = out_dir / "summary.md", out_dir / "report.html"
        md.write_text(summary_markdown(result) + rate_markdown(result["rate_errors"])
                      + engine_steps_markdown(result["engine_steps"]))
        html.write_text(report_html(result), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the report into {out_dir}: {exc.strerror or exc}") from None
    result["summary_md"] = str(md)
    result["report_html"] = str(html)
    return result


# --------------------------------------------------------------------------- output


def _fmt(metric: str, value: float | None) -> str:
    from perfmodel.report_terminal import format_time

    if value is None:
        return "–"
    if not math.isfinite(value):
        return "∞"
    return f"{value:,.0f} tok/s" if metric == "served_tok_s" else format_time(value)


def _err(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _within(m: dict[str, Any]) -> str:
    """"k of n (≤ t%)": the runs that kept up whose |error| is at most the metric's target."""
    if not m.get("kept_up"):
        return "–"
    return f"{m['within_target']} of {m['kept_up']} (≤ {m['target']:.0%})"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _flag(value: bool | None) -> str:
    return "?" if value is None else ("overloaded" if value else "kept up")


def _growth(value: float | None) -> str:
    return "–" if value is None else ("∞" if not math.isfinite(value) else f"{value:.2f}x")


def _count(value: Any) -> str:
    return "–" if value is None else str(value)


def _head(s: dict[str, Any]) -> str:
    return (f"{model_label(s['model'], s.get('scheme'), s.get('burstiness'))} S/O={_lengths(s)} seqs≤{s['max_num_seqs']} "
            f"{s['gpu']} {s['layout']}")


def _with_nominal(offered: float | None, nominal: float | None) -> str:
    return f"{_rate(offered)} req/s offered (nominal {_rate(nominal)})"


def saturation_lines(s: dict[str, Any]) -> list[str]:
    """The saturation of one group in words: the measured bracket and capacity, the closed form
    and the replay beside them."""
    below = _with_nominal(s["followed_up_to"], s["followed_up_to_nominal"]) if s["followed_up_to"] else None
    above = _with_nominal(s["saturated_from"], s["saturated_from_nominal"]) if s["saturated_from"] else None
    if below is None and above is None:
        measured = "not known (no rate could be told)"
    elif above is None:
        measured = f"above {below}; no rate overloaded"
    elif below is None:
        measured = f"below {above}; every rate overloaded"
    else:
        measured = f"between {below} and {above}"
    if s.get("kept_up_above"):
        measured += (f" (kept up at {', '.join(_rate(r) for r in s['kept_up_above'])} req/s offered as well, "
                     "in a run too short for a steady state)")
    cap = s["measured_capacity_rps"]
    if cap is not None:
        capacity = (f"measured capacity {_rate(cap)} req/s (output tok/s ÷ O at the rates that ended with "
                    f"aborted requests: {', '.join(_rate(r) for r in s['capacity_rates'])} req/s)")
    else:
        capacity = "measured capacity not known (no run stayed busy to its drain limit)"
    closed = f"closed-form saturation {_rate(s['predicted_saturation_rps'])} req/s"
    if s["closed_form_position"] is not None:
        closed += f", {s['closed_form_position']} the measured bracket"
    if s["closed_form_rel_error"] is not None:
        closed += f", {_err(s['closed_form_rel_error'])} vs the measured capacity"
    hosts = s.get("closed_form_at_hosts") or {}
    at = [f"{_rate(hosts[k])} req/s at the {k.replace('_', '-')} run's host"
          + (f" ({hosts[k + '_host_ms']:.1f} ms)" if hosts.get(k + "_host_ms") is not None else "")
          for k in ("kept_up", "overloaded") if hosts.get(k) is not None]
    if at and any(hosts.get(k + "_host_ms") is not None for k in ("kept_up", "overloaded")):
        position = s.get("closed_form_host_position")
        closed += (f"; {' and '.join(at)}: "
                   + ("agreeing with both runs" if position == "inside" else
                      f"{position} the bracket at those hosts ({_err(s['closed_form_host_rel_error'])})"))
    replay = ""
    if s["capacity_rates"]:
        replay = f"replay capacity at the same rates {_rate(s['replay_capacity_rps'])} req/s"
        if s["replay_capacity_rel_error"] is not None:
            replay += f" ({_err(s['replay_capacity_rel_error'])})"
        replay += "; "
    lo, hi = s["replay_followed_up_to"], s["replay_saturated_from"]
    replay += (f"the replay keeps up to {_rate(lo)} and overloads from {_rate(hi)} req/s offered"
               f" ({'the same' if s['replay_agrees'] else 'not the same'} verdicts as measured)")
    return [f"{_head(s)}: measured saturation {measured}; {capacity}", f"  predicted: {closed}; {replay}"]


_RUN_COLUMNS = ("model", "rate", "offered", "submitted", "completed m/p", "aborted m/p",
                "TTFT growth m/p", "verdict m/p", "served m/p req/s", "KV tokens engine / model", "host ms")


def _run_cells(r: dict[str, Any]) -> list[str]:
    return [model_label(str(r["model"]), r.get("scheme"), r.get("burstiness")), _rate(r["rate"]), _rate(r["offered_rate"]), _count(r["predicted_submitted"]),
            f"{_count(r['measured_completed'])}/{_count(r['predicted_completed'])}",
            f"{_count(r['measured_aborted'])}/{_count(r['predicted_aborted'])}",
            f"{_growth(r['measured_ttft_growth'])}/{_growth(r['predicted_ttft_growth'])}",
            f"{_flag(r['measured_overloaded'])}/{_flag(r['predicted_overloaded'])}",
            f"{_rate(r['measured_capacity_rps'])}/{_rate(r['predicted_capacity_rps'])}",
            kv_cell(r),
            f"{r['host_ms']:.1f} ({r['host_from']})" if r.get("host_ms") is not None else "–"]


def replay_banner(src: dict[str, Any], quote=str) -> str:
    """The replay's provenance after the word REPLAY: results file (through ``quote``), GPU,
    versions, date, commit, predictor."""
    return (f"of {quote(src['results_file'])}: {src['gpu']}, driver {src['driver']}, torch {src['torch']}, "
            f"vLLM {src['vllm']}, measured {src['date']} (commit {src['git_commit']}); "
            f"predicted by {src['predicted_by']}.")


def comparison_note(src: dict[str, Any]) -> str:
    """What is compared with what, in one sentence."""
    return (f"The comparison is a {src['comparison']}. Percentiles are over the completed requests on both "
            "sides; served_tok_s is every output token over first submission to last token.")


def band_text(point: dict[str, Any]) -> str:
    """An ITL percentile's measured band ``p45…p55 7.1–31.2 ms (inside)``, or ``–``."""
    if "band" not in point:
        return "–"
    from perfmodel.report_terminal import format_time
    from perfmodel.validate.serving_quantiles import BAND_POINTS

    q = ITL_PERCENTILES[point["metric"]]
    lo, hi = point["band"]
    return (f"p{q - BAND_POINTS:g}…p{min(100.0, q + BAND_POINTS):g} {format_time(lo)}–{format_time(hi)} "
            f"({'inside' if point['in_band'] else 'outside'})")


def band_summary(points: list[dict[str, Any]]) -> str:
    """How many replayed ITL percentiles fall inside their measured band, in one sentence; empty
    without client samples."""
    from perfmodel.validate.serving_quantiles import BAND_POINTS

    banded = [p for p in points if "band" in p]
    if not banded:
        return ""
    inside = sum(p["in_band"] for p in banded)
    return (f"Measured band: the measured ITL percentile q − {BAND_POINTS:g} to q + {BAND_POINTS:g} of the "
            f"client's gaps (every 16th request's output times, `<rows>-tokens.jsonl`). {inside} of "
            f"{len(banded)} replayed ITL percentiles lie inside it: a percentile outside its band misses by "
            "more than the measurement itself moves when that share of the gaps changes mode.")


def summary_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: source, predicted vs measured per rate and metric, MAPE, the runs
    (counts, overload, capacity), saturation."""
    src = result["source"]
    lines = [
        "# perfmodel serving validation",
        "",
        f"**REPLAY** {replay_banner(src, lambda name: f'`{name}`')}",
        "",
        comparison_note(src),
        "",
        "| model | S/O | seqs | rate req/s | metric | measured | predicted | error | measured band |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        lines.append(f"| {model_label(p['model'], p.get('scheme'), p.get('burstiness'))} | {_lengths(p)} | {p['max_num_seqs']} | {_rate(p['rate'])} "
                     f"| {p['metric']} | {_fmt(p['metric'], p['measured'])} | {_fmt(p['metric'], p['predicted'])} "
                     f"| {_err(p['rel_error'])} | {band_text(p)} |")
    failed = [r for r in result["rates"] if r.get("error")]
    if failed:
        lines += [""] + [f"- not predicted: {r['model']} at {_rate(r['rate'])} req/s: {r['error']}" for r in failed]
    lines += ["", "| metric | MAPE % | max % | n | left out | runs that kept up within the target |",
              "|---|---|---|---|---|---|"]
    for m in result["mape"]:
        lines.append(f"| {m['metric']} | {_pct(m['mape'])} | {_pct(m['max'])} | {m['count']} | {m['left_out']} "
                     f"| {_within(m)} |")
    if band_summary(result["points"]):
        lines += ["", band_summary(result["points"])]
    if result.get("host_speed"):
        lines += ["", "The runs that measured the host's speed are replayed at it (its samples through the "
                  "rate, `host_run`, where the run has them, else its probes before and after, "
                  "`host_probe_ms`); replayed at the profile's reference host instead, their MAPE would be:", "",
                  "| metric | MAPE % at each run's host speed | MAPE % at the reference host | n |",
                  "|---|---|---|---|"]
        for m in result["host_speed"]:
            lines.append(f"| {m['metric']} | {_pct(m['mape_probe'])} | {_pct(m['mape_reference'])} | {m['count']} |")
    lines += ["", "## Runs (m = measured, p = replay)", "",
              f"Overloaded: requests unfinished at the drain limit, or the last quarter's median TTFT at "
              f"least {src['queue_growth']:g}x the first quarter's (TTFT growth). Served: output tok/s ÷ O; "
              "at the overloaded rates that ended with aborted requests, the capacity. Host ms: the host's "
              "speed the run is replayed at (sampled through the rate, or its probes before and after).", "",
              "| " + " | ".join(_RUN_COLUMNS) + " |", "|" + "---|" * len(_RUN_COLUMNS)]
    for r in result["rates"]:
        if not r.get("error"):
            lines.append("| " + " | ".join(_run_cells(r)) + " |")
    kv_note = kv_sentence(result.get("kv_capacity") or [])
    if kv_note:
        lines += ["", kv_note]
    lines += ["", "## Saturation", ""]
    for s in result["saturation"]:
        first, second = saturation_lines(s)
        lines += [f"- {first}", f"  - {second.strip()}"]
    return "\n".join(lines) + "\n"


def _cell(value: Any, text: str, cls: str = "") -> dict[str, Any]:
    """A sortable table cell: sort key (finite numbers and text; else empty), text, CSS class."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return {"value": "" if value is None else value, "text": text, "cls": cls}


def _points_table(result: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Every point as cells of the page's sortable table (sort keys: s, tok/s, error %)."""
    rows = []
    for p in result["points"]:
        so = _lengths(p)
        err = p["rel_error"]
        name = model_label(str(p["model"]), p.get("scheme"), p.get("burstiness"))
        rows.append([_cell(name, name, "l"), _cell(so, so),
                     _cell(p["max_num_seqs"], str(p["max_num_seqs"])), _cell(p["rate"], _rate(p["rate"])),
                     _cell(p["metric"], p["metric"], "l"),
                     _cell(p["measured"], _fmt(p["metric"], p["measured"])),
                     _cell(p["predicted"], _fmt(p["metric"], p["predicted"])),
                     _cell(None if err is None else err * 100.0, _err(err)),
                     _cell(p["band"][0] if "band" in p else None, band_text(p))])
    return rows


def report_html(result: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (``perfmodel/validate/templates/serving.html.j2``
    with the shared assets of :mod:`perfmodel.templating`): the REPLAY banner, MAPE, the runs,
    saturation, the charts of :mod:`perfmodel.validate.serving_charts` and every point
    (sortable); the Vega JavaScript inlined (:func:`perfmodel.vega.vega_scripts`)."""
    from perfmodel.templating import environments, script_json
    from perfmodel.vega import vega_scripts
    from perfmodel.validate.serving_charts import chart_specs
    from perfmodel.validate.serving_rate import ENTRY_COLUMNS, RATE_NOTE, SUMMARY_COLUMNS, rate_tables

    src = result["source"]
    specs = chart_specs(result)
    rate_summary, rate_runs = rate_tables(result.get("rate_errors") or [])
    html, _ = environments("perfmodel.validate", "templates", strict=True)
    return html.get_template("serving.html.j2").render(
        title="perfmodel serving validation", banner=replay_banner(src), comparison=comparison_note(src),
        queue_growth=f"{src['queue_growth']:g}",
        mape=[[m["metric"], _pct(m["mape"]), _pct(m["max"]), str(m["count"]), str(m["left_out"]), _within(m)]
              for m in result["mape"]],
        host_speed=[[m["metric"], _pct(m["mape_probe"]), _pct(m["mape_reference"]), str(m["count"])]
                    for m in result.get("host_speed") or []],
        run_columns=_RUN_COLUMNS, runs=[_run_cells(r) for r in result["rates"] if not r.get("error")],
        failed=[f"{r['model']} at {_rate(r['rate'])} req/s: {r['error']}" for r in result["rates"] if r.get("error")],
        saturation=[saturation_lines(s) for s in result["saturation"]], charts=list(specs),
        points=_points_table(result), band_note=band_summary(result["points"]), vega=vega_scripts(),
        kv_note=kv_sentence(result.get("kv_capacity") or []),
        rate_note=RATE_NOTE, rate_tables=[(SUMMARY_COLUMNS, rate_summary), (ENTRY_COLUMNS, rate_runs)] if rate_runs else [],
        specs_json=script_json(specs),
    ).rstrip("\n") + "\n"


def print_serving_validation(result: dict[str, Any], console) -> None:
    """Terminal tables: predicted vs measured per rate and metric, MAPE, runs, saturation."""
    from rich.table import Table
    from rich.text import Text

    src = result["source"]
    console.print(f"[bold]REPLAY of serving measurements[/bold]: {src['results_file']} · {src['gpu']} · "
                  f"driver {src['driver']} · torch {src['torch']} · vLLM {src['vllm']} · measured "
                  f"{src['date']} (commit {src['git_commit']}) · predicted by {src['predicted_by']}")
    console.print(f"{src['comparison']}", markup=False, highlight=False)
    table = Table(title="serving: predicted (replay) vs measured", header_style="bold")
    for col in ("model", "S/O", "seqs", "rate", "metric", "measured", "predicted", "error"):
        table.add_column(col, justify="left" if col in ("model", "metric") else "right")
    for p in result["points"]:
        table.add_row(Text(model_label(str(p["model"]), p.get("scheme"), p.get("burstiness"))), _lengths(p), str(p["max_num_seqs"]),
                      _rate(p["rate"]), p["metric"], _fmt(p["metric"], p["measured"]),
                      _fmt(p["metric"], p["predicted"]), _err(p["rel_error"]))
    console.print(table)
    for r in result["rates"]:
        if r.get("error"):
            console.print(f"not predicted: {r['model']} at {_rate(r['rate'])} req/s: {r['error']}", markup=False)
    mape = Table(title="MAPE (%)", header_style="bold")
    for col in ("metric", "mean", "max", "n", "left out", "kept up, within target"):
        mape.add_column(col)
    for m in result["mape"]:
        mape.add_row(m["metric"], _pct(m["mape"]), _pct(m["max"]), str(m["count"]), str(m["left_out"]), _within(m))
    console.print(mape)
    runs = Table(title=f"runs (m = measured, p = replay; overloaded: aborted, or TTFT growth ≥ "
                       f"{src['queue_growth']:g}x)", header_style="bold")
    for col in _RUN_COLUMNS:
        runs.add_column(col, justify="left" if col == "model" else "right")
    for r in result["rates"]:
        if not r.get("error"):
            runs.add_row(*(Text(c) for c in _run_cells(r)))
    console.print(runs)
    kv_note = kv_sentence(result.get("kv_capacity") or [])
    if kv_note:
        console.print(kv_note, markup=False, highlight=False)
    for s in result["saturation"]:
        for line in saturation_lines(s):
            console.print(line, markup=False, highlight=False)
    console.print(f"report: {result['report_html']}  summary: {result['summary_md']}")
