"""Fitting an engine profile: kernel efficiencies from microbenchmarks, overheads end to end.

``perfmodel calibrate fit`` regenerates ``calibration/profiles/<gpu>-hf.yaml`` from the
committed data, deterministically:

1. η curves per op class from the microbenchmark tables (:mod:`perfmodel.calibration.fit_kernels`),
   excluding every shape that only a held-out model uses;
   (the masked decode attention and the per-head key/value copies of the engine's decode
   included, from the benchmarked calls the engine makes);
2. the engine's fixed costs — per layer and per step of a decode step replayed from a CUDA
   graph, per layer and per pass of host launch time of an eager prefill — by least squares on
   log(predicted/measured) of the training models' decode steps and TTFTs;
3. the residuals on the held-out models, which become the profile's error band (the 90th
   percentile of |relative error| per metric).

The same data gives the same profile on any machine, up to rounding: a coefficient that ends
within :data:`BOUND_SNAP` of its typical size from a bound is set to the bound exactly, every
number written is rounded to :data:`SIG_DIGITS` significant digits, and two fits are compared
with :func:`profile_differences` (relative tolerance :data:`FIT_RTOL`, absolute
:data:`FIT_ATOL`), never bit for bit.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from perfmodel.errors import SpecError
from perfmodel.paths import CALIBRATION_DATA_DIR, PROFILES_DIR, ROOT
from perfmodel.prediction import GPU_BOUND, GRAPH_REPLAYED, HOST_BOUND, LAUNCH_BOUND

#: The default split: end-to-end fits use these models only; the others are held out.
TRAIN_MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b", "mixtral-8x7b")
HELD_OUT_MODELS = ("qwen3-30b-a3b", "phi-3.5-moe", "deepseek-v2-lite")

#: Options of the hf engine (transformers + StaticCache + CUDA-graph decode, eager prefill). Its
#: StaticCache holds the whole batch's S + O slots from the start: no waves (``kv_waves``).
HF_OPTIONS = {
    "kv_waves": False,
    "decode_attention_span": "allocated",
    "mla_cache": "latent",
    "mla_absorb_decode": False,
    "decode_kv_expand": True,
    "prefill_eager": True,
    "memory_usable_fraction": 0.95,
}
_LATENCY_KEYS = ("per_layer_s", "per_step_s", "eager_layer_s", "eager_step_s")
#: Significant digits of every number a fit writes.
SIG_DIGITS = 4
#: A coefficient within this fraction of its typical size from a bound is set to the bound.
BOUND_SNAP = 1e-6
#: Two fits agree when each number matches within FIT_RTOL (relative) or FIT_ATOL (absolute,
#: for values at zero): rounding to SIG_DIGITS digits alone can differ by 1e-3 of a value.
FIT_RTOL = 1e-2
FIT_ATOL = 1e-12


def _sig(x: float, digits: int = SIG_DIGITS) -> float:
    return float(f"{x:.{digits}g}")


def profile_differences(a: Any, b: Any, *, rtol: float = FIT_RTOL, atol: float = FIT_ATOL,
                        where: str = "") -> list[str]:
    """Where two fitted profiles (YAML-ready dicts) differ: 'path: a vs b' per difference.

    Numbers agree within ``rtol`` (relative) or ``atol`` (absolute); everything else (names,
    flags, lists of models, counts) must be equal.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}{key}: only in one" for key in sorted(set(a) ^ set(b), key=str)]
        for key in (k for k in a if k in b):
            out += profile_differences(a[key], b[key], rtol=rtol, atol=atol, where=f"{where}{key}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b))
                for d in profile_differences(x, y, rtol=rtol, atol=atol, where=f"{where}{i}.")]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers and (isinstance(a, float) or isinstance(b, float)):
        same = math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    else:
        same = a == b and type(a) is type(b)
    return [] if same else [f"{where.rstrip('.')}: {a!r} vs {b!r}"]


def on_bounds(x, lower, upper) -> np.ndarray:
    """``x`` with every value within :data:`BOUND_SNAP` of its bound set to that bound exactly
    (the least squares' solutions, in units of their typical sizes)."""
    return np.where(x - lower <= BOUND_SNAP, lower, np.where(upper - x <= BOUND_SNAP, upper, x))


def _profile(base: dict[str, Any]):
    from perfmodel.profile import EngineProfile

    return EngineProfile(**base)


