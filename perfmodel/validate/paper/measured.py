"""The paper's comparisons in our own vLLM measurements (H200, not the paper's H100).

Rows come from the committed result files (``validate/results/h200-vllm.jsonl`` and its
``-whatif`` companion; JSON lines, read by :func:`perfmodel.measuring.results.read_rows`, no
GPU library imported). Two measured rows compare what an effect compares when they differ in
the effect's knob only (``quant``, ``top_k``, ``ffn``, ``num_experts`` or the length S = O):
same model, layers, B, S, O, the other hyperparameters and the GPU count. Rows record the
decode sampling in their point id (``sampling=random``; none: greedy, the older rows); a pair
takes rows of one sampling where both sides have one (random first), else says it mixes them.

The measured effect is the relative change of ``throughput_tok_s`` (B·(S+O)/E2E). Beside it the
model's prediction for exactly those points: on the H200, with the rows' layers, overrides and
quantization, one GPU, as :func:`perfmodel.measuring.compare.compare` predicts a row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from perfmodel import paths, sweep
from perfmodel.measuring.compare import row_overrides, row_quant, row_routing, what_if_file
from perfmodel.measuring.results import read_rows
from perfmodel.validate.paper.effects import Measured

#: The GPU of the measurements (the rows' own, as the model names it).
MEASURED_GPU = "h200-sxm"
#: The committed vLLM measurements an effect may find its comparison in.
RESULTS_FILE = paths.RESULTS_DIR / "h200-vllm.jsonl"
#: Samplings in order of preference when both sides have both.
SAMPLINGS = ("random", "greedy")
#: Knobs that identify a measured point (besides the model).
KNOBS = ("layers", "batch", "input_len", "output_len", "tp", "quant", "routing", "top_k", "ffn", "num_experts")


def load_rows(path: Path = RESULTS_FILE) -> list[dict[str, Any]]:
    """The measured (status ok) rows of a results file and of its ``-whatif`` companion."""
    rows: list[dict[str, Any]] = []
    for file in (Path(path), what_if_file(Path(path))):
        rows += [r for r in read_rows(file).rows if r.get("status") == "ok"]
    return rows


def sampling(row: dict[str, Any]) -> str:
    """How a row's decode picked tokens: the ``sampling=`` tag of its point id, else greedy."""
    for part in str(row.get("point_id", "")).split("|"):
        if part.startswith("sampling="):
            return part.removeprefix("sampling=")
    return "greedy"


@functools.cache
def _shape(model: str, overrides: tuple[str, ...]) -> tuple[int, int | None, int | None, int | None]:
    from perfmodel.specs.model import load_model

    spec = load_model(model, list(overrides))
    moe = spec.moe
    return (spec.n_layers, moe and moe.top_k, moe and moe.expert_intermediate, moe and moe.n_experts)


def knobs(row: dict[str, Any]) -> dict[str, Any]:
    """A row's identity as the effects see it: layers, B, S, O, GPU count, quantization, routing
    (the model's router or vLLM's routing simulator) and the MoE shape it ran (top_k, expert FFN
    width, experts: its overrides over the model's own)."""
    layers, top_k, ffn, experts = _shape(row["model"], tuple(row_overrides(row)))
    engine = row.get("engine") or {}
    return {"model": row["model"], "layers": layers, "batch": row["batch"], "input_len": row["input_len"],
            "output_len": row["output_len"], "tp": int(engine.get("tp") or 1), "quant": row_quant(row) or "none",
            "routing": row_routing(row), "top_k": top_k, "ffn": ffn, "num_experts": experts}


def _varies(measured: Measured) -> tuple[str, ...]:
    """The knobs that change between the two sides (the length changes S and O together)."""
    return ("input_len", "output_len") if measured.vary == "input_len" else (measured.vary,)


def _value(measured: Measured, k: dict[str, Any]) -> Any:
    return k["input_len"] if measured.vary == "input_len" else k[measured.vary]


@dataclass(frozen=True)
class MeasuredPair:
    """One measured comparison: the two rows' throughputs (tok/s), their change (%), and the
    model's change for the same two points (%)."""

    label: str
    keys: dict[str, Any]
    side: dict[str, Any]
    base: dict[str, Any]
    sampling: str
    measured_pct: float
    predicted_pct: float
    measured_side: float
    measured_base: float
    predicted_side: float
    predicted_base: float


