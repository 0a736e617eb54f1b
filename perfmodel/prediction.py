"""Predictions: a model, a GPU, an engine profile and a workload → times, throughput, memory.

The cost expressions of a model's op graph are lambdified once per graph structure and phase
(cached), then evaluated with numbers: a warm prediction is one call of a compiled function.
Request metrics follow the seed study: TTFT is the prefill pass (it yields the first token),
ITL = (E2E − TTFT)/(O − 1) is the mean decode step, throughput = B·(S+O)/E2E and output
throughput = B·O/E2E. A batch whose KV cache does not fit runs in waves (:mod:`perfmodel.waves`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import sympy as sp

from perfmodel import codecache
from perfmodel import symbols as s
from perfmodel.errors import InputError, SpecError
from perfmodel.graph import GraphOptions, ModelGraph, build_graph, model_values
from perfmodel.host_speed import HOST_TIMES, check_probe, host_factor
from perfmodel.memory import (
    activation_peak_bytes, active_parameter_count, kv_cache_bytes, parameter_count, reserved_activation_bytes,
    weights_bytes,
)
from perfmodel.minmax import Max, Min
from perfmodel.phases import (decode_mean_substitutions, decode_substitutions, prefill_steps,
                              prefill_substitutions)
from perfmodel.profile import (DEFAULT_ENGINE, OP_CLASSES, OPTIONAL_OP_CLASSES, EngineProfile, Options, TableExtra,
                               load_profile)
from perfmodel import quantization
from perfmodel.ops.moe import MOE_IMPLS, busiest_z, expert_cut, row_tiers
from perfmodel.pruning import check_ratio, prune, pruning_record
from perfmodel.roofline import op_time
from perfmodel.specs.hardware import GPUSpec, load_gpu
from perfmodel.specs.layout import Layout
from perfmodel.specs.model import MAX_INT, ModelSpec, load_model
from perfmodel.specs.zoo import parse_override
from perfmodel.waves import WAVE_METRICS, one_pass, run_in_waves

Phase = Literal["request", "prefill", "decode"]
PHASES = ("request", "prefill", "decode")

#: Bytes per element of each storage dtype (fp4: 4 bits + one 8-bit scale per 32 values).
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5 + 1 / 32}
#: The matmul peak a weight dtype computes at (fp8/int8/fp4 weights with matching activations).
COMPUTE_DTYPE = {"fp32": "tf32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "fp4": "fp4"}

#: Metrics a prediction reports (NaN where a phase has none, e.g. ITL of a prefill).
METRICS = ("prefill_s", "decode_step_s", "ttft_s", "itl_s", "e2e_s", "throughput_tok_s",
           "output_throughput_tok_s", "params", "active_params", "weights_bytes", "kv_cache_bytes",
           "activation_bytes", "memory_bytes", "prefill_launch_s", "prefill_uncompiled_s", "request_host_s",
           "decode_host_s", "decode_graph_batch", "decode_kernels_s")
#: Regimes of a prefill (:func:`prefill_regime`): what sets its time.
LAUNCH_BOUND, GRAPH_REPLAYED, GPU_BOUND = "launch-bound", "graph-replayed", "GPU-bound"
#: Regime of a decode step held to the host's floor (:func:`decode_regime`; else GPU-bound).
HOST_BOUND = "host-bound"
#: Metrics that count whole things (parameters, bytes): integers in JSON.
COUNT_METRICS = ("params", "active_params", "weights_bytes", "kv_cache_bytes", "activation_bytes",
                 "memory_bytes", "memory_capacity_bytes", *WAVE_METRICS)
#: Per-op quantities reported for each pass.
OP_FIELDS = ("flops", "bytes", "comm_bytes", "compute_s", "memory_s", "link_s", "tiles_s", "latency_s",
             "time_s")


def _shown(value: Any) -> str:
    """A value as an error message shows it: numbers plainly, anything else as its repr."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    return repr(value)


def _is_number(value: Any) -> bool:
    """A real number: int, float or a numpy one; a bool is not a number here."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_count(name: str, value: Any) -> int:
    """A positive integer argument (batch, lengths, tp/ep/pp...) as an ``int``.

    Accepted: a Python or numpy integer, or a float with an integral value (the rule config
    fields and sweep grids follow too). Refused: bools, strings, None, fractions, NaN,
    infinities, values below 1 or above 2^53.
    """
    label = name.replace("_", "-")
    if not _is_number(value) or not float(value).is_integer() or value <= 0:
        raise InputError(f"{label} must be a positive integer, got {_shown(value)}")
    if value > MAX_INT:
        raise InputError(f"{label} is too large, got {_shown(value)} (at most 2^53)")
    return int(value)


def check_skew(value: Any) -> float:
    """Routing skew σ, a number in [0, 1], as a ``float``."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:  # NaN fails the comparison
        raise InputError(f"skew must be in [0, 1], got {_shown(value)}")
    return float(value)


def check_choice(name: str, value: Any, known: Any, optional: bool = False) -> str | None:
    """One of the ``known`` names (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in known:
        shown = f"'{value}'" if isinstance(value, str) else _shown(value)
        raise InputError(f"unknown {name.replace('_', '-')} {shown} (known: {', '.join(known)})")
    return value


def check_name(what: str, value: Any) -> str:
    """A GPU, engine or model given by name or by path, as a string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must be a name or a path, got {_shown(value)}")
    return value


