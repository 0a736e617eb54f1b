"""``perfmodel validate``: predicted against measured, live on a GPU or replayed from the repo.

Live mode (a CUDA GPU and the backend are present) measures a small sweep now, then compares.
Replay mode (anywhere else) reads the committed results of that backend and GPU and says so,
with the measurements' date, GPU and software versions. Both compare the calibrated profile of
the backend with the uncalibrated roofline, mark which models the profile was fitted on
(train) and which it never saw (held-out), and write an HTML report and a markdown summary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from perfmodel.errors import InputError
from perfmodel.paths import ROOT, results_file
from perfmodel.templating import check_out_dir
from perfmodel.validate.report_metrics import (COLLAPSED_SPLIT, DENSE_SPLIT, ENGINE_PROCESS_SPLIT, UNFITTED_SPLIT,
                                               measured_span)

#: Where a report goes without --out: reports/validate/<model> in the working directory.
REPORTS_DIR = Path("reports") / "validate"

#: The small live sweep: B × S (= O).
LIVE_BATCHES = "1,16"
LIVE_LENGTHS = "128"
BASELINE_ENGINE = "roofline"


def held_out_verdict(points, calibrated: str, source: dict[str, Any]) -> dict[str, Any]:
    """The report's verdict on ``calibrated`` (its held-out MAPE against the backend's targets,
    :func:`perfmodel.validate.report_metrics.verdict`): ``result`` (PASS, FAIL or INCOMPLETE),
    ``checks`` (metric, MAPE %, target %, met) and ``line``, the sentence the summary opens with."""
    from perfmodel.validate.report_metrics import targets, verdict, verdict_line

    bounds = targets(source)
    word, checks = verdict(points, calibrated, bounds)
    return {"result": word, "line": verdict_line(points, calibrated, bounds).replace("`", ""),
            "checks": [{"metric": metric, "mape_pct": value, "target_pct": target, "met": met}
                       for metric, value, target, met in checks]}


def live_available(backend: str) -> bool:
    """Whether this machine can measure ``backend`` now (a CUDA GPU and the engine installed)."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    if backend == "vllm":
        from perfmodel.measuring import vllm_backend

        return vllm_backend.vllm_available()
    return True


def transferred(profile, gpu: str) -> bool:
    """Whether ``profile`` was fitted on another GPU than ``gpu`` (its efficiencies carried over
    as fractions of the datasheet peaks)."""
    return profile.gpu is not None and profile.gpu != gpu


