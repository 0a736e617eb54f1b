"""Predicted against measured: one table row per (point, metric), and the per-op view.

Metrics compared (the seed study's): TTFT, decode step (= ITL), E2E and throughput
B·(S+O)/E2E. Relative error is predicted/measured − 1. Rows carry the split each point
belongs to ("train" for the unmodified models a profile was fitted on, "held-out" otherwise:
other models, hypothetical variants of any model, from the ``-whatif`` results file, and rows
whose engine stored the KV cache in another dtype, :func:`row_kv_dtype`).

A point is identified by its ``point_id`` (model, ``--set`` overrides, layers, B, S, O, dtype
and engine settings); its ``variant`` column names it for people, e.g.
``mixtral-8x7b [L=8 E=16 k=2 F=1792]`` for a variant, the plain model name otherwise.

Each row is predicted on the GPUs it ran on (:func:`row_layout`): tp and pp as measured, the
collectives they imply included; a row of ``dp`` replicas (independent engines,
:mod:`perfmodel.measuring.vllm_replicas`) as one replica at B/dp, its throughput times dp; a row
of vLLM's data parallelism (``dp_mode=vllm``) as the model's ``dp`` ranks, whose MoE layers
serve every rank's tokens. A row
of vLLM's expert parallelism (experts whole, E/tp on each of the tp GPUs of a stage, the same
all-reduce as TP) is predicted with the model's (``expert_parallel``,
:mod:`perfmodel.specs.layout`) and reported in a layout group of its own (``layout`` column, e.g.
``TP=4+EP``). Only one-GPU rows are ever "train".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Iterable

from perfmodel.errors import InputError
from perfmodel.host_speed import row_probe_ms
from perfmodel.measuring.results import has_decode_step, read_rows
from perfmodel.measuring.points import SweepPoint
from perfmodel.measuring.vllm_backend import CHECKPOINT_QUANTIZATIONS, KV_CACHE_DTYPES, point_settings, spec_setting

#: Compared metrics: name → (measured field, its scale to seconds or tok/s, predicted metric).
METRIC_FIELDS = {
    "ttft": ("ttft_ms", 1e-3, "ttft_s"),
    "decode_step": ("itl_ms", 1e-3, "itl_s"),
    "e2e": ("e2e_ms", 1e-3, "e2e_s"),
    "throughput": ("throughput_tok_s", 1.0, "throughput_tok_s"),
}

def op_categories(spec, engine: str, gpu: str, quant: str | None = None,
                  moe_impl: str = "fused", decode: bool = True, routing_ids: bool = False) -> dict[str, str]:
    """Op name → the measured profiler category its kernels run as (hf engine, transformers
    5.x), for the decode graph (``decode=False``: the prefill graph) ``engine`` builds of a
    model at a quantization scheme and MoE implementation, its experts handed expert ids where
    ``routing_ids`` (:attr:`perfmodel.prediction.Workload.routing_ids`): each op's
    :attr:`perfmodel.ops.Op.category` (its role's, else its class's)."""
    from perfmodel.prediction import Workload, graph_options
    from perfmodel.profile import load_profile

    options = graph_options(load_profile(engine, gpu),
                            Workload(quant=quant, moe_impl=moe_impl, routing_ids=routing_ids))
    return graph_categories(spec, options, decode=decode)


def graph_categories(spec, options, decode: bool = True) -> dict[str, str]:
    """Op name → the profiler category of its kernels, for the decode graph (``decode=False``:
    the prefill graph) of a model under graph options (:class:`perfmodel.graph.GraphOptions`)."""
    from perfmodel.graph import build_graph

    graph = build_graph(spec, decode=decode, options=options)
    return {op.name: op.category.value for _, op in graph.all_ops()}


def load_measurements(path: Path) -> list[dict[str, Any]]:
    """Rows of a committed results file (all statuses)."""
    return read_rows(Path(path)).rows


def what_if_file(path: Path) -> Path:
    """The companion file of hypothetical variants (``--set``/``--layers``) of a results file."""
    path = Path(path)
    return path.with_name(f"{path.stem}-whatif{path.suffix}")


def load_with_what_ifs(path: Path) -> list[dict[str, Any]]:
    """Rows of a committed results file and of its what-if file (:func:`what_if_file`), one per
    point id across the two: a point measured in both keeps its measured row over an oom/error
    one, else the later (``date``), in the place of the results file's row."""
    from perfmodel.measuring.results import status_rank

    rows = load_measurements(path)
    if not what_if_file(path).exists():
        return rows
    where = {r["point_id"]: i for i, r in enumerate(rows) if isinstance(r.get("point_id"), str)}
    for row in load_measurements(what_if_file(path)):
        i = where.get(row.get("point_id"))
        if i is None:
            rows.append(row)
        elif (status_rank(row), str(row.get("date", ""))) >= (status_rank(rows[i]), str(rows[i].get("date", ""))):
            rows[i] = row
    return rows