def one_gpu_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows measured on one GPU (tp = pp = dp = 1): the only ones a profile is fitted on,
    whose parameters are those of one GPU; rows on several GPUs are held out by construction."""
    from perfmodel.measuring.compare import row_gpus

    return [r for r in rows if row_gpus(r) == 1]


#: Largest share of a row's decode steps that may ride along its prefill's chunks for the
#: end-to-end fit to take it (:func:`riding_share`).
MAX_RIDING_SHARE = 0.01


def riding_share(row: dict[str, Any], chunk: int) -> float:
    """The share of a measured offline row's decode tokens that its sequences decode beside the
    later chunks of its prefill: with n = ⌈B·S/chunk⌉ chunk steps of B/n prompts each, the prompts
    of chunk i decode during the n − i chunks after it, B·(n − 1)/2 tokens of the B·(O − 1), so
    (n − 1)/(2·(O − 1)); 0 for a prefill of one engine step. The model's E2E is TTFT + (O − 1)
    decode steps of B sequences, so a row's ITL, (E2E − TTFT)/(O − 1), is the model's decode step
    only where this share is small: at most 0.8% on the seed study's grid (S = O, B·S up to 262,144
    tokens), up to 12% for outputs of 64 tokens after prompts of 2,048-4,032 tokens at B = 16-64."""
    chunks = -(-int(row["batch"]) * int(row["input_len"]) // int(chunk))
    return (chunks - 1) / (2 * max(int(row["output_len"]) - 1, 1))


def rides_chunks(row: dict[str, Any], chunk: int | None) -> bool:
    """Whether more than :data:`MAX_RIDING_SHARE` of a row's decode tokens ride along its
    prefill's chunks under an engine that chunks prefills into ``chunk`` tokens (None: one that
    does not), which the end-to-end fit then leaves out (:func:`riding_share`)."""
    return chunk is not None and riding_share(row, chunk) > MAX_RIDING_SHARE


def _rows(results: Path, models: tuple[str, ...], quant: str | None = None,
          chunk: int | None = None) -> list[dict[str, Any]]:
    """The ok one-GPU rows of ``models`` as built (no variants), with the fused MoE, at one
    quantization (None: unquantized) and the KV cache at the model's dtype; under an engine that
    chunks prefills into ``chunk`` tokens per step, only those whose decode steps hardly ride
    along their prefill's chunks (:func:`rides_chunks`). Rows whose batch outgrew the engine's
    KV cache are left out (:func:`perfmodel.measuring.compare.row_outgrows_cache`): the fit
    predicts every row as one pass of all B sequences, and their times are the scheduler's
    (:mod:`perfmodel.kv_schedule`, no parameter fitted), which they check held out."""
    from perfmodel.measuring.compare import (is_variant, load_measurements, row_kv_dtype, row_moe_impl,
                                             row_outgrows_cache, row_quant, row_speculative)

    if not results.exists():
        raise SpecError(f"no measurements at {results}: run perfmodel measure first")
    rows = [r for r in one_gpu_rows(load_measurements(results))
            if r.get("status") == "ok" and r["model"] in models and not is_variant(r)
            and row_quant(r) == quant and row_kv_dtype(r) is None and not row_speculative(r)
            and row_moe_impl(r) == "fused" and not rides_chunks(r, chunk) and not row_outgrows_cache(r)]
    if not rows:
        raise SpecError(f"{results} holds no ok rows of the training models {', '.join(models)}")
    return rows


def _compare_with(base: dict[str, Any], rows: list[dict[str, Any]], gpu: str,
                  train: tuple[str, ...], train_points: tuple[str, ...] = ()):
    """Predicted vs measured points of ``rows`` under the profile dict ``base``.

    The predictor loads profiles from files: ``base`` is written into a private temporary
    folder (created afresh, readable only by this user) and removed with it.
    """
    from perfmodel.measuring.compare import compare

    with tempfile.TemporaryDirectory(prefix="perfmodel-fit-") as folder:
        path = Path(folder) / "profile.yaml"
        path.write_text(yaml.safe_dump(base, sort_keys=True))
        points, _ = compare(rows, engine=str(path), gpu=gpu, train_models=train, train_points=train_points)
    return points


def _predict_many(rows, profile, gpu_spec):
    """Predicted (TTFT, decode step) in s for each row under a profile object."""
    from perfmodel.prediction import Workload, evaluate
    from perfmodel.specs.model import load_model
    from perfmodel.measuring.compare import model_workload, row_overrides, row_quant

    out = []
    for row in rows:
        model = load_model(row["model"], row_overrides(row))
        w = Workload(input_len=row["input_len"], output_len=row["output_len"], quant=row_quant(row),
                     **model_workload(row, profile))
        m = evaluate(model, gpu_spec, profile, w, "request").metrics
        out.append((m["ttft_s"], m["itl_s"]))
    return np.array(out)


def fit_overheads(rows: list[dict[str, Any]], base: dict[str, Any], gpu: str) -> dict[str, Any]:
    """Fixed costs of graph decode and eager prefill (s), and the engine's elementwise η.

    Least squares on log(predicted/measured) TTFT and decode step of the training rows. The
    elementwise efficiency starts from the microbenchmark fit and is refined here: the
    engine's unfused norms, casts, routing glue and scatter kernels run at an efficiency no
    single benchmarked kernel shows. Returns {"latency": {...}, "elementwise_memory": η}.
    """
    from scipy.optimize import least_squares

    from perfmodel.specs.hardware import load_gpu

    gpu_spec = load_gpu(gpu)
    measured = np.array([(r["ttft_ms"] * 1e-3, r["itl_ms"] * 1e-3) for r in rows])
    scale = np.array([1e-4, 1e-3, 1e-3, 1e-2, 0.1])  # typical sizes: a well-scaled problem
    eta0 = base["efficiency"]["elementwise"]["memory"]

    def variant(x: np.ndarray) -> dict[str, Any]:
        values = x * scale
        latency = {**base["latency"], **dict(zip(_LATENCY_KEYS, map(float, values[:4])))}
        elementwise = {**base["efficiency"]["elementwise"], "memory": float(values[4]),
                       "memory_half": 0.0}
        return {**base, "latency": latency,
                "efficiency": {**base["efficiency"], "elementwise": elementwise}}

    def residuals(x: np.ndarray) -> np.ndarray:
        predicted = _predict_many(rows, _profile(variant(x)), gpu_spec)
        return np.log(predicted / measured).ravel()

    start = np.array([1.0, 0.0, 1.0, 0.0, eta0 / scale[4]])
    lower = np.array([0.0, 0.0, 0.0, 0.0, 0.01 / scale[4]])
    upper = np.array([np.inf, np.inf, np.inf, np.inf, 1.0 / scale[4]])
    result = least_squares(residuals, start, bounds=(lower, upper), method="trf")
    x = on_bounds(result.x, lower, upper)  # x is in units of scale
    values = x * scale
    return {"latency": {key: _sig(float(v)) for key, v in zip(_LATENCY_KEYS, values[:4])},
            "elementwise_memory": _sig(float(values[4]))}


#: The measured row whose TTFT fits the host time per touched expert of an eager pass of the
#: unfused MoE (``latency.expert_sync_s``): OLMoE as built, B = 1, S = 128, transformers' eager
#: experts loop; every other eager row stays held out.
EXPERT_SYNC_POINT = "hf|olmoe-1b-7b|set=|layers=all|B=1|S=128|O=128|experts=eager|dtype=bfloat16|graphs=1|full=0"


def fit_expert_sync(base: dict[str, Any], results: Path, gpu: str,
                    point: str = EXPERT_SYNC_POINT) -> dict[str, Any] | None:
    """``latency.expert_sync_s`` (s) from one eager row's TTFT, and the ``fit.expert_sync``
    record: the prefill is max(GPU, launch) + syncs·t_sync (:func:`perfmodel.prediction.pass_time`),
    linear in t_sync, so t_sync = (measured − predicted at 0)/(its slope), the prefill predicted
    at the routing the row ran where it recorded it (:func:`perfmodel.measuring.compare.prefill_skew`:
    the syncs are one per touched expert). None when ``results`` holds no such row (the profile
    then has no sync time: 0)."""
    from perfmodel.measuring.compare import load_measurements, model_workload, prefill_skew, row_overrides
    from perfmodel.prediction import Workload, evaluate
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    rows = [r for r in load_measurements(results) if r["point_id"] == point and r.get("status") == "ok"]
    if not rows:
        return None
    row = rows[-1]
    model = load_model(row["model"], row_overrides(row))
    w = Workload(input_len=row["input_len"], output_len=row["output_len"], moe_impl="unfused",
                 skew=prefill_skew(row, model), **model_workload(row))

    def prefill(t_sync: float) -> float:
        profile = _profile({**base, "latency": {**base["latency"], "expert_sync_s": t_sync}})
        return evaluate(model, load_gpu(gpu), profile, w, "prefill").metrics["prefill_s"]

    at_zero, probe = prefill(0.0), 1e-4
    slope = (prefill(probe) - at_zero) / probe  # host syncs of the pass
    value = max(0.0, (row["ttft_ms"] * 1e-3 - at_zero) / slope)
    return {"expert_sync_s": _sig(value),
            "record": {"points": [point], "metric": "ttft", "skew": w.skew,
                       "source": ("latency.expert_sync_s = (measured TTFT - predicted prefill without it) / "
                                  "(MoE layers x touched experts); transformers' eager experts loop waits for the "
                                  "GPU at each touched expert (torch.where on its routing mask, scalar reads of "
                                  "its index), so its host time is serial with the pass")}}


#: The fields an anchored hf fit takes from its anchor's fit: the engine's fixed costs, which the
#: end-to-end rows fit (:func:`fit_overheads`, :func:`fit_expert_sync`); the kernels' efficiencies
#: and launch costs are this GPU's microbenchmarks', the elementwise memory η among them, scaled
#: by the anchor's ratio of its end-to-end η to its microbenchmarks' (the engine's unbenchmarked
#: norms, casts and routing glue run at that fraction of the benchmarked elementwise kernels' rate).
ANCHORED_LATENCY = (*_LATENCY_KEYS, "expert_sync_s")


def hf_anchor(gpu: str, anchor: str = "auto") -> str | None:
    """The GPU whose hf fit anchors ``gpu``'s (:func:`fit_profile`), from ``--anchor``: ``auto``,
    the reference GPU's where ``gpu`` has no transformers rows of its own, else none; ``none``:
    none; a GPU's name: that GPU."""
    from perfmodel.profile import REFERENCE_GPU
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.paths import results_file

    if anchor == "auto":
        return None if gpu == REFERENCE_GPU or results_file("hf", gpu).exists() else REFERENCE_GPU
    return None if anchor == "none" else load_gpu(anchor).name


