"""The numbers and words of the validation report: MAPE tables, the verdict, the worst points,
the provenance sentence, and how values are shown.

Everything here works on the stacked points table of :func:`perfmodel.measuring.compare.compare`
(column ``engine``: the calibrated engine and the uncalibrated baseline). Errors are relative,
predicted/measured − 1; MAPE and error columns are in %.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Held-out MAPE targets of the calibrated engine, % (metric → bound): the hf profile's.
TARGETS = {"decode_step": 8.0, "ttft": 10.0, "throughput": 8.0}
#: Per backend, where they differ from :data:`TARGETS`: a vLLM prefill's time rests on the host's
#: launches more than transformers', and its TTFT target is wider.
BACKEND_TARGETS = {"vllm": {**TARGETS, "ttft": 12.0}}
#: A profile fitted on one GPU and predicting another's rows (``validate --fitted-on``): every
#: metric within 12%.
TRANSFER_TARGETS = {metric: 12.0 for metric in TARGETS}


def targets(source: dict[str, Any] | None = None) -> dict[str, float]:
    """The held-out MAPE targets (%) of the rows ``source`` describes: :data:`TRANSFER_TARGETS` where a
    profile fitted on another GPU predicts them (``fitted_on``), else its backend's (:data:`TARGETS`
    without one)."""
    if (source or {}).get("fitted_on"):
        return TRANSFER_TARGETS
    return BACKEND_TARGETS.get(str((source or {}).get("backend", "")), TARGETS)

#: Metric display order and labels.
METRICS = ("ttft", "decode_step", "e2e", "throughput")
METRIC_LABEL = {"ttft": "TTFT", "decode_step": "Decode step (ITL)", "e2e": "E2E latency",
                "throughput": "Throughput"}
#: Display unit of each metric and its scale from the table's unit (s or tok/s).
METRIC_UNIT = {"ttft": ("ms", 1e3), "decode_step": ("ms", 1e3), "e2e": ("ms", 1e3),
               "throughput": ("tok/s", 1.0)}

#: The split of held-out points whose (model, quantization, routing) group's routing collapsed
#: under the engine's dummy weights (:func:`perfmodel.measuring.routing_floor.collapsed_routing`).
COLLAPSED_SPLIT = "held-out, routing collapsed"
#: The split of held-out vLLM points whose engine core ran in a process of its own
#: (:func:`perfmodel.measuring.compare.row_engine_process`).
ENGINE_PROCESS_SPLIT = "held-out, engine core apart"
#: The split of a transfer's held-out points (``validate --fitted-on``) at a quantization scheme or
#: KV-cache dtype the carried profile was never fitted in, on its own GPU's rows or its anchor's.
UNFITTED_SPLIT = "held-out, scheme not fitted"
#: The split of held-out points of dense models (no layer routes tokens to experts): the targets
#: are stated for MoE models, which a dense model's easier decode steps would flatter; a dense
#: model's predictions take the MoE models' band where its held-out points lie within it, and
#: their own 90th percentile where wider (``fit.residuals.architecture.dense``,
#: :func:`perfmodel.calibration.fit.band_check`).
DENSE_SPLIT = "held-out, dense"
#: Held-out points that measured something other than what the model describes, by split, with
#: what they measured: reported with their MAPE, apart from the verdict (the error band leaves
#: them out for the same reasons: ``fit.band_excludes`` of a vllm profile).
APART = {
    COLLAPSED_SPLIT: "whose routing collapsed under the engine's dummy weights, a routing the model does not assume",
    ENGINE_PROCESS_SPLIT: ("whose engine core ran in a process of its own, taking an offline batch's requests "
                           "while it steps, where the model admits the batch before its first step"),
    UNFITTED_SPLIT: ("at a quantization scheme or KV-cache dtype the carried profile was never fitted in "
                     "(its kernels at the bf16 kernels' rates: not a transfer between GPUs)"),
    DENSE_SPLIT: ("of dense models (no routed experts), beside the targets, which are stated for MoE models; "
                  "their predictions take the band where these points lie within it, else their own "
                  "90th percentile (fit.residuals.architecture.dense)"),
}
SPLITS = ("held-out", "train", *APART)
SOURCE_KEYS = ("mode", "date", "gpu", "driver", "torch", "transformers", "results_file",
               "git_commit", "calibrated_engine", "baseline_engine", "train_models",
               "held_out_models")
#: How many held-out points the per-op chart shows, and the Markdown's worst-points table.
N_OPS_POINTS = 6
N_WORST = 10
#: |error| (%) above which a table cell of the HTML page is marked bad.
BAD_ERROR_PCT = 10.0


# --------------------------------------------------------------------------------------------
# MAPE and the verdict
# --------------------------------------------------------------------------------------------

def short_commit(commit: Any) -> str:
    """A commit as reports show it: a git hash at its first 7 hex digits, anything else as is."""
    text = str(commit)
    return text[:7] if re.fullmatch(r"[0-9a-f]{8,40}", text) else text


def measured_span(rows: list[dict[str, Any]]) -> dict[str, str]:
    """When and from which code the measured ``rows`` came: ``date`` (YYYY-MM-DD, or
    first..last) and ``git_commit`` (each commit once, short, in the rows' order, comma-separated)."""
    dates = sorted(str(r["date"])[:10] for r in rows if r.get("date"))
    commits = dict.fromkeys(short_commit(r["git_commit"]) for r in rows if r.get("git_commit"))
    return {"date": (dates[0] if dates[0] == dates[-1] else f"{dates[0]}..{dates[-1]}") if dates else "",
            "git_commit": ", ".join(commits)}


def mape_table(points) -> "Any":
    """MAPE (%) and friends per engine × split × metric: mean, median, max of |error|, count."""
    import pandas as pd

    if points.empty:
        return pd.DataFrame(columns=["engine", "split", "metric", "mape", "median", "max", "count"])
    table = points.assign(ape=points["rel_error"].abs() * 100.0)
    out = (table.groupby(["engine", "split", "metric"])["ape"]
           .agg(mape="mean", median="median", max="max", count="count").reset_index())
    return out


def layout_rows(points, calibrated: str, baseline: str | None) -> dict[str, Any]:
    """MAPE (%) per layout (``1 GPU``, ``TP=2``, ``TP=4+EP`` …: the ``layout`` column of
    :func:`perfmodel.measuring.compare.compare`) × split × metric, of the calibrated engine and
    the baseline; no rows when the points hold one layout only."""
    if points.empty or "layout" not in points.columns or points["layout"].nunique() < 2:
        return {"header": [], "rows": []}
    table = (points.assign(ape=points["rel_error"].abs() * 100.0)
             .groupby(["layout", "split", "metric", "engine"])["ape"].agg(["mean", "count"]))
    header = ["layout", "split", "metric", f"{calibrated} MAPE"] + ([f"{baseline} MAPE"] if baseline else [])
    rows = []
    for (layout, split, metric), group in table.groupby(level=[0, 1, 2]):
        by_engine = group.droplevel([0, 1, 2])
        cells = [pct(float(by_engine.loc[e, "mean"]) if e in by_engine.index else None)
                 for e in [calibrated] + ([baseline] if baseline else [])]
        count = int(by_engine["count"].max())
        rows.append([str(layout), str(split), METRIC_LABEL.get(metric, metric), *cells, str(count)])
    return {"header": header + ["points"], "rows": rows}


def regime_rows(points, calibrated: str) -> dict[str, Any]:
    """TTFT of the calibrated engine per split and regime of the predicted prefill (the
    ``prefill_regime`` column of :func:`perfmodel.measuring.compare.compare`: GPU-bound,
    launch-bound, graph-replayed), speculative rows apart (their TTFT adds the draft's prefill):
    MAPE, median and max |error| (%), and the point count; no rows without that column."""
    if points.empty or "prefill_regime" not in points.columns:
        return {"header": [], "rows": []}
    ttft = points[(points["engine"] == calibrated) & (points["metric"] == "ttft")]
    if "speculative" in ttft.columns:
        ttft = ttft[~ttft["speculative"].astype(bool)]
    rows = []
    for (split, regime), group in ttft.groupby(["split", "prefill_regime"]):
        ape = group["rel_error"].abs() * 100.0
        rows.append([str(split), str(regime), pct(float(ape.mean())), pct(float(ape.median())),
                     pct(float(ape.max())), str(len(ape))])
    return {"header": ["split", "prefill", f"{calibrated} MAPE", "median", "max", "points"], "rows": rows}


def decode_regime_rows(points, calibrated: str) -> dict[str, Any]:
    """ITL and throughput of the calibrated engine per split and regime of the predicted decode
    step (the ``decode_regime`` column of :func:`perfmodel.measuring.compare.compare`: GPU-bound,
    or host-bound where the host's time for its sequences is the step), speculative rows apart:
    MAPE and max |error| (%) of each, and the point count; no rows without that column or when
    every step is GPU-bound."""
    if points.empty or "decode_regime" not in points.columns:
        return {"header": [], "rows": []}
    mine = points[(points["engine"] == calibrated) & points["metric"].isin(["decode_step", "throughput"])]
    if "speculative" in mine.columns:
        mine = mine[~mine["speculative"].astype(bool)]
    if mine["decode_regime"].nunique() < 2:
        return {"header": [], "rows": []}
    rows = []
    for (split, regime), group in mine.groupby(["split", "decode_regime"]):
        cells = []
        for metric in ("decode_step", "throughput"):
            ape = group.loc[group["metric"] == metric, "rel_error"].abs() * 100.0
            cells += [pct(float(ape.mean())), pct(float(ape.max()))]
        rows.append([str(split), str(regime), *cells, str(int((group["metric"] == "decode_step").sum()))])
    return {"header": ["split", "decode step", f"ITL {calibrated} MAPE", "ITL max",
                       f"throughput {calibrated} MAPE", "throughput max", "points"], "rows": rows}


#: The held-out error each measured what-if is held to (%, every metric's MAPE): the seed study's
#: effects as the model's switches ("each what-if that was measured has held-out error ≤ 10%").
WHAT_IF_BOUND_PCT = 10.0
#: The what-if column's name for a point that changed nothing (its model as built, cut or not).
AS_BUILT = "none (as built)"
#: What the what-if table groups by, as its reports say above it.
WHAT_IF_NOTE = ("What each held-out point changed from its model as built and run by default: a quantization "
                "scheme, the KV cache's dtype, the MoE shape (top-k, experts, expert FFN width: the seed study's "
                "sweeps and pruning), speculative decoding, the experts' implementation or kernel, several GPUs; a "
                "point that changed several things counts under each, one that changed none (a cut to fewer layers "
                "included) under the last row.")


def what_if_rows(points, calibrated: str, bound: float = WHAT_IF_BOUND_PCT) -> dict[str, Any]:
    """The calibrated engine's held-out error per what-if a point ran (the ``what_if`` column of
    :func:`perfmodel.measuring.compare.compare`; a point with several counts under each, the
    points that changed nothing under :data:`AS_BUILT`): MAPE of ITL, TTFT and throughput (%),
    the point count, and whether every one is within ``bound``; no rows without that column or
    without a what-if."""
    if points.empty or "what_if" not in points.columns:
        return {"header": [], "rows": []}
    mine = points[(points["engine"] == calibrated) & (points["split"] == "held-out")]
    kinds = mine["what_if"].fillna("").map(lambda text: text.split("; ") if text else [AS_BUILT])
    mine = mine.assign(kind=kinds).explode("kind")
    if set(mine["kind"]) <= {AS_BUILT}:
        return {"header": [], "rows": []}
    metrics = ("decode_step", "ttft", "throughput")
    rows = []
    for kind, group in sorted(mine.groupby("kind"), key=lambda item: (item[0] == AS_BUILT, item[0])):
        mapes = [group.loc[group["metric"] == m, "rel_error"].abs().mean() * 100.0 for m in metrics]
        present = [v for v in mapes if v == v]  # NaN: a metric the points lack
        over = [METRIC_LABEL.get(m, m) for m, v in zip(metrics, mapes) if v == v and v > bound]
        rows.append([str(kind), *(pct(float(v)) if v == v else "–" for v in mapes),
                     str(int(group["point_id"].nunique())),
                     ("yes" if not over else "no: " + ", ".join(over)) if present else "–"])
    return {"header": ["what-if", f"ITL {calibrated} MAPE", "TTFT MAPE", "throughput MAPE", "points",
                       f"all ≤ {bound:g}%"], "rows": rows, "note": WHAT_IF_NOTE}


#: What the per-model table groups, as its reports say above it.
MODEL_NOTE = ("Each model's held-out points (the verdict's split: a training model's points that no fit read, "
              "its what-ifs and cuts among them; a held-out model's every point at the routing the model assumes), "
              "against the held-out targets, which the verdict holds over all of them together.")


def model_rows(points, calibrated: str, bounds: dict[str, float]) -> dict[str, Any]:
    """The calibrated engine's held-out error per model (ITL, TTFT and throughput MAPE, %), its
    point count, and the metrics whose MAPE is over ``bounds`` (the held-out targets); no rows
    without held-out points."""
    if points.empty:
        return {"header": [], "rows": []}
    mine = points[(points["engine"] == calibrated) & (points["split"] == "held-out")]
    if mine.empty:
        return {"header": [], "rows": []}
    metrics = ("decode_step", "ttft", "throughput")
    rows = []
    for model, group in sorted(mine.groupby("model")):
        mapes = {m: group.loc[group["metric"] == m, "rel_error"].abs().mean() * 100.0 for m in metrics}
        over = [METRIC_LABEL.get(m, m) for m in metrics
                if m in bounds and mapes[m] == mapes[m] and mapes[m] > bounds[m]]
        rows.append([str(model), *(pct(float(v)) if v == v else "–" for v in mapes.values()),
                     str(int(group["point_id"].nunique())), "yes" if not over else "no: " + ", ".join(over)])
    label = " / ".join(f"{bounds[m]:g}" for m in metrics if m in bounds)
    return {"header": ["model", f"ITL {calibrated} MAPE", "TTFT MAPE", "throughput MAPE", "points",
                       f"within the targets ({label}%)"], "rows": rows, "note": MODEL_NOTE}


def shown_splits(points) -> list[str]:
    """The splits a report shows: held-out and train always, those of :data:`APART` where they have points."""
    have = set(points["split"]) if not points.empty else set()
    return [s for s in SPLITS if s not in APART or s in have]


def lookup(table, engine: str, split: str, metric: str, column: str = "mape") -> float | None:
    """One value of :func:`mape_table` (None where there is none)."""
    hit = table[(table["engine"] == engine) & (table["split"] == split) & (table["metric"] == metric)]
    if hit.empty:
        return None
    value = hit[column].iloc[0]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def pct(value: float | None, digits: int = 2) -> str:
    """A percentage as the tables show it ("–" for none)."""
    return "–" if value is None else f"{value:.{digits}f}"


def signed(value: Any) -> str:
    """A signed error % with one decimal ("–" for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.1f}"


def num(x: float) -> str:
    """4 significant digits without exponents: 0.01234, 12.34, 1,234, 123,457."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = max(0, 3 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{digits}f}"


def verdict(points, calibrated: str, bounds: dict[str, float] | None = None,
            ) -> tuple[str, list[tuple[str, float | None, float, bool | None]]]:
    """("PASS" | "FAIL" | "INCOMPLETE", [(metric, held-out MAPE, target, met)]) for the calibrated
    engine, against ``bounds`` (metric → %; default :data:`TARGETS`)."""
    table = mape_table(points)
    checks = []
    for metric, target in (bounds or TARGETS).items():
        value = lookup(table, calibrated, "held-out", metric)
        checks.append((metric, value, target, None if value is None else value <= target))
    if any(met is None for *_, met in checks):
        word = "INCOMPLETE"
    elif all(met for *_, met in checks):
        word = "PASS"
    else:
        word = "FAIL"
    return word, checks


def verdict_line(points, calibrated: str, bounds: dict[str, float] | None = None) -> str:
    """The verdict as one Markdown sentence (engine name in backticks); where some held-out points
    are in a split of :data:`APART`, it says so, and what their MAPE is."""
    word, checks = verdict(points, calibrated, bounds)
    parts = []
    for metric, value, target, met in checks:
        mark = "no data" if met is None else ("met" if met else "missed")
        parts.append(f"{METRIC_LABEL[metric]} {pct(value, 1)}% (target ≤ {target:g}%: {mark})")
    line = f"Verdict: {word} — held-out MAPE of `{calibrated}`: " + "; ".join(parts) + "."
    for split, what in APART.items():
        apart = points[(points["engine"] == calibrated) & (points["split"] == split)] if not points.empty else points
        if apart.empty:
            continue
        table = mape_table(apart)
        values = [(m, lookup(table, calibrated, split, m)) for m in bounds or TARGETS]
        line += (f" Apart ('{split}'): {apart['point_id'].nunique()} held-out points {what} ("
                 + ", ".join(f"{METRIC_LABEL[m]} {pct(v, 1)}%" for m, v in values if v is not None) + ").")
    return line


def engines(points, source: dict[str, Any]) -> tuple[str, str | None]:
    """(calibrated engine, baseline engine or None): as the source names them, else as found."""
    present = list(dict.fromkeys(points["engine"])) if not points.empty else []
    calibrated = source.get("calibrated_engine") or (present[0] if present else "calibrated")
    baseline = source.get("baseline_engine")
    if baseline is None:
        others = [e for e in present if e != calibrated]
        baseline = others[0] if others else None
    return calibrated, baseline


def ordered_metrics(points) -> list[str]:
    """The metrics present, in display order (unknown ones last, sorted)."""
    have = set(points["metric"]) if not points.empty else set()
    return [m for m in METRICS if m in have] + sorted(have - set(METRICS))


def with_variant(frame):
    """``frame`` with a ``variant`` column (the model name where it is missing or empty)."""
    if frame is None or "model" not in frame.columns:
        return frame
    if "variant" not in frame.columns:
        return frame.assign(variant=frame["model"].astype(str))
    variant = frame["variant"].where(frame["variant"].notna() & (frame["variant"] != ""), frame["model"])
    return frame.assign(variant=variant.astype(str))


def point_label(row) -> str:
    """``"<variant> B=.. S=.. O=.."`` of one point."""
    name = row.get("variant") if isinstance(row.get("variant"), str) and row.get("variant") else row["model"]
    return f"{name} B={row['batch']} S={row['input_len']} O={row['output_len']}"


def worst_points(points, engine: str, n: int = N_WORST):
    """Held-out points of ``engine`` ranked by their largest |error| over the metrics.

    One row per point: model, variant, batch, input_len, output_len, point_id, one error-%
    column per metric, the worst metric and its |error| %.
    """
    import pandas as pd

    sel = points[(points["engine"] == engine) & (points["split"] == "held-out")]
    if sel.empty:
        return pd.DataFrame()
    sel = with_variant(sel)
    keys = ["model", "variant", "batch", "input_len", "output_len", "point_id"]
    wide = sel.pivot_table(index=keys, columns="metric", values="rel_error", aggfunc="first")
    wide = wide[[m for m in ordered_metrics(sel)]] * 100.0
    worst_metric = wide.abs().idxmax(axis=1)
    worst_abs = wide.abs().max(axis=1)
    wide = wide.assign(worst_metric=worst_metric, worst_abs=worst_abs).reset_index()
    return wide.sort_values("worst_abs", ascending=False).head(n).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Where the measurements come from
# --------------------------------------------------------------------------------------------

def source_value(value: Any) -> str:
    """A source field as shown: "unknown" when empty, lists comma-separated ("none" when empty)."""
    if value is None or value == "":
        return "unknown"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "none"
    return str(value)


def source_items(source: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, shown value) of the source block: :data:`SOURCE_KEYS` first, then any other key."""
    keys = list(SOURCE_KEYS) + [k for k in source if k not in SOURCE_KEYS]
    return [(key, source_value(source.get(key))) for key in keys]


def check_mode(source: dict[str, Any]) -> str:
    """``source['mode']``, which must say ``replay`` or ``live`` (ValueError otherwise)."""
    mode = str(source.get("mode", "")).lower()
    if mode not in ("replay", "live"):
        raise ValueError(f"source['mode'] must be 'replay' or 'live', not {source.get('mode')!r}")
    return mode


def provenance_line(source: dict[str, Any]) -> str:
    """The one sentence saying where the measured numbers come from."""
    mode = check_mode(source)
    gpu = source_value(source.get("gpu"))
    versions = (f"driver {source_value(source.get('driver'))}, "
                f"torch {source_value(source.get('torch'))}, "
                f"transformers {source_value(source.get('transformers'))}")
    date = source_value(source.get("date"))
    results = source_value(source.get("results_file"))
    commit = source_value(source.get("git_commit"))
    if mode == "replay":
        return (f"REPLAY of committed measurements: the measured numbers are read back from "
                f"{results} (commit {commit}); they were measured on {date} on {gpu} "
                f"({versions}). No GPU ran for this report.")
    return (f"LIVE RUN: the measured numbers were measured by this run on {date} on {gpu} "
            f"({versions}) and written to {results} (commit {commit}).")