def is_variant(row: dict[str, Any]) -> bool:
    """Whether a row measured a hypothetical variant of its model (overrides or fewer layers)."""
    return bool(row.get("overrides")) or isinstance(row.get("layers"), int)


#: A checkpoint format's scheme → the scheme of its routed experts on vLLM's Marlin MoE kernel,
#: where that is another kernel than the format's default one (gpt-oss's MXFP4: triton_kernels'
#: matmul_ogs by default).
MARLIN_SCHEMES = {"mxfp4-moe": "mxfp4-moe-marlin"}


def row_quant(row: dict[str, Any]) -> str | None:
    """The quantization scheme a measured row ran its linear layers at (``engine.quantization``
    of the row: vLLM's ``--quantization fp8`` is W8A8 with per-tensor weight scales and dynamic
    per-token activation scales, the model's ``fp8`` scheme; a checkpoint format,
    :data:`perfmodel.measuring.vllm_backend.CHECKPOINT_QUANTIZATIONS`, is the scheme that
    describes its config block, :func:`perfmodel.quantization.checkpoint_scheme`: ``mxfp4`` is
    ``mxfp4-moe``, ``gptq`` ``w4a16``, ``fp8-block`` ``fp8-block``, and a format run on vLLM's
    Marlin MoE kernel (``--moe-backend marlin``) is the scheme of :data:`MARLIN_SCHEMES` where it
    has one; any other method is the scheme it is a name or alias of: ``experts_int8`` is
    ``w8a16-experts``); None when unquantized."""
    from perfmodel.quantization import check_quant, checkpoint_scheme

    quant = str((row.get("engine") or {}).get("quantization") or "none")
    if quant == "none":
        return None
    if quant in CHECKPOINT_QUANTIZATIONS:
        scheme = checkpoint_scheme(CHECKPOINT_QUANTIZATIONS[quant]) or quant
        return MARLIN_SCHEMES.get(scheme, scheme) if row.get("moe_backend") == "marlin" else scheme
    try:
        return check_quant(quant)
    except InputError:
        return quant


def row_kv_dtype(row: dict[str, Any]) -> str | None:
    """The model's KV-cache dtype of a measured row (``fp8`` where vLLM ran with
    ``kv_cache_dtype`` fp8, :data:`perfmodel.measuring.vllm_backend.KV_CACHE_DTYPES`); None where
    the cache was at the model's dtype (every row without the setting)."""
    value = str((row.get("engine") or {}).get("kv_cache_dtype") or "auto")
    if value not in KV_CACHE_DTYPES:
        raise ValueError(f"row {row.get('point_id')}: unknown kv_cache_dtype '{value}'")
    return KV_CACHE_DTYPES[value]


def row_outgrows_cache(row: dict[str, Any]) -> bool:
    """Whether a measured vLLM row's batch outgrew the KV cache its engine allocated
    (:func:`perfmodel.measuring.serving_replay.engine_kv_tokens`, fewer than B·(S + O) tokens),
    so that its sequences did not all run at once; False where the row does not say."""
    from perfmodel.measuring.serving_replay import engine_kv_tokens

    tokens = engine_kv_tokens(row)
    return tokens is not None and int(row["batch"]) * (int(row["input_len"]) + int(row["output_len"])) > tokens


#: transformers' experts implementations the model has: ``grouped_mm`` (one grouped GEMM per
#: projection, the model's ``fused`` MoE) and ``eager`` (a loop over the touched experts, its
#: ``unfused`` MoE). ``batched_mm`` (each token's expert weights gathered into a batched GEMM)
#: has no counterpart, and its rows are left out of a comparison.
HF_MOE_IMPLS = {"grouped_mm": "fused", "eager": "unfused"}