def fit_profile(gpu: str = "h200-sxm", *, data_dir: Path | None = None,
                results: Path | None = None, train: tuple[str, ...] = TRAIN_MODELS,
                held_out: tuple[str, ...] = HELD_OUT_MODELS, anchor: str | None = None) -> dict[str, Any]:
    """The fitted hf profile of a GPU as a YAML-ready dict (same data → same dict).

    ``anchor``: a GPU whose committed hf profile gives the engine's fixed costs
    (:data:`ANCHORED_LATENCY`, and the elementwise memory η at its ratio to the anchor's tables),
    for a GPU with microbenchmarks of its own and no transformers rows to fit those on; then every
    row this GPU has is held out (the band is stated on them; with none, the profile has no band)."""
    from perfmodel.calibration.fit_kernels import kernel_fit_to_profile_dict
    from perfmodel.paths import results_file

    data_dir = data_dir or CALIBRATION_DATA_DIR / gpu
    results = results or results_file("hf", gpu)
    kernels = _kernel_fit(data_dir, gpu, held_out)
    efficiency = kernel_fit_to_profile_dict(kernels, include_extra=True)
    efficiency["comm"] = {"compute": 1.0, "memory": 0.8, "compute_half": 0.0, "memory_half": 0.0}
    base: dict[str, Any] = {
        "name": f"{gpu}-hf", "engine": "hf", "gpu": gpu, "calibrated": True,
        "peaks": "datasheet", "efficiency": efficiency,
        "latency": {"per_kernel_s": _sig(kernels.per_kernel_s),
                    **({} if kernels.per_small_kernel_s is None
                       else {"per_small_kernel_s": _sig(kernels.per_small_kernel_s)}),
                    "per_layer_s": 0.0, "per_step_s": 0.0, "eager_layer_s": 0.0, "eager_step_s": 0.0},
        "options": dict(HF_OPTIONS),
    }
    meta = _metadata(data_dir)
    base["description"] = (
        "transformers (SDPA, StaticCache, grouped_mm experts) with CUDA-graph decode and eager "
        f"prefill on {gpu}; fitted by perfmodel calibrate fit")
    if anchor is not None:
        return _anchored(base, gpu, anchor, results, data_dir, meta, kernels, held_out)
    rows = _rows(results, train)
    overheads = fit_overheads(rows, base, gpu)
    base["latency"].update(overheads["latency"])
    base["efficiency"]["elementwise"].update(memory=overheads["elementwise_memory"], memory_half=0.0)
    sync = fit_expert_sync(base, results, gpu)
    if sync is not None:
        base["latency"]["expert_sync_s"] = sync["expert_sync_s"]
    stats, base["error_band"] = held_out_residuals(base, results, gpu, train, held_out)
    base["fitted_from"] = (f"{data_dir.relative_to(ROOT)} (microbenchmarks, {meta}) and "
                           f"{results.relative_to(ROOT)} (end-to-end, training models only)")
    base["fit"] = {
        "train_models": list(train), "held_out_models": list(held_out),
        **({"expert_sync": sync["record"]} if sync is not None else {}),
        "kernel_fit": kernels.summary(),
        "residuals": stats,
    }
    return base


