"""The launch noise of an engine profile, fitted from serving step traces.

:mod:`perfmodel.host_noise` says what the noise is: the log of a launched step's host time over
the model's, a part drawn anew at each launch plus a fast and a slow drifting one. Measured per
traced run (:mod:`perfmodel.measuring.step_compare`): the gap of each decode-only step just
before a launched step, which is that launch's host time where the launch outlasts the step
before it, over the model's gap, on a log scale, less the run's mean (the run's host speed as a
whole is the probe's to say, :mod:`perfmodel.host_speed`, not the noise's).

Within each run, every pair of launches at most :data:`MAX_LAG_S` apart gives the product of
their logs; binned by their time apart (:data:`LAG_EDGES_S`), the mean product is the
covariance at that lag, and the mean square the variance. The five parameters are those whose
process, each launch less its run's mean over the runs' mean span
(:data:`perfmodel.host_noise.CENTERED_COVARIANCE` and ``CENTERED_VARIANCE``), has that
variance and those covariances (``scipy.optimize.curve_fit``, each weighted by the square root
of its launches or pairs): the slow part a run's mean hides is put back, and the simulation
takes it out again over its own run.

Runs enter by construction: the traced runs of the training models in the profile's own dtype
(:data:`FIT_SCHEME`), in every serving rows file (``<gpu>-vllm-serving*.jsonl``), with at least
:data:`MIN_LAUNCHES` launches; the serving band leaves them out
(:mod:`perfmodel.calibration.fit_serving_band`). Every other serving run is held out: the other
traced runs (the held-out models', and the training models' in other schemes) give the same
statistics, recorded beside the fit as its check (``fit.launch_noise.held_out``). Times in
seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy.optimize import curve_fit

from perfmodel.calibration.fit import _profile
from perfmodel.calibration.fit_serving_band import serving_files
from perfmodel.host_noise import centered_fn
from perfmodel.measuring.serving_replay import serving_scheme
from perfmodel.measuring.step_compare import load_traced_runs, mixed_steps, step_tables

#: The scheme of the runs the fit takes (the profile's own: unquantized weights and KV cache).
FIT_SCHEME = "bf16"
#: Launches a run needs to enter the fit or the check.
MIN_LAUNCHES = 30
#: Pairs of launches further apart than this (s) are not compared.
MAX_LAG_S = 10.0
#: Edges (s) of the bins of time between two launches.
LAG_EDGES_S = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)
#: Pairs a bin needs to be used.
MIN_PAIRS = 50


def launch_logs(row: dict[str, Any], trace: dict[str, Any], profile, gpu: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One traced run's launches: when each ended (s) and the log of its measured over modelled
    gap, less the run's mean; None with fewer than :data:`MIN_LAUNCHES`."""
    steps = step_tables(row, profile, gpu)
    mixed = mixed_steps(row, trace, steps, profile.options.async_scheduling)
    if mixed is None:
        return None
    end, measured, model = mixed.launch_gaps(steps.floor_seq_s)
    ok = (measured > 0) & (model > 0)
    if ok.sum() < MIN_LAUNCHES:
        return None
    z = np.log(measured[ok] / model[ok])
    return end[ok], z - z.mean()