#: vLLM MoE backends (``--moe-backend``) whose experts run as the model's ``staged`` block: the
#: routing, the activation and the top-k sum apart from the grouped GEMMs (vLLM 0.26's
#: ``UnfusedOAITritonExperts``); every other backend runs a fused block.
STAGED_MOE_BACKENDS = ("triton_unfused",)


def row_moe_impl(row: dict[str, Any]) -> str | None:
    """The model's MoE implementation (:data:`perfmodel.ops.moe.MOE_IMPLS`) of a measured row:
    for vLLM's fused MoE ``fused``, or ``staged`` at a backend of :data:`STAGED_MOE_BACKENDS`;
    transformers' per :data:`HF_MOE_IMPLS`; None when the model has none for it."""
    impl = str((row.get("engine") or {}).get("experts_implementation") or "grouped_mm")
    if impl.startswith("vllm_fused_moe"):
        return "staged" if row.get("moe_backend") in STAGED_MOE_BACKENDS else "fused"
    return HF_MOE_IMPLS.get(impl)


def as_measured(metrics: dict[str, float], row: dict[str, Any],
                prefill_s: float | None = None) -> dict[str, float]:
    """A prediction's ``metrics`` as ``row`` timed its passes.

    A step that could not be captured was timed as the profiler's sum of one eager step's
    kernel times (``decode_method`` ``kernel_sum``: transformers' eager experts loop, whose host
    syncs no CUDA graph can hold). That sum holds neither the idle time between a replay's
    kernels nor the fused MoE's bookkeeping kernels, which the fitted per-layer cost of a
    replayed step carries: the model's side of it is the step's kernel time
    (``decode_kernels_s``, :func:`perfmodel.prediction.decode_kernel_time`). ``prefill_s``: the
    prefill predicted at the routing the row's prefill ran (:func:`prefill_skew`), in place of
    the metrics' own. TTFT, E2E and throughput then follow as the row's did from its passes
    (:func:`perfmodel.prediction.request_metrics`). Otherwise ``metrics`` unchanged."""
    import sympy as sp

    from perfmodel import symbols as s
    from perfmodel.prediction import request_metrics

    step = metrics["decode_step_s"]
    kernels = metrics.get("decode_kernels_s", float("nan"))
    if row.get("decode_method") == "kernel_sum" and kernels == kernels:
        step = kernels
    elif prefill_s is None:
        return metrics
    lay = row_layout(row)
    ranks = int(lay["dp"]) if lay["coordinated"] else 1  # a replica is predicted alone
    batch = int(row["batch"]) // int(lay["dp"])  # one rank's
    values = {s.B: batch, s.dp: ranks, s.S: row["input_len"], s.O: row["output_len"],
              s.t_req: metrics["request_host_s"] / batch}
    prefill = metrics["prefill_s"] if prefill_s is None else prefill_s
    timed = request_metrics("request", {"prefill_s": sp.Float(prefill), "decode_step_s": sp.Float(step)})
    out = {name: float(sp.sympify(value).subs(values)) for name, value in timed.items()}
    return {**metrics, **out, "prefill_s": prefill}


def prefill_skew(row: dict[str, Any], spec) -> float:
    """The routing skew σ under which the model's prefill touches, per MoE layer, as many
    distinct experts as the row's warm-up prefill did on average (``prefill_experts_hit``,
    recorded by the hf runner: random weights route a sequence's tokens to fewer experts the
    deeper the layer); 0 (uniform, the model's assumption) for a row without it or a model
    without routed experts."""
    hits = row.get("prefill_experts_hit")
    if not hits or spec.moe is None:
        return 0.0
    from perfmodel.measuring.vllm_routing import effective_skew

    tokens = int(row["batch"]) * int(row["input_len"])
    return effective_skew(tokens, sum(hits) / len(hits), spec.moe.n_experts, spec.moe.top_k)


def row_routing(row: dict[str, Any]) -> str:
    """How a measured row's experts were chosen: ``model`` (the model's own router on vLLM's
    dummy weights) or a strategy of vLLM's routing simulator (``uniform_random``), from its
    point id."""
    return _id_settings(row).get("routing", "model")


