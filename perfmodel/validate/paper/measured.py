"""The paper's comparisons in our own measurements, on the H200 and on the paper's GPU, the
H100: of vLLM, and where vLLM has no switch for what an effect compares, of transformers (the
fused vs unfused MoE: its grouped_mm experts against its eager loop over them).

Rows come from the committed result files of :data:`SOURCES` (``validate/results/h200-vllm.jsonl``,
``h200-hf.jsonl``, ``h100-vllm.jsonl``, ``h100-hf.jsonl`` and their ``-whatif`` companions; JSON lines, read by
:func:`perfmodel.measuring.results.read_rows`, no GPU library imported), each row tagged with the
GPU it ran on (``measured_gpu``, the model's name for it); a comparison takes the rows of its
engine (:attr:`~perfmodel.validate.paper.effects.Measured.engine`, the rows' ``backend``). Two
measured rows compare what an effect compares when they differ in the effect's knob only
(``quant``, ``top_k``, ``ffn``, ``num_experts``, the length S = O, ``spec``, the draft model and
γ of speculative decoding, or ``moe_impl``): same GPU, model, layers, B, S, O, the other
hyperparameters, the GPU count, and the same speculative decoding (none, or one draft, γ and
acceptance setting), so a plain row never pairs with a speculative one. Rows
record the decode sampling in their point id (``sampling=random``; none: greedy, the older
rows); a pair takes rows of one sampling where both sides have one (random first), else says
it mixes them.

A row of a (model, quantization, routing) group some of whose decode steps beat the HBM floor of
uniform routing on its GPU (:func:`perfmodel.measuring.routing_floor.collapsed_routing`: vLLM's dummy weights
routed it to fewer experts than real weights do, e.g. Qwen3-30B-A3B in fp8 at its own router)
stands in no pair and no point either (:func:`without_collapsed_routing`): its change would be
the routing's, not the effect's.

A speculative row whose verify pass, B·(γ+1) tokens, did not fit the engine's captured CUDA
graphs (:func:`perfmodel.measuring.compare.verify_replayed` is False: the B=16 rows measured
before the runner captured graphs that large) ran its decode steps without graphs, which the
model costs as graph replays: such rows stand in no pair and no point.

The measured effect is the relative change of ``throughput_tok_s`` (B·(S+O)/E2E), of a point
measured more than once the mean of its measurements (:func:`load_rows`). Beside it the
model's prediction for exactly those points: on the rows' GPU (with that GPU's fit where it
has one), with the rows' layers, overrides,
quantization and MoE implementation, one GPU, a speculative row at its draft, γ and measured
tokens per step τ (:func:`perfmodel.measuring.compare.row_speculative`), as
:func:`perfmodel.measuring.compare.compare` predicts a row, with the profile of the rows'
engine (:func:`prediction_engine`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from perfmodel import sweep
from perfmodel.measuring.compare import (
    as_measured, prefill_skew, row_engine_process, row_moe_impl, row_overrides, row_quant, row_routing,
    row_speculative, verify_replayed, what_if_file,
)
from perfmodel.measuring.results import read_rows
from perfmodel.paths import results_file
from perfmodel.validate.paper.effects import Measured

#: The GPUs (as the model names them) and engines whose committed measurements a comparison may
#: come from (:attr:`Measured.engine`): vLLM and transformers on each.
SOURCES = (("h200-sxm", "vllm"), ("h200-sxm", "hf"), ("h100-sxm", "vllm"), ("h100-sxm", "hf"))
#: Samplings in order of preference when both sides have both.
SAMPLINGS = ("random", "greedy")
#: Knobs that identify a measured point (besides the model).
KNOBS = ("gpu", "layers", "batch", "input_len", "output_len", "tp", "quant", "routing", "top_k", "ffn", "num_experts",
         "spec", "spec_accept", "moe_impl", "engine_process")
#: Least spread (points of the change) of a pair's repeated measurements that a report shows.
SPAN_SHOWN_PP = 1.0
#: How a pair's label names the knob it varies (``E=32 vs 64``).
SYMBOLS = {"quant": "quant", "top_k": "k", "ffn": "F", "num_experts": "E", "input_len": "S=O", "spec": "spec",
           "moe_impl": "moe"}


def load_rows(gpu: str = "h200-sxm", engine: str = "vllm", path: Path | None = None) -> list[dict[str, Any]]:
    """The measured (status ok) rows of a GPU's results file of an engine (``path``: another
    file of that GPU's) and of its ``-whatif`` companion, one per point id, each tagged with
    ``measured_gpu``: a point measured more than once (another engine start, another lease) is
    its last row with ``throughput_tok_s`` the mean of its measurements, ``repeats`` their number
    and ``throughput_span`` their (lowest, highest), so that a comparison does not rest on one
    engine start where there are several, and says how far its measurements spread."""
    path = Path(path) if path is not None else results_file(engine, gpu)
    rows: list[dict[str, Any]] = []
    for file in (path, what_if_file(path)):
        every = [r for r in read_rows(file, unique=False).rows if r.get("status") == "ok"]
        by_id: dict[str, list[dict[str, Any]]] = {}
        for row in every:
            by_id.setdefault(row["point_id"], []).append(row)
        for repeats in by_id.values():
            values = [float(r["throughput_tok_s"]) for r in repeats]
            rows.append({**repeats[-1], "throughput_tok_s": sum(values) / len(values), "repeats": len(values),
                         "throughput_span": (min(values), max(values)), "measured_gpu": gpu})
    return rows


def load_sources() -> list[dict[str, Any]]:
    """:func:`load_rows` of every source (:data:`SOURCES`)."""
    return [row for gpu, engine in SOURCES for row in load_rows(gpu, engine)]


def without_collapsed_routing(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows outside the groups whose routing collapsed on their GPU
    (:func:`perfmodel.measuring.routing_floor.collapsed_routing`), and those groups' names
    (``qwen3-30b-a3b fp8``; the routing where it is not the model's own; ``on h100-sxm`` where
    the GPU is not the H200)."""
    from perfmodel.measuring.routing_floor import collapsed_routing, group_name, routing_group

    kept, names = [], []
    for gpu in dict.fromkeys(r["measured_gpu"] for r in rows):
        mine = [r for r in rows if r["measured_gpu"] == gpu]
        collapsed = collapsed_routing(mine, gpu)
        kept += [r for r in mine if routing_group(r) not in collapsed]
        names += [group_name(*key) + ("" if gpu == "h200-sxm" else f" on {gpu}") for key in sorted(collapsed)]
    return kept, names