def binned_covariance(series: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Variance of the logs, and their covariance by time apart (:data:`LAG_EDGES_S`; bins of at
    least :data:`MIN_PAIRS` pairs): ``lag_s`` (each bin's mean), ``covariance``, ``pairs``; and
    ``run_s``, the runs' mean span of launches, weighted by their launches."""
    squares, lags, products, spans = [], [], [], []
    for t, z in series:
        squares.append(z * z)
        spans.append((len(z), float(t[-1] - t[0])))
        for i in range(len(z) - 1):
            near = (t[i + 1:] - t[i]) <= MAX_LAG_S
            lags.append((t[i + 1:] - t[i])[near])
            products.append((z[i] * z[i + 1:])[near])
    if not squares:
        return {"launches": 0, "variance": None, "run_s": None, "lag_s": [], "covariance": [], "pairs": []}
    lag, product = np.concatenate(lags), np.concatenate(products)
    launches = sum(n for n, _ in spans)
    out = {"launches": launches, "variance": float(np.concatenate(squares).mean()),
           "run_s": sum(n * span for n, span in spans) / launches, "lag_s": [], "covariance": [], "pairs": []}
    for lo, hi in zip(LAG_EDGES_S[:-1], LAG_EDGES_S[1:]):
        inside = (lag > lo) & (lag <= hi)
        if inside.sum() >= MIN_PAIRS:
            out["lag_s"].append(float(lag[inside].mean()))
            out["covariance"].append(float(product[inside].mean()))
            out["pairs"].append(int(inside.sum()))
    return out


def fit_covariance(binned: dict[str, Any]) -> dict[str, float] | None:
    """The five parameters of ``latency.launch_noise`` from :func:`binned_covariance`: the
    process whose launches, each less its run's mean over ``run_s``, have the measured variance
    and covariances (:data:`perfmodel.host_noise.CENTERED_COVARIANCE`); None with fewer than
    four bins, or where the fit does not converge."""
    var, run_s = binned["variance"], binned["run_s"]
    if var is None or len(binned["lag_s"]) < 4 or var <= 0 or not run_s or run_s <= 0:
        return None
    lag = np.array([0.0, *binned["lag_s"]])
    value = np.array([var, *binned["covariance"]])
    weight = np.sqrt([binned["launches"], *binned["pairs"]], dtype=float)
    fn = centered_fn()

    def model(t, sw, sf, tf, ss, ts):
        return fn(t, sw, sf, tf, ss, ts, run_s)

    top = float(np.sqrt(var)) * 3
    start = float(np.sqrt(var / 3))
    try:
        (sw, sf, tf, ss, ts), _ = curve_fit(model, lag, value, p0=[start, start, 0.1, start, 2.0], sigma=1 / weight,
                                            bounds=([0.0, 0.0, 0.005, 0.0, 0.2], [top, top, 2.0, top, 60.0]))
    except (RuntimeError, ValueError):  # no convergence, or covariances that are not numbers
        return None
    if tf > ts:  # the parts are named by their correlation times
        sf, tf, ss, ts = ss, ts, sf, tf
    return {"sigma_white": round(float(sw), 4), "sigma_fast": round(float(sf), 4), "tau_fast_s": float(f"{tf:.4g}"),
            "sigma_slow": round(float(ss), 4), "tau_slow_s": float(f"{ts:.4g}")}


def _summary(binned: dict[str, Any], runs: list[str], fitted: dict[str, float] | None) -> dict[str, Any]:
    """What a set of runs shows: launches, their runs' mean span, sd of the logs (each less its
    run's mean) and their correlation by lag; and the same of the fitted noise over runs of that
    span."""
    var = binned["variance"]
    out = {"runs": runs, "launches": binned["launches"],
           "run_s": None if binned["run_s"] is None else round(binned["run_s"], 1),
           "sd": None if var is None else round(float(np.sqrt(var)), 4),
           "lag_s": [round(x, 3) for x in binned["lag_s"]], "pairs": binned["pairs"],
           "correlation": [] if not var else [round(c / var, 3) for c in binned["covariance"]]}
    if fitted is not None and binned["lag_s"]:
        params = (fitted["sigma_white"], fitted["sigma_fast"], fitted["tau_fast_s"], fitted["sigma_slow"],
                  fitted["tau_slow_s"], binned["run_s"])
        fn = centered_fn()
        model_var = float(fn(0.0, *params))
        out["fitted_sd"] = round(float(np.sqrt(max(model_var, 0.0))), 4)
        out["fitted_correlation"] = [round(float(c) / model_var, 3)
                                     for c in np.atleast_1d(fn(np.asarray(binned["lag_s"]), *params))]
    return out


def fit_launch_noise(base: dict[str, Any], gpu: str, train_models: tuple[str, ...],
                     results_dir: Path | None = None) -> tuple[dict[str, float] | None, dict[str, Any],
                                                              list[tuple[str, str]]]:
    """``latency.launch_noise`` (None when too few launches), the record of the fit and its check
    (``fit.launch_noise``), and the runs it comes from, (rows file name, point id) each (see
    the module)."""
    train = {m.lower() for m in train_models}
    profile = _profile(base)
    fit_series, fit_runs, held_series, held_runs = [], [], [], []
    for rows_path in serving_files(gpu, results_dir):
        for row, trace in load_traced_runs(rows_path):
            logs = launch_logs(row, trace, profile, gpu)
            if logs is None:
                continue
            trains = row["model"].lower() in train and serving_scheme(row) == FIT_SCHEME
            series, runs = (fit_series, fit_runs) if trains else (held_series, held_runs)
            series.append(logs)
            runs.append((rows_path.name, row["point_id"]))
    binned = binned_covariance(fit_series)
    fitted = fit_covariance(binned)
    record = {"fit": _summary(binned, [f"{name}: {pid}" for name, pid in fit_runs], fitted),
              "held_out": _summary(binned_covariance(held_series), [f"{name}: {pid}" for name, pid in held_runs],
                                   fitted)}
    return fitted, record, (fit_runs if fitted is not None else [])
