"""Engine profiles: efficiencies, fixed latencies and engine options, as YAML data.

A profile says how fast an engine runs each op class relative to the GPU's peaks. Efficiency
η of an op class is a fraction of peak, constant or saturating:

    η(u) = η_max · u / (u + u_half)        (u_half = 0: constant η_max)

in the op's size x for compute (GEMM rows, tokens per expert, keys attended: ``compute_half``
in that unit) and in the bytes moved for memory and links (``memory_half`` in bytes). Those
variables keep an op's time non-decreasing in its work (:mod:`perfmodel.roofline` says why).

Lookup for ``--engine NAME --gpu G``: ``calibration/profiles/<G>-<NAME>.yaml`` (fitted to that
GPU), else ``calibration/profiles/<NAME>.yaml`` (any GPU).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationError, model_validator)

from perfmodel.errors import SpecError
from perfmodel.op_classes import OpClass
from perfmodel.paths import PROFILES_DIR
from perfmodel.specs.files import read_mapping

#: Op classes every profile gives η curves for (:meth:`perfmodel.ops.OpClass.required`).
OP_CLASSES = tuple(c.value for c in OpClass.required())
#: Op classes a profile may tune separately; without an entry they run as their fallback
#: (:class:`perfmodel.ops.OpClass` says what each is).
OPTIONAL_OP_CLASSES = {c.value: c.fallback.value for c in OpClass.optional()}
#: Keys of a profile's ``efficiency`` mapping: the op classes' names.
OpClassName = Literal[tuple(c.value for c in OpClass)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Efficiency(_Strict):
    """η of one op class: compute and memory maxima (fractions of peak) and half-saturation
    points: ``compute_half`` in the op's size unit, ``memory_half`` in bytes, ``context_half``
    in cached tokens per sequence (an op that reads a cache per sequence, the attention core)."""

    compute: float = Field(gt=0, le=1.5)
    memory: float = Field(gt=0, le=1.5)
    compute_half: NonNegativeFloat = 0.0
    memory_half: NonNegativeFloat = 0.0
    context_half: NonNegativeFloat = Field(
        default=0.0, description="Cached tokens per sequence at which an attention kernel reads the "
        "cache at half its peak rate: η_m over a sequence's C keys is η_max·C/(C + C_half), so each "
        "sequence costs C_half keys' worth of memory time more than its keys (the kernel's fixed "
        "work per sequence and head, which a short context does not hide).")
    exposed: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of the shorter of an op's compute and memory "
        "times that its kernels do not hide behind the longer: t = max(t_c, t_m) + a·min(t_c, t_m) "
        "(0: perfect overlap, the plain roofline; 1: no overlap).")


class LaunchNoise(_Strict):
    """How the host time of a launched step varies about the model's, within one run
    (:mod:`perfmodel.host_noise`): its log is the sum of a part drawn anew at each launch and
    two parts that drift in time (Ornstein–Uhlenbeck processes), a fast and a slow one. Standard
    deviations of the log host time; correlation times in seconds."""

    sigma_white: NonNegativeFloat = Field(description="The part drawn anew at each launch.")
    sigma_fast: NonNegativeFloat = Field(description="The fast-drifting part.")
    tau_fast_s: PositiveFloat = Field(description="Correlation time of the fast part, s.")
    sigma_slow: NonNegativeFloat = Field(description="The slow-drifting part.")
    tau_slow_s: PositiveFloat = Field(description="Correlation time of the slow part, s.")

    @model_validator(mode="after")
    def _ordered(self) -> "LaunchNoise":
        if self.tau_fast_s > self.tau_slow_s:
            raise ValueError("launch_noise: tau_fast_s must not exceed tau_slow_s")
        if max(self.sigma_white, self.sigma_fast, self.sigma_slow) > 2.0:
            raise ValueError("launch_noise: a standard deviation of the log host time above 2 "
                             "(a factor e^2 per sd) is not a host's jitter")
        return self


class Latency(_Strict):
    """Fixed costs, seconds."""

    per_kernel_s: NonNegativeFloat = Field(
        default=0.0, description="Fixed cost per kernel of a compute class (GEMM, grouped GEMM, "
        "attention).")
    per_small_kernel_s: NonNegativeFloat | None = Field(
        default=None, description="Fixed cost per kernel of a memory-bound class (elementwise, copy: "
        "norms, activations, gathers, index ops, device-to-host copies). None: per_kernel_s.")
    per_layer_s: NonNegativeFloat = 0.0
    per_step_s: NonNegativeFloat = 0.0
    eager_layer_s: NonNegativeFloat = Field(
        default=0.0, description="Host time to launch one layer's kernels in an eager pass.")
    eager_step_s: NonNegativeFloat = Field(
        default=0.0, description="Host time of an eager pass outside its layers.")
    eager_seq_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per sequence of an eager step (the scheduler's and the "
        "model runner's work for each request it holds), serial with the step's launch.")
    uncompiled_op_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per uncompiled op of an eager step: an op the engine "
        "runs from Python inside an opaque custom op its compiled graph calls, its kernels "
        "dispatched one by one (vLLM's shared experts inside its fused-MoE op), beside "
        "eager_layer_s.")
    piecewise_layer_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per layer of a prefill an eager-prefill engine replays "
        "from piecewise CUDA graphs (the attention between the graph's pieces is launched from the "
        "host), serial with the pass's GPU work.")
    dense_layer_s: NonNegativeFloat | None = Field(
        default=None, description="Host time per layer with a dense MLP in a launched prefill, where "
        "it differs from an MoE layer's eager_layer_s: vLLM launches only such a layer's attention "
        "between compiled pieces (its piecewise_layer_s), where an MoE layer's fused-MoE op runs "
        "from Python. None: eager_layer_s (an engine that launches every layer op by op).")
    mla_split_layer_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per MLA layer of an engine step that holds prompt tokens "
        "beside decodes: the engine runs such a step's attention as two paths, the prompts' over "
        "re-expanded keys and the decodes' absorbed over the latent cache, the second launched from "
        "the host beside the first (perfmodel.ops.attention.mla_ops); a step of prompts alone, or of "
        "decodes alone, pays none.")
    launch_serial_s: NonNegativeFloat = Field(
        default=0.0, description="Host time of a serving step launched from the host (prompt tokens "
        "beyond the largest CUDA graph) that its GPU work does not hide: the scheduling, the inputs "
        "and the first launches before its first kernel, the sampling and outputs after its last. "
        "The serving planner adds it to such a step's GPU time (perfmodel.planning.steptime); where "
        "the host's launches set the step it lies within them.")
    launch_serial_seq_s: NonNegativeFloat = Field(
        default=0.0, description="What each sequence beyond the first adds to launch_serial_s (a "
        "step holding decodes beside its prompt schedules, prepares and samples each of them), s per "
        "sequence: a launched step of n sequences adds launch_serial_s + (n − 1)·launch_serial_seq_s "
        "to its GPU time in the serving planner.")
    request_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per request of one offline batch call (the front end "
        "admits each request before its prefill and returns each output after it), serial with the "
        "engine: TTFT and E2E pay B of them once; a serving engine admits requests as they arrive.")
    host_step_s: NonNegativeFloat = Field(
        default=0.0, description="Host time of one decode step the engine replays from a CUDA graph "
        "(scheduling it, preparing its inputs, processing its outputs), which asynchronous "
        "scheduling overlaps with the GPU's previous step: the step takes max(GPU time, "
        "host_step_s + B·host_seq_s).")
    host_seq_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per sequence of one graph-replayed decode step (see "
        "host_step_s).")
    draft_pass_s: NonNegativeFloat = Field(
        default=0.0, description="Host time of one draft pass of speculative decoding that its GPU "
        "work does not hide (the proposer prepares each pass's inputs and samples its token).")
    expert_sync_s: NonNegativeFloat = Field(
        default=0.0, description="Host time per touched expert per MoE layer of an eager pass of the "
        "unfused MoE (a loop over the experts that waits for the GPU to learn each expert's rows): "
        "serial with the pass's GPU work and its launch; no part of a CUDA-graph replay.")
    link_step_s: NonNegativeFloat | None = Field(
        default=None, description="One collective step; default: the GPU spec's link latency."
    )
    host_probe_ref_ms: PositiveFloat | None = Field(
        default=None, description="The host's probe time (ms, perfmodel.host_speed.probe_ms) "
        "at which the host times above hold; a prediction for a host of another probe time scales "
        "them (perfmodel.host_speed). None: the host's speed is not an input.")
    host_speed_exponent: NonNegativeFloat | None = Field(
        default=None, description="How the engine's host times follow the probe's: they scale as "
        "(probe / host_probe_ref_ms) ** this (1: in proportion; below 1: part of the engine's host "
        "work slows less than a pure-Python loop).")
    launch_noise: LaunchNoise | None = Field(
        default=None, description="How a launched step's host time varies within a serving run, "
        "which the serving simulation draws (perfmodel.host_noise); None: every launch takes the "
        "model's time.")

    @property
    def small_kernel_s(self) -> float:
        """Fixed cost per kernel of a memory-bound class, s: ``per_small_kernel_s``, else
        ``per_kernel_s``."""
        return self.per_kernel_s if self.per_small_kernel_s is None else self.per_small_kernel_s


class BlockTier(_Strict):
    """One tier of a fused-MoE kernel's tile rows: BLOCK_SIZE_M = ``block_m`` for passes of at
    most ``max_tokens`` tokens (null: any larger pass)."""

    max_tokens: PositiveInt | None
    block_m: PositiveInt


class TableExtra(_Strict):
    """A tuned fused-MoE tile table timed against the engine's default tile rule on one GPU: the
    expert shape on one GPU (``experts``, intermediate ``width``), the ``scheme`` its experts run
    at (specs/quantization.yaml names; none: bf16), the model's ``hidden`` size and ``top_k`` it
    was timed at (null: any), and at passes of ``tokens`` (increasing) the kernel's time at the
    table less its time at the default rule, s per layer (``extra_s``; negative where the table
    is faster), and the table's ``keys`` in its file's order (``specs/vllm-moe-tables.yaml``;
    empty: not known), which say where its entry changes."""

    experts: PositiveInt
    width: PositiveInt
    scheme: str
    hidden: PositiveInt | None = None
    top_k: PositiveInt | None = None
    tokens: tuple[PositiveInt, ...]
    extra_s: tuple[float, ...]
    keys: tuple[PositiveInt, ...] = ()

    def model_post_init(self, _context: object) -> None:
        if not self.tokens or len(self.tokens) != len(self.extra_s):
            raise ValueError("a table's extra time needs as many values as passes, at least one")
        if list(self.tokens) != sorted(set(self.tokens)):
            raise ValueError("a table's measured passes must increase")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("a table's keys must be distinct")

    def points(self) -> tuple[tuple[float, float], ...]:
        """((tokens, s), ...), as :func:`perfmodel.ops.moe.table_extra` takes them."""
        return tuple(zip(self.tokens, self.extra_s))


#: BLOCK_SIZE_M of vLLM's default fused-MoE config (bf16 and fp8 per-tensor; vLLM 0.26
#: ``get_default_config``: M ≤ 32 tokens → 16, ≤ 96 → 32, ≤ 512 → 64, else 128), for a vllm
#: profile that states no ``moe_block_m``. Its tuned configs (e.g. Mixtral's on H200) pick
#: similar tiles (16 at small M, 32–64 in between, 128 from 256 tokens).
VLLM_MOE_BLOCK_M = ((32, 16), (96, 32), (512, 64), (None, 128))

#: vLLM 0.26's default ``max_num_seqs`` for its offline ``LLM`` class on GPUs of at least 70 GiB
#: (``EngineArgs.get_batch_defaults``: the rule that also gives its 16,384-token prefill chunk;
#: 256 on smaller GPUs), for a vllm profile that states no ``max_num_seqs``.
VLLM_MAX_NUM_SEQS = 1024


class Options(_Strict):
    """Engine behaviour that changes what is computed or stored."""

    decode_attention_span: Literal["context", "allocated"] = "context"
    mla_cache: Literal["latent", "expanded"] = "latent"
    mla_absorb_decode: bool = True
    decode_kv_expand: bool = False
    prefill_eager: bool = Field(
        default=False, description="Prefill runs eagerly: its time is at least the host's launch time.")
    memory_usable_fraction: float = Field(default=0.9, gt=0, le=1)
    prefill_chunk_tokens: PositiveInt | None = Field(
        default=None, description="Prompt tokens the engine prefills per step (vLLM's "
        "max_num_batched_tokens): a larger prefill takes ⌈B·S/it⌉ steps, each paying the "
        "per-pass fixed costs. None: one pass.")
    cudagraph_max_tokens: NonNegativeInt | None = Field(
        default=None, description="Largest pass, in tokens, the engine replays from a captured CUDA "
        "graph (vLLM: max_cudagraph_capture_size, min(2·max_num_seqs, 512) by default): a prefill "
        "of at most that many tokens is replayed, so an eager-prefill engine pays no host launch "
        "floor for it. None or 0: every prefill of such an engine is launched from the host.")
    cudagraph_padding: bool | None = Field(
        default=None, description="A pass replayed from a CUDA graph (a decode step; a prefill of at "
        "most cudagraph_max_tokens tokens) runs its tokens padded up to the next captured size "
        "(vLLM's default sizes 1, 2, 4, multiples of 8 to 256, of 16 beyond, up to "
        "cudagraph_max_tokens): the token ops (projections, experts) see the padded tokens, the "
        "attention and the host the real sequences. None: true for engine vllm, else false (a "
        "graph captured at each batch exactly, or none).")
    async_scheduling: bool = Field(
        default=False, description="The scheduler prepares the next step while one runs (vLLM's "
        "asynchronous scheduling): a request arriving during a step joins the step after next at "
        "the earliest, unless the engine is idle (serving simulation only).")
    kv_waves: bool = Field(
        default=True, description="A fixed batch whose KV cache does not fit at once runs in waves "
        "of the sequences that do (vLLM's scheduler admits what its paged cache holds). False: the "
        "engine allocates the whole batch's cache before its first pass (transformers' StaticCache "
        "of B x (S + O) slots), and such a batch does not fit.")
    max_num_seqs: PositiveInt | None = Field(
        default=None, description="Most sequences the engine runs at once (vLLM's max_num_seqs): a "
        "fixed batch beyond it, or beyond what the KV cache holds, runs in waves. None: vLLM's "
        "default for engine vllm, else no limit.")
    moe_off_table_memory: float | None = Field(
        default=None, gt=0, description="vLLM's fused-MoE kernel on an expert shape whose tuned tile "
        "table starts above small passes (specs/vllm-moe-tables.yaml): its memory time × this "
        "(perfmodel.ops.moe.off_table_scale). None: not measured, the tables not read.")
    moe_off_table_schemes: tuple[str, ...] | None = Field(
        default=None, description="The schemes the experts ran at in the A/B that measured "
        "moe_off_table_memory (specs/quantization.yaml names; none: bf16): only those schemes' "
        "tables get the factor. None: every listed table's (a profile fitted before the schemes "
        "were recorded).")
    moe_table_extra: tuple[TableExtra, ...] | None = Field(
        default=None, description="vLLM's fused-MoE kernel at its tuned tile tables, timed pass by "
        "pass against its default tile rule (scripts/bench_moe_tiles.py): on such an expert shape "
        "the experts' time per layer + the difference at the measured pass nearest each pass "
        "(perfmodel.ops.moe.table_extra), in place of moe_off_table_memory on a table made for larger "
        "passes (specs/vllm-moe-tables.yaml). None: none measured.")
    moe_l2_spill: float | None = Field(
        default=None, ge=0, description="vLLM's fused-MoE kernel on experts whose weights outgrow the "
        "GPU's L2 cache: its compute time x (1 + this x the share of one expert's weights beyond "
        "L2), fitted on the kernel timed alone (perfmodel.ops.moe.l2_spill_scale). None: 0, not "
        "measured.")
    moe_block_m: PositiveInt | tuple[BlockTier, ...] | None = Field(
        default=None, description="Rows of a fused-MoE tile (BLOCK_SIZE_M): each touched expert's "
        "rows are padded to a multiple of it. One number, or tiers by tokens per pass "
        "[{max_tokens, block_m}, ..., {max_tokens: null, block_m}]. Default: vLLM's default "
        "config for engine vllm, else 1 (no padding).")

    def model_post_init(self, _context: object) -> None:
        tiers = self.moe_block_m
        if isinstance(tiers, tuple):
            bounds = [t.max_tokens for t in tiers]
            inner = bounds[:-1]
            if not bounds or bounds[-1] is not None or None in inner or inner != sorted(set(inner)):
                raise ValueError("moe_block_m tiers need increasing max_tokens, the last one null")


class BandChecked(_Strict):
    """Kernels a profile states apart from its own (a quantization scheme's, a KV-cache dtype's):
    why they cost what they do, and whether the profile's error band holds for them."""

    reason: str = ""
    band: bool = Field(
        default=False, description="the profile's error band holds here: the 90th percentile |error| "
        "of the held-out rows lies within the band in each regime (fit.residuals.quantization or "
        "fit.residuals.kv_cache); false: these predictions carry no band")
    carried_from: str | None = Field(
        default=None, description="the GPU whose fit this entry was carried from (an anchored fit: "
        "perfmodel.calibration.fit_anchor): no row of it was measured on this profile's GPU")


