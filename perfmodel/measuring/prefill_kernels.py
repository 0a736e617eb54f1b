"""One prefill's GPU kernels by op category: the profiled pass against the model's ops.

A row measured with ``--profile`` keeps its prefill pass's kernel time by category
(``prefill_profile.split_ms``, ms: :mod:`perfmodel.measuring.profiler_split`). Where that prefill
ran as one engine step (B·S within the engine's prefill chunk, ``options.prefill_chunk_tokens``),
its kernels are the model's prefill pass: :func:`prefill_kernels` sets each category's measured
time beside the model's, the sum of the times of the ops of that category
(:func:`perfmodel.measuring.compare.op_categories` of the prefill graph). What no kernel shows
(the host's launches, gaps between kernels, the per-pass fixed time) is in neither.
:func:`category_ratios` sums it up: per category, measured/model over a set of points.
"""

from __future__ import annotations

from typing import Any, Iterable

#: Columns of :func:`prefill_kernels`' table.
COLUMNS = ("model", "variant", "batch", "input_len", "output_len", "point_id", "category",
           "measured_s", "predicted_s")


def profiled_prefill(row: dict[str, Any], chunk: int | None) -> bool:
    """Whether an ok one-GPU row has a prefill kernel profile of one engine step (B·S tokens
    within ``chunk``; any, where the engine does not chunk)."""
    from perfmodel.measuring.compare import row_gpus

    split = (row.get("prefill_profile") or {}).get("split_ms")
    return (row.get("status") == "ok" and row_gpus(row) == 1 and bool(split)
            and (chunk is None or int(row["batch"]) * int(row["input_len"]) <= chunk))


def prefill_kernels(rows: Iterable[dict[str, Any]], *, engine: str, gpu: str = "h200-sxm"):
    """Measured and predicted kernel time (s) of one prefill pass per category, one row per
    profiled point (:func:`profiled_prefill`) and category (:data:`COLUMNS`), as a DataFrame.
    Each point is predicted as :func:`perfmodel.measuring.compare.compare` predicts it (its
    overrides, quantization, MoE implementation and layout), a speculative row without its
    draft (the profile holds the target's prefill)."""
    import pandas as pd

    from perfmodel.measuring.compare import (op_categories, point_identity, prediction_args, row_moe_impl,
                                             row_overrides)
    from perfmodel.prediction import predict
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    profile = load_profile(engine, load_gpu(gpu).name)
    chunk = profile.options.prefill_chunk_tokens
    out, categories = [], {}
    for row in rows:
        moe_impl = row_moe_impl(row)
        if moe_impl is None or not profiled_prefill(row, chunk):
            continue
        spec = load_model(row["model"], row_overrides(row))
        args = prediction_args(row, engine=engine, gpu=gpu, profile=profile)
        ids = bool(args.get("routing_ids"))
        key = (row["model"], tuple(row_overrides(row)), args["quant"], moe_impl, ids)
        if key not in categories:
            categories[key] = op_categories(spec, engine, gpu, args["quant"], moe_impl, decode=False,
                                            routing_ids=ids)
        p = predict(spec, phase="prefill", **args)
        predicted: dict[str, float] = {}
        for op in p.ops:
            category = categories[key][op["name"]]
            predicted[category] = predicted.get(category, 0.0) + op["time_s"]
        measured = row["prefill_profile"]["split_ms"]
        ident = point_identity(row, spec)
        for category in sorted(set(measured) | set(predicted)):
            out.append({**ident, "category": category, "measured_s": measured.get(category, 0.0) * 1e-3,
                        "predicted_s": predicted.get(category, 0.0)})
    return pd.DataFrame(out, columns=list(COLUMNS))


def category_ratios(table) -> "Any":
    """Per category of :func:`prefill_kernels`' table (and ``all``, the pass's kernels summed):
    the points, and the 10th, 50th and 90th percentile over them of measured/model, where the
    model has time in it; a DataFrame indexed by category."""
    import pandas as pd

    if table.empty:
        return pd.DataFrame(columns=["points", "p10", "median", "p90"])
    whole = (table.groupby("point_id")[["measured_s", "predicted_s"]].sum().reset_index()
             .assign(category="all"))
    both = pd.concat([table, whole], ignore_index=True)
    both = both[both["predicted_s"] > 0].assign(ratio=lambda d: d["measured_s"] / d["predicted_s"])
    grouped = both.groupby("category")["ratio"]
    return pd.DataFrame({"points": grouped.size(), "p10": grouped.quantile(0.1),
                         "median": grouped.median(), "p90": grouped.quantile(0.9)})