def _label(k: dict[str, Any], measured: Measured) -> str:
    tags = [f"B={k['batch']}"]
    if measured.vary != "input_len":
        tags.append(f"S=O={k['input_len']}" if k["input_len"] == k["output_len"] else f"S={k['input_len']} O={k['output_len']}")
    shape = [f"L={k['layers']}", f"E={k['num_experts']}", f"k={k['top_k']}", f"F={k['ffn']}"]
    shape = [t for t, name in zip(shape, ("layers", "num_experts", "top_k", "ffn")) if name != measured.vary]
    if k.get("routing", "model") != "model":
        tags.append(f"routing={k['routing']}")
    return f"{k['model']} [{' '.join(shape)}] {' '.join(tags)}"


@functools.cache
def _predicted(model: str, overrides: tuple[str, ...], batch: int, input_len: int, output_len: int,
               quant: str | None, engine: str) -> float:
    """:func:`perfmodel.sweep` of one point (equal to :func:`perfmodel.predict`; it shares the
    compiled expressions of the report's sweeps, without the per-op outputs)."""
    table = sweep(model, {"batch": [batch]}, gpu=MEASURED_GPU, engine=engine, input_len=input_len,
                  output_len=output_len, overrides=list(overrides), quant=quant)
    return float(table["throughput_tok_s"].iloc[0])


def predicted_throughput(row: dict[str, Any], engine: str) -> float:
    """The model's throughput (tok/s) for a measured row, on its GPU, as built and quantized."""
    return _predicted(row["model"], tuple(row_overrides(row)), row["batch"], row["input_len"],
                      row["output_len"], row_quant(row), engine)


def _pick(side: list[dict[str, Any]], base: list[dict[str, Any]]) -> tuple[dict, dict, str]:
    """One row per side: of a sampling both sides have (random first), else each side's first."""
    for name in SAMPLINGS:
        s = [r for r in side if sampling(r) == name]
        b = [r for r in base if sampling(r) == name]
        if s and b:
            return s[-1], b[-1], name
    s = sorted(side, key=lambda r: SAMPLINGS.index(sampling(r)) if sampling(r) in SAMPLINGS else 9)[0]
    b = sorted(base, key=lambda r: SAMPLINGS.index(sampling(r)) if sampling(r) in SAMPLINGS else 9)[0]
    return s, b, f"mixed: {sampling(s)} vs {sampling(b)}"


def pairs(rows: Iterable[dict[str, Any]], measured: Measured, engine: str) -> list[MeasuredPair]:
    """Every measured comparison of ``measured.value`` against ``measured.baseline``."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    varies = _varies(measured)
    for row in rows:
        k = knobs(row)
        if measured.vary == "input_len" and k["input_len"] != k["output_len"]:
            continue
        value = _value(measured, k)
        side = "side" if value == measured.value else "base" if value == measured.baseline else None
        if side is None:
            continue
        key = tuple((name, k[name]) for name in ("model", *KNOBS) if name not in varies)
        groups.setdefault(key, {"side": [], "base": []})[side].append(row)
    out = []
    for key, sides in groups.items():
        if not sides["side"] or not sides["base"]:
            continue
        side, base, how = _pick(sides["side"], sides["base"])
        ps, pb = predicted_throughput(side, engine), predicted_throughput(base, engine)
        ms, mb = float(side["throughput_tok_s"]), float(base["throughput_tok_s"])
        keys = dict(key)
        out.append(MeasuredPair(_label({**knobs(side), **keys}, measured), keys, side, base, how,
                                100 * (ms / mb - 1), 100 * (ps / pb - 1), ms, mb, ps, pb))
    return sorted(out, key=lambda p: tuple(str(v) for v in p.keys.values()))


def points(rows: Iterable[dict[str, Any]], measured: Measured, engine: str) -> pd.DataFrame:
    """The measured rows along the effect's knob (any value of it), grouped by the other knobs,
    in groups that measured at least two values of it: columns group, value (of the knob),
    sampling, the other knobs, measured and predicted throughput (tok/s)."""
    varies = _varies(measured)
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for row in rows:
        k = knobs(row)
        if measured.vary == "input_len" and k["input_len"] != k["output_len"]:
            continue
        groups.setdefault(_label({**k, measured.vary: None}, measured), []).append((row, k))
    records = []
    for group, members in groups.items():
        if len({_value(measured, k) for _, k in members}) < 2:
            continue
        records += [{"group": group, "value": _value(measured, k), "sampling": sampling(row),
                     **{n: k[n] for n in ("model", *KNOBS) if n not in varies},
                     "measured": float(row["throughput_tok_s"]), "predicted": predicted_throughput(row, engine)}
                    for row, k in members]
    return pd.DataFrame(records)