def _kernel_fit(data_dir: Path, gpu: str, held_out: tuple[str, ...]):
    """The η curves of a GPU's microbenchmark tables in ``data_dir``, without the shapes only the
    held-out models use (:func:`perfmodel.calibration.fit_kernels.fit_kernel_efficiencies`)."""
    from perfmodel.calibration.fit_kernels import fit_kernel_efficiencies
    from perfmodel.specs.hardware import load_gpu

    return fit_kernel_efficiencies(data_dir, load_gpu(gpu), exclude_models=set(held_out), per_kernel="gemm_intercept")


def _anchored(base: dict[str, Any], gpu: str, anchor: str, results: Path, data_dir: Path, meta: str,
              kernels: Any, held_out: tuple[str, ...]) -> dict[str, Any]:
    """An hf profile of ``gpu``'s microbenchmarks with ``anchor``'s fixed costs (:func:`fit_profile`)."""
    from perfmodel.calibration.fit_kernels import kernel_fit_to_profile_dict
    from perfmodel.profile import fitted_profile_path
    from perfmodel.specs.files import read_mapping

    if anchor == gpu:
        raise SpecError(f"an hf fit of {gpu} cannot be anchored on its own fit")
    source = fitted_profile_path("hf", anchor)
    theirs = read_mapping(source, SpecError, what="profile ")
    taken = [f for f in ANCHORED_LATENCY if f in theirs["latency"]]
    base["latency"].update({f: theirs["latency"][f] for f in taken})
    benched = kernel_fit_to_profile_dict(_kernel_fit(CALIBRATION_DATA_DIR / anchor, anchor, held_out))
    ratio = theirs["efficiency"]["elementwise"]["memory"] / benched["elementwise"]["memory"]
    base["efficiency"]["elementwise"].update(memory=_sig(base["efficiency"]["elementwise"]["memory"] * ratio),
                                             memory_half=0.0)
    base["fitted_from"] = (f"{data_dir.relative_to(ROOT)} (microbenchmarks, {meta}) and "
                           f"{source.relative_to(ROOT)} (the engine's fixed costs, fitted on {anchor}'s rows)")
    base["fit"] = {"train_models": [], "held_out_models": list(held_out),
                   "anchor": {"gpu": anchor, "profile": str(source.relative_to(ROOT)), "held": taken,
                              "elementwise_memory_ratio": _sig(ratio)},
                   "kernel_fit": kernels.summary()}
    if results.exists():  # every row of this GPU is held out: no parameter was fitted on it
        base["fit"]["residuals"], base["error_band"] = held_out_residuals(base, results, gpu, (), held_out)
    return base


