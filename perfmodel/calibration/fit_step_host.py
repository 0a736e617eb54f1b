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
chunks each, rises with t; the fitted value makes the two equal, and is at least
``launch_serial_seq_s`` (that value when the model is already slower): the per-sequence work a
launched step's kernels do not hide is serial with its launches as well. Runs enter the fit by
construction: those of the training models whose engine ran ``max_num_seqs`` sequences at once
(where the term matters most); every other traced run, and every untraced serving run, is held
out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq

from perfmodel.calibration.fit import _profile
from perfmodel.measuring.step_compare import load_traced_runs, mixed_steps, step_tables
from perfmodel.paths import RESULTS_DIR

#: Upper end of the search for the per-sequence host time, s.
_MAX_SEQ_S = 1e-3


def traced_runs_path(gpu: str) -> Path:
    """The serving rows that carry step traces: ``validate/results/<gpu>-vllm-serving-traced.jsonl``."""
    return RESULTS_DIR / f"{gpu.split('-')[0]}-vllm-serving-traced.jsonl"


def fit_eager_seq(base: dict[str, Any], gpu: str, train_models: tuple[str, ...],
                  path: Path | None = None) -> tuple[float | None, list[str]]:
    """``eager_seq_s`` (s) and the point ids of the runs it comes from (see the module); None and
    no runs when no traced run qualifies. Several runs: the value that makes the model's mixed
    steps as long as the measured ones over all of them together, and at least the profile's
    ``launch_serial_seq_s`` (the per-sequence work serial with a launched step's kernels is
    serial with its launches too)."""
    runs = [(row, trace) for row, trace in load_traced_runs(path or traced_runs_path(gpu))
            if row["model"].lower() in {m.lower() for m in train_models}
            and ((row.get("engine_steps") or {}).get("max_running") or 0) >= int(row["max_num_seqs"])]
    profile = _profile(base)
    found = [m for m in (mixed_steps(row, trace, step_tables(row, profile, gpu), profile.options.async_scheduling)
                         for row, trace in runs) if m]
    if not found:
        return None, []
    weights = np.array([m.mixed.sum() for m in found], dtype=float)
    target = float(np.average([m.measured_mean_s for m in found], weights=weights))

    def gap(per_seq_s: float) -> float:
        return float(np.average([m.model_mean_s(per_seq_s) for m in found], weights=weights)) - target

    # at least the per-sequence work a launched step's kernels do not hide (launch_serial_seq_s):
    # work serial with the GPU's is serial with the host's launches too
    least = float(base["latency"].get("launch_serial_seq_s") or 0.0)
    if gap(least) >= 0.0:
        value = least
    elif gap(_MAX_SEQ_S) <= 0.0:
        value = _MAX_SEQ_S
    else:
        value = brentq(gap, least, _MAX_SEQ_S, xtol=1e-9)
    return float(f"{value:.4g}"), [row["point_id"] for row, _ in runs]