def _setting(row: dict[str, Any], name: str) -> str | None:
    """The ``name=`` tag of a row's point id, or None."""
    for part in str(row.get("point_id", "")).split("|"):
        if part.startswith(f"{name}="):
            return part.removeprefix(f"{name}=")
    return None


def sampling(row: dict[str, Any]) -> str:
    """How a row's decode picked tokens: the ``sampling=`` tag of its point id, else greedy."""
    return _setting(row, "sampling") or "greedy"


def speculation(row: dict[str, Any]) -> tuple[str, str]:
    """A row's speculative decoding as two knobs: ``DRAFT:γ`` (``none`` without one) and the
    acceptance the engine was told to simulate (the ``spec_accept=`` tag, e.g. ``0.7``; ``none``:
    the draft's own acceptance, or no speculation)."""
    spec = row_speculative(row)
    if not spec:
        return "none", "none"
    return f"{spec['spec_draft']}:{spec['spec_tokens']}", _setting(row, "spec_accept") or "none"


def comparable(row: dict[str, Any]) -> bool:
    """Whether a row may stand in a comparison: every row without speculative decoding, and a
    speculative row whose verify pass was replayed from a CUDA graph
    (:func:`~perfmodel.measuring.compare.verify_replayed`; the others ran decode without graphs)."""
    return not row_speculative(row) or verify_replayed(row)