def row_routing_ids(row: dict[str, Any]) -> bool:
    """Whether a row's experts' kernel was handed expert ids rather than the router's logits: a
    row at vLLM's routing simulator (:func:`row_routing`;
    :attr:`perfmodel.prediction.Workload.routing_ids`)."""
    return row_routing(row) != "model"


def row_engine_process(row: dict[str, Any]) -> bool:
    """Whether a vLLM row ran its engine core in a process of its own (``mp=1`` in its point id,
    ``measure --engine-process``: vLLM's default); the rows without it ran it in the measuring
    process."""
    return _id_settings(row).get("mp") == "1"


def row_speculative(row: dict[str, Any]) -> dict[str, Any]:
    """``predict``'s speculative-decoding arguments for a row measured with a draft model
    (``spec=DRAFT:γ`` in its point id): the draft, γ and the mean tokens per target step τ the
    engine counted (``spec_mean_accepted_len``; α = 0, one token a step, where it drafted
    nothing); {} for a row without one. τ, not the engine's ``spec_acceptance`` (accepted per
    drafted token, the mean of the per-position rates), is what the model's α stands for:
    τ = (1−α^(γ+1))/(1−α) with α the chance of each token given the ones before it."""
    spec = spec_setting(_id_settings(row))
    if spec is None:
        return {}
    draft, tokens = spec
    tau = row.get("spec_mean_accepted_len")
    if isinstance(tau, (int, float)) and not isinstance(tau, bool):
        return {"spec_draft": draft, "spec_tokens": tokens, "spec_accepted_len": float(tau)}
    return {"spec_draft": draft, "spec_tokens": tokens, "spec_accept": 0.0}


def row_overrides(row: dict[str, Any]) -> list[str]:
    """The ``--set`` overrides a measured row was built with, layer truncation included."""
    overrides = list(row.get("overrides") or [])
    layers = row.get("layers")
    if isinstance(layers, int):
        overrides.append(f"num_layers={layers}")
    return overrides


def _id_settings(row: dict[str, Any]) -> dict[str, str]:
    """The ``key=value`` engine settings of a row's point id."""
    parts = str(row.get("point_id", "")).split("|")[7:]
    return dict(p.split("=", 1) for p in parts if "=" in p)


def row_layout(row: dict[str, Any]) -> dict[str, int | bool]:
    """How a measured row was spread over GPUs: ``tp``, ``pp``, ``dp`` (ranks), ``ep`` (vLLM's
    expert-parallel flag), ``coordinated`` (the dp ranks are vLLM's data parallelism, ``dp_mode=vllm``
    in the point id, not independent replicas) and ``gpus`` = tp·pp·dp, from the row's ``engine``
    (else its point id; 1 / off where neither says)."""
    engine = row.get("engine") or {}
    ids = _id_settings(row)

    def degree(name: str) -> int:
        value = engine.get(name)
        return int(value) if value is not None else int(ids.get(name, "1"))

    tp, pp, dp = degree("tp"), degree("pp"), degree("dp")
    ep = engine.get("ep")
    ep = bool(ep) if ep is not None else ids.get("ep", "0") == "1"
    coordinated = dp > 1 and ids.get("dp_mode") == "vllm"
    return {"tp": tp, "pp": pp, "dp": dp, "ep": ep, "coordinated": coordinated, "gpus": tp * pp * dp}


def row_replicas(row: dict[str, Any]) -> int:
    """Independent engine replicas a row's batch was split over (:func:`row_layout`): its dp
    where the ranks shared nothing, else 1 (vLLM's data parallelism is one deployment, which
    the model predicts whole)."""
    lay = row_layout(row)
    return 1 if lay["coordinated"] else int(lay["dp"])


def row_gpus(row: dict[str, Any]) -> int:
    """GPUs a measured row ran on (:func:`row_layout`)."""
    return int(row_layout(row)["gpus"])


def row_fitted(row: dict[str, Any], train_models: Collection[str] = (), train_points: Collection[str] = ()) -> bool:
    """Whether a fit read a measured row (its split is "train"): one of ``train_models`` (lower
    case) as built, on one GPU, with the fused MoE, without speculative decoding, the KV cache in
    the model's dtype; or a one-GPU row whose point id is one of ``train_points`` (:func:`compare`;
    a caller asking of many rows passes sets)."""
    fitted = (not row_speculative(row) and row_moe_impl(row) == "fused" and row["model"].lower() in train_models
              and not is_variant(row) and row_kv_dtype(row) is None) or row["point_id"] in train_points
    return fitted and row_gpus(row) == 1