class QuantEfficiency(BandChecked):
    """A quantization scheme's kernels relative to the profile's fitted ones: multipliers of
    the η_c (compute) and η_m (memory) maxima of the op classes its quantized GEMMs run as,
    the fixed cost per kernel (memory half) and dequantization work of a weight-only scheme's
    kernels where they were fitted, and the times of its tiled MoE kernel where the scheme has
    one (``moe_tile``)."""

    gemm_compute: float = Field(default=1.0, gt=0, le=2)
    gemm_memory: float = Field(default=1.0, gt=0, le=2)
    grouped_gemm_compute: float = Field(default=1.0, gt=0, le=2)
    grouped_gemm_memory: float = Field(default=1.0, gt=0, le=2)
    memory_half: NonNegativeFloat | None = Field(
        default=None, description="bytes at which the scheme's quantized GEMM kernels move weights at "
        "half their η_m maximum (a fixed cost per kernel of that many bytes' time), fitted; absent: "
        "each op class's own (efficiency.<class>.memory_half)")
    dequant_flops_per_weight: NonNegativeFloat | None = Field(
        default=None, description="n_dq of a weight-only scheme's kernels, fitted: in-kernel "
        "dequantization per weight element read, matmul-FLOP equivalents; absent: the scheme's own "
        "estimate (specs/quantization.yaml)")
    tile_s: NonNegativeFloat = Field(
        default=0.0, description="fixed time of one kernel of the scheme's tiled MoE kernel, s "
        "(t_tile, perfmodel.ops.moe.tile_floor)")
    k_step_s: NonNegativeFloat = Field(
        default=0.0, description="time of one step of a tile's K loop of that kernel, s (t_kstep); "
        "0: no tile floor")
    host_layer_s: NonNegativeFloat = Field(
        default=0.0, description="host time per layer that launching that kernel from Python, or the "
        "routed experts' activation quantization inside the fused-MoE op, adds to a launched eager step, "
        "at the reference host, s (t_moe_host, perfmodel.prediction.uncompiled_launch)")
    bitmatrix_one_s: NonNegativeFloat = Field(
        default=0.0, description="time of the routing bitmatrix pack that the kernel's library runs before "
        "it in a staged MoE block, over one 32-expert column, s (t_bitpack_one, "
        "perfmodel.ops.moe.routing_bitmatrix); 0, with the two below: the pack costs its kernel and bytes alone")
    bitmatrix_loop_s: NonNegativeFloat = Field(
        default=0.0, description="fixed time of that pack's loop over two or more columns, s (t_bitpack_loop)")
    bitmatrix_column_s: NonNegativeFloat = Field(
        default=0.0, description="time of one column of that loop, s (t_bitpack)")

    def multiplier(self, op_class: str, which: str) -> float:
        """μ of an op class (gemm, grouped_gemm; an optional class as the class it falls back
        to, :data:`OPTIONAL_OP_CLASSES`), which ∈ {compute, memory}; 1 for any other."""
        name = OPTIONAL_OP_CLASSES.get(op_class, op_class)
        return float(getattr(self, f"{name}_{which}", 1.0))