def check_model(model: Any) -> str | ModelSpec:
    """A model argument: a :class:`ModelSpec`, or a zoo name or config path as a string."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"model must be a zoo name, a path to a config.json or a ModelSpec, "
                         f"got {_shown(model)}")
    return model


def _plain(value: Any) -> Any:
    """numpy scalars (and lists of them) as the Python values a config holds."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_overrides(overrides: Any) -> dict[str, Any]:
    """``--set`` overrides, given as ``["KEY=VALUE", ...]`` or ``{KEY: VALUE}``, as one dict.

    numpy numbers become Python numbers (an integer field then takes ``np.int64(4)`` as it
    takes ``4``); a key given twice is refused.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
        for key, _ in items:
            if not isinstance(key, str):
                raise InputError(f"override keys must be strings, got {_shown(key)}")
    elif isinstance(overrides, (list, tuple)):
        for item in overrides:
            if not isinstance(item, str):
                raise InputError(f"overrides must be 'KEY=VALUE' strings, got {_shown(item)}")
        items = [parse_override(item) for item in overrides]
    else:
        raise InputError("overrides must be a list of 'KEY=VALUE' strings or a dict, "
                         f"got {type(overrides).__name__} {_shown(overrides)}")
    result: dict[str, Any] = {}
    for key, value in items:
        if key in result:
            raise InputError(f"--set {key} is given twice: give it once")
        result[key] = _plain(value)
    return result


def layout_gpus(tp: Any, ep: Any, pp: Any, dp: Any = 1) -> Any:
    """GPUs a tp/ep/pp/dp layout uses (:attr:`perfmodel.specs.layout.Layout.gpus`), for numbers
    and numpy arrays alike."""
    return Layout(tp, ep, pp, dp).gpus


@dataclass(frozen=True)
class Workload:
    """A fixed batch: B sequences, S input tokens, O output tokens; decode steps at context L.

    ``dp`` data-parallel ranks (:mod:`perfmodel.specs.layout`) take B/dp sequences each: the
    cost formulas see one rank (B/dp sequences), its throughputs are the dp ranks'."""

    batch: int = 1
    input_len: int = 128
    output_len: int = 128
    context: int | None = None  # decode phase: keys attended (default: input_len)
    tp: int = 1
    ep: int = 1
    pp: int = 1
    dp: int = 1
    expert_parallel: bool = False  # vLLM's --enable-expert-parallel: whole experts over the tp·dp GPUs
    dtype: str = "bf16"
    kv_dtype: str | None = None
    skew: float = 0.0
    quant: str | None = None  # quantization scheme (specs/quantization.yaml); None: from dtype
    moe_impl: str = "fused"  # routed experts: fused block, staged block, or a loop over the touched experts
    graph_tokens: int | None = None  # largest CUDA-graph pass (tokens); None: the profile's
    host_probe_ms: float | None = None  # the host's probe time (ms); None: the profile's host
    moe_tables: bool = True  # the engine's tuned fused-MoE tile tables; False: its default rule for every shape
    routing_ids: bool = False  # the experts' kernel is handed expert ids (vLLM's routing simulator), not logits

    def __post_init__(self) -> None:
        """Check every field's type and range (see :func:`check_count`) and store plain Python
        values: an invalid workload cannot be built."""
        for name in ("batch", "input_len", "output_len", "tp", "ep", "pp", "dp"):
            object.__setattr__(self, name, check_count(name, getattr(self, name)))
        if self.batch % self.dp:
            raise InputError(f"batch ({self.batch}) must be a multiple of dp ({self.dp}): each data-parallel "
                             "rank runs batch/dp sequences")
        if self.context is not None:
            object.__setattr__(self, "context", check_count("context", self.context))
        object.__setattr__(self, "dtype", check_choice("dtype", self.dtype, DTYPE_BYTES))
        object.__setattr__(self, "kv_dtype", check_choice("kv_dtype", self.kv_dtype, DTYPE_BYTES, optional=True))
        object.__setattr__(self, "skew", check_skew(self.skew))
        object.__setattr__(self, "quant", quantization.check_quant(self.quant))
        quantization.resolve(self.quant, self.dtype)  # a quant that contradicts an alias dtype fails here
        object.__setattr__(self, "moe_impl", check_choice("moe_impl", self.moe_impl, MOE_IMPLS))
        if self.moe_impl == "staged" and self.scheme.moe_tile is None and (
                self.quant is not None or self.dtype in quantization.dtype_aliases()):
            raise _staged_needs_tiles()  # else the model's checkpoint may store it so: check(model)
        if self.graph_tokens is not None:  # 0: the engine captures no graph
            tokens = self.graph_tokens
            object.__setattr__(self, "graph_tokens",
                               0 if _is_number(tokens) and tokens == 0 else check_count("graph_tokens", tokens))
        object.__setattr__(self, "host_probe_ms", check_probe(self.host_probe_ms))
        for name in ("moe_tables", "expert_parallel", "routing_ids"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise InputError(f"{name} must be true or false, got {value!r}")
            object.__setattr__(self, name, bool(value))

    @property
    def scheme(self) -> quantization.QuantScheme:
        """The quantization scheme of the linear layers: ``quant``, else the one ``dtype`` is an
        alias of (fp8, int8, fp4), else none (:func:`perfmodel.quantization.resolve`)."""
        return quantization.resolve(self.quant, self.dtype)

    @property
    def base_dtype(self) -> str:
        """The dtype of the unquantized weights and of the activations: ``dtype``, or bf16 when
        ``dtype`` is a quantization scheme's alias."""
        return quantization.base_dtype(self.dtype)

    @property
    def gpus(self) -> int:
        """GPUs the tp/ep/pp/dp layout uses (:func:`layout_gpus`)."""
        return layout_gpus(self.tp, self.ep, self.pp, self.dp)

    @property
    def layout_label(self) -> str:
        """The layout in words, e.g. ``TP=2 EP=1 PP=1 DP=4 +EP`` (DP where there are several ranks,
        +EP for vLLM's expert parallelism)."""
        return (f"TP={self.tp} EP={self.ep} PP={self.pp}" + (f" DP={self.dp}" if self.dp > 1 else "")
                + (" +EP" if self.expert_parallel else ""))

    @property
    def rank_batch(self) -> int:
        """Sequences of one data-parallel rank, B/dp: the batch the cost formulas see."""
        return self.batch // self.dp

    @property
    def kv_dtype_used(self) -> str:
        """The KV cache's dtype: ``kv_dtype``, else the unquantized dtype (:attr:`base_dtype`:
        bf16 under ``--dtype fp8|int8|fp4``; a ``quant`` scheme leaves the cache alone)."""
        return self.kv_dtype or self.base_dtype

    def stored_as(self, model: ModelSpec) -> Workload:
        """This workload at the model's checkpoint quantization (:attr:`ModelSpec.quantization`:
        gpt-oss's MXFP4 experts) where it names no scheme: no ``quant``, and a ``dtype`` that is
        no scheme's alias. ``quant="none"`` asks for the unquantized model."""
        if self.quant is None and model.quantization and self.dtype not in quantization.dtype_aliases():
            return replace(self, quant=model.quantization)
        return self

    def check(self, model: ModelSpec) -> None:
        """Raise :class:`InputError` on a workload that makes no sense for this model."""
        Layout(self.tp, self.ep, self.pp, self.dp, self.expert_parallel).check(model)
        self.check_moe_impl(model)

    def check_moe_impl(self, model: ModelSpec) -> None:
        """Raise :class:`InputError` where the MoE implementation has nothing to run: a model
        without routed experts takes the default only; the staged block needs a tiled kernel, of
        the workload's scheme or the model's checkpoint."""
        if self.moe_impl != "fused" and not model.is_moe:
            raise InputError(f"--moe-impl {self.moe_impl}: {model.name} has no routed experts")
        if self.moe_impl == "staged" and self.stored_as(model).scheme.moe_tile is None:
            raise _staged_needs_tiles()


def _staged_needs_tiles() -> InputError:
    return InputError("--moe-impl staged is vLLM's TRITON_UNFUSED MoE, which runs a tiled MoE kernel's "
                      "experts: give a scheme with one (--quant mxfp4-moe), or a model stored in one")


@dataclass(frozen=True)
class CompiledOutputs:
    """What a compiled model returns, by name: numbers for one prediction, numpy arrays for a
    sweep (units as in :data:`METRICS` and :data:`OP_FIELDS`: seconds, FLOPs, bytes).

    ``totals``: output name (``prefill_s``, ``decode_step_s``, ``ttft_s``, ``weights_bytes``, ...)
    → value; ``ops``: one dict per op of each pass, ``name``, ``pass`` and the :data:`OP_FIELDS`.
    """

    totals: dict[str, Any]
    ops: list[dict[str, Any]]


@dataclass(frozen=True)
class CompiledModel:
    """Lambdified cost expressions of one graph structure and phase.

    ``fn`` takes the numbers of ``args`` (symbol names) and returns a flat list: the totals
    named by ``expressions`` (in its order), then :data:`OP_FIELDS` for each op of each pass of
    ``passes``. :meth:`evaluate` calls it and names what it returns.
    """

    phase: str
    passes: tuple[tuple[str, tuple[str, ...]], ...]  # (pass name, op names)
    args: tuple[str, ...]  # symbol names, in the compiled function's argument order
    fn: Any
    expressions: dict[str, sp.Expr | None] = field(repr=False)  # None when loaded from disk

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the totals, in the order ``fn`` returns them."""
        return tuple(self.expressions)

    def named(self, out: Sequence[Any]) -> CompiledOutputs:
        """``fn``'s flat result as named totals and per-op rows."""
        names = self.outputs
        n_ops = sum(len(op_names) for _, op_names in self.passes)
        if len(out) != len(names) + n_ops * len(OP_FIELDS):
            raise ValueError(f"compiled model returned {len(out)} values, expected "
                             f"{len(names)} totals and {len(OP_FIELDS)} per op for {n_ops} ops")
        values = iter(out[len(names):])
        ops = [{"name": op_name, "pass": pass_name, **{f: next(values) for f in OP_FIELDS}}
               for pass_name, op_names in self.passes for op_name in op_names]
        return CompiledOutputs(totals=dict(zip(names, out)), ops=ops)

    def evaluate(self, values: Mapping[str, Any]) -> CompiledOutputs:
        """Evaluate at ``values`` (symbol name → number or numpy array); named outputs."""
        return self.named(self.fn(*[values[a] for a in self.args]))


def structure_key(model: ModelSpec) -> tuple:
    """Everything about a model that changes its op graph (not just the numbers in it)."""
    a, m = model.attention, model.moe
    return (
        a.kind, a.qk_norm, a.sinks, a.qkv_bias, a.o_bias, a.q_lora_rank > 0, model.norm,
        model.tie_embeddings, model.lm_head_bias, model.mlp_bias,
        model.n_dense_layers > 0, model.n_moe_layers > 0,
        model.n_window_layers > 0, model.n_window_layers < model.n_layers,
        None if m is None else (m.n_shared > 0, m.shared_gate, m.router_bias, m.expert_bias),
    )


def pass_substitutions(phase: str, span: str, padded: bool = False) -> list[tuple[str, bool, dict]]:
    """(pass name, is decode, substitutions) of the passes a phase is made of; ``padded``: a
    pass replayed from a CUDA graph runs at the graph's padded size
    (:func:`perfmodel.phases.graph_batch`)."""
    if phase == "prefill":
        return [("prefill", False, prefill_substitutions(padded=padded))]
    if phase == "decode":
        return [("decode", True, decode_substitutions(padded))]
    return [("prefill", False, prefill_substitutions(padded=padded)),
            ("decode", True, decode_mean_substitutions(span, padded))]


def pass_time(graph: ModelGraph, subs: dict, eager: bool = False, steps: sp.Expr = sp.Integer(1),
              chunk: sp.Expr | None = None, host_floor: bool = False) -> tuple[sp.Expr, list[list[sp.Expr]]]:
    """A pass's time: its ops' roofline times plus per-layer and per-step fixed costs.

    A decode step the engine replays from a CUDA graph (``host_floor``) takes at least the
    host's time for it, max(GPU time, t_host_step + B·t_host_seq) (:func:`decode_host_floor`):
    asynchronous scheduling prepares step k + 1 while the GPU runs step k, so the two overlap,
    and the longer sets the pace.

    An eager pass cannot finish before the host has launched it: its time is
    max(GPU time, (N_layers − N_dense)·t_eager_layer + N_dense·t_dense_launch + N_uncompiled·t_uncompiled
    + Σ launch_host + t_eager_step + B·t_eager_seq) (the launch, its ops run from Python, and the host's
    work for each of the B sequences the step holds; :func:`launch_floor`), unless each of its steps fits the
    largest captured CUDA graph, M_graph, which the engine replays: a step holds min(T, chunk)
    tokens, so the floor counts θ(T − M_graph)·θ(chunk − M_graph) times (Heaviside, θ(0) = 0;
    no chunk: θ(T − M_graph)). A step it replays runs the graph's pieces with each layer's
    attention launched between them from the host: N_layers·t_piece_layer more, serial with the
    GPU's work. ``steps``: engine steps the pass is split into (a chunked
    prefill of ``chunk`` tokens per step, :func:`perfmodel.phases.prefill_steps`): the fixed
    costs and the host's launch time are paid once per step, the per-sequence host time once per
    sequence (a sequence chunked over several steps is counted once: chunks of one prompt are
    rare beside the B sequences of a batch).

    A launched eager pass whose ops synchronise the host with the GPU (:attr:`Op.host_syncs`,
    the unfused MoE's loop over the touched experts) cannot run its host ahead of the GPU: each
    sync's host time t_sync is serial with both, max(GPU, launch) + syncs·t_sync
    (:func:`host_syncs`; the floor :func:`launch_floor` includes it). A CUDA-graph replay,
    and so a decode step or a replayed prefill, has none.
    """
    rows, total = [], sp.Integer(0)
    for count, op in graph.all_ops():
        t = op_time(op, subs)
        rows.append([count * op.flops.subs(subs), count * op.bytes.subs(subs),
                     count * op.comm_bytes.subs(subs), count * t.compute, count * t.memory,
                     count * t.link, count * t.tiles, count * t.latency, count * t.total])
        total += count * t.total
    gpu = total + steps * (s.t_step + s.N_layers * s.t_layer)
    if eager:
        floor = launch_floor(graph, subs, steps, chunk)
        serial = launched(subs, chunk) * host_syncs(graph, subs) * s.t_sync
        replayed = 1 - launched(subs, chunk)  # each step a piecewise-graph replay
        return Max(gpu + replayed * steps * s.N_layers * s.t_piece_layer + serial, floor), rows
    if host_floor:
        return Max(gpu, decode_host_floor(subs)), rows
    return gpu, rows


def decode_host_floor(subs: dict) -> sp.Expr:
    """The host's time of one graph-replayed decode step of B sequences (s), the floor
    :func:`pass_time` holds it to: t_host_step + B·t_host_seq (the scheduler, the model
    runner's input preparation and output processing, per step and per sequence)."""
    return s.t_host_step + subs.get(s.B, s.B) * s.t_host_seq


def decode_kernel_time(op_rows: list[list[sp.Expr]]) -> sp.Expr:
    """The GPU kernel time of one decode step (s): Σ count·t_op of its ops (``op_rows`` as
    :func:`pass_time` returns them, the time last), without the fixed costs a replayed step adds
    (t_step + N_layers·t_layer: the replay's idle time between kernels and the kernels of the
    engine's fused-MoE bookkeeping that the graph does not list) and without the host's floor.
    What a profiler's sum of one eager step's kernel times reads, where the step cannot be
    captured (an unfused MoE's loop, whose kernels its ops list one by one)."""
    return sp.Add(*[row[-1] for row in op_rows])


def _per_pass(graph: ModelGraph, subs: dict, field: str) -> sp.Expr:
    """Σ count·``field`` over the ops of one pass of ``graph``, after the pass's substitutions."""
    return sp.Add(*[count * sp.sympify(getattr(op, field)).subs(subs) for count, op in graph.all_ops()])


def host_syncs(graph: ModelGraph, subs: dict) -> sp.Expr:
    """Times the host waits for the GPU in one pass of ``graph``: Σ count·host_syncs of its
    ops after the pass's substitutions (0 for a graph without an unfused MoE)."""
    return _per_pass(graph, subs, "host_syncs")


def launched(subs: dict, chunk: sp.Expr | None = None) -> sp.Expr:
    """1 when an eager-prefill engine launches a pass's steps from the host (each holds more
    tokens than its largest captured CUDA graph, M_graph), 0 when it replays them from
    piecewise graphs: θ(T − M_graph)·[θ(chunk − M_graph)] (Heaviside, θ(0) = 0)."""
    out = sp.Heaviside(subs[s.T] - s.M_graph, 0)
    if chunk is not None:
        out *= sp.Heaviside(chunk - s.M_graph, 0)
    return out


def uncompiled_ops(graph: ModelGraph, subs: dict) -> sp.Expr:
    """Ops of one pass of ``graph`` that the engine runs uncompiled (:attr:`Op.uncompiled`):
    Σ count·uncompiled of its ops after the pass's substitutions (0 for a graph without shared
    experts)."""
    return _per_pass(graph, subs, "uncompiled")


def launch_floor(graph: ModelGraph, subs: dict, steps: sp.Expr = sp.Integer(1),
                 chunk: sp.Expr | None = None) -> sp.Expr:
    """The host's time of an eager pass of ``graph`` (s), the floor :func:`pass_time` holds it to:
    θ(T − M_graph)·[θ(chunk − M_graph)]·(steps·((N_layers − N_dense)·t_eager_layer + N_dense·t_dense_launch
    + N_uncompiled·t_uncompiled + Σ launch_host + t_eager_step) + B·t_eager_seq + syncs·t_sync): an MoE
    layer's launch (its fused-MoE op runs from Python) at t_eager_layer, a layer with a dense MLP's
    at t_dense_launch, the profile's ``dense_layer_s`` (vllm's: what a layer of a replayed
    piecewise graph costs the host, its attention launched between compiled pieces, which is all
    such a layer runs from Python; a draft's prefill inside a speculative step is launched
    otherwise: :data:`perfmodel.speculative.DRAFT_LAUNCH`) or, where it states none,
    t_eager_layer (an engine that launches every layer op by op); the ops it runs from Python
    (:func:`uncompiled_launch`) and ``syncs`` the times it waits for the GPU
    (:func:`host_syncs`); zero for a pass whose steps fit the largest captured CUDA graph."""
    layers = (s.N_layers - s.N_dense) * s.t_eager_layer + s.N_dense * s.t_dense_launch
    host = (steps * (layers + s.t_eager_step) + subs.get(s.B, s.B) * s.t_eager_seq
            + host_syncs(graph, subs) * s.t_sync)
    return launched(subs, chunk) * host + uncompiled_launch(graph, subs, steps, chunk)


def uncompiled_launch(graph: ModelGraph, subs: dict, steps: sp.Expr = sp.Integer(1),
                      chunk: sp.Expr | None = None) -> sp.Expr:
    """The part of :func:`launch_floor` spent on what an eager pass runs from Python (s):
    θ(T − M_graph)·[θ(chunk − M_graph)]·steps·(N_uncompiled·t_uncompiled + Σ count·launch_host),
    N_uncompiled from :func:`uncompiled_ops` (an op run from Python inside an opaque custom op
    costs its host more than a layer's compiled code) and each op's :attr:`Op.launch_host` (a
    kernel library's launches from Python: the tiled MXFP4 MoE kernel's t_moe_host per layer, or a
    W8A8 scheme's routed-expert input quantization inside the fused-MoE op, the same symbol)."""
    from_python = uncompiled_ops(graph, subs) * s.t_uncompiled + _per_pass(graph, subs, "launch_host")
    return launched(subs, chunk) * steps * from_python


def split_host(graph: ModelGraph, subs: dict) -> sp.Expr:
    """The host time (s) an engine step adds when it holds prompt tokens beside decodes:
    Σ count·split_host over the ops of a prompt's pass (:attr:`Op.split_host`; N_layers·t_mla_split
    for an MLA model on an engine that absorbs its decodes, 0 for any other), which a serving
    step pays (:mod:`perfmodel.planning.steptime`). The offline passes, prompts then decodes, pay
    none: a chunked offline prefill's later chunks that run beside the first prompts' decodes are
    a few steps of a batch, left out."""
    return _per_pass(graph, subs, "split_host")


def request_metrics(phase: str, t: dict[str, sp.Expr]) -> dict[str, sp.Expr]:
    """TTFT, ITL, E2E and throughputs of a phase from its pass times (seed study's definitions).

    TTFT = prefill pass + B·t_req (``request_host_s``): one offline call admits its B requests
    before the prefill and returns their outputs after it, host time serial with the engine, once
    per call (``latency.request_s``; 0 where an engine has none). request: E2E = TTFT + (O − 1)·ITL,
    throughput = B·(S + O)/E2E, output = B·O/E2E; prefill: B·S tokens in, B first tokens out;
    decode: B tokens per step. B is one data-parallel rank's sequences: the throughputs count the
    dp ranks', dp·B sequences.
    """
    S, O = s.S, s.O
    requests = s.B * s.t_req
    seqs = s.dp * s.B  # the throughputs' sequences: every rank's
    if phase == "request":
        ttft, itl = t["prefill_s"] + requests, t["decode_step_s"]
        e2e = ttft + (O - 1) * itl
        return dict(ttft_s=ttft, itl_s=itl, e2e_s=e2e, throughput_tok_s=seqs * (S + O) / e2e,
                    output_throughput_tok_s=seqs * O / e2e, request_host_s=requests)
    if phase == "prefill":
        ttft = t["prefill_s"] + requests
        return dict(ttft_s=ttft, e2e_s=ttft, throughput_tok_s=seqs * S / ttft,
                    output_throughput_tok_s=seqs / ttft, request_host_s=requests)
    step = t["decode_step_s"]
    return dict(itl_s=step, throughput_tok_s=seqs / step, output_throughput_tok_s=seqs / step)


def workload_graph_options(w: Workload) -> dict[str, Any]:
    """The :class:`GraphOptions` fields a workload sets: its MoE implementation, and which
    linear layers its quantization scheme stores and how."""
    scheme = w.scheme
    return dict(moe_impl=w.moe_impl, quantized=scheme.quantizes_weights,
                quantized_activations=scheme.quantizes_activations, quantized_layers=scheme.layers,
                moe_tiled=scheme.moe_tile is not None, moe_routing_ids=w.routing_ids)


def moe_default_tiles(profile: EngineProfile, workload: Workload, model: ModelSpec | None,
                      gpu: str | None = None, timed: bool = False) -> bool:
    """Whether the model's routed experts run vLLM's default Triton fused-MoE tiles on one
    ``gpu`` of the workload (default: the profile's own), whose row blocks and their grouping
    the model knows (:func:`perfmodel.ops.moe.reread_scale`): a fused block whose kernel is
    vLLM's Triton one (not Marlin's, not a tiled kernel's, not the block-scaled fp8 kernel's,
    whose default groups 32 row blocks), of a shape for which vLLM ships no tuned table
    (:func:`perfmodel.moe_tables.has_table`), or a workload at the default rule (``moe_tables``
    false), or a table whose time the profile measured over the default rule's (``timed``:
    :func:`moe_table_extra`, added to the rule's tiles). False without a model or a MoE, and
    for an engine that does not pad expert rows to tiles (``moe_block_tiers`` of one row)."""
    scheme = workload.scheme
    if (model is None or model.moe is None or workload.moe_impl != "fused" or scheme.moe_tile is not None
            or scheme.moe_row_blocks is not None or scheme.weight_scales.granularity == "block"
            or not any(m > 1 for _, m in profile.moe_block_tiers)):
        return False
    if timed or not workload.moe_tables:
        return True
    from perfmodel.moe_tables import has_table

    groups, shard = expert_cut(workload.tp, workload.ep, workload.dp, workload.expert_parallel)
    return not has_table(gpu or profile.gpu, model.moe.n_experts / groups,
                         model.moe.expert_intermediate / shard, experts_scheme(workload))


def moe_tuned_from(profile: EngineProfile, workload: Workload, model: ModelSpec | None,
                   gpu: str | None = None) -> int:
    """The smallest pass of the engine's tuned fused-MoE tile table for the model's routed experts
    on one ``gpu`` of the workload (default: the profile's own), where it starts above small passes
    (:func:`perfmodel.moe_tables.tuned_from`); 0 without a model, a MoE, a profile that measured
    such tables (``options.moe_off_table_memory``), or such a table, for a table of a scheme the
    profile's A/B did not run (``options.moe_off_table_schemes``: the factor is one table kind's),
    and for a workload at vLLM's default tile rule (``moe_tables`` false) or with unfused experts
    (no fused-MoE kernel)."""
    options = profile.options
    if (model is None or not workload.moe_tables or workload.moe_impl != "fused"
            or options.moe_off_table_memory is None):
        return 0
    if options.moe_off_table_schemes is not None and experts_scheme(workload) not in options.moe_off_table_schemes:
        return 0
    return moe_table_start(gpu or profile.gpu, workload, model)


def moe_table_extra(profile: EngineProfile, workload: Workload,
                    model: ModelSpec | None, gpu: str | None = None) -> TableExtra | None:
    """The time the engine's tuned fused-MoE tile table for the model's routed experts on one GPU
    of the workload adds over its default rule's, per layer, at passes of (tokens, s), where the
    profile timed that table (``options.moe_table_extra``: the expert shape E/g experts of width
    I/shard at the scheme its experts run at and the model's hidden size, timed at the model's
    top-k or else the nearest top-k timed, :func:`perfmodel.ops.moe.table_extra`), with the
    table's keys; None without a model, a MoE, such a measurement, and for a workload at the
    default tile rule (``moe_tables`` false) or with unfused experts. None too on a ``gpu`` other
    than the one the profile was fitted on: the engine there runs that GPU's own table, whose
    time was not measured (the off-table factor, :func:`moe_tuned_from`, stands for it)."""
    measured = profile.options.moe_table_extra
    if (not measured or model is None or model.moe is None or not workload.moe_tables
            or workload.moe_impl != "fused" or (gpu is not None and gpu != profile.gpu)):
        return None
    groups, shard = expert_cut(workload.tp, workload.ep, workload.dp, workload.expert_parallel)
    shape = (model.moe.n_experts / groups, model.moe.expert_intermediate / shard, experts_scheme(workload))
    found = [t for t in measured if (t.experts, t.width, t.scheme) == shape and t.hidden in (None, model.hidden)]
    if not found:
        return None
    # the timing at the model's top-k, else at the nearest one timed (the same table, another
    # number of experts per token: the difference at the same tokens per pass)
    top_k = model.moe.top_k
    return min(found, key=lambda t: (t.top_k != top_k, abs((t.top_k or top_k) - top_k), t.top_k or 0))


def experts_scheme(workload: Workload) -> str:
    """The scheme a workload's routed experts run at (``none``: unquantized)."""
    scheme = workload.scheme
    return scheme.name if scheme.quantizes_weights and "experts" in scheme.layers else quantization.NO_QUANT


def moe_table_start(gpu: str | None, workload: Workload, model: ModelSpec) -> int:
    """The smallest pass (tokens) of vLLM's tuned fused-MoE tile table for the model's routed
    experts on one ``gpu`` of the workload (E/g experts of width I/shard,
    :func:`perfmodel.ops.moe.expert_split`, at the scheme its experts run at), where it starts
    above small passes (``specs/vllm-moe-tables.yaml``); else 0."""
    if model.moe is None:
        return 0
    from perfmodel.moe_tables import tuned_from

    groups, shard = expert_cut(workload.tp, workload.ep, workload.dp, workload.expert_parallel)
    return tuned_from(gpu, model.moe.n_experts / groups, model.moe.expert_intermediate / shard,
                      experts_scheme(workload))


def graph_options(profile: EngineProfile, workload: Workload | None = None,
                  model: ModelSpec | None = None, gpu: str | None = None) -> GraphOptions:
    """The engine choices of a profile, and of a workload (its quantization scheme and MoE
    implementation; default: none and fused), that change which ops run (:class:`GraphOptions`).
    A scheme whose MoE kernel picks its own row blocks (``moe_row_blocks``: Marlin's) replaces
    the profile's tiers where the profile pads expert rows at all. With ``model``: the tuned
    tile table its routed experts meet on ``gpu`` (the GPU predicted, a spec name; default: the
    profile's own) (:func:`moe_tuned_from`), or its time measured against the default rule's on
    the profile's GPU (:func:`moe_table_extra`), which replaces it there."""
    opts = profile.options
    w = workload if workload is not None else Workload()
    tiers, by_rows = profile.moe_block_tiers, False
    scheme = w.scheme
    if scheme.moe_row_blocks is not None and "experts" in scheme.layers and any(m > 1 for _, m in tiers):
        # an engine that pads expert rows runs this scheme's experts on a kernel with blocks of its own
        tiers = row_tiers(scheme.moe_row_blocks)
        by_rows = True
    extra = moe_table_extra(profile, w, model, gpu)
    reread = moe_default_tiles(profile, w, model, gpu, timed=bool(extra))
    return GraphOptions(mla_cache=opts.mla_cache, mla_absorb_decode=opts.mla_absorb_decode,
                        decode_kv_expand=opts.decode_kv_expand, moe_block_m=tiers, moe_block_by_rows=by_rows,
                        cudagraph_padding=profile.pads_cudagraphs,
                        moe_tuned_from=0 if extra else moe_tuned_from(profile, w, model, gpu),
                        moe_table_extra_s=extra.points() if extra else (),
                        moe_table_keys=extra.keys if extra else (), moe_reread=reread,
                        moe_reread_chunked=reread and opts.prefill_chunk_tokens is not None,
                        **workload_graph_options(w))


def prefill_chunking(options: Options) -> tuple[sp.Expr, sp.Expr | None]:
    """The engine steps a prefill takes and the tokens each holds: ⌈B·S/M_chunk⌉ steps of
    M_chunk where the engine chunks prefills (``options.prefill_chunk_tokens``), else one step
    (and no chunk)."""
    if options.prefill_chunk_tokens is not None:
        return prefill_steps(), s.M_chunk
    return sp.Integer(1), None


def phase_expressions(model: ModelSpec, phase: str, profile: EngineProfile,
                      options: GraphOptions | None = None) -> tuple[dict[str, sp.Expr], list, list]:
    """Totals and per-op rows of a phase as sympy (before numbers); ``options``: the graph's
    (default: :func:`graph_options` of the profile alone)."""
    opts = profile.options
    options = options if options is not None else graph_options(profile)
    span = opts.decode_attention_span
    totals: dict[str, sp.Expr] = {}
    passes, rows = [], []
    graphs = {}
    padded = options.cudagraph_padding
    for name, decode, subs in pass_substitutions(phase, span, padded):
        graph = graphs.setdefault(decode, build_graph(model, decode=decode, options=options))
        eager = opts.prefill_eager and not decode
        steps, chunk = (sp.Integer(1), None) if decode else prefill_chunking(opts)
        total, op_rows = pass_time(graph, subs, eager=eager, steps=steps, chunk=chunk, host_floor=decode)
        totals["prefill_s" if name == "prefill" else "decode_step_s"] = total
        if not decode:  # the floor the prefill is held to (0: none), to tell a launch-bound prefill
            totals["prefill_launch_s"] = (launch_floor(graph, subs, steps, chunk) if eager
                                          else sp.Integer(0))
            totals["prefill_uncompiled_s"] = (uncompiled_launch(graph, subs, steps, chunk) if eager
                                              else sp.Integer(0))
            totals["prefill_split_host_s"] = split_host(graph, subs)
        else:  # the host's time a decode step is held to, to tell a host-bound step
            totals["decode_host_s"] = decode_host_floor(subs)
            totals["decode_kernels_s"] = decode_kernel_time(op_rows)
            # the tokens the step runs: B, or B padded to the CUDA graph it replays
            totals["decode_graph_batch"] = subs[s.T]
        passes.append((name, tuple(op.name for _, op in graph.all_ops())))
        rows += op_rows
    any_graph = next(iter(graphs.values()))
    prefill_graph = graphs.get(False) or build_graph(model, decode=False, options=options)
    cached = {"request": s.S + s.O, "prefill": s.S, "decode": s.L}[phase]
    last_subs = pass_substitutions(phase, span, padded)[0][2]
    if opts.prefill_chunk_tokens is not None and phase != "decode":
        # a chunked prefill's passes hold at most M_chunk tokens: its activation peak is one chunk's,
        # the cached tokens its sequences read (B·C rows an MLA latent cache re-expands) one chunk's too
        last_subs = {**last_subs, s.T: Min(last_subs[s.T], s.M_chunk),
                     **{c: Min(last_subs[c], s.M_chunk / s.B) for c in (s.C, s.Cw) if c in last_subs}}
    if profile.activation_reserve is not None:
        # the engine keeps its start-up pass's peak out of the cache, whatever the batch's own passes hold
        reserve = reserved_activation_bytes(prefill_graph, options)
        activation = reserve.subs(s.T, s.M_chunk if opts.prefill_chunk_tokens is not None else last_subs[s.T])
    else:
        activation = activation_peak_bytes(prefill_graph if phase != "decode" else any_graph, last_subs)
    totals.update(
        weights_bytes=weights_bytes(prefill_graph),
        kv_cache_bytes=kv_cache_bytes(any_graph, cached),
        activation_bytes=activation,
        params=parameter_count(prefill_graph),
        active_params=active_parameter_count(prefill_graph),
    )
    totals.update(request_metrics(phase, totals))
    totals["memory_bytes"] = totals["weights_bytes"] + totals["kv_cache_bytes"] + totals["activation_bytes"]
    return totals, passes, rows


_COMPILED: dict[tuple, CompiledModel] = {}

#: Engine options that give a symbol its value (:func:`hardware_values`, the profile's usable
#: memory) and no expression its form: a compiled structure's key leaves them out
#: (:func:`options_key`), so profiles that differ only in them share their expressions (a fit
#: that moves ``moe_l2_spill``, a plan's ``--gpu-memory-utilization``).
VALUE_OPTIONS = ("moe_l2_spill", "memory_usable_fraction")


def options_key(options: Options) -> Options:
    """``options`` with :data:`VALUE_OPTIONS` at their defaults: what a compiled structure's key
    holds of a profile's options."""
    return options.model_copy(update={name: Options.model_fields[name].default for name in VALUE_OPTIONS})


def compile_model(model: ModelSpec, phase: str, profile: EngineProfile, *,
                  with_ops: bool = True, options: GraphOptions | None = None) -> CompiledModel:
    """Lambdified expressions for a model structure, phase, profile options and graph options
    (``options``, default :func:`graph_options` of the profile alone: a workload's
    quantization scheme and MoE implementation come in through ``graph_options(profile, w)``).

    ``with_ops=False`` compiles the totals only (what a sweep needs). Cached in memory, and
    on disk (:mod:`perfmodel.codecache`) as the expressions after common-subexpression
    elimination (data, lambdified again on load), so a new process skips building them.
    """
    options = options if options is not None else graph_options(profile)
    key = (structure_key(model), phase, options_key(profile.options), options, with_ops,
           profile.activation_reserve is not None)
    return compile_cached(key, phase, lambda: phase_expressions(model, phase, profile, options),
                          with_ops=with_ops)


def compile_cached(key: tuple, phase: str, build: Callable[[], tuple[dict[str, sp.Expr], list, list]], *,
                   with_ops: bool = True) -> CompiledModel:
    """Lambdified expressions of ``build()`` (totals, passes and op rows, as
    :func:`phase_expressions` returns them), cached under ``key`` in memory and on disk."""
    if key in _COMPILED:
        return _COMPILED[key]
    disk_key = codecache.cache_key(repr(key))
    hit = codecache.load(disk_key, op_fields=len(OP_FIELDS))
    if hit is not None:
        fn = codecache.lambdify(hit.symbols, hit.replacements, hit.exprs)
        compiled = CompiledModel(phase=phase, passes=hit.passes, args=hit.args, fn=fn,
                                 expressions=dict.fromkeys(hit.outputs))
    else:
        totals, passes, rows = build()
        if not with_ops:
            passes, rows = [], []
        exprs = list(totals.values()) + [e for row in rows for e in row]
        symbols = sorted(set().union(*[e.free_symbols for e in exprs]), key=lambda x: x.name)
        replacements, reduced = sp.cse(exprs, list=False)
        fn = codecache.lambdify(symbols, replacements, reduced)
        args = tuple(x.name for x in symbols)
        codecache.store(disk_key, symbols=symbols, replacements=replacements, exprs=reduced,
                        passes=passes, outputs=list(totals))
        compiled = CompiledModel(phase=phase, passes=tuple(passes), args=args, fn=fn,
                                 expressions=totals)
    _COMPILED[key] = compiled
    return compiled


def numeric_values(model: ModelSpec, gpu: GPUSpec, profile: EngineProfile, w: Workload) -> dict[str, Any]:
    """Every symbol's number for one prediction, keyed by symbol name."""
    values: dict[sp.Symbol, Any] = dict(model_values(model))
    kv = w.kv_dtype_used
    L = w.context if w.context is not None else w.input_len
    values.update({
        s.B: w.rank_batch, s.S: w.input_len, s.O: w.output_len, s.L: L,
        s.tp: w.tp, s.ep: w.ep, s.pp: w.pp, s.dp: w.dp, s.sigma: w.skew,
        s.z_busy: busiest_z(w.tp, w.ep, w.dp, w.expert_parallel),
        s.x_ep: float(w.expert_parallel),
        s.b_w: DTYPE_BYTES[w.base_dtype], s.b_e: DTYPE_BYTES[w.base_dtype], s.b_a: 2.0,
        s.b_kv: DTYPE_BYTES[kv],
    })
    values.update(w.scheme.values(DTYPE_BYTES[w.base_dtype]))  # b_q, scales, n_dq
    values.update(hardware_values(gpu, profile, w.base_dtype, w.scheme.name))
    values[s.mu_kv] = profile.kv_cache_multiplier(kv, w.base_dtype)
    factor = host_factor(profile, w.host_probe_ms)  # the host's times on this host
    values.update({sym: values[sym] * factor for sym in HOST_TIMES})
    if w.graph_tokens is not None:
        values[s.M_graph] = float(w.graph_tokens)
    return {sym.name: v for sym, v in values.items()}


def hardware_values(gpu: GPUSpec, profile: EngineProfile, dtype: str,
                    quant: str = quantization.NO_QUANT) -> dict[sp.Symbol, float]:
    """Peaks, bandwidths, efficiencies and latencies for a GPU under a profile.

    ``dtype``: the unquantized layers' (F_peak at its matmul peak); ``quant``: the scheme of
    the quantized linear layers (F_peak_q at the peak it computes at; μ, its kernels'
    efficiency multipliers from the profile's ``quantization``, 1.0 where not given; n_dq, their
    dequantization work, where the profile fitted it: it replaces the scheme's estimate, so
    these values go after the scheme's own).
    """
    compute_dtype = COMPUTE_DTYPE[dtype]
    quant_dtype = quantization.load_schemes()[quant].compute_dtype(compute_dtype)
    for needed in (compute_dtype, quant_dtype):
        if needed not in gpu.peak_tflops and needed not in ("fp16",):
            label = f"dtype {dtype}" if needed == compute_dtype else f"quant {quant}"
            raise InputError(f"GPU '{gpu.name}' has no {needed} peak ({label})")
    f_peak, f_attn, mem_bw = gpu.peak(compute_dtype), gpu.peak("bf16"), gpu.hbm_bandwidth
    f_peak_q = gpu.peak(quant_dtype)
    if profile.peaks == "measured":
        if gpu.measured is None:
            raise SpecError(f"profile '{profile.name}' needs measured ceilings for GPU '{gpu.name}'")
        m = gpu.measured
        scale = (m.matmul_bf16_tflops * 1e12 / gpu.peak("bf16")) if m.matmul_bf16_tflops else 1.0
        f_peak, f_attn, f_peak_q = f_peak * scale, f_attn * scale, f_peak_q * scale
        mem_bw = m.copy_tb_s * 1e12 if m.copy_tb_s else mem_bw
    link = gpu.interconnect.bandwidth_gb_s * 1e9 if gpu.interconnect else gpu.pcie_gb_s * 1e9
    kernels = profile.quant_efficiency(quant)  # the scheme's kernels: multipliers, tile times
    link_lat = (profile.latency.link_step_s if profile.latency.link_step_s is not None
                else (gpu.interconnect.latency_us * 1e-6 if gpu.interconnect else 5e-6))
    values = {
        s.peak: f_peak, s.peak_attn: f_attn, s.peak_q: f_peak_q, s.bw: mem_bw, s.link_bw: link,
        s.link_lat: link_lat,
        s.t_kernel: profile.latency.per_kernel_s, s.t_kernel_small: profile.latency.small_kernel_s,
        s.t_layer: profile.latency.per_layer_s,
        s.t_step: profile.latency.per_step_s,
        s.t_eager_layer: profile.latency.eager_layer_s, s.t_eager_step: profile.latency.eager_step_s,
        s.t_eager_seq: profile.latency.eager_seq_s, s.t_uncompiled: profile.latency.uncompiled_op_s,
        s.t_piece_layer: profile.latency.piecewise_layer_s, s.t_mla_split: profile.latency.mla_split_layer_s,
        s.t_dense_launch: (profile.latency.eager_layer_s if profile.latency.dense_layer_s is None
                           else profile.latency.dense_layer_s),
        s.t_launch_serial: profile.latency.launch_serial_s, s.t_launch_serial_seq: profile.latency.launch_serial_seq_s,
        s.t_draft: profile.latency.draft_pass_s, s.t_sync: profile.latency.expert_sync_s,
        s.t_req: profile.latency.request_s,
        s.t_host_step: profile.latency.host_step_s, s.t_host_seq: profile.latency.host_seq_s,
        s.M_chunk: float(profile.options.prefill_chunk_tokens or 1),  # read only when chunking
        s.M_graph: float(profile.options.cudagraph_max_tokens or 0),  # read only by eager passes
        s.N_seqs: float(profile.max_sequences or 1),  # read only by an activation reserve
        **reserve_values(profile),
        s.n_SM: float(gpu.sm_count),
        s.t_tile: kernels.tile_s, s.t_kstep: kernels.k_step_s, s.t_moe_host: kernels.host_layer_s,
        s.t_bitpack: kernels.bitmatrix_column_s, s.t_bitpack_loop: kernels.bitmatrix_loop_s,
        s.t_bitpack_one: kernels.bitmatrix_one_s,
        s.f_off: profile.options.moe_off_table_memory or 1.0,
        s.s_l2: profile.options.moe_l2_spill or 0.0, s.L2: gpu.l2_cache_mib * 2**20,
        s.mu_kv: 1.0,  # the KV cache at the model's dtype (numeric_values: the workload's)
    }
    for op_class in (*OP_CLASSES, *OPTIONAL_OP_CLASSES):
        eta = profile.efficiency_of(op_class)
        syms = s.efficiency_symbols(op_class)
        values.update({syms["compute"]: eta.compute, syms["memory"]: eta.memory,
                       syms["compute_half"]: eta.compute_half, syms["memory_half"]: eta.memory_half,
                       syms["context_half"]: eta.context_half, syms["exposed"]: eta.exposed})
        mu = s.quant_efficiency_symbols(op_class)
        values.update({mu[which]: kernels.multiplier(op_class, which) for which in ("compute", "memory")})
        values[mu["memory_half"]] = eta.memory_half if kernels.memory_half is None else kernels.memory_half
    if kernels.dequant_flops_per_weight is not None:  # the engine's kernels' own, not the scheme's estimate
        values[s.n_dq] = kernels.dequant_flops_per_weight
    return values


def reserve_values(profile: EngineProfile) -> dict[sp.Symbol, float]:
    """The coefficients of the profile's activation reserve
    (:func:`perfmodel.memory.reserved_activation_bytes`), 0 where it has none."""
    r = profile.activation_reserve
    if r is None:
        return {s.a_res: 0.0, s.b_res: 0.0, s.c_res: 0.0, s.s_logit: 0.0}
    return {s.a_res: r.fixed_bytes, s.b_res: r.hidden_copies, s.c_res: r.mlp_copies, s.s_logit: r.logit_bytes}


#: dtype names as torch writes them (a fit, a measured row) → the names a workload uses.
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8",
                "int8": "int8"}


