"""The host time of a launched step that its GPU work does not hide, from profiled steps.

A serving step that holds prompt tokens beyond the engine's largest CUDA graph is launched from
the host, its kernels running as they are launched. Where the GPU's work is the longer, the
step still takes more than its kernels: the host schedules the step, prepares its inputs and
launches its first kernels before the GPU has anything to run, and samples and hands over its
outputs after the last. The serving planner adds that time, ``launch_serial_s``, to such a
step's GPU time (:class:`perfmodel.planning.steptime.StepTimes`).

Measured by ``scripts/profile_mixed_steps.py`` (rows ``validate/results/<gpu>-vllm-mixed-steps.jsonl``):
the wall time of the synchronous engine's step that holds a prompt of 1,024 tokens alone
(D = 0), and the busy time of its GPU kernels (their union, under torch.profiler). Each such
row gives

    t = (wall − busy) / h,     h = (p_host / p_ref)^α

at the reference host (``h``: :data:`perfmodel.host_speed.HOST_FACTOR` at the mean of the row's
host probes). The fitted value is the mean of ``t`` over the rows that qualify:

- a training model's (the fit's ``train``), as built or cut to other dimensions, in any scheme;
- the GPU set the step (kernels busy for more than
  :data:`perfmodel.measuring.mixed_steps.HOST_BOUND` of the wall time): where the host's launches
  set it, the wall time less the busy time is the launches' own time;
- the host steady across the row (its probes within
  :data:`perfmodel.calibration.fit_mla_split.STEADY` of each other).

The other models' qualifying rows are its check (``checks``, with their values); every serving
run is held out. Units: seconds, ms where named.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from perfmodel.calibration.fit_mla_split import STEADY, mixed_step_files, profiled_mean
from perfmodel.host_speed import factor_at
from perfmodel.measuring.mixed_steps import busy_ms, group_name, host_bound
from perfmodel.measuring.results import read_rows


def _why_not(row: dict[str, Any]) -> str | None:
    """Why a prompt-alone row cannot measure the term, or None."""
    probes = row.get("host_probe_ms") or []
    if not probes or max(probes) > STEADY * min(probes):
        return "host not steady" + (f" (probes {min(probes):.1f}-{max(probes):.1f} ms)" if probes else " (no probe)")
    busy = busy_ms(row)
    if busy is None:
        return "no kernel profile of the prompt's step"
    if host_bound(row):
        return f"host-bound (kernels busy {busy:.1f} of {row['mixed_median_ms']:.1f} ms)"
    return None


def fit_launch_serial(base: dict[str, Any], train: tuple[str, ...], files: list[Path] | None = None
                      ) -> tuple[float | None, dict[str, Any]]:
    """``launch_serial_s`` (s) and its record (the rows used, the other models' rows as checks,
    the rows left out with their reasons); None where no training model's row qualifies.
    ``base``: the profile as fitted so far (its host speed holds); ``train``: the training
    models' names."""
    latency = base["latency"]
    used, checks, left_out, values = [], [], [], []
    paths = files if files is not None else mixed_step_files()
    for path in paths:
        for row in read_rows(path, unique=False, warn=False).rows:
            if int(row["decodes"]) != 0 or not row.get("mixed_median_ms"):
                continue
            name = f"{path.name}: {group_name(row)} {row.get('quantization') or 'none'}"
            reason = _why_not(row)
            if reason:
                left_out.append(f"{name}: {reason}")
                continue
            h = factor_at(fmean(row["host_probe_ms"]), latency.get("host_probe_ref_ms"),
                          latency.get("host_speed_exponent"))
            gap_ms = row["mixed_median_ms"] - busy_ms(row)
            entry = {"row": name, "wall_ms": round(row["mixed_median_ms"], 3), "busy_ms": round(busy_ms(row), 3),
                     "host_factor": round(h, 4), "serial_ms": round(gap_ms / h, 4)}
            if row["model"] not in train:
                checks.append(entry)
                continue
            values.append(gap_ms * 1e-3 / h)
            used.append(entry)
    return profiled_mean(values, paths, rows=used, checks=checks, left_out=left_out)
