"""The validation report's passes by op category: the profiled prefills' kernels against the
model's ops (:mod:`perfmodel.measuring.prefill_kernels`), summed up per split and category, and
the held-out ones with the largest TTFT error, one by one; and the profiled decode steps' kernels
(:func:`perfmodel.measuring.compare.compare`'s second table) summed up the same way."""

from __future__ import annotations

from typing import Any

from perfmodel.validate.report_metrics import signed, with_variant

#: Held-out profiled prefills the report lists one by one.
N_PREFILLS = 6
#: The splits whose ratios the summary shows, in order.
SUMMARY_SPLITS = ("held-out", "train")
#: A category's row: the order of the profiler's categories, the pass's kernels summed last.
ORDER = ("attention", "expert_gemm", "dense_gemm", "router_topk", "norm_elementwise", "copy", "other", "all")


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def prefill_section(points, prefill, calibrated: str) -> dict[str, Any]:
    """``sentence``, ``summary`` and ``worst`` (header, rows) of the section; empty rows where
    ``prefill`` (:func:`~perfmodel.measuring.prefill_kernels.prefill_kernels`' table with the
    points' ``split``) is None or holds no point of :data:`SUMMARY_SPLITS`."""
    empty = {"header": [], "rows": []}
    out: dict[str, Any] = {"sentence": "", "summary": dict(empty), "worst": dict(empty)}
    if prefill is None or prefill.empty or "split" not in prefill.columns:
        return out
    rows, counts, unmodelled = ratio_rows(prefill)
    if not rows:
        return out
    out["sentence"] = _sentence(
        "Prefills run as one engine step and profiled", counts, calibrated, "the pass's",
        "A ratio above 1: the kernels take longer than the model's ops. The prefill's TTFT error also "
        "holds what no kernel shows (the host's launches, gaps between kernels)", unmodelled)
    out["summary"] = {"header": SUMMARY_HEADER, "rows": rows}
    out["worst"] = _worst(points, prefill, calibrated)
    return out


def _sentence(subject: str, counts: dict[str, int], calibrated: str, whose: str, caveat: str,
              unmodelled: list[str]) -> str:
    """What a summary of :func:`ratio_rows` shows, in one paragraph."""
    return (f"{subject} (" + ", ".join(f"{n} {s}" for s, n in counts.items())
            + f"): measured kernel time over `{calibrated}`'s time of the same ops, per category of the "
            f"profiler, and of {whose} kernels summed (all); the median over the points, and the 10th–90th "
            f"percentile. {caveat}"
            + (f"; categories the model has no op in ({', '.join(unmodelled)}) are only in all" if unmodelled else "")
            + ".")


#: Columns of a summary of measured / model ratios by split and category.
SUMMARY_HEADER = ["split", "category", "points", "measured / model (median)", "10th–90th pct"]


def ratio_rows(table) -> tuple[list[list[str]], dict[str, int], list[str]]:
    """Per split of :data:`SUMMARY_SPLITS` and category of a table of measured and predicted
    kernel time per point and category (with ``split``), the row of
    :func:`~perfmodel.measuring.prefill_kernels.category_ratios`; the points per split; and the
    categories the model has no op in that the kernels spent time in."""
    from perfmodel.measuring.prefill_kernels import category_ratios

    rows, counts = [], {}
    for split in SUMMARY_SPLITS:
        part = table[table["split"] == split]
        if part.empty:
            continue
        counts[split] = part["point_id"].nunique()
        ratios = category_ratios(part)
        for category in [c for c in ORDER if c in ratios.index] + sorted(set(ratios.index) - set(ORDER)):
            r = ratios.loc[category]
            rows.append([split, category, str(int(r["points"])), _ratio(r["median"]),
                         f"{_ratio(r['p10'])}–{_ratio(r['p90'])}"])
    unmodelled = sorted({c for c in table.loc[table["predicted_s"] == 0, "category"]
                         if table.loc[table["category"] == c, "measured_s"].sum() > 0})
    return rows, counts, unmodelled


def profiled_steps(ops, engine: str):
    """The rows of :func:`~perfmodel.measuring.compare.compare`'s op table of ``engine`` whose
    decode step was profiled, measured time as floats."""
    if ops.empty:
        return ops
    return ops[(ops["engine"] == engine) & ops["measured_s"].notna()].astype({"measured_s": float})


def decode_summary(ops, calibrated: str) -> dict[str, Any]:
    """``sentence`` and ``summary`` (header, rows): every profiled decode step of the calibrated
    engine (``ops``: :func:`perfmodel.measuring.compare.compare`'s second table), measured kernel
    time over the model's per category, per split; empty rows without profiled steps."""
    out: dict[str, Any] = {"sentence": "", "summary": {"header": [], "rows": []}}
    if ops is None or ops.empty:
        return out
    rows, counts, unmodelled = ratio_rows(profiled_steps(ops, calibrated))
    if not rows:
        return out
    out["sentence"] = _sentence("Every profiled decode step", counts, calibrated, "the step's",
                                "The step's own fixed times (per layer, per step) are in neither", unmodelled)
    out["summary"] = {"header": SUMMARY_HEADER, "rows": rows}
    return out


def _worst(points, prefill, calibrated: str) -> dict[str, Any]:
    """The held-out profiled prefills with the largest |TTFT error|, category by category."""
    held = prefill[prefill["split"] == "held-out"]
    ttft = points[(points["engine"] == calibrated) & (points["metric"] == "ttft")
                  & points["point_id"].isin(set(held["point_id"]))]
    if ttft.empty:
        return {"header": [], "rows": []}
    errors = dict(zip(ttft["point_id"], ttft["rel_error"]))
    ranked = sorted(errors, key=lambda pid: -abs(errors[pid]))[:N_PREFILLS]
    cats = [c for c in ORDER if c in set(held["category"])]
    sel = with_variant(held[held["point_id"].isin(ranked)])
    rows = []
    for pid in ranked:
        mine = sel[sel["point_id"] == pid].set_index("category")
        first = mine.iloc[0]
        cells = [f"{mine.loc[c, 'measured_s'] * 1e3:.2f} / {mine.loc[c, 'predicted_s'] * 1e3:.2f}"
                 if c in mine.index else "–" for c in cats]
        rows.append([str(first["variant"]), str(first["batch"]), str(first["input_len"]),
                     str(first["output_len"]), signed(100 * errors[pid])] + cells)
    return {"header": ["model", "B", "S", "O", "TTFT err %"] + [f"{c} ms" for c in cats], "rows": rows}