class KVCacheEfficiency(BandChecked):
    """The attention kernels with the KV cache stored in a dtype other than the model's: a
    multiplier of the attention classes' η_m maxima (μ_kv, :mod:`perfmodel.roofline`)."""

    attention_memory: float = Field(default=1.0, gt=0, le=2)


#: KV-cache dtypes a profile may list (``kv_cache``), as a workload names them (``--kv-dtype``).
KV_CACHE_DTYPES = ("fp8", "int8", "fp16", "bf16", "fp32")


class ErrorBand(_Strict):
    """Relative error half-widths (e.g. 0.08 = ±8%) per metric, from held-out residuals."""

    ttft: PositiveFloat
    decode_step: PositiveFloat
    e2e: PositiveFloat
    throughput: PositiveFloat
    ttft_launch_bound: PositiveFloat | None = Field(
        None, description="TTFT half-width of prefills held to the host's launch floor "
        "(perfmodel.prediction.prefill_regime), ``ttft`` being then the GPU-bound ones'; absent: "
        "one TTFT band for all")
    ttft_graph_replayed: PositiveFloat | None = Field(
        None, description="TTFT half-width of prefills an eager-prefill engine replays from a "
        "captured CUDA graph; absent with a ttft_launch_bound: too few measured, no TTFT band there")
    decode_step_host_bound: PositiveFloat | None = Field(
        None, description="ITL half-width of decode steps held to the host's floor "
        "(perfmodel.prediction.decode_regime), ``decode_step``, ``e2e`` and ``throughput`` being then "
        "the GPU-bound ones'; absent: one band for all decode steps")
    e2e_host_bound: PositiveFloat | None = Field(
        None, description="E2E half-width where the decode step is held to the host's floor")
    throughput_host_bound: PositiveFloat | None = Field(
        None, description="throughput half-width where the decode step is held to the host's floor")
    source: str = ""