def _residual_stats(rel_error) -> dict[str, Any]:
    """MAPE, 90th percentile of |error| and bias (%), and the count, of relative errors."""
    return {"mape_pct": _sig(float(rel_error.abs().mean() * 100)),
            "p90_abs_pct": _sig(float(rel_error.abs().quantile(0.9) * 100)),
            "bias_pct": _sig(float(rel_error.mean() * 100)), "n": int(len(rel_error))}


#: Fewest held-out prefills of a regime (:func:`perfmodel.prediction.prefill_regime`) for its TTFT band.
MIN_REGIME_POINTS = 5
#: The band's TTFT field of each regime of the prefill (:func:`perfmodel.prediction.prefill_regime`).
TTFT_BAND_FIELDS = {GPU_BOUND: "ttft", LAUNCH_BOUND: "ttft_launch_bound", GRAPH_REPLAYED: "ttft_graph_replayed"}
#: The metrics banded per regime of the decode step (:func:`perfmodel.prediction.decode_regime`),
#: and the suffix of each regime's fields (``decode_step``, ``decode_step_host_bound``, ...).
DECODE_BAND_METRICS = ("decode_step", "e2e", "throughput")
DECODE_BAND_SUFFIX = {GPU_BOUND: "", HOST_BOUND: "_host_bound"}