def band_scope(profile: EngineProfile) -> dict[str, Any] | None:
    """Where a profile's error band was measured (None for a profile without a band).

    ``gpu``: the profile's GPU; ``dtype``: the dtype of the runs behind its fit (``fit.dtype``,
    else ``fit.kernel_fit.dtype``), weights and KV cache alike; ``gpus``: GPUs per run
    (``fit.gpu_count``, else 1: the runs a profile is fitted to are single-GPU unless it says
    otherwise). A field the profile does not state is None.
    """
    if profile.error_band is None:
        return None
    fit = profile.fit or {}
    dtype = fit.get("dtype") or (fit.get("kernel_fit") or {}).get("dtype")
    return {"gpu": profile.gpu, "dtype": TORCH_DTYPES.get(dtype, dtype),
            "gpus": int(fit.get("gpu_count", 1))}


def measured_model_types(profile: EngineProfile) -> frozenset[str] | None:
    """The architectures (config.json ``model_type``) of the models a profile's fit compared, fitted
    on or held out (``fit.residuals.models``); None where its fit does not record them."""
    models = profile.residuals("models")
    return _model_types(tuple(sorted(models))) if models else None


@functools.cache
def _model_types(models: tuple[str, ...]) -> frozenset[str]:
    from perfmodel.specs.zoo import load_hf_config

    types = set()
    for name in models:
        try:
            types.add(str(load_hf_config(name).get("model_type")))
        except InputError:  # a model the zoo no longer holds: its type is not known here
            continue
    return frozenset(types)


