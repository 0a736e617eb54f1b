"""A sweep's rows against a baseline: each metric's change from the row that differs in one swept key
alone, that key at the baseline's value (``perfmodel sweep ... --baseline KEY=VALUE``).

``quant=none`` as the baseline of ``--grid quant=none,fp8 --grid batch=1,16,64`` gives each fp8 row
its change against the unquantized row at the same batch (and 0 on the baseline rows themselves):
the question "fp8 or not" answered per workload. A change is 100·(row/baseline − 1), in %; NaN where
the baseline's row was dropped (a combination predict refuses) or has no value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from perfmodel.errors import InputError
from perfmodel.paths import changes_file
from perfmodel.sweeps import GRID_SYMBOLS

#: Metrics whose change a baseline adds, each as a column ``<metric>_vs_base_pct``.
CHANGED = ("ttft_s", "itl_s", "e2e_s", "throughput_tok_s", "throughput_per_gpu_tok_s", "memory_bytes")

#: Suffix of a change column.
SUFFIX = "_vs_base_pct"

#: The measured knob whose pairs stand behind a swept key's change (``validate all --changes``:
#: validate/results/<gpu>-vllm-changes.json): quantization, top-k, experts and their FFN width,
#: pruning being fewer experts or narrower ones.
BAND_KNOBS = {"quant": "quant", "dtype": "quant", "top_k": "top_k", "num_experts": "num_experts",
              "prune_experts": "num_experts", "moe_intermediate_size": "ffn", "ffn": "ffn", "prune_ffn": "ffn"}
#: The engine whose measured pairs the bands are of.
BAND_ENGINE = "vllm"


def parse_baseline(text: str, grid: dict[str, Sequence[Any]]) -> tuple[str, Any]:
    """``"quant=none"`` → ``("quant", "none")``: a swept key of ``grid`` (as
    :func:`perfmodel.sweeps.parse_grid` gives it) and one of its values (a number for a numeric
    key); anything else is refused in one line."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise InputError(f"bad --baseline '{text}': expected KEY=VALUE, a swept key and one of its values")
    if key not in grid:
        swept = ", ".join(grid) or "none"
        raise InputError(f"--baseline {key}: not a swept key (swept: {swept})")
    value: Any = raw
    if key in GRID_SYMBOLS:
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"--baseline {key}={raw}: {key} takes a number") from None
    values = list(grid[key])
    if not any(_same(value, v) for v in values):
        shown = ", ".join(_text(v) for v in values)
        raise InputError(f"--baseline {key}={raw}: not among the swept values of {key} ({shown})")
    return key, value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=0.0))


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def baseline_rows(table, key: str, value: Any) -> np.ndarray:
    """Which rows of ``table`` are baselines: ``key`` at ``value`` (a number to 1e-12)."""
    column = table[key].to_numpy()
    if isinstance(value, str) or column.dtype.kind not in "iuf":
        return column.astype(str) == str(value)
    return np.isclose(column.astype(float), float(value), rtol=1e-12, atol=0.0)


def with_changes(table, keys: Sequence[str], key: str, value: Any, metrics: Sequence[str] = CHANGED):
    """``table`` (a :func:`perfmodel.sweeps.sweep` result over the grid ``keys``) with a column
    ``<metric>_vs_base_pct`` per metric it holds, placed after the key columns: 100·(row/base − 1),
    base the row with the same value of every other key of ``keys`` and ``key`` at ``value`` (NaN
    where there is none). ``attrs["baseline"]`` says the key, the value, how many rows are
    baselines and how many of those do not fit in memory."""
    metrics = [m for m in metrics if m in table.columns]
    is_base = baseline_rows(table, key, value)
    others = [k for k in keys if k != key]
    base = table.loc[is_base, [*others, *metrics]]
    if others:
        base = base.drop_duplicates(subset=others)
        joined = table[others].merge(base, on=others, how="left")
    else:
        joined = base.iloc[[0] * len(table)] if len(base) else table[[]].reindex(columns=metrics)
    changes = {}
    for name in metrics:
        row = table[name].to_numpy(dtype=float)
        ref = joined[name].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            changes[f"{name}{SUFFIX}"] = np.where(ref > 0, 100.0 * (row / ref - 1.0), np.nan)
    # the changes beside the keys, where a reader of the table looks first
    lead = [k for k in table.columns if k in keys]
    out = table[lead].assign(**changes).join(table.drop(columns=lead))
    out.attrs = dict(table.attrs)
    misfits = int((~table.loc[is_base, "fits_in_memory"].astype(bool)).sum()) if "fits_in_memory" in table else 0
    out.attrs["baseline"] = {"key": key, "value": value, "rows": int(is_base.sum()), "misfits": misfits}
    return out


