"""Building a transformers model from a zoo name or config.json, with random weights.

- :func:`make_config` turns a zoo name / path plus ``--set`` overrides (and ``--layers``) into a
  transformers config via ``AutoConfig.for_model``.
- :func:`build_model` instantiates ``AutoModelForCausalLM.from_config`` on the target device in
  bf16 with ``attn_implementation="sdpa"`` and the chosen experts implementation; weights come
  from the model's own initialiser (normal(0, initializer_range)); any matrix left all-zero or
  non-finite by the constructor is re-drawn from normal(0, 0.02) (:func:`ensure_random_weights`).
- :func:`apply_capture_patches` makes known non-capturable code CUDA-graph capturable without
  changing what it computes (see :data:`PATCH_NOTES`).
- :class:`CaptureSpy` runs one eager step and lists the ops that would break CUDA-graph capture
  (host syncs, host<->device copies), so the runner can fall back before trying.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from perfmodel.specs.families import family
from perfmodel.specs.zoo import display_name, load_hf_config

#: What each patch does and why it keeps the computation the same.
PATCH_NOTES = {
    "rotary_cached_inv_freq": (
        "rotary embeddings whose forward recomputes inv_freq on the host each call (PhiMoE) read "
        "the identical inv_freq buffer already on the device instead; only for rope_type "
        "'default', whose frequencies never change"
    ),
}


def make_config(model: str, overrides: list[str] | tuple[str, ...] = (), layers: int | None = None):
    """(HF config dict, transformers config) for a zoo name / path with overrides and layer count."""
    from transformers import AutoConfig

    items = list(overrides)
    if layers is not None:
        items.append(f"num_layers={int(layers)}")
    cfg = load_hf_config(model, items)
    cfg.pop("quantization_config", None)  # random weights at the point's dtype, never a checkpoint's format
    if cfg.get("model_type") == "llama4_text":
        from transformers import Llama4TextConfig

        config = Llama4TextConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    else:
        config = AutoConfig.for_model(**cfg)
    return cfg, config


def moe_shape(config: Any) -> tuple[int | None, int | None]:
    """(routed experts E, experts per token k) of a transformers config, by its family's fields
    (:mod:`perfmodel.specs.families`); None for dense models."""
    shape = family(config.model_type).moe_shape(config)
    if shape is None:
        return None, None
    return (shape.experts if shape.experts and shape.experts > 0 else None), shape.top_k


@dataclass
class ModelInfo:
    """Facts about a built model (counts in parameters, sizes in bytes, times in s)."""

    model_type: str
    display_name: str
    num_hidden_layers: int
    num_experts: int | None
    top_k: int | None
    params_total: int
    params_routed: int
    params_active: int
    weight_bytes: int
    kv_bytes_per_token: int  # all layers, K and V (or the MLA latent)
    build_s: float = 0.0
    attn_implementation: str = "sdpa"
    experts_implementation: str | None = None
    reinitialized: list[str] = field(default_factory=list)
    patches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def count_params(model: nn.Module, config: Any) -> tuple[int, int, int]:
    """(total, routed-expert, active per token) parameter counts.

    Routed-expert parameters are those of ``*Experts`` modules; active = total - routed * (1 - k/E).
    """
    total = sum(p.numel() for p in model.parameters())
    routed = 0
    for module in model.modules():
        if type(module).__name__.lower().endswith("experts"):
            routed += sum(p.numel() for p in module.parameters(recurse=True))
    e, k = moe_shape(config)
    active = total - int(routed * (1 - k / e)) if e and k else total
    return total, routed, active


def kv_bytes_per_token(config: Any, dtype_bytes: int = 2) -> int:
    """KV-cache bytes per token over all layers as the transformers StaticCache stores them."""
    layers = int(config.num_hidden_layers)
    kv_lora = getattr(config, "kv_lora_rank", None)
    if kv_lora:  # MLA: the compressed latent plus the shared rope key, one "head"
        return layers * (int(kv_lora) + int(config.qk_rope_head_dim)) * dtype_bytes
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers * 2 * kv * int(head_dim) * dtype_bytes


def meta_info(config: Any, experts_impl: str | None = None) -> ModelInfo:
    """Parameter counts without memory: the model built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model_info(model, config, weight_bytes=None, experts_implementation=experts_impl)


def model_info(model: nn.Module, config: Any, *, weight_bytes: int | None, **extra: Any) -> ModelInfo:
    """Counts of a built model (``weight_bytes`` None: 2 bytes per parameter, as bf16)."""
    total, routed, active = count_params(model, config)
    e, k = moe_shape(config)
    return ModelInfo(
        model_type=config.model_type,
        display_name=config.model_type,
        num_hidden_layers=int(config.num_hidden_layers),
        num_experts=e,
        top_k=k,
        params_total=total,
        params_routed=routed,
        params_active=active,
        weight_bytes=2 * total if weight_bytes is None else weight_bytes,
        kv_bytes_per_token=kv_bytes_per_token(config),
        **extra,
    )