@functools.cache
def _shape(model: str, overrides: tuple[str, ...]) -> tuple[int, int | None, int | None, int | None]:
    from perfmodel.specs.model import load_model

    spec = load_model(model, list(overrides))
    moe = spec.moe
    return (spec.n_layers, moe and moe.top_k, moe and moe.expert_intermediate, moe and moe.n_experts)


def knobs(row: dict[str, Any]) -> dict[str, Any]:
    """A row's identity as the effects see it: the GPU it ran on, layers, B, S, O, GPU count, quantization, routing
    (the model's router or vLLM's routing simulator), the MoE shape it ran (top_k, expert FFN
    width, experts: its overrides over the model's own), its speculative decoding (``spec``,
    ``spec_accept``: :func:`speculation`) and its MoE implementation (``moe_impl``:
    :func:`~perfmodel.measuring.compare.row_moe_impl`, ``other`` where the model has none) and
    whether its engine core ran in a process of its own (``engine_process``:
    :func:`~perfmodel.measuring.compare.row_engine_process`; a pair compares like with like)."""
    layers, top_k, ffn, experts = _shape(row["model"], tuple(row_overrides(row)))
    engine = row.get("engine") or {}
    spec, accept = speculation(row)
    return {"gpu": row["measured_gpu"], "model": row["model"], "layers": layers, "batch": row["batch"],
            "input_len": row["input_len"], "output_len": row["output_len"], "tp": int(engine.get("tp") or 1),
            "quant": row_quant(row) or "none",
            "routing": row_routing(row), "top_k": top_k, "ffn": ffn, "num_experts": experts,
            "spec": spec, "spec_accept": accept, "moe_impl": row_moe_impl(row) or "other",
            "engine_process": row_engine_process(row)}


def _varies(measured: Measured) -> tuple[str, ...]:
    """The knobs that change between the two sides (the length changes S and O together)."""
    return ("input_len", "output_len") if measured.vary == "input_len" else (measured.vary,)


def _value(measured: Measured, k: dict[str, Any]) -> Any:
    return k["input_len"] if measured.vary == "input_len" else k[measured.vary]


def compares_text(measured: Measured) -> str:
    """What a comparison compares, as a label reads it: ``E=32 vs 64``, ``spec=qwen3-1.7b:4 vs
    qwen3-8b:4``."""
    return f"{SYMBOLS[measured.vary]}={measured.value} vs {measured.baseline}"


@dataclass(frozen=True)
class MeasuredPair:
    """One measured comparison: the two rows' throughputs (tok/s), their change (%), the
    model's change for the same two points (%), and the comparison they are of."""

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
    comparison: Measured

    @property
    def measured_span_pct(self) -> tuple[float, float] | None:
        """Where a side was measured more than once: the change (%) from its measurements'
        lowest to highest throughput, each side's extremes against the other's (the side's lowest
        over the base's highest, and the reverse); None where each side was measured once, or
        where the measurements agree within :data:`SPAN_SHOWN_PP`."""
        if self.side.get("repeats", 1) <= 1 and self.base.get("repeats", 1) <= 1:
            return None
        side = self.side.get("throughput_span") or (self.measured_side,) * 2
        base = self.base.get("throughput_span") or (self.measured_base,) * 2
        low, high = 100 * (side[0] / base[1] - 1), 100 * (side[1] / base[0] - 1)
        return (low, high) if high - low >= SPAN_SHOWN_PP else None

    @property
    def gpu_busy(self) -> tuple[float | None, float | None]:
        """The GPU's share of each side's decode step (:func:`gpu_busy`): side, base."""
        return gpu_busy(self.side), gpu_busy(self.base)

    @property
    def profiled(self) -> bool:
        """Whether a side's decode step was profiled."""
        return any(share is not None for share in self.gpu_busy)

    @property
    def gpu_busy_text(self) -> str:
        """``44% / 40%`` (side / base; ``–`` for a side not profiled)."""
        return " / ".join("–" if share is None else f"{100 * share:.0f}%" for share in self.gpu_busy)


