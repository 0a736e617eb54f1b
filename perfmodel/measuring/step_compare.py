"""A traced serving run's engine steps beside the model's step times.

The rows of ``perfmodel measure --serving`` come with the engine's own steps
(``<rows>-steps.jsonl``, :mod:`perfmodel.measuring.vllm_steps`). Read beside the step tables of
the model (:class:`perfmodel.planning.steptime.StepTimes`, for the row's model, engine limits
and lengths on one GPU):

- decode-only steps, by how many sequences they decode: the measured median duration against
  the model's step at that many decodes and the run's mean context S + O/2 (ms), leaving out
  those whose outputs waited for the launch of the step after them;
- steps holding prompt tokens ("mixed"): their mean cost over the whole run, the busy time not
  spent in decode-only steps (each at the model's time) per mixed step, against the model's
  mean over the same steps (:class:`MixedSteps`; the per-sequence host time of a launched step
  is fitted on it, :mod:`perfmodel.calibration.fit_step_host`);
- around each launched step: the gap of the decode-only step before it (whose outputs wait for
  its launch) and its own, measured and replayed on the model's two resources.

Durations in seconds unless a name says ms.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.measuring.serving_replay import (mean_lengths, request_lengths, row_burstiness, serving_kv_dtype,
                                               serving_scheme, serving_weights)
from perfmodel.measuring.vllm_serving import trace_path
from perfmodel.measuring.vllm_steps import busy_steps
from perfmodel.planning.pipeline import handover_times

#: Upper ends of the decode-count bands of :func:`decode_bands` (sequences): up to 16, vLLM's
#: CUDA-graph sizes, so that every step of a band runs the same padded batch.
DECODE_BANDS = (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 512, 1024)
#: Busy decode-only steps a band needs to be reported.
MIN_BAND_STEPS = 10


def load_traced_runs(path: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row, trace) of every ok row of ``path`` whose trace is in ``<stem>-steps.jsonl`` beside it."""
    steps_path = trace_path(path, "steps")
    if not path.exists() or not steps_path.exists():
        return []
    traces = {t["point_id"]: t for t in map(json.loads, steps_path.read_text().splitlines()) if t}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r, traces[r["point_id"]]) for r in rows if r.get("status") == "ok" and r["point_id"] in traces]


def step_tables(row: dict[str, Any], profile, gpu: str):
    """The model's step tables for a serving row's model, token budget, sequence limit, lengths
    and largest CUDA graph, on one ``gpu`` with ``profile`` (an
    :class:`perfmodel.profile.EngineProfile`), at the host's speed the row measured where the
    profile takes it (:mod:`perfmodel.host_speed`)."""
    from perfmodel.host_speed import row_host_ms
    from perfmodel.measuring.compare import row_graph_tokens, row_overrides, row_routing_ids
    from perfmodel.planning.steptime import build_step_times
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    return build_step_times(load_model(row["model"], row_overrides(row)), load_gpu(gpu), profile,
                            serving_weights(row), Layout(1, 1, 1), kv_dtype=serving_kv_dtype(row),
                            max_tokens=int(row["engine"]["max_num_batched_tokens"]),
                            max_seqs=int(row["max_num_seqs"]),
                            max_context=_longest(row),
                            host_probe_ms=(row_host_ms(row) if profile.latency.host_probe_ref_ms is not None
                                           else None),
                            graph_tokens=row_graph_tokens(row), routing_ids=row_routing_ids(row))


def _prompt_and_context(row: dict[str, Any]) -> tuple[float, float]:
    """A row's mean prompt and a decoding sequence's mean context, tokens: S and S + O/2 (means
    where the lengths were drawn)."""
    s, o = mean_lengths(row)
    return s, s + o / 2.0


def _longest(row: dict[str, Any]) -> int:
    """Tokens of a row's longest request: S + O, or the longest drawn one."""
    given = request_lengths(row)
    if given and given[0]:
        return max(a + b for a, b in zip(*given))
    return int(row["input_len"]) + int(row["output_len"])