def error_band(profile: EngineProfile, gpu: GPUSpec, w: Workload,
               regime: str = GPU_BOUND, decode: str = GPU_BOUND,
               phase: str = "request", model_type: str | None = None,
               dense: bool = False) -> tuple[dict[str, Any] | None, str]:
    """The profile's error band if the prediction lies where the band was measured, and a line
    saying so or why not.

    The band (relative half-widths from held-out residuals) holds on the GPU, the dtype
    (weights and KV cache) and the number of GPUs it was measured on (:func:`band_scope`).
    Outside any of them there is no band: it is not widened, since how far the errors grow
    there has not been measured. A quantization scheme is inside where the profile says its
    held-out rows were checked against the band and lie within it (``quantization.<scheme>.band``,
    :func:`perfmodel.calibration.fit.band_check`). Where they were checked and lie outside it,
    the band is widened to their own 90th percentile |error| metric by metric, at the
    prediction's regimes, where enough of them were measured there (``own_band``,
    :func:`_widen_to_own`), and is none where none was; a KV-cache dtype's likewise. Where the profile states TTFT bands per regime of the prefill
    (:func:`prefill_regime`: ``ttft_launch_bound``, ``ttft_graph_replayed``, ``ttft`` for the
    GPU-bound rest), the prediction's ``regime`` picks one; a regime the profile has no band for
    (too few held-out points) gets no TTFT band. The band's ``ttft_regime`` says which. Likewise
    ITL, E2E and throughput where the profile states them apart for decode steps held to the
    host's floor (:func:`decode_regime`, ``decode``: ``*_host_bound``); the band's
    ``decode_regime`` says which. Where the ``phase`` is a prefill, or a request of one output
    token, E2E is the prefill and the throughput its tokens over it: both take TTFT's band; a
    decode step's throughput (its sequences over it) takes the step's. A model of an architecture
    (``model_type``) no model of the fit's was of is outside (:func:`measured_model_types`): the
    band's held-out models stand for new shapes of the architectures measured, not for others. The
    band is the MoE models'; a ``dense`` model (no layer routes tokens to experts) takes it where
    the fit's held-out dense models lie within it, is widened to their own 90th percentiles as a
    scheme's are where they lie outside (``fit.residuals.architecture.dense``), and has none
    where the fit held out no dense model.
    """
    band = profile.error_band
    if band is None:
        return None, ("no error band: uncalibrated profile" if not profile.calibrated
                      else "no error band: the profile states none")
    scope = band_scope(profile)
    assert scope is not None
    chosen = band.model_dump(exclude={"ttft_launch_bound", "ttft_graph_replayed", "decode_step_host_bound",
                                      "e2e_host_bound", "throughput_host_bound"})
    prefill_only = phase == "prefill" or (phase == "request" and w.output_len == 1)
    notes = []
    if band.ttft_launch_bound is not None:
        chosen["ttft_regime"] = regime
        chosen["ttft"] = {LAUNCH_BOUND: band.ttft_launch_bound, GRAPH_REPLAYED: band.ttft_graph_replayed}.get(
            regime, band.ttft)
        notes.append(f"TTFT: {regime} prefills'" if chosen["ttft"] is not None
                     else f"no TTFT band: too few {regime} prefills measured")
    if band.decode_step_host_bound is not None:
        chosen["decode_regime"] = decode
        if decode == HOST_BOUND:
            chosen.update(decode_step=band.decode_step_host_bound, e2e=band.e2e_host_bound,
                          throughput=band.throughput_host_bound)
        notes.append(f"{'ITL' if prefill_only else 'ITL, E2E, throughput'}: {decode} decode steps'")
    if prefill_only:  # E2E is the prefill, and the throughput its tokens over it
        chosen.update(e2e=chosen["ttft"], throughput=chosen["ttft"])
        notes.append("E2E, throughput: TTFT's" + (", one output token" if phase == "request" else ""))
    elif phase == "decode":  # the throughput is the step's sequences over it
        chosen["throughput"] = chosen["decode_step"]
    note = f" ({'; '.join(notes)})" if notes else ""
    width = _band_width(chosen)
    n = scope["gpus"]
    where = (f"held-out {scope['gpu'] or '(unstated GPU)'} {scope['dtype'] or '(unstated dtype)'} "
             f"points on {n} GPU{'s' if n != 1 else ''}")
    outside = []
    if scope["gpu"] is None:
        outside.append("the profile does not say which GPU it was measured on")
    elif scope["gpu"] != gpu.name:
        outside.append(f"not measured on {gpu.name}")
    if scope["dtype"] is None:
        outside.append("the profile does not say which dtype it was measured at")
    scheme = w.scheme.name
    checked = scheme != quantization.NO_QUANT and profile.quant_efficiency(scheme).band
    measured = scheme != quantization.NO_QUANT and scheme in profile.residuals("quantization")
    # a measured scheme's alias dtype (--dtype fp8) is in scope: the check below decides
    weights = w.base_dtype if checked or measured else w.dtype
    kv = w.kv_dtype_used
    kv_other = scope["dtype"] is not None and kv != scope["dtype"]
    kv_checked = kv_other and kv in profile.kv_cache and profile.kv_cache[kv].band
    kv_measured = kv_other and kv in profile.residuals("kv_cache")
    if scope["dtype"] is not None and (scope["dtype"] != weights or (kv_other and not kv_measured)):
        outside.append(f"not measured at {w.dtype} weights with a {kv} KV cache")
    scattered = []  # (held-out points, their fit.residuals entry) checked against the band, outside it
    if measured and not checked:
        scattered.append((f"its held-out {scheme} points", ("quantization", scheme)))
    elif w.quant not in (None, quantization.NO_QUANT) and not checked:
        carried = profile.quant_efficiency(scheme).carried_from
        outside.append(f"not measured with {w.quant} quantization"
                       + (f" on {profile.gpu} (its kernels carried from {carried}'s fit)" if carried else ""))
    if kv_measured and not kv_checked:
        scattered.append((f"its held-out {kv} KV-cache points", ("kv_cache", kv)))
    dense_check = profile.residuals("architecture").get("dense") if dense else None
    if dense and dense_check is None:
        outside.append("no dense model held out in its fit (the band is the MoE models')")
    elif dense and not dense_check["within"]:
        scattered.append(("its held-out dense-model points", ("architecture", "dense")))
    widened = []  # those whose own scatter the band takes
    for points, (kind, name) in scattered:
        check = profile.residuals(kind)[name]
        if _widen_to_own(chosen, check, regime, decode, prefill_only, phase):
            widened.append(f"{points}' own 90th percentile (fit.residuals.{kind}.{name})")
        else:
            outside.append(_outside_note(points, check, f"{kind}.{name}", regime, decode))
    types = measured_model_types(profile)
    if model_type is not None and types is not None and model_type not in types:
        outside.append(f"no {model_type} model measured (its fit compared {', '.join(sorted(types))})")
    if checked:
        where += f", its held-out {scheme} points within it"
    if kv_checked:
        where += f", its held-out {kv} KV-cache points within it"
    if dense_check is not None and dense_check["within"]:
        where += ", its held-out dense-model points within it"
    if w.moe_impl == "unfused":
        outside.append("the band is the fused MoE's, not the unfused one's")
    if w.gpus != n:
        outside.append(f"not measured on {w.gpus} GPU{'s' if w.gpus != 1 else ''} "
                       f"({w.layout_label})")
    if outside:
        return None, f"no band: {'; '.join(outside)} (the profile's band, {width} from {where}{note})"
    if widened:
        missing = [m for m in ("ttft", "decode_step", "e2e", "throughput") if chosen[m] is None]
        gaps = f"; no {', '.join(missing)} band: too few of those points at its regime" if missing else ""
        return chosen, (f"band {_band_width(chosen)}, widened to {' and '.join(widened)} where they scatter "
                        f"wider than the profile's band ({width} from {where}{note}){gaps}")
    return chosen, f"band {width} from {where}{note}"


