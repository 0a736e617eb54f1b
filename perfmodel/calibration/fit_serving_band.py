"""The serving error band of an engine profile: how far its replays of measured serving runs land.

``perfmodel validate --serving`` replays a measured vLLM serving run (its requests at their
submission times, :func:`perfmodel.measuring.serving_replay.predict_row`) through the planning's
simulation on the profile's step times. The band is the 90th percentile of |predicted/measured
− 1| per metric (TTFT p50/p90, ITL p50/p90/mean, served output tokens/s) over the runs that are
held out and kept up with their traffic:

- held out: no parameter was fitted on them (the traced run ``eager_seq_s`` comes from is left
  out, :mod:`perfmodel.calibration.fit_step_host`);
- kept up: measured not overloaded
  (:func:`perfmodel.measuring.serving_replay.measured_overload`). A plan is chosen to keep up;
  past saturation TTFT is the queue at the moment the run was cut, which says nothing of a
  deployment that meets its targets.

Each run is replayed at its host's probed speed where it has one (``host_probe_ms``), as the
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


def serving_files(gpu: str, results_dir: Path | None = None) -> list[Path]:
    """Every serving rows file of a GPU (``<gpu>-vllm-serving*.jsonl``, traces left out), sorted."""
    folder = results_dir or RESULTS_DIR
    prefix = f"{gpu.split('-')[0]}-vllm-serving"
    return sorted(p for p in folder.glob(f"{prefix}*.jsonl")
                  if not p.stem.endswith(("-steps", "-tokens")))


def serving_errors(profile_path: Path, gpu: str, files: Iterable[Path],
                   fitted: Iterable[tuple[str, str]] = ()) -> tuple[dict[str, list[float]], list[str]]:
    """|relative error| per metric over the held-out serving runs that kept up, replayed on the
    profile at ``profile_path``, and those runs (``file name:point id``); ``fitted``: the runs a
    parameter was fitted on, as (file name, point id)."""
    from perfmodel.errors import PerfModelError
    from perfmodel.measuring.results import read_rows
    from perfmodel.measuring.serving_replay import (METRICS, gpu_spec_name, measured_overload, predict_row,
                                                   replayed_values)

    skip = set(fitted)
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    runs: list[str] = []
    for path in files:
        for row in read_rows(path, warn=False).rows:
            if row.get("status") != "ok" or row.get("mode") != "serving" or (path.name, row["point_id"]) in skip:
                continue
            if measured_overload(row)["overloaded"] is not False:
                continue
            try:
                pred = predict_row(row, gpu_spec_name(row.get("gpu_name"), gpu), engine=str(profile_path))
            except PerfModelError:
                continue
            runs.append(f"{path.name}:{row['point_id']}")
            for metric, (measured, value) in replayed_values(row, pred).items():
                if measured and value is not None:
                    errors[metric].append(abs(value / measured - 1.0))
    return errors, runs


def fit_serving_band(profile: dict[str, Any], gpu: str, fitted: Iterable[tuple[str, str]] = (),
                     results_dir: Path | None = None) -> dict[str, Any] | None:
    """The ``serving_error_band`` of a fitted profile (a YAML-ready dict, see the module), None
    with fewer than :data:`MIN_RUNS` qualifying runs; ``fitted``: the serving runs a parameter
    was fitted on, as (file name, point id)."""
    from perfmodel.calibration.fit import write_profile
    from perfmodel.profile import load_profile

    files = serving_files(gpu, results_dir)
    if not files:
        return None
    with tempfile.TemporaryDirectory(prefix="perfmodel-fit-") as tmp:
        path = write_profile(profile, Path(tmp) / f"{gpu}-{profile['engine']}.yaml")
        try:
            errors, runs = serving_errors(path, gpu, files, fitted)
        finally:
            load_profile.cache_clear()  # the temporary profile is gone
    if len(runs) < MIN_RUNS:
        return None
    band: dict[str, Any] = {metric: float(f"{np.percentile(values, BAND_PERCENTILE):.4g}")
                            for metric, values in errors.items() if len(values) >= MIN_RUNS}
    names = sorted({run.split(":", 1)[0] for run in runs})
    band["runs"] = len(runs)
    band["source"] = (f"{BAND_PERCENTILE:.0f}th percentile of |relative error| of the serving replays "
                      f"(perfmodel validate --serving) over {len(runs)} measured runs that kept up with their "
                      f"traffic and that no parameter was fitted on, each at its host's probed speed where "
                      f"it has one ({', '.join(names)})")
    return band