@dataclasses.dataclass
class MixedSteps:
    """One run's busy steps, replayed on the model's two resources
    (:mod:`perfmodel.planning.pipeline`): what its steps holding prompt tokens cost, measured and
    modelled. A mixed step's cost is the busy time not spent in decode-only steps (each at the
    model's time alone), per mixed step; with asynchronous scheduling a launched step holds back
    the outputs of the step before it, so the cost lies in the gaps around it, which the sum
    takes whole."""

    measured_mean_s: float  #: time not in decode-only steps, per mixed step
    gpu_s: np.ndarray  #: the model's GPU time of each busy step
    host_s: np.ndarray  #: the host's time of each busy step that is not launched
    sequences: np.ndarray  #: decodes plus prompt chunks of each busy step
    launched: np.ndarray  #: whether each busy step is launched (prompt tokens beyond the largest graph)
    mixed: np.ndarray  #: whether each busy step holds prompt tokens
    stretches: list[np.ndarray]  #: indices of each run of consecutive busy steps
    decode_s: float  #: the model's decode-only steps, summed
    floor_s: float  #: the host floor of a launched step of one sequence
    asynchronous: bool  #: whether the engine schedules one step ahead
    measured_gaps_s: np.ndarray  #: the measured gap before each busy step's outputs
    end_s: np.ndarray  #: when each busy step's outputs were handed over (the engine's clock)
    split_s: np.ndarray | float = 0.0  #: host time each busy step adds for an attention run as two paths

    def model_gaps_s(self, per_seq_s: float) -> np.ndarray:
        """The model's gap before each busy step's outputs (s), each run of busy steps replayed
        from its start, with ``per_seq_s`` of host time per further sequence of a launched step."""
        floor = self.floor_s + np.maximum(self.sequences - 1.0, 0.0) * per_seq_s + self.split_s
        host = np.where(self.launched, floor, self.host_s)
        if not self.asynchronous:
            return np.maximum(self.gpu_s, host)
        gaps = np.empty(len(self.gpu_s))
        for r in self.stretches:
            gaps[r] = np.diff(handover_times(self.gpu_s[r], host[r], self.launched[r]), prepend=0.0)
        return gaps

    def model_mean_s(self, per_seq_s: float) -> float:
        """The model's mean mixed step with ``per_seq_s`` of host time per further sequence of a
        launched step."""
        return (float(self.model_gaps_s(per_seq_s).sum()) - self.decode_s) / int(self.mixed.sum())

    def before_launches(self) -> np.ndarray:
        """Which busy steps are decode-only steps just before a launched step (whose outputs
        wait for its launch)."""
        before = np.zeros(len(self.gpu_s), dtype=bool)
        for r in self.stretches:
            before[r[:-1]] = self.launched[r[1:]] & ~self.mixed[r[:-1]]
        return before

    def launch_gaps(self, per_seq_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The gaps of the decode-only steps just before a launched step: when each ended (s,
        the engine's clock), measured and modelled (s), with ``per_seq_s`` of host time per
        further sequence of a launched step. Such a gap is the launch's host time where the
        launch outlasts the step before it (:mod:`perfmodel.planning.pipeline`)."""
        before = self.before_launches()
        return self.end_s[before], self.measured_gaps_s[before], self.model_gaps_s(per_seq_s)[before]

    def around_launches(self, per_seq_s: float) -> dict[str, Any] | None:
        """Median gaps (ms), measured and modelled, of the decode-only steps just before a
        launched step (their outputs wait for its launch) and of the launched steps; None
        without such a pair."""
        before = self.before_launches()
        if not before.any():
            return None
        model = self.model_gaps_s(per_seq_s)

        def ms(values: np.ndarray, mask: np.ndarray) -> float:
            return round(float(np.median(values[mask])) * 1e3, 3)

        return {"pairs": int(before.sum()), "launched": int(self.launched.sum()),
                "before_ms": [ms(self.measured_gaps_s, before), ms(model, before)],
                "launched_ms": [ms(self.measured_gaps_s, self.launched), ms(model, self.launched)]}


def mixed_steps(row: dict[str, Any], trace: dict[str, Any], steps, asynchronous: bool = True) -> MixedSteps | None:
    """The busy steps of one traced run (None without a mixed one), on the step tables ``steps``,
    for an engine that schedules ``asynchronously`` or not."""
    b = busy_steps(trace["steps"], trace["columns"])
    gaps, busy = b.gap_s, b.busy
    n, p, chunks = b.columns["gen_reqs"], b.columns["ctx_tokens"], b.columns["ctx_reqs"]
    prompt, context = _prompt_and_context(row)
    gpu, host, launched = steps.parts(n, context, p, p * steps.prefill_rate(prompt), np.maximum(chunks, 1.0))
    mixed, decode = busy & (p > 0), busy & (p == 0)
    if not mixed.any():
        return None
    decode_s = float(np.maximum(gpu, host)[decode].sum())  # the model's decode-only steps, each alone
    measured = (gaps[busy].sum() - decode_s) / mixed.sum()
    index = np.flatnonzero(busy)
    stretches = np.split(np.arange(len(index)), np.flatnonzero(np.diff(index) != 1) + 1)
    return MixedSteps(float(measured), gpu[busy], host[busy], (n + np.where(p > 0, chunks, 0.0))[busy],
                      launched[busy], (p > 0)[busy], [r for r in stretches if len(r)],
                      decode_s, steps.floor_s, asynchronous, gaps[busy], b.columns["t_s"][busy], steps.split(n, p)[busy])


def decode_bands(row: dict[str, Any], trace: dict[str, Any], steps) -> list[dict[str, Any]]:
    """Busy decode-only steps by decode count (:data:`DECODE_BANDS`, bands of at least
    :data:`MIN_BAND_STEPS` steps), but those before a launched step (whose outputs wait for its
    launch, :mod:`perfmodel.planning.pipeline`): ``decodes`` (their mean), ``steps``, ``measured_p50_ms`` and
    ``model_ms``, the median of the model's time of each of those steps (at its own decode
    count: a step's CUDA graph pads the count to the next captured size, a step function that
    the band's mean would blur)."""
    b = busy_steps(trace["steps"], trace["columns"])
    n, p = b.columns["gen_reqs"], b.columns["ctx_tokens"]
    launched_next = np.append((p > 0) & (n + p > steps.graph_tokens), False)[1:]
    decode = b.busy & (p == 0) & (n > 0) & ~launched_next
    _, context = _prompt_and_context(row)
    out, low = [], 0
    for high in DECODE_BANDS:
        band = decode & (n > low) & (n <= high)
        if band.sum() >= MIN_BAND_STEPS:
            mean = float(n[band].mean())
            out.append({"decodes": round(mean, 1), "steps": int(band.sum()),
                        "measured_p50_ms": round(float(np.median(b.gap_s[band])) * 1e3, 3),
                        "model_ms": round(float(np.median(steps.steps(n[band], context, 0.0, 0.0))) * 1e3, 3)})
        low = high
    return out


def compare_steps(row: dict[str, Any], trace: dict[str, Any], profile, gpu: str) -> dict[str, Any]:
    """One traced run against the model: its decode bands and mixed steps (ms; the latter None
    without any) at the profile's per-sequence host time."""
    steps = step_tables(row, profile, gpu)
    mixed = mixed_steps(row, trace, steps, profile.options.async_scheduling)
    return {"model": row["model"], "scheme": serving_scheme(row), "burstiness": row_burstiness(row),
            "rate": row.get("rate"), "point_id": row["point_id"],
            "decode": decode_bands(row, trace, steps),
            "mixed": None if mixed is None else {
                "steps": int(mixed.mixed.sum()), "mean_sequences": round(float(mixed.sequences[mixed.mixed].mean()), 1),
                "measured_ms": round(mixed.measured_mean_s * 1e3, 3),
                "model_ms": round(mixed.model_mean_s(steps.floor_seq_s) * 1e3, 3)},
            "launches": None if mixed is None else mixed.around_launches(steps.floor_seq_s)}