def layout_label(row: dict[str, Any]) -> str:
    """A row's layout as the validation tables group it: ``1 GPU``, ``TP=2``, ``TP=4+EP``,
    ``TP=2 PP=2+EP``, ``PP=4``, vLLM's data parallelism ``DP=4+EP``, ``TP=2 DP=2``, and
    independent replicas ``2 × TP=2``, ``2 × 1 GPU`` …"""
    lay = row_layout(row)
    if lay["gpus"] == 1:
        return "1 GPU"
    replicas = row_replicas(row)
    names = ("tp", "pp") if replicas > 1 else ("tp", "pp", "dp")
    parts = [f"{name.upper()}={lay[name]}" for name in names if lay[name] > 1]
    spread = lay["tp"] * (lay["dp"] if lay["coordinated"] else 1)  # the GPUs vLLM's EP spreads experts over
    label = " ".join(parts) + ("+EP" if lay["ep"] and spread > 1 else "")
    return f"{replicas} × {label or '1 GPU'}" if replicas > 1 else label


def row_graph_tokens(row: dict[str, Any]) -> int | None:
    """The largest pass (tokens) a row's engine replayed from a captured CUDA graph: the
    largest of the capture sizes it resolved (``engine_detail.resolved``, else those it asked
    for), 0 when it ran eagerly; None when the row does not say (the profile's default)."""
    detail = row.get("engine_detail") or {}
    if detail.get("enforce_eager") is True or (detail.get("resolved") or {}).get("cudagraph_mode") == "NONE":
        return 0
    sizes = ((detail.get("resolved") or {}).get("cudagraph_capture_sizes")
             or (detail.get("compilation_config") or {}).get("cudagraph_capture_sizes"))
    return max(int(x) for x in sizes) if sizes else None


def model_workload(row: dict[str, Any], profile=None, unprobed_ms: float | None = None) -> dict[str, Any]:
    """The model's workload arguments for a row on its GPUs (see the module docstring): ``batch``
    (B/dp: one replica; B with ``dp`` for vLLM's data parallelism), ``tp``, ``ep`` 1 and
    ``expert_parallel`` (vLLM's EP flag), ``pp``, the engine's
    largest CUDA-graph pass (``graph_tokens``, :func:`row_graph_tokens`) and, under a ``profile``
    that takes the host's speed as an input, the host's probe time the row measured
    (``host_probe_ms``, :func:`perfmodel.host_speed.row_probe_ms`; where it has none,
    ``unprobed_ms``: the usual probe of the machines it was measured on, else None), and
    the KV cache's dtype where the row set one (``kv_dtype``, :func:`row_kv_dtype`), and
    ``moe_tables`` false for a row whose fused-MoE tiles came from a folder of its own
    (``measure --moe-config-dir``: vLLM's default rule, in the A/B of a tuned table), and
    ``moe_impl`` ``staged`` for a row whose vLLM MoE backend runs the staged block
    (:data:`STAGED_MOE_BACKENDS`), and ``routing_ids`` for a row at vLLM's routing simulator
    (:func:`row_routing_ids`), so that every fit predicts its kernels."""
    lay = row_layout(row)
    out = {"batch": int(row["batch"]) // row_replicas(row), "tp": int(lay["tp"]), "ep": 1,
           "expert_parallel": bool(lay["ep"]), "pp": int(lay["pp"]),
           "graph_tokens": row_graph_tokens(row)}
    if lay["coordinated"]:
        out["dp"] = int(lay["dp"])
    kv = row_kv_dtype(row)
    if kv is not None:
        out["kv_dtype"] = kv
    if profile is not None and profile.latency.host_probe_ref_ms is not None:
        probe = row_probe_ms(row)
        out["host_probe_ms"] = unprobed_ms if probe is None else probe
    if row_own_tiles(row):
        out["moe_tables"] = False
    if row_moe_impl(row) == "staged":
        out["moe_impl"] = "staged"
    if row_routing_ids(row):
        out["routing_ids"] = True
    return out


def row_own_tiles(row: dict[str, Any]) -> bool:
    """Whether a row's fused-MoE tiles came from a folder of tile files of its own
    (``measure --moe-config-dir``: the engine recorded ``fused_moe_config_folder``)."""
    return "fused_moe_config_folder" in (((row.get("engine_detail") or {}).get("resolved")) or {})


