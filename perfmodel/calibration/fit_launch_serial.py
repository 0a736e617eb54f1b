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
run is held out.

A step that holds decodes beside the prompt does more of that work: it schedules, prepares the
inputs of and samples every sequence it holds, and the profiles show the gap growing with them
(Mixtral-8x7B in bf16 cut to 8 layers: 2.6 ms at the reference host alone, 7.0 ms beside 128
decodes). ``launch_serial_seq_s`` is what each sequence beyond the first adds: with D decodes,
the model's gap is ``launch_serial_s + D·launch_serial_seq_s``, and the fitted value is the
least-squares slope of the qualifying rows' ``t`` over D, through ``launch_serial_s``:

    launch_serial_seq_s = Σ D·(t − launch_serial_s) / Σ D²

over the training models' rows with D > 0 that qualify as above; the other models' are its
check. Units: seconds, ms where named.
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


def _qualifying(base: dict[str, Any], train: tuple[str, ...], paths: list[Path], decodes: bool):
    """The profiled rows that measure the term, with D = 0 (``decodes`` false) or D > 0: (used,
    checks, left_out, values) where ``values`` are the training rows' (D, t) with t in s at the
    reference host, and used / checks their records."""
    latency = base["latency"]
    used, checks, left_out, values = [], [], [], []
    for path in paths:
        for row in read_rows(path, unique=False, warn=False).rows:
            if (int(row["decodes"]) > 0) != decodes or not row.get("mixed_median_ms"):
                continue
            name = f"{path.name}: {group_name(row)} {row.get('quantization') or 'none'}"
            if decodes:
                name += f" D={int(row['decodes'])}"
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
            values.append((int(row["decodes"]), gap_ms * 1e-3 / h))
            used.append(entry)
    return used, checks, left_out, values


def fit_launch_serial(base: dict[str, Any], train: tuple[str, ...], files: list[Path] | None = None
                      ) -> tuple[float | None, dict[str, Any]]:
    """``launch_serial_s`` (s) and its record (the rows used, the other models' rows as checks,
    the rows left out with their reasons); None where no training model's row qualifies.
    ``base``: the profile as fitted so far (its host speed holds); ``train``: the training
    models' names."""
    paths = files if files is not None else mixed_step_files()
    used, checks, left_out, values = _qualifying(base, train, paths, decodes=False)
    return profiled_mean([t for _, t in values], paths, rows=used, checks=checks, left_out=left_out)


def fit_launch_serial_seq(base: dict[str, Any], train: tuple[str, ...], files: list[Path] | None = None
                          ) -> tuple[float | None, dict[str, Any]]:
    """``launch_serial_seq_s`` (s per sequence beyond the first, at least 0) and its record (as
    :func:`fit_launch_serial`'s, of the rows with decodes beside the prompt); None where no
    training model's row qualifies or ``base`` has no ``launch_serial_s``. ``base``: the profile
    as fitted so far, ``launch_serial_s`` included."""
    from perfmodel.calibration.fit import _sig

    serial = base["latency"].get("launch_serial_s")
    paths = files if files is not None else mixed_step_files()
    used, checks, left_out, values = _qualifying(base, train, paths, decodes=True)
    _, record = profiled_mean([], paths, rows=used, checks=checks, left_out=left_out)
    if not values or serial is None:
        return None, record
    slope = sum(d * (t - serial) for d, t in values) / sum(d * d for d, _ in values)
    return max(0.0, _sig(slope)), record
