"""Grouping a torch.profiler trace of one forward into op categories (GPU kernel time, ms).

Categories: ``attention`` (the attention core: SDPA / flash / efficient / cuDNN kernels),
``expert_gemm`` (routed-expert GEMMs), ``dense_gemm`` (every other GEMM: q/k/v/o and MLA
projections, dense and shared-expert MLPs, lm_head), ``router_topk`` (routing: the router's
gate GEMM, softmax, top-k, and the token permutation of the experts: sort, histc, cumsum,
gather/index), ``norm_elementwise`` (norms, activations, rotary, residual adds, scaling),
``copy`` (KV-cache writes, memcpy/memset, cat, contiguous copies, embedding gathers),
``other`` (everything else: mask building, argmax, kernels the trace could not link).

How a kernel is classified. Forward hooks open a ``record_function("pm::<scope>")`` range
around each module of interest while profiling, so every kernel has (1) its kernel name, (2) the
aten op that launched it, and (3) the innermost scope enclosing that op. Scopes, from the
module's class / attribute name: ``attn`` (``*Attention``), ``experts`` (``*Experts``),
``router`` (``*Router*`` / ``*Gate*`` modules, e.g. ``MixtralTopKRouter``), ``mlp`` (``*MLP``,
shared experts, ``shared_expert_gate``), ``norm`` (``*Norm*``), ``rope`` (``*Rotary*``),
``lm_head``, ``embed``, ``moe`` (the sparse-MoE block around router and experts).

Rules, first match wins:

0. a kernel launched inside an SDPA / attention aten op (e.g. its boolean-mask conversion)
   -> ``attention``;
1. scope ``router`` -> ``router_topk``; scope ``norm`` or ``rope`` -> ``norm_elementwise``;
2. attention op/kernel (``scaled_dot_product``, ``flash``, ``fmha``, ``efficient_attention``,
   ``cudnn`` attention) -> ``attention``;
3. copy-like op or kernel (``copy_``, ``index_copy_``, ``cat``, ``Memcpy``, ``Memset``,
   ``embedding``, dtype casts ``_to_copy``...) -> ``copy`` (so ``repeat_kv`` and the KV-cache
   write inside attention count as ``copy``);
4. GEMM op/kernel (``mm``, ``addmm``, ``bmm``, ``linear``, ``matmul``, ``_grouped_mm``,
   ``_scaled_mm``; kernel names ``gemm``, ``nvjet``, ``cutlass``, ``xmma``, ``gemv``) ->
   ``expert_gemm`` in scope ``experts`` (or for ``_grouped_mm``), else ``dense_gemm``;
5. routing op (``topk``, ``sort``, ``argsort``, ``histc``, ``bincount``, ``cumsum``, ``one_hot``,
   ``index``, ``gather``, ``scatter``, ``nonzero``, ``where``) in scope ``experts``/``moe`` or
   anywhere for ``topk`` -> ``router_topk``;
6. scope ``mlp``/``experts``/``moe``/``attn``/``lm_head``, or an elementwise-looking op
   (``add``, ``mul``, ``silu``, ``rsqrt``, ``pow``, ``mean``, ``softmax``, ``layer_norm``...)
   -> ``norm_elementwise``;
7. otherwise ``other``.

On CUDA the unit is a GPU kernel (its duration from the trace); the total is the sum of all GPU
kernel/memcpy/memset durations, and kernels the trace did not link to a CPU op go to ``other``,
so the categories always add up to the total. On CPU (tests) the unit is the self CPU time of
each aten op, a view/allocation/copy helper counted with the nearest enclosing real op (so an
``mm``'s output allocation counts as GEMM), with the same rules.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from perfmodel.measuring.results import PROFILE_CATEGORIES

#: The categories, in the order a split lists them (:class:`perfmodel.ops.ProfilerCategory`).
CATEGORIES = PROFILE_CATEGORIES

SCOPE_PREFIX = "pm::"

_COPY = re.compile(
    r"(^aten::(copy_|index_copy_?|_to_copy|to|cat|clone|contiguous|embedding|index_put_?|"
    r"slice_scatter|_unsafe_index_put|fill_|zero_|zeros|zeros_like|empty_like|new_zeros|"
    r"_foreach_copy_|stack)$)|memcpy|memset|catarraybatchedcopy|copy_kernel|indexselect|"
    r"index_select|embedding",
    re.I,
)
_ATTN = re.compile(r"scaled_dot_product|flash|fmha|efficient_attention|cudnn.*att|attention|sdpa", re.I)
_GEMM_OP = re.compile(
    r"^aten::(mm|addmm|bmm|baddbmm|linear|matmul|_grouped_mm|grouped_mm|_scaled_mm|"
    r"_scaled_grouped_mm|addmv|mv|dot|einsum)$",
    re.I,
)
_GEMM_KERNEL = re.compile(r"gemm|nvjet|cutlass|xmma|gemv|cublas|matmul|splitk", re.I)
_GROUPED = re.compile(r"grouped_mm|grouped", re.I)
_ROUTING = re.compile(
    r"^aten::(topk|sort|argsort|histc|bincount|cumsum|one_hot|index|gather|scatter|scatter_add_?|"
    r"nonzero|where|masked_select|unique|_unique2|arange|repeat_interleave)$|"
    r"topk|radix|sort|histogram|cumsum|scan",
    re.I,
)
_ELEMENTWISE = re.compile(
    r"^aten::(add_?|sub_?|mul_?|div_?|silu_?|gelu_?|sigmoid_?|rsqrt|sqrt|pow|mean|sum|neg|exp|"
    r"softmax|_softmax|log_softmax|layer_norm|native_layer_norm|rms_norm|_fused_rms_norm|"
    r"masked_fill_?|clamp_?|maximum|minimum|max|abs|cos|sin|tanh|relu_?|reciprocal|_to_dtype|"
    r"type_as|float|bfloat16)$|elementwise|reduce|norm|silu|act_and_mul|vectorized|unrolled",
    re.I,
)


def classify(kernel_name: str, op_name: str | None, scope: str | None, inside_attention_op: bool = False) -> str:
    """The category of one kernel (see the module docstring for the rules)."""
    op = op_name or ""
    kernel = kernel_name or ""
    names = [n for n in (kernel, op) if n]
    if inside_attention_op:
        return "attention"
    if scope == "router":
        return "router_topk"
    if scope in ("norm", "rope"):
        return "norm_elementwise"
    if any(_ATTN.search(n) for n in names):
        return "attention"
    if any(_COPY.search(n) for n in names):
        return "copy"
    if _GEMM_OP.search(op) or (_GEMM_KERNEL.search(kernel) and not _ROUTING.search(op)):
        if scope == "experts" or _GROUPED.search(op) or _GROUPED.search(kernel):
            return "expert_gemm"
        return "dense_gemm"
    if _ROUTING.search(op) or (not op and _ROUTING.search(kernel)):
        if scope in ("experts", "moe") or "topk" in op.lower() or "topk" in kernel.lower():
            return "router_topk"
    if scope in ("mlp", "experts", "moe", "attn", "lm_head"):
        return "norm_elementwise"
    if _ELEMENTWISE.search(op) if op else _ELEMENTWISE.search(kernel):
        return "norm_elementwise"
    return "other"


# --------------------------------------------------------------------------- scope hooks


def module_scope(attr_name: str, module: nn.Module) -> str | None:
    """The profiling scope of a module, from its class, attribute name and children (None: none)."""
    low = type(module).__name__.lower()
    if attr_name == "lm_head":
        return "lm_head"
    if attr_name == "embed_tokens" or isinstance(module, nn.Embedding):
        return "embed"
    if "rotary" in low:
        return "rope"
    if "norm" in low:
        return "norm"
    if low.endswith("experts"):
        return "experts"
    if low.endswith("attention") or attr_name == "self_attn":
        return "attn"
    if any(type(c).__name__.lower().endswith("experts") for c in module.children()):
        return "moe"
    if "router" in low or attr_name == "gate":
        return "router"
    if low.endswith("mlp") or attr_name in ("shared_expert", "shared_experts", "shared_expert_gate"):
        return "mlp"
    return None


@contextmanager
def scope_hooks(model: nn.Module) -> Iterator[int]:
    """While active, each scoped module's forward runs inside ``record_function("pm::<scope>")``.

    Yields the number of hooked modules. Use only around profiled eager runs (not in graph
    capture): the hooks cost CPU time.
    """
    from torch.autograd.profiler import record_function

    handles = []
    stacks: dict[int, list[Any]] = {}

    def pre(mod, args, name):
        rf = record_function(SCOPE_PREFIX + name)
        rf.__enter__()
        stacks.setdefault(id(mod), []).append(rf)

    def post(mod, args, output):
        stack = stacks.get(id(mod))
        if stack:
            stack.pop().__exit__(None, None, None)

    count = 0
    for full_name, module in model.named_modules():
        attr = full_name.rsplit(".", 1)[-1]
        scope = module_scope(attr, module)
        if scope is None:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, s=scope: pre(m, a, s)))
        handles.append(module.register_forward_hook(post))
        count += 1
    try:
        yield count
    finally:
        for h in handles:
            h.remove()
        for stack in stacks.values():  # a forward that raised leaves ranges open
            while stack:
                stack.pop().__exit__(None, None, None)


# --------------------------------------------------------------------------- trace parsing


@dataclass
class ProfileSplit:
    """Kernel time of one profiled region, total and per category (ms)."""

    kernel_ms: float
    split_ms: dict[str, float]
    n_kernels: int
    unit: str  # "gpu_kernel" or "cpu_op"
    unlinked_ms: float = 0.0  # GPU time not linked to a CPU op (counted in "other")
    top_kernels: list[tuple[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_ms": round(self.kernel_ms, 6),
            "split_ms": {k: round(v, 6) for k, v in self.split_ms.items()},
            "n_kernels": self.n_kernels,
            "unit": self.unit,
            "unlinked_ms": round(self.unlinked_ms, 6),
            "top_kernels": [[n[:120], round(ms, 6)] for n, ms in self.top_kernels],
        }


def _inside_attention_op(event: Any) -> bool:
    """Whether an enclosing CPU op is an SDPA / attention op (its mask conversion, padding... count
    as attention)."""
    parent = getattr(event, "cpu_parent", None)
    while parent is not None:
        name = getattr(parent, "name", "") or ""
        if name.startswith("aten::") and _ATTN.search(name):
            return True
        parent = getattr(parent, "cpu_parent", None)
    return False


def _scope_of(event: Any) -> str | None:
    parent = event
    while parent is not None:
        name = getattr(parent, "name", "") or ""
        if name.startswith(SCOPE_PREFIX):
            return name[len(SCOPE_PREFIX):]
        parent = getattr(parent, "cpu_parent", None)
    return None


def _is_device_event(event: Any) -> bool:
    dtype = getattr(event, "device_type", None)
    return dtype is not None and str(dtype).endswith(("CUDA", "PrivateUse1", "XPU"))


def _is_annotation(event: Any) -> bool:
    name = getattr(event, "name", "") or ""
    return (
        bool(getattr(event, "is_user_annotation", False))
        or name.startswith(SCOPE_PREFIX)
        or name.startswith("ProfilerStep")
        or name.startswith("pm_region")
    )


def is_kernel_event(event: Any) -> bool:
    """Whether a profiler event is GPU work (a kernel, memcpy or memset), not a CPU op or an
    annotation's range on the device."""
    return _is_device_event(event) and not _is_annotation(event)