def held_out_residuals(profile: dict[str, Any], results: Path, gpu: str, train: tuple[str, ...],
                       held_out: tuple[str, ...], note: str = "", band_exclude: Any = None,
                       train_points: tuple[str, ...] = (),
                       carry_bands: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Residuals of a profile on every committed one-GPU row (``results`` and its what-if file),
    per split and metric (MAPE, 90th percentile of |error|, bias, n, in %), and the error band
    they give: the held-out 90th percentiles. Hypothetical variants are held out by construction;
    rows on several GPUs are left out (the band states the error of a one-GPU prediction; the
    validation reports those rows per layout), and so are rows of an unfused MoE (the band is
    that of the fused MoE's grouped GEMMs, which the staged block runs too: its rows, all
    MXFP4's, are checked with their scheme's); quantized rows count in the residuals and are
    checked against the band per scheme (:func:`band_check`), not in it (the band is stated at the profile's dtype), and
    so are rows whose KV cache was stored in another dtype, per dtype (``kv_cache``), and rows of
    dense models, whatever their scheme (``architecture.dense``: the band is the MoE models'). TTFT
    gets a band per regime of the prefill (:func:`perfmodel.prediction.prefill_regime`) where
    the launch-bound and the GPU-bound ones each have at least :data:`MIN_REGIME_POINTS`
    held-out points: ``ttft`` (GPU-bound),
    ``ttft_launch_bound`` and, with as many points, ``ttft_graph_replayed`` (see
    :func:`perfmodel.prediction.error_band`); likewise ITL, E2E and throughput per regime of
    the decode step (:func:`perfmodel.prediction.decode_regime`): ``decode_step``, ``e2e``,
    ``throughput`` (GPU-bound) and ``*_host_bound``; the residuals of the band's own points per
    regime go to ``band points``, and the points of each model (as built and its variants),
    training and held out, to ``models`` (what ``perfmodel list models`` shows as measured). ``band_exclude``: a predicate on rows (with the
    reason in ``note``) whose points count in the residuals but not in the band, e.g. rows that
    did not run the routing the model assumes. ``train_points``: point ids of the rows a further
    term was fitted on (:func:`perfmodel.measuring.compare.compare`). ``carry_bands``: called as
    ``carry_bands(band, band_points)`` once the band is stated, to fill in (in place) the regimes
    another GPU's fit states for this one
    (:func:`perfmodel.calibration.fit_anchor.carried_regime_bands`), before each scheme's rows are
    checked against the band, so that they are checked against the band predictions carry."""
    from perfmodel.measuring.compare import load_with_what_ifs, row_moe_impl

    rows = [r for r in one_gpu_rows(load_with_what_ifs(results))  # the band is the fused MoE's grouped GEMMs'
            if row_moe_impl(r) in ("fused", "staged")]
    points = _compare_with(profile, rows, gpu, train, train_points)
    stats: dict[str, Any] = {}
    for split in ("train", "held-out"):
        sub = points[points["split"] == split]
        stats[split] = {metric: _residual_stats(g["rel_error"]) for metric, g in sub.groupby("metric")}
    held = stats["held-out"]
    per_model = points.drop_duplicates("point_id").groupby(["model", "split"]).size()
    stats["models"] = {model: {split: int(n) for (m, split), n in per_model.items() if m == model}
                       for model in sorted(set(points["model"]))}
    if not held:
        raise SpecError(f"{results} holds no held-out rows: nothing to state an error band from")
    excluded = {r["point_id"] for r in rows if band_exclude is not None and band_exclude(r)}
    checked = points[(points["split"] == "held-out") & ~points["point_id"].isin(excluded)]
    # the band is the MoE models'; a dense model's held-out points are checked against it apart
    dense = checked[checked["dense"]] if "dense" in checked else checked.iloc[:0]
    checked = checked[~checked["dense"]] if "dense" in checked else checked
    # the band is stated at the profile's own dtype, weights and KV cache; a quantization scheme's
    # rows, and a KV-cache dtype's, are checked against it; speculative rows are not in it (their
    # predictions carry no band, and their TTFT adds the draft's prefill)
    banded = checked[checked["quant"] == "none"] if "quant" in checked else checked
    banded = banded[banded["kv_cache"] == "model"] if "kv_cache" in banded else banded
    banded = banded[~banded["speculative"]] if "speculative" in banded else banded
    if banded.empty:
        raise SpecError(f"{results}: every held-out row is excluded from the band")
    p90 = banded.groupby("metric")["rel_error"].apply(lambda e: e.abs().quantile(0.9))
    # besides the named held-out models, any other measured model no fit reads is in the band
    trained = set(points.loc[points["split"] == "train", "model"])
    others = sorted(set(banded["model"]) - set(held_out) - trained)
    models = ", ".join(held_out) + (f"; and {', '.join(others)}, which no fit reads" if others else "")
    band = {
        **{m: _sig(float(p90[m])) for m in ("ttft", "decode_step", "e2e", "throughput")},
        "source": (f"90th percentile of |relative error| on held-out models ({models}) "
                   f"and on hypothetical variants (what-if results), unquantized, without speculative decoding "
                   f"(each quantization "
                   f"scheme's held-out rows are checked against the band: fit.residuals.quantization){note}"),
    }
    # TTFT per regime of the prefill (perfmodel.prediction.prefill_regime)
    ttft = banded[banded["metric"] == "ttft"]
    regimes = ttft["prefill_regime"].value_counts() if "prefill_regime" in ttft else {}
    if regimes.get(LAUNCH_BOUND, 0) >= MIN_REGIME_POINTS and regimes.get(GPU_BOUND, 0) >= MIN_REGIME_POINTS:
        counts = []
        for regime, name in TTFT_BAND_FIELDS.items():
            part = ttft[ttft["prefill_regime"] == regime]
            counts.append(f"{len(part)} {regime}")
            if len(part) >= MIN_REGIME_POINTS:
                band[name] = _sig(float(part["rel_error"].abs().quantile(0.9)))
        band["source"] += (f"; TTFT per regime of the prefill ({', '.join(counts)} "
                           f"held-out prefills; a regime with fewer than {MIN_REGIME_POINTS} has no TTFT band)")
        for split in ("train", "held-out"):
            sub = points[(points["split"] == split) & (points["metric"] == "ttft") & ~points["speculative"]]
            for regime, part in sub.groupby("prefill_regime"):
                stats[split][f"ttft {regime}"] = _residual_stats(part["rel_error"])
    # ITL, E2E and throughput per regime of the decode step (perfmodel.prediction.decode_regime),
    # where both regimes have enough held-out steps
    steps = banded[banded["metric"] == "decode_step"]
    decode = steps["decode_regime"].value_counts() if "decode_regime" in steps else {}
    if decode.get(HOST_BOUND, 0) >= MIN_REGIME_POINTS and decode.get(GPU_BOUND, 0) >= MIN_REGIME_POINTS:
        for regime, suffix in DECODE_BAND_SUFFIX.items():
            part = banded[banded["decode_regime"] == regime]
            for metric in DECODE_BAND_METRICS:
                errors = part.loc[part["metric"] == metric, "rel_error"].abs()
                band[metric + suffix] = _sig(float(errors.quantile(0.9)))
        band["source"] += (f"; ITL, E2E and throughput per regime of the decode step "
                           f"({decode[GPU_BOUND]} {GPU_BOUND}, {decode[HOST_BOUND]} {HOST_BOUND} held-out steps)")
        for split in ("train", "held-out"):
            sub = points[(points["split"] == split) & ~points["speculative"]]
            for (regime, metric), part in sub.groupby(["decode_regime", "metric"]):
                if metric in ("decode_step", "throughput"):
                    stats[split][f"{metric} {regime}"] = _residual_stats(part["rel_error"])
    # the band's own points, regime by regime: the error beside each half-width
    own: dict[str, Any] = {}
    if "prefill_regime" in ttft:
        own.update({f"ttft {regime}": _residual_stats(part["rel_error"])
                    for regime, part in ttft.groupby("prefill_regime")})
    if "decode_regime" in banded:
        own.update({f"{metric} {regime}": _residual_stats(part["rel_error"])
                    for (regime, metric), part in banded.groupby(["decode_regime", "metric"])
                    if metric in ("decode_step", "throughput")})
    if own:
        stats["band points"] = own
    if carry_bands is not None:
        carry_bands(band, own)
    quantized = checked[~checked["speculative"]] if "speculative" in checked else checked
    if "quant" in quantized:
        plain_kv = quantized[quantized["kv_cache"] == "model"] if "kv_cache" in quantized else quantized
        schemes = {q: band_check(part, band) for q, part in plain_kv.groupby("quant") if q != "none"}
        if schemes:
            stats["quantization"] = schemes
    if "kv_cache" in quantized:  # the KV cache in another dtype, weights unquantized
        unquantized = quantized[quantized["quant"] == "none"] if "quant" in quantized else quantized
        caches = {kv: band_check(part, band) for kv, part in unquantized.groupby("kv_cache") if kv != "model"}
        if caches:
            stats["kv_cache"] = caches
    dense = dense[~dense["speculative"]] if "speculative" in dense else dense
    if not dense.empty:  # every scheme of theirs together: their prefills set them apart, in bf16 and fp8 alike
        stats["architecture"] = {"dense": band_check(dense, band)}
    return stats, band


def band_check(points, band: dict[str, Any]) -> dict[str, Any]:
    """Whether a quantization scheme's held-out ``points`` (those of the band's own selection,
    speculative rows apart) lie within ``band``: the 90th percentile |error| of each metric in
    each regime (of the prefill for TTFT, of the decode step for the rest) at most the band's
    half-width for that regime, and at least :data:`MIN_REGIME_POINTS` GPU-bound decode steps.
    Returns the points counted, the percentiles (%) and the points behind each (``counts``),
    ``within`` and, where not, ``why`` and ``own_band``: the scheme's own 90th percentile |error|
    (a fraction) in each metric and regime it has at least :data:`MIN_REGIME_POINTS` points of,
    which a prediction in that scheme takes where it is wider than the band
    (:func:`perfmodel.prediction.error_band`)."""
    p90: dict[str, float] = {}
    counts: dict[str, int] = {}
    within = True
    for regime, suffix in DECODE_BAND_SUFFIX.items():
        for metric in DECODE_BAND_METRICS:
            part = points[(points["metric"] == metric) & (points["decode_regime"] == regime)]
            limit = band.get(metric + suffix, band[metric])
            if not part.empty:
                p90[f"{metric} {regime}"] = _sig(100 * float(part["rel_error"].abs().quantile(0.9)))
                counts[f"{metric} {regime}"] = len(part)
                within &= p90[f"{metric} {regime}"] <= 100 * limit
    ttft = points[points["metric"] == "ttft"]
    for regime, part in ttft.groupby("prefill_regime"):
        limit = band.get(TTFT_BAND_FIELDS.get(regime, "ttft"))
        p90[f"ttft {regime}"] = _sig(100 * float(part["rel_error"].abs().quantile(0.9)))
        counts[f"ttft {regime}"] = len(part)
        within &= limit is not None and p90[f"ttft {regime}"] <= 100 * limit
    steps = points[(points["metric"] == "decode_step") & (points["decode_regime"] == GPU_BOUND)]
    why = "" if within else "outside the band in some regime"
    if len(steps) < MIN_REGIME_POINTS:
        within, why = False, why or f"fewer than {MIN_REGIME_POINTS} GPU-bound decode steps"
    out = {"points": int((points["metric"] == "decode_step").sum()), "p90_abs_pct": p90, "counts": counts,
           "within": bool(within)}
    if within:
        return out
    own = {key: _sig(value / 100) for key, value in p90.items() if counts[key] >= MIN_REGIME_POINTS}
    return {**out, "why": why, **({"own_band": own} if own else {})}


def _metadata(data_dir: Path) -> str:
    import json

    path = data_dir / "metadata.json"
    if not path.exists():
        raise SpecError(f"missing {path}: the microbenchmark tables need their metadata")
    meta = json.loads(path.read_text())
    return (f"{meta.get('gpu_name')}, torch {meta.get('torch')}, transformers "
            f"{meta.get('transformers')}, {str(meta.get('date'))[:10]}, commit {meta.get('git_commit')}")


def write_profile(profile: dict[str, Any], path: Path | None = None) -> Path:
    """Write a fitted profile YAML (stable key order) and return its path.

    The text goes to a new temporary file in the same folder, which then replaces ``path``
    in one step: a reader sees the old profile or the new one, never a partial file, and a
    failed write leaves the old profile (a symbolic link at ``path`` is replaced, not
    followed).
    """
    path = Path(path or PROFILES_DIR / f"{profile['gpu']}-{profile['engine']}.yaml")
    header = "# Fitted by `perfmodel calibrate fit` from committed data; regenerate, do not edit.\n"
    text = header + yaml.safe_dump(profile, sort_keys=False, width=100)
    mode = path.stat().st_mode & 0o777 if path.is_file() and not path.is_symlink() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