class ServingSchemeCheck(_Strict):
    """A quantization scheme's serving runs, or the dense models', against the band (held out, kept up)."""

    runs: PositiveInt
    within: bool = Field(description="Every metric's 90th-percentile |error| at most the band's.")
    errors: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="90th percentile of |relative error| per metric over the runs.")
    own_band: bool = Field(False, description=(
        "Outside the band, with as many runs as a band of its own takes: a plan in this scheme "
        "takes, per metric, the wider of the band and ``errors``."))


class ServingAccuracy(_Strict):
    """How the held-out serving runs that kept up land, per metric: median |relative error| and
    the share of runs within each metric's target (:data:`perfmodel.calibration.fit_serving_band.TARGETS`)."""

    runs: PositiveInt
    median: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    within_target: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="Share of the runs (0–1) whose |error| is at most the target.")
    targets: dict[str, NonNegativeFloat] = Field(default_factory=dict)


class ServingBand(_Strict):
    """Relative error half-widths of the serving replays (e.g. 0.15 = ±15%) per metric, from
    held-out measured serving runs in the profile's own dtype that kept up
    (:mod:`perfmodel.calibration.fit_serving_band`), or where the profile's GPU has too few of
    them, its anchor's band as far as the runs it has check it (``carried_from``, ``own_runs``);
    ``schemes``: the runs of each quantization scheme (or fp8 KV cache, ``bf16 kv-fp8``) checked
    against it; ``dense``: the dense models' runs checked against it."""

    ttft_p50: NonNegativeFloat | None = None
    ttft_p90: NonNegativeFloat | None = None
    itl_p50: NonNegativeFloat | None = None
    itl_p90: NonNegativeFloat | None = None
    itl_mean: NonNegativeFloat | None = None
    served_tok_s: NonNegativeFloat | None = None
    runs: PositiveInt
    source: str = ""
    schemes: dict[str, ServingSchemeCheck] = Field(default_factory=dict)
    carried_from: str | None = Field(
        default=None, description="The GPU whose band this is, where this GPU's own runs were too few to state "
                                  "one; ``runs`` are that GPU's (perfmodel.calibration.fit_serving_band.carried_band).")
    own_runs: ServingSchemeCheck | None = Field(
        default=None, description="This GPU's own runs against a carried band: a metric they lie outside is left out.")
    dense: ServingSchemeCheck | None = Field(
        default=None, description="The dense models' runs (every scheme) against the band, which is the MoE "
                                  "models': a dense model's plan carries it as far as they lie within it.")
    accuracy: ServingAccuracy | None = Field(
        default=None, description="This GPU's held-out runs in the band's dtype that kept up: median |error| and "
                                  "share within target per metric.")
    accuracy_all_schemes: ServingAccuracy | None = Field(
        default=None, description="The same over the band's runs and every checked scheme's.")