def _finalize(split: dict[str, float], per_kernel: dict[str, float], n: int, unit: str,
              unlinked_ms: float) -> ProfileSplit:
    split = {c: split.get(c, 0.0) for c in CATEGORIES}
    total = sum(split.values())
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return ProfileSplit(total, split, n, unit, unlinked_ms, top)


def split_events(events: Any, device: str) -> ProfileSplit:
    """Group a profiler event list (``prof.events()``) into categories (see module docstring)."""
    split: dict[str, float] = {}
    per_kernel: dict[str, float] = {}
    if device == "cuda":
        linked_us = 0.0
        n = 0
        for ev in events:
            if _is_device_event(ev) or _is_annotation(ev):
                continue
            kernels = getattr(ev, "kernels", None) or []
            if not kernels:
                continue
            scope = _scope_of(ev)
            in_attn = _inside_attention_op(ev)
            for k in kernels:
                cat = classify(k.name, ev.name, scope, in_attn)
                ms = k.duration / 1e3
                split[cat] = split.get(cat, 0.0) + ms
                per_kernel[k.name] = per_kernel.get(k.name, 0.0) + ms
                linked_us += k.duration
                n += 1
        device_us = 0.0
        for ev in events:
            if is_kernel_event(ev):
                device_us += ev.time_range.end - ev.time_range.start
        unlinked_ms = max(0.0, (device_us - linked_us) / 1e3)
        if unlinked_ms > 0:
            split["other"] = split.get("other", 0.0) + unlinked_ms
        return _finalize(split, per_kernel, n, "gpu_kernel", unlinked_ms)
    # CPU: every aten op's self time; view/allocation ops count as their nearest real parent op
    n = 0
    for ev in events:
        name = ev.name or ""
        if not name.startswith("aten::") or _is_device_event(ev):
            continue
        ms = ev.self_cpu_time_total / 1e3
        if ms <= 0:
            continue
        op = _effective_op(ev)
        cat = classify(op, op, _scope_of(ev), _inside_attention_op(ev))
        split[cat] = split.get(cat, 0.0) + ms
        per_kernel[op] = per_kernel.get(op, 0.0) + ms
        n += 1
    return _finalize(split, per_kernel, n, "cpu_op", 0.0)