def _band_width(chosen: Mapping[str, Any]) -> str:
    """A band's half-widths as printed: ``±8%``, or ``±8%–13%`` where the metrics differ."""
    rels = [chosen[m] for m in ("ttft", "decode_step", "e2e", "throughput") if chosen[m] is not None]
    low, high = f"{min(rels):.0%}", f"{max(rels):.0%}"
    return f"±{low}" if low == high else f"±{low}–{high}"


def _widen_to_own(chosen: dict[str, Any], check: Mapping[str, Any], regime: str, decode: str,
                  prefill_only: bool, phase: str) -> bool:
    """Widen the band ``chosen`` (in place) to the own 90th percentile |error| of held-out points
    that lie outside it (a quantization scheme's, a KV-cache dtype's: ``check``, as
    ``fit.residuals`` holds it, whose ``own_band`` has each metric and regime with enough of
    them, :func:`perfmodel.calibration.fit.band_check`), metric by metric at this prediction's
    regimes: each takes the wider of the two; where its regime has too few of those points for
    their own, it keeps the band if the few lie within it, and gets none if not or if there are
    none. False, and ``chosen`` unchanged, where no metric has an own width."""
    own, p90 = check.get("own_band") or {}, check.get("p90_abs_pct") or {}
    source = {"ttft": f"ttft {regime}", "decode_step": f"decode_step {decode}",
              "e2e": f"e2e {decode}", "throughput": f"throughput {decode}"}
    if prefill_only:  # as the band itself: E2E and throughput are the prefill's
        source["e2e"] = source["throughput"] = source["ttft"]
    elif phase == "decode":
        source["throughput"] = source["decode_step"]

    def width(metric: str, key: str) -> float | None:
        if key in own:
            return max(own[key], chosen[metric] or 0.0)
        within = chosen[metric] is not None and key in p90 and p90[key] <= 100 * chosen[metric]
        return chosen[metric] if within else None

    if not any(key in own for key in source.values()):
        return False
    chosen.update({metric: width(metric, key) for metric, key in source.items()})
    return True