class ActivationReserve(_Strict):
    """What an engine keeps out of its KV cache besides the weights, per GPU, as vLLM sizes its
    cache at start-up (:func:`perfmodel.memory.reserved_activation_bytes`): the peak of one
    profiling pass of ``prefill_chunk_tokens`` tokens (the fused-MoE kernel's workspaces, held
    for the whole pass, beside the pass's other activations; the widest unrouted MLP's where it
    is larger; its sampler's logits over ``max_num_seqs`` rows where those are larger still)
    and the memory CUDA holds outside the framework's allocator. Fitted on the engine's own
    start-up logs (:mod:`perfmodel.calibration.fit_vllm_memory`)."""

    fixed_bytes: NonNegativeFloat = Field(description="a: the pass's activations that do not grow "
                                          "with its tokens, bytes")
    hidden_copies: NonNegativeFloat = Field(description="b: activations of the width of the hidden "
                                            "state held at the peak, per token (b·T·H·b_a bytes)")
    mlp_copies: NonNegativeFloat = Field(description="c: of a gated MLP's three intermediate widths "
                                         "(gate, up, product) held at the peak, per token "
                                         "(c·T·3·I·b_a bytes; I: the widest unrouted MLP on one GPU)")
    logit_bytes: NonNegativeFloat = Field(description="s: bytes per logit of the sampler's pass over "
                                          "max_num_seqs rows of the vocabulary (s·N_seqs·V)")
    non_torch_bytes: NonNegativeFloat = Field(description="memory CUDA holds outside the framework's "
                                              "allocator (context, library handles), bytes")
    source: str = ""