def change_band(key: str, gpus: Sequence[str], engine: str) -> list[dict[str, Any]]:
    """How far the model's changes along ``key`` were from measured changes, per GPU of the sweep:
    the band of the knob ``key`` changes (:data:`BAND_KNOBS`) in that GPU's
    ``validate/results/<gpu>-vllm-changes.json`` (written by ``perfmodel validate all --changes``
    from held-out measured pairs): ``{"gpu", "knob", "metrics": {metric: {"pairs", "band_pct",
    "median_pct"}}}`` for the metrics of the sweep's change columns it has (``band_pct`` None under
    the file's fewest pairs); or ``{"gpu", "none": why}`` where no measured pair speaks to the
    change (another engine, a key no pair varies, a GPU without pairs)."""
    knob = BAND_KNOBS.get(key)
    out = []
    for gpu in dict.fromkeys(gpus):
        if engine != BAND_ENGINE:
            out.append({"gpu": gpu, "none": f"the measured pairs are of engine {BAND_ENGINE}, not {engine}"})
            continue
        if knob is None:
            knobs = ", ".join(dict.fromkeys(BAND_KNOBS.values()))
            out.append({"gpu": gpu, "none": f"no measured pair varies {key} alone (they vary {knobs})"})
            continue
        try:
            entries = json.loads(changes_file(BAND_ENGINE, gpu).read_text())["knobs"][knob]
            metrics = {m: {"pairs": int(e["pairs"]), "band_pct": e["band_pct"], "median_pct": e["median_pct"]}
                       for m, e in entries.items() if m in CHANGED and e["pairs"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            metrics = {}
        if not metrics:
            out.append({"gpu": gpu, "none": f"no measured pairs of {knob} on {gpu}"})
            continue
        out.append({"gpu": gpu, "knob": knob, "metrics": metrics})
    return out


#: How the header names a metric whose change has a band.
_SHORT = {"throughput_tok_s": "throughput", "itl_s": "ITL", "ttft_s": "TTFT", "e2e_s": "E2E"}


def change_band_text(bands: Sequence[dict[str, Any]]) -> str:
    """The line under a sweep's baseline: per GPU, each metric's band (%, of the ratio to the
    baseline) and its pairs, e.g. ``h100-sxm: throughput ±12.1% (6 pairs), ITL ±8.2% (6 pairs)``."""
    parts, knob = [], None
    for b in bands:
        if "none" in b:
            parts.append(f"{b['gpu']}: none ({b['none']})")
            continue
        knob = b["knob"]
        shown = []
        for metric, e in b["metrics"].items():
            value = "none, too few" if e["band_pct"] is None else f"±{e['band_pct']:.1f}%"
            shown.append(f"{_SHORT.get(metric, metric)} {value} ({e['pairs']} pairs)")
        parts.append(f"{b['gpu']}: " + ", ".join(shown))
    what = f" of {knob}" if knob else ""
    return (f"change band (each row's ratio to its baseline against the measured ratio: 90th percentile of "
            f"|error| over held-out measured pairs{what}): " + "; ".join(parts))