@torch.no_grad()
def ensure_random_weights(model: nn.Module, std: float = 0.02) -> list[str]:
    """Re-draw matrices (2-D and up) that are all zero or not finite; returns their names."""
    redrawn = []
    for name, p in model.named_parameters():
        if not p.is_floating_point() or p.dim() < 2 or p.numel() == 0:
            continue
        bad = bool((p == 0).all()) or not bool(torch.isfinite(p).all())
        if bad:
            p.normal_(0.0, std)
            redrawn.append(name)
    return redrawn


def apply_capture_patches(model: nn.Module) -> list[str]:
    """Apply the semantics-preserving capture patches this model needs; returns their names."""
    applied = []
    for module in model.modules():
        if _needs_rotary_patch(module):
            def cached(config=None, *args, _m=module, **kwargs):
                return _m.inv_freq, _m.attention_scaling

            module.rope_init_fn = cached
            name = f"rotary_cached_inv_freq:{type(module).__name__}"
            if name not in applied:
                applied.append(name)
    return applied


def _needs_rotary_patch(module: nn.Module) -> bool:
    if "rotary" not in type(module).__name__.lower():
        return False
    if getattr(module, "rope_type", None) != "default":
        return False
    if not hasattr(module, "inv_freq") or not hasattr(module, "attention_scaling"):
        return False
    try:
        src = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return "self.rope_init_fn(" in src


def build_model(
    config: Any,
    device: str,
    experts_impl: str = "grouped_mm",
    dtype: torch.dtype = torch.bfloat16,
    attn_impl: str = "sdpa",
) -> tuple[nn.Module, ModelInfo]:
    """Instantiate the model with random weights on ``device`` (eval mode, no grad)."""
    from transformers import AutoModelForCausalLM

    notes: list[str] = []
    t = time.perf_counter()
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_impl,
                              "experts_implementation": experts_impl}
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        except ValueError as exc:
            msg = str(exc)
            if "experts implementation" in msg:
                kwargs.pop("experts_implementation")
                experts_impl = "native"
                notes.append("the model does not support setting an experts implementation")
            elif "scaled_dot_product_attention" in msg or "sdpa" in msg.lower():
                kwargs["attn_implementation"] = attn_impl = "eager"
                notes.append("sdpa unsupported by this architecture: eager attention")
            else:
                raise
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.eval()
    model.requires_grad_(False)
    redrawn = ensure_random_weights(model)
    patches = apply_capture_patches(model)
    if device == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t
    info = model_info(
        model, config,
        weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        build_s=build_s,
        attn_implementation=getattr(model.config, "_attn_implementation", attn_impl) or attn_impl,
        experts_implementation=getattr(model.config, "_experts_implementation", experts_impl) or experts_impl,
        reinitialized=redrawn,
        patches=patches,
        notes=notes,
    )
    return model, info


def named_display(model: str) -> str:
    return display_name(model)


# --------------------------------------------------------------------------- capture check

_SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
             "unique_consecutive", "unique_dim")


class CaptureSpy(TorchDispatchMode):
    """Records ops that would fail or sync inside CUDA-graph capture.

    Flagged: reading a device scalar on the host (``.item()``, ``bool(tensor)``), data-dependent
    output shapes (``nonzero``, ``masked_select``, ``unique``), and copies between the host and an
    accelerator (a non-scalar CPU tensor in, an accelerator tensor out, or the reverse).
    0-dim CPU tensors are allowed as arguments (PyTorch passes them as scalars).
    """

    def __init__(self) -> None:
        super().__init__()
        self.issues: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.__name__.split(".")[0]
        ins = [t for t in _tensors(args) + _tensors(kwargs) if isinstance(t, torch.Tensor)]
        outs = [t for t in _tensors(out) if isinstance(t, torch.Tensor)]
        in_dev = {t.device.type for t in ins}
        if name in _SYNC_OPS and any(d != "cpu" for d in in_dev):
            self._add(f"{name} (host sync)")
        cpu_in = any(t.device.type == "cpu" and t.dim() > 0 for t in ins)
        acc_out = any(t.device.type != "cpu" for t in outs)
        if cpu_in and acc_out:
            self._add(f"{name} (host-to-device copy)")
        acc_in = any(t.device.type != "cpu" for t in ins)
        cpu_out = any(t.device.type == "cpu" for t in outs)
        if acc_in and cpu_out and name not in _SYNC_OPS:
            self._add(f"{name} (device-to-host copy)")
        return out

    def _add(self, issue: str) -> None:
        if issue not in self.issues:
            self.issues.append(issue)


def _tensors(obj: Any) -> list[Any]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []
