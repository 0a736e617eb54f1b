"""The serving error band of an engine profile: how far its replays of measured serving runs land.

``perfmodel validate --serving`` replays a measured vLLM serving run (its requests at their
submission times, :func:`perfmodel.measuring.serving_replay.predict_row`) through the planning's
simulation on the profile's step times. The band is the 90th percentile of |predicted/measured
− 1| per metric (TTFT p50/p90, ITL p50/p90/mean, served output tokens/s) over the runs that are
held out and kept up with their traffic:

- held out: no parameter was fitted on them (the traced runs ``eager_seq_s`` and
  ``launch_noise`` come from are left out, :mod:`perfmodel.calibration.fit_step_host`,
  :mod:`perfmodel.calibration.fit_launch_noise`);
- kept up: measured not overloaded
  (:func:`perfmodel.measuring.serving_replay.measured_overload`). A plan is chosen to keep up;
  past saturation TTFT is the queue at the moment the run was cut, which says nothing of a
  deployment that meets its targets.

The band is of the runs in the profile's own dtype, with the KV cache in it (bf16): the runs
of a quantization scheme (``--quantization fp8``, a GPTQ checkpoint: w4a16…) or of an fp8 KV
cache are checked against it instead, as the offline rows of a scheme are
(:func:`scheme_checks`): each scheme's |errors| at their 90th percentile, metric by metric,
and whether every one lies within the band; a plan in that scheme carries the band only then.
The runs of a dense model (no routed experts), whatever their scheme, are checked against it
apart (``dense``), as its offline rows are (``fit.residuals.architecture.dense``): the band is
the MoE models', and a dense model's plan carries it only as far as they lie within it.

A GPU with fewer than :data:`MIN_RUNS` such runs of its own, whose fit is anchored on another
GPU's (:mod:`perfmodel.calibration.fit_anchor`), takes the anchor's band where its own runs
check it (:func:`carried_band`): each metric whose 90th percentile of |error| over this GPU's
runs lies within the anchor's half-width keeps that half-width; a metric outside it gets none.

Each run is replayed at its host's measured speed where it has one
(:func:`perfmodel.host_speed.row_host_ms`: sampled through the rate, else probed), as the
validation does; a plan without ``--host-probe-ms`` is predicted at the profile's reference
host, whose error on these runs is larger (the validation reports both). Rows come from every
``<gpu>-vllm-serving*.jsonl`` beside the offline rows (not the ``-steps`` and ``-tokens``
traces beside them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from perfmodel.paths import RESULTS_DIR

#: The percentile of |relative error| the band is.
BAND_PERCENTILE = 90.0
#: Fewest runs behind a band.
MIN_RUNS = 5
#: The group of :func:`serving_errors` that holds every dense model's runs, whatever their scheme.
DENSE = "dense"


def serving_files(gpu: str, results_dir: Path | None = None) -> list[Path]:
    """Every serving rows file of a GPU (``<gpu>-vllm-serving*.jsonl``, traces left out), sorted."""
    folder = results_dir or RESULTS_DIR
    prefix = f"{gpu.split('-')[0]}-vllm-serving"
    return sorted(p for p in folder.glob(f"{prefix}*.jsonl")
                  if not p.stem.endswith(("-steps", "-tokens")))


def serving_errors(profile_path: Path, gpu: str, files: Iterable[Path],
                   fitted: Iterable[tuple[str, str]] = ()) -> dict[str, tuple[dict[str, list[float]], list[str]]]:
    """Per scheme (:func:`perfmodel.measuring.serving_replay.serving_scheme`) of the MoE models'
    runs, and :data:`DENSE` for every dense model's: the |relative error| per metric over the
    held-out serving runs that kept up, replayed on the profile at ``profile_path``, and those
    runs (``file name:point id``); ``fitted``: the runs a parameter was fitted on, as (file
    name, point id)."""
    from perfmodel.errors import PerfModelError
    from perfmodel.measuring.compare import row_overrides
    from perfmodel.measuring.results import read_rows
    from perfmodel.measuring.serving_replay import (METRICS, gpu_spec_name, measured_overload, predict_row,
                                                   replayed_values, serving_scheme)
    from perfmodel.specs.model import load_model

    skip = set(fitted)
    out: dict[str, tuple[dict[str, list[float]], list[str]]] = {}
    for path in files:
        for row in read_rows(path, warn=False).rows:
            if row.get("status") != "ok" or row.get("mode") != "serving" or (path.name, row["point_id"]) in skip:
                continue
            if measured_overload(row)["overloaded"] is not False:
                continue
            try:
                pred = predict_row(row, gpu_spec_name(row.get("gpu_name"), gpu), engine=str(profile_path))
                dense = not load_model(row["model"], row_overrides(row)).is_moe
            except PerfModelError:
                continue
            group = DENSE if dense else serving_scheme(row)
            errors, runs = out.setdefault(group, ({m: [] for m in METRICS}, []))
            runs.append(f"{path.name}:{row['point_id']}")
            for metric, (measured, value) in replayed_values(row, pred).items():
                if measured and value is not None:
                    errors[metric].append(abs(value / measured - 1.0))
    return out


def _p90(values: list[float]) -> float:
    return float(f"{np.percentile(values, BAND_PERCENTILE):.4g}")


def accuracy(errors: dict[str, list[float]], runs: int) -> dict[str, Any]:
    """Per metric with values: the median |error| and the share of runs within its target
    (:data:`perfmodel.measuring.serving_replay.TARGETS`), over ``runs`` runs."""
    from perfmodel.measuring.serving_replay import TARGETS

    have = {metric: values for metric, values in errors.items() if values}
    return {"runs": runs,
            "median": {m: float(f"{np.median(v):.4g}") for m, v in have.items()},
            "within_target": {m: float(f"{np.mean(np.array(v) <= TARGETS[m]):.4g}")
                              for m, v in have.items() if m in TARGETS},
            "targets": {m: TARGETS[m] for m in have if m in TARGETS}}


def scheme_checks(band: dict[str, Any], schemes: dict[str, tuple[dict[str, list[float]], list[str]]]
                  ) -> dict[str, dict[str, Any]]:
    """Each other scheme's runs against ``band``: ``runs``, ``errors`` (the 90th percentile of
    each metric's |errors|, interpolated as numpy does between a few runs' values), ``within``
    (every metric the band has at most its half-width) and, outside it with at least
    :data:`MIN_RUNS` runs, ``own_band``: a plan in that scheme takes, per metric, the wider of
    the band and ``errors`` (:func:`perfmodel.planning.answer.serving_band`)."""
    checks = {}
    for name, (errors, runs) in sorted(schemes.items()):
        p90 = {metric: _p90(values) for metric, values in errors.items() if values}
        within = all(value <= band[metric] for metric, value in p90.items() if metric in band)
        checks[name] = {"runs": len(runs), "within": within, "errors": p90}
        if not within and len(runs) >= MIN_RUNS:
            checks[name]["own_band"] = True
    return checks


def carried_band(anchor_gpu: str, anchor_band: dict[str, Any], errors: dict[str, list[float]],
                 runs: list[str], dtype: str = "bf16") -> dict[str, Any] | None:
    """The anchor's serving band (``anchor_band``, fitted on ``anchor_gpu``) as far as this GPU's
    own held-out runs that kept up (``runs``, their |relative errors| per metric ``errors``) lie
    within it: each metric of the anchor's band whose 90th percentile of |error| here is at most
    its half-width keeps it; the others are left out. ``carried_from`` names the anchor,
    ``own_runs`` this GPU's check (:class:`perfmodel.profile.ServingSchemeCheck`: ``within``
    when every metric held). None without a run here, or when no metric holds."""
    from perfmodel.measuring.serving_replay import METRICS

    mine = {metric: _p90(values) for metric, values in errors.items() if values}
    theirs = {metric: anchor_band[metric] for metric in METRICS if anchor_band.get(metric) is not None}
    kept = {metric: value for metric, value in theirs.items() if metric in mine and mine[metric] <= value}
    if not runs or not kept:
        return None
    left = [f"{metric} ({mine[metric]:.1%}, over the half-width {theirs[metric]:.1%})" for metric in theirs
            if metric not in kept and metric in mine]
    names = sorted({run.split(":", 1)[0] for run in runs})
    return {**kept, "runs": anchor_band["runs"], "carried_from": anchor_gpu,
            "own_runs": {"runs": len(runs), "within": len(kept) == len(theirs), "errors": mine},
            "source": (f"{anchor_gpu}'s band ({anchor_band['runs']} runs in {dtype} there), carried: this GPU has "
                       f"{len(runs)} held-out measured runs in {dtype} that kept up ({', '.join(names)}), fewer than "
                       f"the {MIN_RUNS} a band of its own takes; each metric is kept where their "
                       f"{BAND_PERCENTILE:.0f}th percentile of |relative error| lies within {anchor_gpu}'s half-width"
                       + (f"; left out: {', '.join(left)}" if left else "")),
            "accuracy": accuracy(errors, len(runs))}


def fit_serving_band(profile: dict[str, Any], gpu: str, fitted: Iterable[tuple[str, str]] = (),
                     results_dir: Path | None = None, dtype: str = "bf16",
                     anchor: tuple[str, dict[str, Any] | None] | None = None) -> dict[str, Any] | None:
    """The ``serving_error_band`` of a fitted profile (a YAML-ready dict, see the module), None
    with fewer than :data:`MIN_RUNS` qualifying runs in ``dtype`` (the profile's own), unless
    ``anchor`` (the anchoring GPU and its profile's serving band) gives one those runs check
    (:func:`carried_band`); ``fitted``: the serving runs a parameter was fitted on, as (file
    name, point id). The runs of every other scheme are checked against it (``schemes``,
    :func:`scheme_checks`), and the dense models' runs apart (``dense``)."""
    from perfmodel.calibration.fit import write_profile
    from perfmodel.profile import load_profile

    files = serving_files(gpu, results_dir)
    if not files:
        return None
    with tempfile.TemporaryDirectory(prefix="perfmodel-fit-") as tmp:
        path = write_profile(profile, Path(tmp) / f"{gpu}-{profile['engine']}.yaml")
        try:
            schemes = serving_errors(path, gpu, files, fitted)
        finally:
            load_profile.cache_clear()  # the temporary profile is gone
    errors, runs = schemes.pop(dtype, ({}, []))
    dense = schemes.pop(DENSE, None)
    if len(runs) < MIN_RUNS:
        if anchor is None or not anchor[1]:
            return None
        band = carried_band(*anchor, errors, runs, dtype)
        if band is None:
            return None
    else:
        band = {metric: _p90(values) for metric, values in errors.items() if len(values) >= MIN_RUNS}
        names = sorted({run.split(":", 1)[0] for run in runs})
        band["runs"] = len(runs)
        band["source"] = (f"{BAND_PERCENTILE:.0f}th percentile of |relative error| of the serving replays "
                          f"(perfmodel validate --serving) over {len(runs)} measured runs in {dtype} that kept up "
                          f"with their traffic and that no parameter was fitted on, each at its host's measured "
                          f"speed where it has one ({', '.join(names)})")
        band["accuracy"] = accuracy(errors, len(runs))
    if schemes:
        band["schemes"] = scheme_checks(band, schemes)
        merged = {metric: list(values) for metric, values in errors.items()}
        for other, _ in schemes.values():
            for metric, values in other.items():
                merged.setdefault(metric, []).extend(values)
        band["accuracy_all_schemes"] = accuracy(merged, len(runs) + sum(len(r) for _, r in schemes.values()))
    if dense is not None:
        band["dense"] = scheme_checks(band, {DENSE: dense})[DENSE]
    return band