def gpu_busy(row: dict[str, Any]) -> float | None:
    """The GPU's share of a row's decode step: its profiled decode step's GPU busy time (the
    union of its kernels' intervals, ``measure --profile``) over its measured ITL; None where the
    step was not profiled. Far below 1, the step is set by the host, not by the GPU's work."""
    busy = (row.get("decode_profile") or {}).get("busy_ms")
    itl = row.get("itl_ms")
    return float(busy) / float(itl) if isinstance(busy, (int, float)) and itl else None


def _label(k: dict[str, Any], measured: Measured) -> str:
    """The point of a pair or a group: GPU (``H100``), model, shape but the varied knob, B,
    S = O, routing and speculative decoding where not the defaults."""
    tags = [f"B={k['batch']}"]
    if measured.vary != "input_len":
        tags.append(f"S=O={k['input_len']}" if k["input_len"] == k["output_len"] else f"S={k['input_len']} O={k['output_len']}")
    shape = [f"L={k['layers']}", f"E={k['num_experts']}", f"k={k['top_k']}", f"F={k['ffn']}"]
    shape = [t for t, name in zip(shape, ("layers", "num_experts", "top_k", "ffn")) if name != measured.vary]
    if k.get("routing", "model") != "model":
        tags.append(f"routing={k['routing']}")
    if measured.vary != "spec" and k.get("spec", "none") != "none":
        tags.append(f"spec={k['spec']}")
    if k.get("spec_accept", "none") != "none":
        tags.append(f"α={k['spec_accept']}")
    return f"{gpu_label(k['gpu'])} {k['model']} [{' '.join(shape)}] {' '.join(tags)}"


def gpu_label(gpu: str) -> str:
    """How a pair names its GPU: ``H100`` for h100-sxm."""
    return gpu.split("-")[0].upper()