class EngineProfile(_Strict):
    """One engine on one GPU (or on any GPU when ``gpu`` is null)."""

    name: str
    engine: str
    gpu: str | None = None
    calibrated: bool = False
    description: str = ""
    peaks: Literal["datasheet", "measured"] = "datasheet"
    efficiency: dict[OpClassName, Efficiency]
    latency: Latency = Latency()
    options: Options = Options()
    error_band: ErrorBand | None = None
    serving_error_band: ServingBand | None = Field(
        default=None, description="How far the serving simulation on this profile lands from measured "
        "serving runs (perfmodel.calibration.fit_serving_band); absent: not measured.")
    quantization: dict[str, QuantEfficiency] = Field(
        default_factory=dict, description="Per quantization scheme (specs/quantization.yaml): "
        "its kernels' efficiency multipliers; a scheme not listed runs at 1.0.")
    kv_cache: dict[str, KVCacheEfficiency] = Field(
        default_factory=dict, description="Per KV-cache dtype (--kv-dtype): the attention kernels' "
        "memory efficiency multiplier when the cache is stored in it; a dtype not listed, and the "
        "model's own, run at 1.0.")
    activation_reserve: ActivationReserve | None = Field(
        default=None, description="The memory the engine keeps out of its KV cache for activations "
        "at start-up, fitted on its logs; absent: the largest op's activations at the pass's tokens.")
    fitted_from: str | None = None
    fit: dict[str, Any] | None = Field(
        default=None, description="How the profile was fitted: data, split, residual statistics.")

    def model_post_init(self, _context: object) -> None:
        missing = [c for c in OP_CLASSES if c not in self.efficiency]
        if missing:
            raise ValueError(f"efficiency is missing op classes: {', '.join(missing)}")
        from perfmodel.quantization import load_schemes, scheme_names

        unknown = [name for name in self.quantization if name not in scheme_names()]
        if unknown:
            raise ValueError(f"quantization: unknown scheme '{unknown[0]}' "
                             f"(known: {', '.join(scheme_names())})")
        unknown_kv = [name for name in self.kv_cache if name not in KV_CACHE_DTYPES]
        if unknown_kv:
            raise ValueError(f"kv_cache: unknown dtype '{unknown_kv[0]}' (known: {', '.join(KV_CACHE_DTYPES)})")
        untiled = [name for name, q in self.quantization.items()
                   if (q.tile_s or q.k_step_s or q.bitmatrix_one_s or q.bitmatrix_loop_s or q.bitmatrix_column_s)
                   and load_schemes()[name].moe_tile is None]
        if untiled:
            raise ValueError(f"quantization.{untiled[0]}: tile_s, k_step_s and the bitmatrix_*_s are the "
                             "times of a tiled MoE kernel, and this scheme names no moe_tile "
                             "(specs/quantization.yaml)")
        unlaunched = [name for name, q in self.quantization.items()
                      if q.host_layer_s and load_schemes()[name].moe_tile is None
                      and not load_schemes()[name].quantizes_activations]
        if unlaunched:
            raise ValueError(f"quantization.{unlaunched[0]}: host_layer_s is the host time of a tiled MoE "
                             "kernel's launches or of the routed experts' activation quantization, and this "
                             "scheme has neither (specs/quantization.yaml)")

    def residuals(self, key: str) -> dict[str, Any]:
        """What the fit recorded of its residuals under ``fit.residuals.<key>`` (``models``,
        ``quantization``, ``kv_cache``, …; :mod:`perfmodel.calibration.fit`), empty where it
        recorded none."""
        return (((self.fit or {}).get("residuals") or {}).get(key)) or {}

    def quant_efficiency(self, scheme: str) -> QuantEfficiency:
        """The efficiency multipliers of a quantization scheme's kernels (1.0 when not listed)."""
        return self.quantization.get(scheme, QuantEfficiency())

    def kv_cache_multiplier(self, kv_dtype: str, model_dtype: str) -> float:
        """μ_kv of the attention kernels with the KV cache in ``kv_dtype`` beside a model whose
        unquantized layers are ``model_dtype``: 1.0 where they are the same or the profile does
        not list the cache's dtype."""
        if kv_dtype == model_dtype or kv_dtype not in self.kv_cache:
            return 1.0
        return self.kv_cache[kv_dtype].attention_memory

    @property
    def moe_block_tiers(self) -> tuple[tuple[float, int], ...]:
        """The fused-MoE tile rows by tokens per pass, ((at most T tokens, M), ...), the last
        for any T (:func:`perfmodel.ops.moe.block_rows`): ``options.moe_block_m``, else vLLM's
        default config for engine vllm (:data:`VLLM_MOE_BLOCK_M`), else no padding (M = 1)."""
        given = self.options.moe_block_m
        if given is None:
            tiers = VLLM_MOE_BLOCK_M if self.engine == "vllm" else ((None, 1),)
        elif isinstance(given, int):
            tiers = ((None, given),)
        else:
            tiers = tuple((t.max_tokens, t.block_m) for t in given)
        from perfmodel.ops.moe import row_tiers  # sympy: only where a formula is built

        return row_tiers(tiers)

    @property
    def pads_cudagraphs(self) -> bool:
        """Whether a pass replayed from a CUDA graph runs at the graph's padded size
        (``options.cudagraph_padding``, else engine vllm)."""
        given = self.options.cudagraph_padding
        return given if given is not None else self.engine == "vllm"

    @property
    def max_sequences(self) -> int | None:
        """Most sequences running at once: ``options.max_num_seqs``, else vLLM's default for
        engine vllm (:data:`VLLM_MAX_NUM_SEQS`), else None (no limit: the KV cache alone bounds it)."""
        given = self.options.max_num_seqs
        return given if given is not None else (VLLM_MAX_NUM_SEQS if self.engine == "vllm" else None)

    def usable_bytes(self, gpu, fraction: float | None = None) -> float:
        """Bytes of one GPU (``gpu``: a GPUSpec) the engine may fill with weights, activations and
        KV cache: its memory fraction (``fraction``; default ``options.memory_usable_fraction``)
        of what CUDA reports (``hbm_capacity_gib``), less what CUDA holds outside the framework's
        allocator (``activation_reserve.non_torch_bytes``)."""
        outside = self.activation_reserve.non_torch_bytes if self.activation_reserve is not None else 0.0
        share = self.options.memory_usable_fraction if fraction is None else fraction
        return gpu.hbm_capacity_bytes * share - outside

    def with_memory_fraction(self, fraction: float) -> "EngineProfile":
        """This profile for an engine allowed ``fraction`` (0 < f ≤ 1) of each GPU's memory
        (vLLM's --gpu-memory-utilization): ``options.memory_usable_fraction`` replaced."""
        if not 0 < fraction <= 1:
            raise ValueError(f"a GPU memory fraction is in (0, 1], got {fraction!r}")
        return self.model_copy(update={"options": self.options.model_copy(update={"memory_usable_fraction": fraction})})

    def efficiency_of(self, op_class: str) -> Efficiency:
        """η of an op class, an optional class falling back to its base class."""
        if op_class in self.efficiency:
            return self.efficiency[op_class]  # type: ignore[index]
        return self.efficiency[OPTIONAL_OP_CLASSES[op_class]]  # type: ignore[index]