def _outside_note(points: str, check: Mapping[str, Any], key: str, regime: str, decode: str) -> str:
    """Why a band does not hold where some held-out points (a quantization scheme's, a KV-cache
    dtype's: ``check``, as ``fit.residuals.<key>`` holds it) lie outside it, with how far they
    scatter at this prediction's regimes (their 90th percentile |error|)."""
    p90 = check.get("p90_abs_pct") or {}
    seen = [f"{label} p90 {p90[name]:.0f}%" for label, name in
            (("ITL", f"decode_step {decode}"), ("TTFT", f"ttft {regime}")) if name in p90]
    at = f"; at this prediction's regimes {', '.join(seen)}" if seen else ""
    why = check.get("why") or "outside the band in some regime"
    return f"{points} do not carry the band: {why} (fit.residuals.{key}{at})"


def prefill_regime(totals: Mapping[str, float], prefill_eager: bool) -> str:
    """What sets a prediction's prefill time: ``launch-bound``, held to the host's launch floor
    (``prefill_launch_s``, :func:`launch_floor`); ``graph-replayed``, an engine that launches
    prefills from the host (``options.prefill_eager``) replaying this one from a captured CUDA
    graph (no floor: T ≤ M_graph); else ``GPU-bound``, its GPU time."""
    floor, prefill = totals.get("prefill_launch_s", 0.0), totals.get("prefill_s", float("nan"))
    if floor > 0 and floor >= prefill * (1 - 1e-9):
        return LAUNCH_BOUND
    if prefill_eager and floor == 0 and prefill == prefill:
        return GRAPH_REPLAYED
    return GPU_BOUND