def _source(rows: list[dict[str, Any]], mode: str, path: Path, profile, backend: str, gpu: str,
            unprobed: float | None = None) -> dict[str, Any]:
    ok = [r for r in rows if r.get("status") == "ok"]
    first = ok[0] if ok else {}
    span = measured_span(ok)
    fit = profile.fit or {}
    carried = transferred(profile, gpu)
    try:
        shown = str(path.relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {
        "mode": mode, "backend": backend,
        "date": span["date"], "gpu": first.get("gpu_name", ""), "driver": first.get("driver", ""),
        "torch": first.get("torch", ""), "transformers": first.get("transformers", ""),
        "results_file": shown, "git_commit": span["git_commit"],
        "calibrated_engine": profile.name, "baseline_engine": BASELINE_ENGINE,
        "train_models": [] if carried else list(fit.get("train_models", [])),
        "held_out_models": list(fit.get("held_out_models", [])),
        **({"fitted_on": (f"{profile.gpu} ({_anchoring(fit)}), transferred to {gpu}: no row here was fitted on, "
                          "every one is held out")} if carried else {}),
        **({"vllm": first["vllm"]} if first.get("vllm") else {}),
        **_host_speed(ok, profile, unprobed),
    }


def _anchoring(fit: dict[str, Any]) -> str:
    """How a carried profile's fit was made: on its GPU's rows alone, or anchored on another's."""
    anchor = (fit.get("anchor") or {}).get("gpu")
    return f"its host's terms from {anchor}'s fit" if anchor else "every term from its own GPU's rows"


def _host_speed(rows: list[dict[str, Any]], profile, unprobed: float | None = None) -> dict[str, str]:
    """The source line saying which rows were predicted at the host's speed they recorded, and
    at what speed the others were (``unprobed``, ms: their machines' usual probe; None: the
    profile's host)."""
    from perfmodel.host_speed import row_probe_ms

    ref, alpha = profile.latency.host_probe_ref_ms, profile.latency.host_speed_exponent
    probed = sum(row_probe_ms(r) is not None for r in rows)
    if ref is None or not probed:
        return {}
    others = ("the others at the profile's host" if unprobed is None else
              f"the others at {unprobed:g} ms, the median probe of their machines' rows with one "
              "(their GPU's own fit's host_probe_ref_ms)")
    return {"host_speed": (f"{probed} of {len(rows)} rows predicted at the host probe time they recorded "
                           f"(host times x (probe / {ref:g} ms)^{alpha:g}, perfmodel.host_speed); {others}")}


def machine_probe_ms(backend: str, gpu: str) -> float | None:
    """The usual host probe (ms) of the machines ``gpu``'s rows were measured on: the reference of
    ``gpu``'s own fitted ``backend`` profile (``latency.host_probe_ref_ms``, the median probe of
    its training rows that recorded one); None without that profile or reference. A row without
    a probe, predicted by a profile fitted on another GPU, is predicted at it: that profile's
    own reference is its machines' speed, not the row's."""
    from perfmodel.profile import fitted_profile_path, load_profile

    path = fitted_profile_path(backend, gpu)
    return load_profile(str(path), gpu).latency.host_probe_ref_ms if path.is_file() else None


def _set_apart(points, rows: list[dict[str, Any]], gpu: str) -> dict[str, str]:
    """Move the held-out points that measured something other than what the model describes to
    their split of :data:`~perfmodel.validate.report_metrics.APART`, in place: those of the
    (model, quantization, routing) groups whose routing collapsed
    (:func:`perfmodel.measuring.routing_floor.collapsed_routing`), then those of engines whose
    core ran in a process of its own (:func:`perfmodel.measuring.compare.row_engine_process`),
    then the rest of dense models' (:data:`~perfmodel.validate.report_metrics.DENSE_SPLIT`).
    Returns the source lines that say which."""
    from perfmodel.measuring.compare import row_engine_process
    from perfmodel.measuring.routing_floor import collapsed_routing, group_name, routing_group

    ok = [r for r in rows if r.get("status") == "ok"]
    groups = collapsed_routing(ok, gpu)
    held = points["split"] == "held-out"
    collapsed = points["point_id"].isin({r.get("point_id") for r in ok if routing_group(r) in groups})
    points.loc[held & collapsed, "split"] = COLLAPSED_SPLIT
    apart = points["point_id"].isin({r.get("point_id") for r in ok if row_engine_process(r)})
    points.loc[held & ~collapsed & apart, "split"] = ENGINE_PROCESS_SPLIT
    dense = held & ~collapsed & ~apart & (points["dense"] if "dense" in points else False)
    points.loc[dense, "split"] = DENSE_SPLIT
    lines = {}
    if groups:
        lines["routing_collapsed"] = (
            f"{', '.join(group_name(*key) for key in sorted(groups))} (decode steps faster than uniform "
            "routing allows, or a router with a bias, under the engine's dummy weights: their held-out "
            f"points are the split '{COLLAPSED_SPLIT}', apart from the verdict)")
    if (held & ~collapsed & apart).any():
        lines["engine_core_apart"] = (
            f"{points.loc[held & ~collapsed & apart, 'point_id'].nunique()} held-out points "
            "whose vLLM engine core ran in a process of its own (mp=1): the split "
            f"'{ENGINE_PROCESS_SPLIT}', apart from the verdict")
    if dense.any():
        lines["dense_models"] = (
            f"{points.loc[dense, 'point_id'].nunique()} held-out points of dense models "
            f"({', '.join(sorted(set(points.loc[dense, 'model'])))}): the split '{DENSE_SPLIT}', apart from "
            "the verdict, whose targets are stated for MoE models; their error is stated beside it")
    return lines


def _fitted_on_profile(backend: str, fitted_on: str) -> str:
    """The profile ``--fitted-on`` names: a GPU's committed fit of ``backend``, or a profile file
    (``.yaml``, e.g. one ``calibrate fit --anchor none --out FILE`` wrote; its engine is checked
    once loaded)."""
    from perfmodel.profile import fitted_profile_path
    from perfmodel.specs.hardware import load_gpu

    path = Path(fitted_on)
    if path.suffix not in (".yaml", ".yml"):
        return str(fitted_profile_path(backend, load_gpu(fitted_on).name))
    if not path.is_file():
        raise InputError(f"--fitted-on {fitted_on}: no such profile file")
    return str(path)


def _set_apart_unfitted(points, profile) -> dict[str, str]:
    """Move a transfer's held-out points at a quantization scheme or KV-cache dtype that
    ``profile`` has no entry of (fitted on its GPU's rows, or carried from its anchor) to the split
    :data:`~perfmodel.validate.report_metrics.UNFITTED_SPLIT`, in place. Returns the source line
    that says which."""
    held = points["split"] == "held-out"
    scheme = ~points["quant"].isin(["none", *profile.quantization])
    kv = ~points["kv_cache"].isin(["model", *profile.kv_cache])
    unfitted = held & (scheme | kv)
    if not unfitted.any():
        return {}
    points.loc[unfitted, "split"] = UNFITTED_SPLIT
    names = sorted({*points.loc[unfitted & scheme, "quant"],
                    *(f"KV {k}" for k in points.loc[unfitted & kv, "kv_cache"])})
    return {"not_fitted": (f"{points.loc[unfitted, 'point_id'].nunique()} held-out points at {', '.join(names)}, "
                           f"which {profile.name} was never fitted in: the split '{UNFITTED_SPLIT}', apart from "
                           "the verdict")}


def _check_given_rows(rows: list[dict[str, Any]], path: Path, backend: str) -> None:
    """A rows file given to replay: offline rows of ``backend``, some of them measured; one line
    (:class:`InputError`) where it is not."""
    if any(r.get("mode") == "serving" for r in rows):
        raise InputError(f"{path} holds serving runs: replay them with --serving")
    other = sorted({str(r.get("backend")) for r in rows if r.get("backend") not in (None, backend)})
    if other:
        raise InputError(f"{path} holds {', '.join(other)} rows: replay them with --backend {other[0]}")
    if not any(r.get("status") == "ok" for r in rows):
        raise InputError(f"no measured rows in {path}")
    for row in rows:
        if row.get("status") == "ok":
            _check_row(row, path)


def _check_row(row: dict[str, Any], path: Path) -> None:
    """Refuse (:class:`InputError`, one line) a measured offline row that breaks the rows' schema
    (:func:`perfmodel.measuring.results.validate_row`): its first problem."""
    from perfmodel.measuring.results import validate_row

    problems = validate_row(row)
    if problems:
        name = row.get("point_id") if isinstance(row.get("point_id"), str) and row.get("point_id") else None
        raise InputError(f"malformed row {name or 'without a point_id'} in {path}: {problems[0]}")


def training_set(profile, gpu: str) -> tuple[list[str], list[str]]:
    """The rows of ``gpu`` a profile was fitted on, as :func:`perfmodel.measuring.compare.compare`
    takes them: ``(train_models, train_points)``. A profile carried from another GPU's fit read
    none of this GPU's rows (refused where that fit is anchored on this GPU's); one that names
    every row it read (``fit.points``) gives those; else its training models as built, and the
    points of its further terms (the draft pass, the experts' sync)."""
    fit = profile.fit or {}
    carried = transferred(profile, gpu)
    if carried and (fit.get("anchor") or {}).get("gpu") == gpu:
        raise InputError(f"{profile.name} is anchored on {gpu}'s fit (fit.anchor): the rows of "
                         f"{gpu} are not held out from it")
    if carried:  # no row of this GPU was fitted on: every row is held out
        return [], []
    if "points" in fit:  # the profile names every row it was fitted on: those are the training points
        return [], list(fit["points"])
    return (list(fit.get("train_models", [])),
            [p for term in ("draft_pass", "expert_sync") for p in (fit.get(term) or {}).get("points", [])])


def run_validation(model: str, *, backend: str = "hf", gpu: str = "h200-sxm",
                   out_dir: Path | None = None, live: bool | None = None,
                   results: Path | None = None, fitted_on: str | None = None) -> dict[str, Any]:
    """Compare predictions with measurements of ``model`` (or ``all``); write the reports.
    ``results``: replay that rows file alone (default: live where a GPU is here, else the
    committed ``validate/results/<gpu>-<backend>.jsonl`` with its what-if file). ``fitted_on``:
    predict with the profile fitted on that GPU (default: ``gpu``'s own, else one transferred
    from another GPU). A profile fitted on another GPU than ``gpu`` was fitted on none of its
    rows: every row is then held out (the transfer between the GPUs, measured).

    Returns a dict: source (mode replay|live, date, GPU, versions), mape per engine × split ×
    metric, points (predicted vs measured), repeats (the points measured ok more than once,
    :func:`perfmodel.validate.repeats.repeated_points`, and their summary), prefill_kernels (per
    split, the profiled prefills' measured/model kernel time by category:
    :func:`perfmodel.measuring.prefill_kernels.category_ratios`), decode_kernels (the same of the
    profiled decode steps), and the report paths.
    """
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model
    from perfmodel.measuring.compare import compare, load_measurements, load_with_what_ifs, mape, what_if_file
    from perfmodel.validate.repeats import every_measurement, ok_measurements, repeat_summary, repeat_table
    from perfmodel.validate.offline_memory import engine_kv_capacity, kv_capacity_sentence
    from perfmodel.validate.report_pages import write_report

    if backend not in ("hf", "vllm"):
        raise InputError(f"unknown --backend '{backend}' (hf or vllm)")
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    gpu_spec = load_gpu(gpu)
    # the calibrated engine as predictions name it: the backend, or the file of the profile asked for
    calibrated = backend if fitted_on is None else _fitted_on_profile(backend, fitted_on)
    profile = load_profile(calibrated, gpu_spec.name)
    if fitted_on is not None and profile.engine != backend:
        raise InputError(f"--fitted-on {fitted_on}: a profile of the {profile.engine} engine, "
                         f"not --backend {backend}'s")
    wanted = None if model == "all" else [load_model(model).name]
    use_live = results is None and (live_available(backend) if live is None else live)
    if use_live:
        from perfmodel.measuring.cli import measure

        path = Path(tempfile.mkdtemp(prefix="perfmodel-validate-")) / f"live-{backend}.jsonl"
        models = wanted or (profile.fit or {}).get("held_out_models") or ["olmoe-1b-7b"]
        # every option spelled out: called from Python, typer's defaults are not applied
        measure(model=",".join(models), backend=backend, batch=LIVE_BATCHES,
                input_len=LIVE_LENGTHS, output_len=None, set_=None, layers=None,
                experts_impl="grouped_mm", full_run=None, out=path, budget_s=None,
                cuda_graphs=True, profile=True, tp=1, expert_parallel=False, pp=1, dp=1,
                quantization=None, moe_backend="triton", sampling="random", routing="model", routing_probe=False,
                allow_cpu=False)
        mode = "live"
    elif results is not None:
        path = Path(results)
        if path.is_dir():
            raise InputError(f"--results {path} is a folder; give the measured rows' JSONL file")
        if not path.is_file():
            raise InputError(f"no results file {path}")
        mode = "replay"
    else:
        path = results_file(backend, gpu_spec.name)
        if not path.exists():
            raise InputError(f"no GPU here and no committed {backend} measurements for {gpu_spec.name} "
                             f"({path.relative_to(ROOT)})")
        mode = "replay"
    committed = mode == "replay" and results is None  # the committed file, with its what-if rows
    rows = load_with_what_ifs(path) if committed else load_measurements(path)
    if results is not None:
        _check_given_rows(rows, path, backend)
    read = [path, *([what_if_file(path)] if committed and what_if_file(path).exists() else [])]
    if wanted is not None and not any(r.get("model") in wanted and r.get("status") == "ok" for r in rows):
        raise InputError(f"no measurements of {wanted[0]} in {path.name}")
    carried = transferred(profile, gpu_spec.name)
    train, train_points = training_set(profile, gpu_spec.name)
    import pandas as pd

    points, ops = [], []
    unprobed = machine_probe_ms(backend, gpu_spec.name) if carried else None
    for engine, label in ((calibrated, profile.name), (BASELINE_ENGINE, BASELINE_ENGINE)):
        pts, op = compare(rows, engine=engine, gpu=gpu_spec.name, train_models=train, models=wanted,
                          train_points=train_points, unprobed_ms=unprobed)
        pts["engine"], op["engine"] = label, label
        points.append(pts)
        ops.append(op)
    points_df, ops_df = pd.concat(points, ignore_index=True), pd.concat(ops, ignore_index=True)
    if points_df.empty:
        raise InputError(f"no measured row in {path} is one the model compares with (an experts "
                         "implementation it has no counterpart of, or no measured metric)")
    source = _source(rows, mode, path, profile, backend, gpu_spec.name, unprobed)
    source.update(_set_apart(points_df, rows, gpu_spec.name))
    if carried:
        source.update(_set_apart_unfitted(points_df, profile))
    kv_note = kv_capacity_sentence(engine_kv_capacity(
        [r for r in rows if wanted is None or r.get("model") in wanted], profile, gpu_spec.name, carried))
    if kv_note:
        source["kv_capacity"] = kv_note
    out_dir = out_dir or REPORTS_DIR / (wanted[0] if wanted else "all")
    title = f"perfmodel validation: {wanted[0] if wanted else 'all models'} · {backend} on {gpu_spec.name}"
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the report folder {out_dir}: {exc.strerror or exc}") from None
    measured = ok_measurements(read, models=wanted)
    repeats = repeat_table(measured)
    every = None
    if not repeats.empty:  # every measurement of each point: the kept rows' points and the earlier rows'
        earlier = [r for rows in measured.values() if len(rows) > 1 for r in rows[:-1]]
        extra, _ = compare(earlier, engine=calibrated, gpu=gpu_spec.name,
                           train_models=train, models=wanted, train_points=train_points)
        extra["engine"] = profile.name
        every = pd.concat([points_df[points_df["engine"] == profile.name], extra], ignore_index=True)
    from perfmodel.measuring.prefill_kernels import category_ratios, prefill_kernels
    from perfmodel.validate.report_metrics import model_rows, targets, what_if_rows
    from perfmodel.validate.report_prefill import profiled_steps

    prefill = prefill_kernels(rows if wanted is None else [r for r in rows if r.get("model") in wanted],
                              engine=calibrated, gpu=gpu_spec.name)
    mine = points_df[points_df["engine"] == profile.name]
    prefill["split"] = prefill["point_id"].map(dict(zip(mine["point_id"], mine["split"])))
    html, md = write_report(points_df, ops_df, out_dir, title=title, source=source, repeats=repeats,
                            every=every, prefill=prefill)
    table = mape(points_df)
    return {"source": source, "verdict": held_out_verdict(points_df, profile.name, source),
            "mape": table.to_dict(orient="records"),
            "what_ifs": what_if_rows(points_df, profile.name),
            "models": model_rows(points_df, profile.name, targets(source)),
            "points": points_df.to_dict(orient="records"),
            "repeats": {"points": repeats.to_dict(orient="records"), "summary": repeat_summary(repeats),
                        "every_measurement": every_measurement(points_df, every, profile.name)},
            "prefill_kernels": {split: category_ratios(part).to_dict(orient="index")
                                for split, part in prefill.groupby("split")},
            "decode_kernels": {split: category_ratios(part).to_dict(orient="index")
                               for split, part in profiled_steps(ops_df, profile.name).groupby("split")},
            "report_html": str(html), "summary_md": str(md)}