#: Engine settings every point id carries (after B, S, O) at their default values.
#: Settings of a point id that every measurement of its backend has (the backend's defaults).
_DEFAULT_SETTINGS = frozenset(
    SweepPoint("model", 1, 1, 1).point_id.split("|")[7:]
    + SweepPoint("model", 1, 1, 1, backend="vllm", experts_impl="vllm_fused_moe",
                 settings=tuple(sorted(point_settings().items()))).point_id.split("|")[7:])


def _settings_tags(point_id: str) -> list[str]:
    """The engine settings of a point id that differ from the defaults (``dtype=float16``, ...)."""
    parts = point_id.split("|")
    return [p for p in parts[7:] if p not in _DEFAULT_SETTINGS] if len(parts) > 7 else []


def variant_label(row: dict[str, Any], spec=None) -> str:
    """A measured point's model as people read it: the model name, and for a hypothetical
    variant its layers L, experts E, top-k k and expert FFN width F (dense: L and F) with any
    other override, then engine settings that differ from the defaults, e.g.
    ``mixtral-8x7b [L=8 E=16 k=2 F=1792]``. ``spec``: the variant's ModelSpec (built if None)."""
    from perfmodel.specs.model import load_model
    from perfmodel.specs.zoo import config_field, override_items

    tags: list[str] = []
    if is_variant(row):
        spec = spec if spec is not None else load_model(row["model"], row_overrides(row))
        tags.append(f"L={spec.n_layers}")
        shown = ["num_layers", "ffn"]
        if spec.moe is not None:
            tags += [f"E={spec.moe.n_experts}", f"k={spec.moe.top_k}", f"F={spec.moe.expert_intermediate}"]
            shown += ["num_experts", "top_k"]
        else:
            tags.append(f"F={spec.dense_intermediate}")
            shown = ["num_layers", "intermediate_size"]
        covered = {config_field(spec.model_type, key) for key in shown}
        tags += [f"{key}={value}" for key, value in override_items(row_overrides(row))
                 if config_field(spec.model_type, key) not in covered]
    tags += _settings_tags(str(row.get("point_id", "")))
    return f"{row['model']} [{' '.join(tags)}]" if tags else str(row["model"])


def _moe_shape(spec) -> tuple[int, int, int] | None:
    """(top-k, experts, expert FFN width) of a model's routed experts; None for a dense model."""
    moe = spec.moe
    return None if moe is None else (moe.top_k, moe.n_experts, moe.expert_intermediate)


def row_what_ifs(row: dict[str, Any], spec) -> tuple[str, ...]:
    """What a measured row changed from its model as built and run by default, as the validation
    groups its errors: ``quantization <scheme>`` (:func:`row_quant`), ``KV cache <dtype>``
    (:func:`row_kv_dtype`), ``MoE shape`` (top-k, experts or expert FFN width overridden: the
    seed study's sweeps and pruning; ``spec`` is the row's ModelSpec), ``speculative decoding``,
    ``MoE <impl>`` (an experts implementation other than the fused one, but the staged one, which
    its backend names), ``MoE kernel <backend>`` (vLLM's ``--moe-backend`` other than Triton)
    and ``<layout>`` over several GPUs; () for none (a cut to fewer layers changes none of these)."""
    from perfmodel.specs.model import load_model

    quant, kv_dtype, impl = row_quant(row), row_kv_dtype(row), row_moe_impl(row)
    backend = row.get("moe_backend", "triton")
    kinds = [f"quantization {quant}" if quant and quant != "none" else None,
             f"KV cache {kv_dtype}" if kv_dtype else None,
             "MoE shape" if _moe_shape(spec) != _moe_shape(load_model(row["model"])) else None,
             "speculative decoding" if row_speculative(row) else None,
             f"MoE {impl}" if impl not in (None, "fused", "staged") else None,  # staged: by its backend
             f"MoE kernel {backend}" if backend != "triton" else None,
             layout_label(row) if row_gpus(row) > 1 else None]
    return tuple(kind for kind in kinds if kind)