def decode_regime(totals: Mapping[str, float]) -> str:
    """What sets a prediction's decode step: ``host-bound``, the host's time for its B sequences
    (``decode_host_s``, :func:`decode_host_floor`) is the step (a graph-replayed step whose GPU
    time is shorter); else ``GPU-bound`` (also where there is no decode step or no floor)."""
    floor, step = totals.get("decode_host_s", 0.0), totals.get("itl_s", float("nan"))
    return HOST_BOUND if floor > 0 and floor >= step * (1 - 1e-9) else GPU_BOUND


def _count(value: float) -> Any:
    """A count (parameters, bytes) as an int; NaN and infinities unchanged."""
    return int(round(value)) if np.isfinite(value) else value


@dataclass
class Prediction:
    """One prediction: metrics (seconds, bytes, tokens/s), the op breakdown and provenance."""

    model: str
    phase: str
    workload: Workload
    metrics: dict[str, float]
    ops: list[dict[str, Any]]
    provenance: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)  # the --set values applied
    #: what expert pruning did (:func:`perfmodel.pruning.pruning_record`), None without it
    pruning: dict[str, Any] | None = None
    #: speculative decoding: draft, γ, α or τ, tokens per step, step split (s), draft memory
    #: (bytes); None without it (:func:`perfmodel.speculative.speculative_prediction`)
    speculative: dict[str, Any] | None = None
    #: the GPU predicted on (its datasheet roofs for ``of_roof`` and the reports; set by
    #: :func:`evaluate`; not part of :meth:`to_dict`)
    gpu: GPUSpec | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the workload, its GPU count, the overrides, pruning and
        speculative decoding (null without them), metrics at the top level (counts of
        parameters and bytes as integers), then ops (:meth:`op_dicts`) and provenance."""
        w = self.workload
        metrics = {k: _count(v) if k in COUNT_METRICS else v for k, v in self.metrics.items()}
        return {
            "model": self.model, "phase": self.phase, "gpus": w.gpus,
            "workload": {"batch": w.batch, "input_len": w.input_len, "output_len": w.output_len,
                         "context": w.context, "tp": w.tp, "ep": w.ep, "pp": w.pp, "dp": w.dp,
                         "expert_parallel": w.expert_parallel,
                         "dtype": w.dtype, "kv_dtype": w.kv_dtype, "skew": w.skew,
                         "quant": w.scheme.name, "moe_impl": w.moe_impl},
            "overrides": dict(self.overrides), "pruning": self.pruning,
            "speculative": self.speculative,
            **metrics, "intervals": self.intervals(), "ops": self.op_dicts(),
            "provenance": self.provenance,
        }

    def op_dicts(self) -> list[dict[str, Any]]:
        """The op rows, each with ``of_roof``: its speed-of-light time on the GPU's datasheet over
        its time (:func:`perfmodel.roofs.roof_shares`; None for a collective or an op of no time)."""
        from perfmodel.roofs import roof_shares

        return [{**op, "of_roof": share} for op, share in zip(self.ops, roof_shares(self, self.gpu))]

    def intervals(self) -> dict[str, list[float]] | None:
        """[low, high] of TTFT, ITL, E2E and throughput from the profile's error band (its
        held-out residuals' 90th percentile; TTFT left out where its regime has none), or None
        for a profile without one."""
        band = self.provenance.get("error_band")
        if not band:
            return None
        bands = {"ttft_s": band["ttft"], "itl_s": band["decode_step"], "e2e_s": band["e2e"],
                 "throughput_tok_s": band["throughput"]}
        return {name: [self.metrics[name] * (1 - rel), self.metrics[name] * (1 + rel)]
                for name, rel in bands.items() if rel is not None and self.metrics[name] == self.metrics[name]}


def op_rows(ops: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Compiled per-op values as a prediction's op rows: name, pass, :data:`OP_FIELDS` as
    floats and the bound (compute, memory, link, or latency when none of them costs; ``tiles``
    where the op's tile floor sets its time, :func:`perfmodel.roofline.op_time`)."""
    rows = []
    for op in ops:
        row = {f: float(op[f]) for f in OP_FIELDS}
        parts = {"compute": row["compute_s"], "memory": row["memory_s"], "link": row["link_s"]}
        row["bound"] = max(parts, key=parts.get) if max(parts.values()) > 0 else "latency"
        if row["tiles_s"] > 0 and row["tiles_s"] >= (row["time_s"] - row["latency_s"]) * (1 - 1e-9):
            row["bound"] = "tiles"
        rows.append({"name": op["name"], "pass": op["pass"], **row})
    return rows


def check_context(phase: str, context: Any) -> None:
    """The context length is a decode step's: refuse it for another phase."""
    if context is not None and phase != "decode":
        raise InputError(f"context (--context) applies to the decode phase only, not to phase "
                         f"'{phase}': use phase decode, or leave it out")


def evaluate(model: ModelSpec, gpu: GPUSpec, profile: EngineProfile, workload: Workload,
             phase: Phase = "request", overrides: dict[str, Any] | None = None) -> Prediction:
    """Predict one workload (the fast path: a compiled function call), all B sequences at once
    (:func:`predict` runs a request the KV cache does not hold in waves, :func:`in_waves`).

    ``overrides`` only records which ``--set`` values built ``model``.
    """
    if phase not in PHASES:
        raise InputError(f"unknown phase '{phase}' (request, prefill or decode)")
    check_context(phase, workload.context)
    workload = workload.stored_as(model)
    workload.check(model)
    values = numeric_values(model, gpu, profile, workload)  # before compiling: bad input fails fast
    options = graph_options(profile, workload, model, gpu.name)
    outputs = compile_model(model, phase, profile, options=options).evaluate(values)
    totals = {n: float(v) for n, v in outputs.totals.items()}
    ops = op_rows(outputs.ops)
    metrics = _metrics(totals, gpu, profile)
    band, band_note = error_band(profile, gpu, workload, prefill_regime(totals, profile.options.prefill_eager),
                                 decode_regime(metrics), phase, model.model_type, not model.is_moe)
    provenance = {
        "profile": profile.name, "engine": profile.engine, "gpu": gpu.name,
        "calibrated": profile.calibrated,
        "transfer": bool(profile.gpu) and profile.gpu != gpu.name,
        "note": (f"efficiencies fitted on {profile.gpu}, applied as fractions of {gpu.name}'s "
                 "datasheet peaks" if profile.gpu and profile.gpu != gpu.name
                 else ("uncalibrated: datasheet peaks with default derates" if not profile.calibrated
                       else f"calibrated on {gpu.name}")),
        "peaks": profile.peaks, "options": profile.options.model_dump(),
        # how the activations kept out of the KV cache are counted (perfmodel.memory)
        "activations": "reserved at start-up" if profile.activation_reserve is not None else "peak op",
        "error_band": band, "error_band_scope": band_scope(profile), "error_band_note": band_note,
        "host": host_record(profile, workload.host_probe_ms),
        # a checkpoint format no scheme describes, predicted unquantized: neither --quant nor an alias --dtype
        "unread_quantization": (model.unread_quantization if workload.quant is None
                                and workload.scheme.name == quantization.NO_QUANT else None),
        "moe_tile_table": moe_tile_table(profile, options),
        "moe_l2_spill": moe_l2_spill(profile, options, model, values),
    }
    return Prediction(model=model.name, phase=phase, workload=workload, metrics=metrics,
                      ops=ops, provenance=provenance, overrides=dict(overrides or {}), gpu=gpu)


@functools.cache
def _expert_l2_functions(quantized: bool) -> tuple[tuple[sp.Symbol, ...], Callable[..., tuple[float, float]]]:
    """The free symbols of, and a compiled function giving, (one expert's weight bytes on one GPU,
    the factor on the fused experts' compute time) of :func:`perfmodel.ops.moe.l2_spill_scale`,
    as the routed experts' op writes them (``quantized``: at the scheme's bytes per weight)."""
    from perfmodel.ops.moe import expert_weight_bytes, l2_spill_scale

    expert = expert_weight_bytes(quantized)
    exprs = (expert, l2_spill_scale(expert))
    free = tuple(sorted(set().union(*(e.free_symbols for e in exprs)), key=lambda x: x.name))
    return free, sp.lambdify(free, exprs, modules="math")


def moe_l2_spill(profile: EngineProfile, options: GraphOptions, model: ModelSpec,
                 values: Mapping[str, float]) -> dict[str, float] | None:
    """Where the fused routed experts outgrow the GPU's L2 cache and the profile costs it
    (``options.moe_l2_spill``, :func:`perfmodel.ops.moe.l2_spill_scale`): the factor on their
    compute time, one expert's weight MiB on one GPU, the cache's MiB and s_L2; None otherwise
    (no such cost fitted, no MoE, unfused or tiled experts, or experts that fit)."""
    if (not profile.options.moe_l2_spill or model.moe is None or options.moe_impl == "unfused"
            or (options.moe_tiled and options.quantizes("experts"))):
        return None
    free, function = _expert_l2_functions(options.quantizes("experts"))
    expert, factor = function(*(values[x.name] for x in free))
    if factor <= 1:
        return None
    return {"factor": float(factor), "expert_mib": float(expert) / 2**20, "l2_mib": values[s.L2.name] / 2**20,
            "s_l2": profile.options.moe_l2_spill}


def moe_tile_table(profile: EngineProfile, options: GraphOptions) -> dict[str, Any] | None:
    """The engine's tuned fused-MoE tile table that a prediction's routed experts meet, where the
    profile costs it: the time it adds over the default rule's, timed by pass (``extra``: tokens
    and seconds per layer, :func:`moe_table_extra`), else, for a table made for larger passes,
    its smallest tuned pass and the factor on the experts' memory time (:func:`moe_tuned_from`);
    None where they meet neither."""
    if options.moe_table_extra_s:
        tokens, extra = zip(*options.moe_table_extra_s)
        return {"extra": {"tokens": list(tokens), "extra_s": list(extra), "keys": list(options.moe_table_keys)}}
    if not options.moe_tuned_from:
        return None
    return {"from_tokens": options.moe_tuned_from, "memory_factor": profile.options.moe_off_table_memory}


def host_record(profile: EngineProfile, probe_ms: float | None) -> dict[str, Any]:
    """The host a prediction is for: its probe time (ms; None: the profile's own host), the
    profile's reference probe time and the factor its host times were multiplied by."""
    return {"probe_ms": probe_ms, "reference_probe_ms": profile.latency.host_probe_ref_ms,
            "factor": host_factor(profile, probe_ms)}


