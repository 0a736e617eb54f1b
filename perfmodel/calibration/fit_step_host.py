"""The host's time per sequence of a launched engine step, fitted from serving step traces.

A step of vLLM that holds prompt tokens and more tokens than its largest CUDA graph is launched
from the host: it takes at least the host floor of a prefill (``eager_layer_s``·N_layers +
``eager_step_s``, fitted on offline prefills of one sequence), and the host also does work for
every request the step holds (the scheduler's, the model runner's input preparation), serial
with the launch: ``eager_seq_s`` per further sequence. Offline rows cannot show it (their
prefills of many sequences are GPU-bound); a serving engine that runs hundreds of decodes beside
each prompt chunk does.

Measured per run, from the engine's own step trace (:mod:`perfmodel.measuring.vllm_steps`):
over the steps while the engine was busy, the time not spent in decode-only steps (each taken
at the model's time, which their medians match) per step holding prompt tokens. The model's
mean over the same steps, max(GPU time, floor + (n + p − 1)·t), with n decodes and p prompt
chunks each, rises with t; the fitted value makes the two equal (0 when the model is already
slower). Runs enter the fit by construction: those of the training models whose engine ran
``max_num_seqs`` sequences at once (where the term matters most); every other traced run, and
every untraced serving run, is held out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq

from perfmodel.calibration.fit import _profile
from perfmodel.measuring.vllm_steps import busy_steps
from perfmodel.paths import RESULTS_DIR

#: Upper end of the search for the per-sequence host time, s.
_MAX_SEQ_S = 1e-3


def traced_runs_path(gpu: str) -> Path:
    """The serving rows that carry step traces: ``validate/results/<gpu>-vllm-serving-traced.jsonl``."""
    return RESULTS_DIR / f"{gpu.split('-')[0]}-vllm-serving-traced.jsonl"


def load_traced_runs(path: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row, trace) of every ok row of ``path`` whose trace is in ``<stem>-steps.jsonl`` beside it."""
    steps_path = path.with_name(path.stem + "-steps.jsonl")
    if not path.exists() or not steps_path.exists():
        return []
    traces = {t["point_id"]: t for t in map(json.loads, steps_path.read_text().splitlines()) if t}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r, traces[r["point_id"]]) for r in rows if r.get("status") == "ok" and r["point_id"] in traces]


def _step_tables(row: dict[str, Any], base: dict[str, Any], gpu: str):
    from perfmodel.measuring.compare import row_overrides
    from perfmodel.planning.steptime import build_step_times
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.layout import Layout
    from perfmodel.specs.model import load_model

    return build_step_times(load_model(row["model"], row_overrides(row)), load_gpu(gpu), _profile(base), "bf16",
                            Layout(1, 1, 1), max_tokens=int(row["engine"]["max_num_batched_tokens"]),
                            max_seqs=int(row["max_num_seqs"]),
                            max_context=int(row["input_len"]) + int(row["output_len"]))


@dataclasses.dataclass
class MixedSteps:
    """One run's busy steps that held prompt tokens: what they measured and what the model needs."""

    measured_mean_s: float  #: time not in decode-only steps, per mixed step
    gpu_s: np.ndarray  #: the model's GPU time of each mixed step
    sequences: np.ndarray  #: decodes plus prompt chunks of each mixed step
    floor_s: float  #: the host floor of a launched step of one sequence
    launched: np.ndarray  #: whether each mixed step exceeds the largest CUDA graph

    def model_mean_s(self, per_seq_s: float) -> float:
        floor = self.floor_s + np.maximum(self.sequences - 1.0, 0.0) * per_seq_s
        return float(np.where(self.launched, np.maximum(self.gpu_s, floor), self.gpu_s).mean())


def mixed_steps(row: dict[str, Any], trace: dict[str, Any], steps) -> MixedSteps | None:
    """The mixed steps of one traced run (None without any), on the step tables ``steps``."""
    b = busy_steps(trace["steps"], trace["columns"])
    gaps, busy = b.gap_s, b.busy
    n, p, chunks = b.columns["gen_reqs"], b.columns["ctx_tokens"], b.columns["ctx_reqs"]
    context = float(row["input_len"]) + float(row["output_len"]) / 2.0
    unlaunched = dataclasses.replace(steps, graph_tokens=np.inf)
    gpu = unlaunched.steps(n, context, p, p * steps.prefill_rate(float(row["input_len"])))
    mixed, decode = busy & (p > 0), busy & (p == 0)
    if not mixed.any():
        return None
    measured = (gaps[busy].sum() - gpu[decode].sum()) / mixed.sum()
    return MixedSteps(float(measured), gpu[mixed], (n + chunks)[mixed], steps.floor_s,
                      (n + p)[mixed] > steps.graph_tokens)


def fit_eager_seq(base: dict[str, Any], gpu: str, train_models: tuple[str, ...],
                  path: Path | None = None) -> tuple[float | None, list[str]]:
    """``eager_seq_s`` (s) and the point ids of the runs it comes from (see the module); None and
    no runs when no traced run qualifies. Several runs: the value that makes the model's mixed
    steps as long as the measured ones over all of them together."""
    runs = [(row, trace) for row, trace in load_traced_runs(path or traced_runs_path(gpu))
            if row["model"].lower() in {m.lower() for m in train_models}
            and ((row.get("engine_steps") or {}).get("max_running") or 0) >= int(row["max_num_seqs"])]
    found = [m for m in (mixed_steps(row, trace, _step_tables(row, base, gpu)) for row, trace in runs) if m]
    if not found:
        return None, []
    weights = np.array([len(m.gpu_s) for m in found], dtype=float)
    target = float(np.average([m.measured_mean_s for m in found], weights=weights))

    def gap(per_seq_s: float) -> float:
        return float(np.average([m.model_mean_s(per_seq_s) for m in found], weights=weights)) - target

    if gap(0.0) >= 0.0:
        value = 0.0
    elif gap(_MAX_SEQ_S) <= 0.0:
        value = _MAX_SEQ_S
    else:
        value = brentq(gap, 0.0, _MAX_SEQ_S, xtol=1e-9)
    return float(f"{value:.4g}"), [row["point_id"] for row, _ in runs]