def verify_replayed(row: dict[str, Any]) -> bool:
    """Whether a speculative row's verify pass, B·(γ+1) tokens, fits its engine's largest
    captured CUDA graph (else the engine ran it, and the draft's passes, without one: decode
    steps the model costs as graph replays). False for a row without speculative decoding."""
    spec = row_speculative(row)
    graph = row_graph_tokens(row)
    return bool(spec) and (graph is None or int(row["batch"]) * (spec["spec_tokens"] + 1) <= graph)


def profiled_context(row: dict[str, Any]) -> int | None:
    """The context, in tokens, of the decode steps a row's kernel profile measured: its
    ``context_len`` (transformers: the step it profiled), else S + ⌈(n + 1)/2⌉ over the n steps a
    vLLM profile averages (contexts S + 1 … S + n); None without a decode profile."""
    profile = row.get("decode_profile") or {}
    if not profile.get("split_ms"):
        return None
    if isinstance(profile.get("context_len"), int):
        return profile["context_len"]
    steps = profile.get("steps")
    return int(row["input_len"]) + (int(steps) + 2) // 2 if isinstance(steps, int) and steps > 0 else None


def point_identity(row: dict[str, Any], spec) -> dict[str, Any]:
    """What names a measured point in a comparison table: model, variant (:func:`variant_label`),
    batch, input_len, output_len and point_id."""
    return dict(model=row["model"], variant=variant_label(row, spec), batch=row["batch"],
                input_len=row["input_len"], output_len=row["output_len"], point_id=row["point_id"])


def prediction_args(row: dict[str, Any], *, engine: str, gpu: str, profile,
                    unprobed_ms: float | None = None) -> dict[str, Any]:
    """``predict``'s arguments for a measured row, speculative decoding apart: the row's lengths,
    its quantization as measured (``none`` unquantized; not the checkpoint's own,
    :meth:`perfmodel.prediction.Workload.stored_as`), its MoE implementation
    (:func:`row_moe_impl`) and its layout and host (:func:`model_workload`, under ``profile``,
    a row without a probe at ``unprobed_ms``)."""
    workload = {"moe_impl": row_moe_impl(row), **model_workload(row, profile, unprobed_ms)}  # staged: the same impl
    return dict(gpu=gpu, engine=engine, input_len=row["input_len"], output_len=row["output_len"],
                quant=row_quant(row) or "none", **workload)