_META_OPS = re.compile(
    r"^aten::(empty|empty_strided|empty_like|as_strided|view|_reshape_alias|reshape|resize_|t|"
    r"transpose|permute|expand|unsqueeze|squeeze|slice|select|detach|detach_|alias|_unsafe_view|"
    r"split|split_with_sizes|chunk|narrow|unbind|lift_fresh|result_type|resolve_conj|resolve_neg|"
    r"_to_copy|to|contiguous|clone|copy_|scalar_tensor|flatten|unflatten|numpy_T|expand_as|view_as|"
    r"_local_scalar_dense|item|is_nonzero|zero_|fill_)$"
)


def _effective_op(ev: Any) -> str:
    """The op a CPU event's time belongs to: itself, or for view/allocation/copy helpers the
    nearest enclosing aten op that is not one (an ``mm``'s output allocation counts as ``mm``)."""
    name = ev.name or ""
    parent = getattr(ev, "cpu_parent", None)
    while _META_OPS.match(name) and parent is not None and (parent.name or "").startswith("aten::"):
        if not _META_OPS.match(parent.name):
            return parent.name
        parent = getattr(parent, "cpu_parent", None)
    return name


def profile_call(fn, device: str, model: nn.Module | None = None) -> ProfileSplit:
    """Run ``fn()`` once under torch.profiler (with scope hooks on ``model``) and split it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    hooks = scope_hooks(model) if model is not None else _null()
    with profile(activities=activities, record_shapes=False) as prof:
        with hooks:
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return split_events(prof.events(), device)


@contextmanager
def _null() -> Iterator[int]:
    yield 0