def evaluate_metrics(model: ModelSpec, gpu: GPUSpec, profile: EngineProfile, workload: Workload,
                     phase: Phase = "request", like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of :func:`evaluate` alone (its ``metrics``, all B sequences at once), from the
    compiled totals without the per-op rows, error band or provenance: what a batch run in waves
    needs of each other batch size it is evaluated at (:func:`in_waves`). ``like``: the
    :func:`numeric_values` of the same workload at another batch size, of which only B differs
    (computed afresh when None)."""
    workload = workload.stored_as(model)
    values = (numeric_values(model, gpu, profile, workload) if like is None
              else {**like, s.B.name: workload.rank_batch})
    options = graph_options(profile, workload, model, gpu.name)
    outputs = compile_model(model, phase, profile, options=options, with_ops=False).evaluate(values)
    return _metrics({n: float(v) for n, v in outputs.totals.items()}, gpu, profile)


def _metrics(t: dict[str, float], gpu: GPUSpec, profile: EngineProfile) -> dict[str, Any]:
    nan = float("nan")
    m: dict[str, Any] = {name: t.get(name, nan) for name in METRICS}
    m["memory_capacity_bytes"] = profile.usable_bytes(gpu)
    m["fits_in_memory"] = bool(m["memory_bytes"] <= m["memory_capacity_bytes"])
    return m


def check_memory_share(value: Any) -> float:
    """A share of a GPU's memory in (0, 1] (vLLM's --gpu-memory-utilization) as a ``float``."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not number or not 0.0 < value <= 1.0:  # NaN fails the comparison
        raise InputError(f"gpu-memory-utilization must be in (0, 1], got {value if number else repr(value)}")
    return float(value)


def predict(model: str | ModelSpec, *, gpu: str = "h200-sxm", engine: str = DEFAULT_ENGINE,
            phase: Phase = "request", batch: int = 1, input_len: int = 128, output_len: int = 128,
            context: int | None = None, tp: int = 1, ep: int = 1, pp: int = 1, dp: int = 1,
            expert_parallel: bool = False, dtype: str = "bf16",
            kv_dtype: str | None = None, skew: float = 0.0,
            overrides: list[str] | dict[str, Any] | None = None,
            quant: str | None = None, moe_impl: str = "fused",
            prune_experts: float | None = None, prune_ffn: float | None = None,
            spec_draft: str | ModelSpec | None = None, spec_tokens: int | None = None,
            spec_accept: float | None = None, spec_accepted_len: float | None = None,
            graph_tokens: int | None = None, host_probe_ms: float | None = None,
            moe_tables: bool = True, routing_ids: bool = False,
            gpu_memory_utilization: float | None = None) -> Prediction:
    """Predict TTFT, ITL, E2E, throughput and memory for one workload.

    ``model``: a zoo name, a config.json path, or a :class:`ModelSpec`; ``overrides`` are
    ``--set`` style (``["top_k=4"]`` or ``{"top_k": 4}``). Times in seconds, sizes in bytes.
    ``context`` (tokens attended) applies to the decode phase only. ``tp``, ``ep``, ``pp``,
    ``dp``: the layout (:mod:`perfmodel.specs.layout`; ``dp`` data-parallel ranks of B/dp
    sequences each, their MoE layers spanning all of them); ``expert_parallel``: vLLM's expert
    parallelism, whole routed experts on each of the tp·dp GPUs.

    ``quant``: the quantization scheme of the linear layers (a name or alias of
    ``specs/quantization.yaml``; ``dtype="fp8"`` is the ``fp8`` scheme); ``moe_impl``: ``fused``
    (one fused-MoE block) or ``unfused`` (a loop over the touched experts).

    ``prune_experts`` / ``prune_ffn``: drop a fraction of the routed experts / of each
    expert's FFN width, after the overrides (:mod:`perfmodel.pruning`). ``spec_draft``,
    ``spec_tokens`` (γ) and ``spec_accept`` (α) or ``spec_accepted_len`` (τ): speculative
    decoding with a draft model (:mod:`perfmodel.speculative`). ``graph_tokens``: the largest
    pass (tokens) the engine replays from a captured CUDA graph, in place of the profile's
    ``options.cudagraph_max_tokens`` (0: none). ``host_probe_ms``: the host's probe time
    (:func:`perfmodel.host_speed.probe_ms`, ms; ``perfmodel host-probe`` times it): the
    profile's host times are scaled to that host (:mod:`perfmodel.host_speed`); None: the host
    the profile was fitted on. ``moe_tables``: the engine's tuned fused-MoE tile tables, where a
    shape has one made for larger passes (:func:`perfmodel.ops.moe.off_table_scale`); False: its
    default tile rule for every shape (a run given tile files of its own). ``routing_ids``: the
    routed experts' kernel is handed each token's expert ids instead of the router's logits, as
    vLLM's routing simulator hands them: a tiled kernel then packs them into a bitmatrix first
    (:func:`perfmodel.ops.moe.routing_bitmatrix`; a measured row's setting, not a deployment's).
    ``gpu_memory_utilization``: the share of each GPU's memory the engine may fill (vLLM's flag
    of that name, in (0, 1]; None: the profile's ``options.memory_usable_fraction``).

    A request whose batch the KV cache does not hold at once (or more sequences than the
    engine runs at once) runs in waves (:mod:`perfmodel.waves`): ``concurrent_sequences`` and
    ``kv_waves`` say how; ``fits_in_memory`` is False only when not even one sequence fits. On
    an engine that allocates the whole batch's cache at once (``options.kv_waves`` false:
    transformers' StaticCache) a batch fits whole or not at all.

    Every argument is checked: a wrong type or value raises :class:`InputError` with one line.
    Integer arguments take Python or numpy integers, or floats with an integral value; bools
    are not numbers here.
    """
    phase = check_choice("phase", phase, PHASES)
    model = check_model(model)
    overrides = check_overrides(overrides)
    if isinstance(model, ModelSpec) and overrides:
        raise InputError("overrides apply to a zoo name or a config.json, not to a ModelSpec")
    gpu, engine = check_name("gpu", gpu), check_name("engine", engine)
    workload = Workload(batch=batch, input_len=input_len, output_len=output_len, context=context,
                        tp=tp, ep=ep, pp=pp, dp=dp, expert_parallel=expert_parallel, dtype=dtype,
                        kv_dtype=kv_dtype, skew=skew, quant=quant, moe_impl=moe_impl, graph_tokens=graph_tokens,
                        host_probe_ms=host_probe_ms, moe_tables=moe_tables, routing_ids=routing_ids)
    check_context(phase, workload.context)
    from perfmodel.speculative import speculative_prediction, speculative_settings

    ratios = check_ratio("prune_experts", prune_experts), check_ratio("prune_ffn", prune_ffn)
    speculative = speculative_settings(spec_draft, spec_tokens, spec_accept, spec_accepted_len)
    if speculative is not None and phase == "prefill":
        raise InputError("speculative decoding changes decode steps only: a prefill has none "
                         "(phase request or decode)")
    if speculative is not None and phase == "request" and speculative.tokens >= workload.output_len:
        raise InputError(f"spec-tokens (γ = {speculative.tokens}) must be below the output length "
                         f"({workload.output_len}): a request's first step already drafts past its end")
    loaded = model if isinstance(model, ModelSpec) else load_model(model, overrides)
    spec = prune(loaded, *ratios)
    workload = workload.stored_as(spec)
    gpu_spec = load_gpu(gpu)
    profile = load_profile(engine, gpu_spec.name)
    if gpu_memory_utilization is not None:
        profile = profile.with_memory_fraction(check_memory_share(gpu_memory_utilization))
    pruning = pruning_record(loaded, spec, *ratios)

    def at(batch: int) -> Prediction:
        """The prediction with all ``batch`` sequences at once."""
        one = evaluate(spec, gpu_spec, profile, replace(workload, batch=batch),
                       phase, overrides)  # type: ignore[arg-type]
        one = replace(one, pruning=pruning)
        return speculative_prediction(one, spec, gpu_spec, profile, speculative) if speculative is not None else one

    like: dict[str, Any] = {}

    def metrics_at(batch: int) -> dict[str, Any]:
        """The metrics with all ``batch`` sequences at once (a speculative one's through :func:`at`)."""
        if speculative is not None:
            return at(batch).metrics
        w = replace(workload, batch=batch).stored_as(spec)
        if not like:
            like.update(numeric_values(spec, gpu_spec, profile, w))
        return evaluate_metrics(spec, gpu_spec, profile, w, phase, like=like)  # type: ignore[arg-type]

    return in_waves(at(workload.batch), at, profile, metrics_at)


def in_waves(whole: Prediction, at: Callable[[int], Prediction], profile: EngineProfile,
             metrics_at: Callable[[int], Mapping[str, Any]] | None = None) -> Prediction:
    """A request whose batch the KV cache does not hold at once, run in waves
    (:mod:`perfmodel.waves`: E2E summed over the waves, TTFT, memory and ops of the first);
    ``whole``: the batch as one wave, ``at(b)``: the same prediction at batch b, ``metrics_at(b)``
    its metrics alone (default: ``at(b).metrics``), which the schedule's other batch sizes take. A prefill or
    decode phase is one pass of all B sequences (:func:`perfmodel.waves.one_pass`), and so is a
    request on an engine that allocates the whole batch's cache at once (``options.kv_waves``
    false: it fits whole or not at all). Each of dp data-parallel ranks runs its B/dp sequences
    in waves of its own; ``concurrent_sequences`` counts all ranks'."""
    w, runs = whole.workload, {}
    metrics_of = metrics_at if metrics_at is not None else (lambda b: at(b).metrics)

    def rerun(batch: Any, where: Any) -> Mapping[str, Any]:
        b = int(batch.item()) * w.dp  # one point: one size; every rank's sequences
        if b not in runs:
            runs[b] = metrics_of(b)
        return runs[b]

    if whole.phase == "request" and profile.options.kv_waves:
        metrics = run_in_waves(whole.metrics, w.rank_batch, w.input_len, w.output_len,
                               whole.metrics["memory_capacity_bytes"], profile.options.prefill_chunk_tokens,
                               profile.max_sequences, rerun, ranks=w.dp,
                               reserved=profile.activation_reserve is not None)
    else:
        metrics = one_pass(whole.metrics, w.rank_batch, ranks=w.dp)
    metrics = {k: bool(v) if k == "fits_in_memory" else int(v) if k in WAVE_METRICS else float(v)
               for k, v in metrics.items()}
    running = metrics["concurrent_sequences"]
    first = at(running) if running in runs else whole
    return replace(first, workload=w, metrics=metrics)
