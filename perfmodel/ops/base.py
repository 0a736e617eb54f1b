"""The :class:`Op`: one kernel-level step of a forward pass and its cost, as sympy.

What kind of op it is lives in typed fields, never in its name: its :class:`OpClass` (which
peak it runs at, which efficiency curves it has, which profiler category its kernels are
measured under), its :class:`Role` in the model, and whether its attention is windowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import sympy as sp

from perfmodel.op_classes import OpClass, Peak, ProfilerCategory


class Role(Enum):
    """What an op is in the model, where that changes how it is counted or measured.

    ``category``: the profiler category its kernels are measured under when that is not its
    class's (None: its class's).
    """

    NONE = ("none", None)
    #: router logits, softmax and top-k: measured as routing, not as a dense GEMM
    ROUTER = ("router", ProfilerCategory.ROUTER_TOPK)
    #: the E routed experts, of which each token uses k (active parameters k/E): measured as
    #: expert GEMMs, one grouped GEMM (fused MoE) or a dense GEMM per expert (a loop over them)
    ROUTED_EXPERTS = ("routed_experts", ProfilerCategory.EXPERT_GEMM)

    def __init__(self, label: str, category: ProfilerCategory | None) -> None:
        self.label = label
        self.category = category


ZERO = sp.Integer(0)


@dataclass(frozen=True)
class Quantized:
    """What a weight-quantization scheme changes in a linear layer (:mod:`perfmodel.ops.quant`):
    its GEMMs run at the scheme's peak and kernel efficiency.

    ``weights``: weight elements it reads per pass on one GPU (what a weight-only kernel
    dequantizes); ``inputs``: (rows, width) of each activation matrix its GEMMs multiply, on
    one GPU (what a W8A8 scheme quantizes on the fly before them).
    """

    weights: sp.Expr
    inputs: tuple[tuple[sp.Expr, sp.Expr], ...] = ()


@dataclass(frozen=True)
class Op:
    """Cost of one op for one forward pass, per GPU, in the symbols of :mod:`perfmodel.symbols`.

    ``flops`` counts matrix (tensor-core) FLOPs only, 2 per multiply-add; elementwise work is
    costed by its bytes. Bytes are HBM traffic, split by what is moved: ``weight_bytes``
    (parameters read), ``act_bytes`` (activations read + written) and ``kv_bytes`` (KV cache
    read + written). ``comm_bytes`` is what one GPU sends over the scale-up link. ``params``
    is the parameter count the op holds in one layer of the whole model (unsharded).
    ``efficiency_size`` is the argument x of its class's compute efficiency curve η_c(x), in
    the class's unit (GEMM rows, tokens per expert, keys attended, elements). ``kernels``
    counts kernel launches, for fixed per-kernel latency; ``fixed_latency`` is any other fixed
    time, s (collective steps; what a timed tile table adds to the experts, an expression of the
    pass's tokens: :func:`perfmodel.ops.moe.table_extra`). ``stored_bytes`` is the parameter memory the op keeps on one
    GPU and ``kv_bytes_per_token`` the KV-cache bytes it keeps per cached token per sequence
    on one GPU. ``role``: what the op is in the model (:class:`Role`); ``windowed``: it
    attends over a sliding (or chunked) window, so the cache it keeps holds at most W tokens.
    ``kernels`` may be an expression (a loop over the experts touched launches per expert).
    ``quantized``: set on a linear layer whose weights a quantization scheme stores
    (:class:`Quantized`); None for every other op. ``host_syncs``: times per pass the host
    stops to wait for the GPU before it can launch the rest (a loop over the touched experts
    reads each expert's rows back), an expression; an eager pass pays a fixed host time per
    sync, serial with its GPU work (:func:`perfmodel.prediction.pass_time`), a replayed CUDA
    graph none. ``uncompiled``: times per pass the engine runs the op from Python, its kernels
    dispatched one by one inside an opaque custom op that its compiled code calls (vLLM's shared
    experts, inside its fused-MoE op); a launched eager pass pays a host time for each
    (:func:`perfmodel.prediction.launch_floor`), a replayed CUDA graph none.
    ``context_bytes``: the bytes of a per-sequence cache read that one more key per
    sequence adds (B sequences × bytes per key read; the attention core's), at which its class's
    ``context_half`` keys per sequence are costed in memory time (:func:`perfmodel.roofline.op_time`).
    ``tile_floor``: the least time its kernels take whatever their bytes and FLOPs, s, as an
    expression (a tiled kernel's waves of K loops, :func:`perfmodel.ops.moe.tile_floor`); 0: none.
    ``launch_host``: host time per pass its kernels add to a launched eager pass, s, as an
    expression: kernels a library launches from Python, beside the layer's compiled code (the
    tiled MXFP4 MoE kernel, t_moe_host); a replayed CUDA graph none; 0: none.
    ``split_host``: host time per pass it adds to an engine step that holds prompt tokens beside
    decodes, s, as an expression: an attention the engine runs as two paths in such a step, the
    second launched from the host beside the first (MLA's, t_mla_split); 0: none.
    ``memory_scale``: a factor on its memory time, as an expression (a fused-MoE kernel at tiles
    tuned for larger passes, :func:`perfmodel.ops.moe.off_table_scale`); 1: none.
    ``compute_scale``: a factor on its compute time, as an expression (a fused-MoE kernel on
    experts whose weights outgrow the L2 cache, :func:`perfmodel.ops.moe.l2_spill_scale`); 1: none.
    """

    name: str
    op_class: OpClass
    flops: sp.Expr = ZERO
    weight_bytes: sp.Expr = ZERO
    act_bytes: sp.Expr = ZERO
    kv_bytes: sp.Expr = ZERO
    comm_bytes: sp.Expr = ZERO
    params: sp.Expr = ZERO
    efficiency_size: sp.Expr = field(default_factory=lambda: sp.Integer(1))
    kernels: int | sp.Expr = 1
    fixed_latency: sp.Expr = ZERO
    stored_bytes: sp.Expr = ZERO
    kv_bytes_per_token: sp.Expr = ZERO
    role: Role = Role.NONE
    windowed: bool = False
    quantized: Quantized | None = None
    host_syncs: int | sp.Expr = 0
    uncompiled: int | sp.Expr = 0
    context_bytes: sp.Expr = ZERO
    tile_floor: sp.Expr = ZERO
    launch_host: sp.Expr = ZERO
    split_host: sp.Expr = ZERO
    memory_scale: sp.Expr = field(default_factory=lambda: sp.Integer(1))
    compute_scale: sp.Expr = field(default_factory=lambda: sp.Integer(1))

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_class", OpClass(self.op_class))
        if self.op_class.peak is Peak.NONE and sp.sympify(self.flops) != 0:
            raise ValueError(f"op {self.name}: class {self.op_class} runs at no compute peak "
                             "but counts FLOPs")
        if self.quantized is not None and self.op_class.peak is not Peak.MATMUL:
            raise ValueError(f"op {self.name}: only a matmul-class op can be a quantized linear layer")

    @property
    def bytes(self) -> sp.Expr:
        """All HBM bytes moved: weights + activations + KV cache."""
        return self.weight_bytes + self.act_bytes + self.kv_bytes

    @property
    def category(self) -> ProfilerCategory:
        """The profiler category its kernels are measured under: its role's, else its class's."""
        return self.role.category or self.op_class.category

    def quantity(self, name: str) -> sp.Expr:
        """One cost quantity by name: flops, bytes, weight_bytes, act_bytes, kv_bytes, comm, params."""
        attr = {"comm": "comm_bytes"}.get(name, name)
        if attr == "bytes":
            return self.bytes
        if attr not in {"flops", "weight_bytes", "act_bytes", "kv_bytes", "comm_bytes", "params"}:
            raise KeyError(name)
        return getattr(self, attr)


@dataclass(frozen=True)
class LayerGroup:
    """Identical layers: ``count`` copies (an expression) of the same list of ops."""

    name: str
    count: sp.Expr
    ops: tuple[Op, ...]