def compare(rows: Iterable[dict[str, Any]], *, engine: str, gpu: str = "h200-sxm",
            train_models: Iterable[str] = (), models: Iterable[str] | None = None,
            train_points: Iterable[str] = (), unprobed_ms: float | None = None):
    """Predicted vs measured for every ok row (optionally of some models only).

    A row is a training point when its model is one of ``train_models`` as built, on one GPU,
    with the fused MoE, without speculative decoding, or when its point id is one of
    ``train_points`` (the rows a further term was fitted on, e.g. the speculative rows of the
    profile's draft-pass time, :func:`perfmodel.calibration.fit_vllm.fit_draft_pass`); every
    other row is held out. A row of an experts implementation the model has no counterpart of
    (:func:`row_moe_impl`) is left out. A row without a host probe is predicted at
    ``unprobed_ms`` (the usual probe of its machines) where given, else at the profile's host.

    Returns ``(points, ops)``: ``points`` has one row per point and metric (measured,
    predicted, rel_error, split, the point's identity: point_id, variant, model, batch,
    input_len, output_len; ``prefill_regime``: what sets its predicted prefill,
    :func:`perfmodel.prediction.prefill_regime`, the target's alone for a speculative row;
    ``decode_regime``: what sets its predicted decode step, :func:`perfmodel.prediction.decode_regime`;
    ``quant``: the quantization scheme it ran (:func:`row_quant`, ``none`` unquantized);
    ``speculative``: it ran speculative decoding; ``what_if``: what it changed from its model as
    built, :func:`row_what_ifs` joined by ``; ``, empty for none; ``dense``: its model, as it ran,
    routes no token to experts); ``ops`` the predicted per-op
    decode-step time (whole step, s) and the measured kernel split of the same step, by category,
    per point: the step predicted at the context the profile measured (:func:`profiled_context`)
    where the engine attends the context, else the request's mean step.
    """
    import pandas as pd

    from perfmodel.prediction import decode_regime, predict, prefill_regime
    from perfmodel.profile import load_profile
    from perfmodel.specs.hardware import load_gpu
    from perfmodel.specs.model import load_model

    engine_profile = load_profile(engine, load_gpu(gpu).name)
    train_models, train_points = frozenset(m.lower() for m in train_models), frozenset(train_points)
    wanted = None if models is None else {m.lower() for m in models}
    specs: dict[tuple, Any] = {}
    categories: dict[tuple, dict[str, str]] = {}
    points, ops = [], []
    for row in rows:
        if row.get("status") != "ok" or (wanted is not None and row["model"].lower() not in wanted):
            continue
        moe_impl = row_moe_impl(row)
        if moe_impl is None:
            continue
        overrides = row_overrides(row)
        spec_key = (row["model"], tuple(overrides))
        if spec_key not in specs:
            try:
                specs[spec_key] = load_model(row["model"], overrides)
            except InputError as exc:  # a row's own model or overrides: name the row
                raise InputError(f"measured row {row.get('point_id', row['model'])}: {exc}") from None
        spec = specs[spec_key]
        speculation = row_speculative(row)
        workload = {**prediction_args(row, engine=engine, gpu=gpu, profile=engine_profile,
                                      unprobed_ms=unprobed_ms), **speculation}
        quant, ids = workload["quant"], bool(workload.get("routing_ids"))
        if (spec_key, quant, moe_impl, ids) not in categories:
            categories[spec_key, quant, moe_impl, ids] = op_categories(spec, engine, gpu, quant, moe_impl,
                                                                       routing_ids=ids)
        key = {**point_identity(row, spec), "layout": layout_label(row)}
        p = predict(spec, **workload)
        skew = prefill_skew(row, spec)
        prefill = predict(spec, phase="prefill", skew=skew, **workload) if skew > 0 else p
        metrics = as_measured(p.metrics, row, prefill.metrics["prefill_s"] if skew > 0 else None)
        replicas = row_replicas(row)
        split = "train" if row_fitted(row, train_models, train_points) else "held-out"
        what_ifs = row_what_ifs(row, spec)
        for metric, (field, scale, predicted) in METRIC_FIELDS.items():
            measured = row.get(field)
            if measured is None or (metric == "decode_step" and not has_decode_step(row)):
                continue
            measured = measured * scale
            value = metrics[predicted] * (replicas if metric == "throughput" else 1)
            points.append({**key, "engine": engine, "split": split, "metric": metric,
                           "measured": measured, "predicted": value,
                           "rel_error": value / measured - 1.0,
                           "prefill_regime": prefill_regime(prefill.metrics,
                                                            p.provenance["options"]["prefill_eager"]),
                           "decode_regime": decode_regime(p.metrics),
                           "quant": quant or "none", "kv_cache": row_kv_dtype(row) or "model",
                           "speculative": bool(speculation), "what_if": "; ".join(what_ifs),
                           "dense": not spec.is_moe})
        profile = row.get("decode_profile") or {}
        measured_split = profile.get("split_ms") or {}
        # an engine that attends its whole allocated cache costs every step alike: the mean is it
        attends_context = p.provenance["options"]["decode_attention_span"] == "context"
        context = profiled_context(row) if attends_context else None
        step = p if context is None else predict(spec, phase="decode", context=context, **workload)
        predicted_split: dict[str, float] = {}
        for op in step.ops:
            if op["pass"] == "decode":
                cat = categories[spec_key, quant, moe_impl, ids][op["name"]]
                predicted_split[cat] = predicted_split.get(cat, 0.0) + op["time_s"]
        for cat in sorted(set(measured_split) | set(predicted_split)):
            ops.append({**key, "engine": engine, "split": split, "category": cat,
                        "measured_s": measured_split.get(cat, 0.0) * 1e-3 if measured_split else None,
                        "predicted_s": predicted_split.get(cat, 0.0)})
    return pd.DataFrame(points), pd.DataFrame(ops)


def mape(points, by: tuple[str, ...] = ("engine", "layout", "split", "metric")):
    """Mean absolute percentage error, %, grouped (default: engine × layout × split × metric;
    a table without a ``layout`` column is grouped without it)."""
    table = points.assign(ape=points["rel_error"].abs() * 100)
    by = [column for column in by if column != "layout" or "layout" in table.columns]
    return table.groupby(by)["ape"].agg(["mean", "median", "max", "count"]).reset_index()
