"""What kind of op an :class:`perfmodel.ops.Op` is, as plain enums: which peak its FLOPs run
at (:class:`Peak`), which efficiency curves an engine profile gives it (:class:`OpClass`), and
which profiler category its kernels are measured under (:class:`ProfilerCategory`).

No sympy here: the profile, the measured rows and the command line read these names without
building any formula (:mod:`perfmodel.ops` re-exports them).
"""

from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    """A string enum that prints (and formats) as its value, on every supported Python."""

    __str__ = str.__str__
    __format__ = str.__format__


class Peak(_Named):
    """The compute peak an op class's FLOPs run at."""

    MATMUL = "matmul"  #: the dense matmul peak of the compute dtype, F_peak
    ATTENTION = "attention"  #: the attention core's matmul peak (bf16), F_peak_attn
    NONE = "none"  #: no FLOPs: costed by the bytes it moves only


class ProfilerCategory(_Named):
    """The categories a profiled step's kernel time is split into
    (:mod:`perfmodel.measuring.profiler_split`), in the order a measured split lists them."""

    ATTENTION = "attention"
    EXPERT_GEMM = "expert_gemm"
    DENSE_GEMM = "dense_gemm"
    ROUTER_TOPK = "router_topk"
    NORM_ELEMENTWISE = "norm_elementwise"
    COPY = "copy"
    OTHER = "other"


class OpClass(_Named):
    """Efficiency classes: each has its own η curves in an engine profile (keyed by the value).

    Each member carries ``peak`` (:class:`Peak`), ``fallback`` (the class whose curves it
    runs at when a profile gives it none; None for the classes every profile must give),
    ``category`` (:class:`ProfilerCategory` of its kernels) and ``over_link`` (it moves
    bytes over the scale-up link, not HBM); :attr:`small_kernels` says which fixed cost per
    kernel it pays.
    """

    GEMM = ("gemm", Peak.MATMUL, None, ProfilerCategory.DENSE_GEMM)
    GROUPED_GEMM = ("grouped_gemm", Peak.MATMUL, None, ProfilerCategory.EXPERT_GEMM)
    #: the GEMMs of a dense MLP (a dense model's, a dense layer's of an MoE model): the same
    #: library GEMMs as the projections, stated apart where a profile's ``gemm`` compute was
    #: fitted on models that have none (the vllm fit takes them from the GEMM microbenchmark)
    DENSE_MLP = ("dense_mlp", Peak.MATMUL, "gemm", ProfilerCategory.DENSE_GEMM)
    #: the attention core
    ATTENTION = ("attention", Peak.ATTENTION, None, ProfilerCategory.ATTENTION)
    #: decode attention over a whole allocated cache with an explicit mask
    ATTENTION_MASKED = ("attention_masked", Peak.ATTENTION, "attention", ProfilerCategory.ATTENTION)
    ELEMENTWISE = ("elementwise", Peak.NONE, None, ProfilerCategory.NORM_ELEMENTWISE)
    #: materializing per-head keys/values before the attention kernel
    COPY = ("copy", Peak.NONE, "elementwise", ProfilerCategory.COPY)
    COMM = ("comm", Peak.NONE, None, ProfilerCategory.OTHER, True)

    def __new__(cls, value: str, peak: Peak, fallback: str | None, category: ProfilerCategory,
                over_link: bool = False) -> OpClass:
        member = str.__new__(cls, value)
        member._value_ = value
        member.peak = peak
        member._fallback = fallback
        member.category = category
        member.over_link = over_link
        return member

    @property
    def small_kernels(self) -> bool:
        """Its kernels are small memory-bound ones (elementwise, copies, index ops): each pays the
        fixed cost of a small kernel, t_kernel_small, not a compute kernel's t_kernel (a GEMM's
        or attention kernel's tile setup and tail). An op over a link pays its collective's
        fixed latency instead."""
        return self.peak is Peak.NONE and not self.over_link

    @property
    def fallback(self) -> OpClass | None:
        """The class whose η curves this one runs at when a profile gives it none."""
        return None if self._fallback is None else OpClass(self._fallback)

    @classmethod
    def required(cls) -> tuple[OpClass, ...]:
        """Classes every engine profile gives η curves for."""
        return tuple(c for c in cls if c.fallback is None)

    @classmethod
    def optional(cls) -> tuple[OpClass, ...]:
        """Classes a profile may tune separately (else they run as their fallback)."""
        return tuple(c for c in cls if c.fallback is not None)