def load_profile_file(path: Path) -> EngineProfile:
    """Load and validate one profile YAML."""
    data = read_mapping(path, SpecError, what="profile ")
    try:
        return EngineProfile(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SpecError(f"invalid profile {path.name}: {loc + ': ' if loc else ''}{err['msg']}") from None


#: The engine a prediction uses unless told otherwise: vLLM, what users serve MoE models with,
#: fitted on the H200 (``calibration/profiles/h200-sxm-vllm.yaml``) and on the H100 (``h100-sxm-vllm.yaml``,
#: anchored on the H200's), and transferred to other GPUs as fractions of their datasheet peaks.
#: ``roofline`` (datasheet peaks, stated derates) stays
#: available as the uncalibrated bound.
DEFAULT_ENGINE = "vllm"

#: The GPU measured in every kind of row: its fit anchors the other GPUs' vllm fits
#: (:mod:`perfmodel.calibration.fit_anchor`) and is the one carried to a GPU without a fit of its own.
REFERENCE_GPU = "h200-sxm"

#: What an engine name may be: letters, digits, '.', '_' and '-' (no path, no glob pattern).
_ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@cache
def load_profile(engine: str, gpu: str) -> EngineProfile:
    """The profile for an engine on a GPU.

    Lookup: ``<gpu>-<engine>.yaml`` (fitted on that GPU), else ``<engine>.yaml`` (any GPU),
    else a profile of that engine fitted on another GPU (one that fitted every term itself before
    one anchored on another's fit, and :data:`REFERENCE_GPU`'s before the others), transferred: its efficiencies are
    fractions of datasheet peaks, applied to this GPU's peaks (the prediction's provenance
    says so).
    """
    path = Path(engine)
    if path.suffix in (".yaml", ".yml"):
        return load_profile_file(path)
    if _ENGINE_NAME.fullmatch(engine):  # a name, never a pattern or a path
        for candidate in (PROFILES_DIR / f"{gpu}-{engine}.yaml", PROFILES_DIR / f"{engine}.yaml"):
            if candidate.is_file():
                return load_profile_file(candidate)
        fitted = [p for p in map(load_profile_file, sorted(PROFILES_DIR.glob(f"*-{engine}.yaml")))
                  if p.engine == engine]
        if fitted:  # a fit of every term before one anchored on another's (fit.anchor), the reference's first
            return min(fitted, key=lambda p: (bool((p.fit or {}).get("anchor")), p.gpu != REFERENCE_GPU))
    raise SpecError(f"unknown engine '{engine}' for GPU '{gpu}' (known: {', '.join(list_engines())})")


def fitted_profile_path(engine: str, gpu: str) -> Path:
    """The file of an engine's profile fitted on one GPU (``<gpu>-<engine>.yaml``), never a
    transferred one; ``load_profile`` of it gives that profile on any GPU."""
    path = PROFILES_DIR / f"{gpu}-{engine}.yaml"
    if not (_ENGINE_NAME.fullmatch(engine) and path.is_file()):
        fitted = sorted(p.name.removesuffix(f"-{engine}.yaml") for p in PROFILES_DIR.glob(f"*-{engine}.yaml"))
        raise SpecError(f"no {engine} profile fitted on {gpu} (fitted on: {', '.join(fitted) or 'none'})")
    return path


def list_engines() -> list[str]:
    """Engine names available: generic profiles and the engines of fitted ones."""
    names = set()
    for path in PROFILES_DIR.glob("*.yaml"):
        profile = load_profile_file(path)
        names.add(profile.engine)
    return sorted(names)