@functools.cache
def _predicted(gpu: str, model: str, overrides: tuple[str, ...], batch: int, input_len: int, output_len: int,
               quant: str | None, engine: str, speculative: tuple[tuple[str, Any], ...] = (),
               moe_impl: str = "fused", phase: str = "request", skew: float = 0.0, *,
               host_probe_ms: float | None = None) -> dict[str, float]:
    """:func:`perfmodel.sweep` of one point (equal to :func:`perfmodel.predict`; it shares the
    compiled expressions of the report's sweeps, without the per-op outputs), its metrics by
    name; ``speculative``: its speculative-decoding what-ifs (spec_draft, spec_tokens,
    spec_accepted_len or spec_accept); ``phase``, the routing ``skew`` and the host's probe time
    ``host_probe_ms`` (None: the profile's reference host) as in ``predict``."""
    host = {} if host_probe_ms is None else {"host_probe_ms": host_probe_ms}
    table = sweep(model, {"batch": [batch]}, gpu=gpu, engine=engine, phase=phase, input_len=input_len,
                  output_len=output_len, overrides=list(overrides), quant=quant, moe_impl=moe_impl,
                  skew=skew, **host, **dict(speculative))
    return {name: float(value) for name, value in table.iloc[0].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def predicted_throughput(row: dict[str, Any], engine: str) -> float:
    """The model's throughput (tok/s) for a measured row (:func:`predicted_metrics`)."""
    return predicted_metrics(row, engine)["throughput_tok_s"]


def predicted_metrics(row: dict[str, Any], engine: str) -> dict[str, float]:
    """The model's metrics for a measured row (``ttft_s``, ``itl_s``, ``throughput_tok_s``…), on its
    GPU (``measured_gpu``), as built
    and quantized, with its MoE implementation, as the row timed its passes and at the routing its prefill ran
    (:func:`perfmodel.measuring.compare.as_measured`, :func:`~perfmodel.measuring.compare.prefill_skew`);
    a speculative row with its draft and γ at the tokens per step τ it measured; at the host's
    speed the row probed, to 0.1 ms, where the profile takes it as an input, as the validation
    predicts the row (:func:`perfmodel.measuring.compare.model_workload`)."""
    from perfmodel.measuring.compare import model_workload
    from perfmodel.profile import load_profile
    from perfmodel.specs.model import load_model

    point = (row["measured_gpu"], row["model"], tuple(row_overrides(row)), row["batch"], row["input_len"],
             row["output_len"], row_quant(row), engine, tuple(sorted(row_speculative(row).items())),
             row_moe_impl(row) or "fused")
    probe = model_workload(row, load_profile(engine, row["measured_gpu"])).get("host_probe_ms")
    host = {"host_probe_ms": None if probe is None else round(probe, 1)}
    metrics = _predicted(*point, **host)
    skew = prefill_skew(row, load_model(row["model"], row_overrides(row)))
    prefill = _predicted(*point, "prefill", skew, **host)["prefill_s"] if skew > 0 else None
    return as_measured(metrics, row, prefill)


def prediction_engine(measured: Measured, engine: str) -> str:
    """The profile a comparison's rows are predicted with: the report's ``engine`` for vLLM
    rows, the ``hf`` profile for transformers rows."""
    return "hf" if measured.engine == "hf" else engine


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


def _candidate(row: dict[str, Any], measured: Measured) -> bool:
    """Whether a row may stand in a comparison: measured by its engine (``backend``), of its
    models, and :func:`comparable`."""
    return (row.get("backend", "vllm") == measured.engine and comparable(row)
            and (not measured.models or row["model"] in measured.models))


def pairs(rows: Iterable[dict[str, Any]], measured: Measured, engine: str, *,
          named: bool = False) -> list[MeasuredPair]:
    """Every measured comparison of ``measured.value`` against ``measured.baseline`` (of
    :func:`_candidate` rows: the comparison's engine's, :func:`comparable`); ``named``: the
    labels end in what is compared (:func:`compares_text`), for an effect that makes several
    comparisons."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    varies = _varies(measured)
    for row in rows:
        if not _candidate(row, measured):
            continue
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
        profile = prediction_engine(measured, engine)
        ps, pb = predicted_throughput(side, profile), predicted_throughput(base, profile)
        ms, mb = float(side["throughput_tok_s"]), float(base["throughput_tok_s"])
        keys = dict(key)
        label = _label({**knobs(side), **keys}, measured)
        out.append(MeasuredPair(f"{label}: {compares_text(measured)}" if named else label, keys, side, base, how,
                                100 * (ms / mb - 1), 100 * (ps / pb - 1), ms, mb, ps, pb, measured))
    return sorted(out, key=lambda p: tuple(str(v) for v in p.keys.values()))


def effect_pairs(rows: list[dict[str, Any]], comparisons: list[Measured], engine: str) -> list[MeasuredPair]:
    """The pairs of every comparison of an effect, in the order of the comparisons (labels name
    what is compared where there are several)."""
    return [p for m in comparisons for p in pairs(rows, m, engine, named=len(comparisons) > 1)]


def points(rows: Iterable[dict[str, Any]], measured: Measured, engine: str) -> pd.DataFrame:
    """The measured rows along the effect's knob (any value of it; :func:`comparable` rows of
    ``measured.models`` where it names some), grouped by the other knobs,
    in groups that measured at least two values of it: columns group, value (of the knob),
    sampling, the other knobs, measured and predicted throughput (tok/s)."""
    varies = _varies(measured)
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for row in rows:
        if not _candidate(row, measured):
            continue
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
                     "measured": float(row["throughput_tok_s"]),
                     "predicted": predicted_throughput(row, prediction_engine(measured, engine))}
                    for row, k in members]
    return pd.DataFrame(records)


def effect_points(rows: list[dict[str, Any]], comparisons: list[Measured], engine: str) -> pd.DataFrame:
    """:func:`points` of an effect: of its one comparison, or of each distinct knob its several
    comparisons vary, one after the other with the knob in a column ``vary``."""
    if len(comparisons) == 1:
        return points(rows, comparisons[0], engine)
    by_knob = {m.vary: m for m in comparisons}
    frames = [points(rows, m, engine).assign(vary=vary) for vary, m in by_knob.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
