"""Which experts the router picked: tokens per expert of each MoE layer, from forward pre-hooks.

:class:`RoutingRecorder` hooks every routed-experts module of a transformers model (a module
whose class name ends in ``Experts`` and that has an integer ``num_experts``) for the duration
of a ``with`` block and counts, per layer, how many token-to-expert assignments each expert got.
The hooks add small kernels and host syncs: the runner records routing on an untimed pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class RoutingRecorder:
    """Forward pre-hooks on the routed-experts modules: tokens per expert, per layer."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.counts: list[tuple[int, torch.Tensor]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "RoutingRecorder":
        self.counts = []
        for name, module in self.model.named_modules():
            if not type(module).__name__.lower().endswith("experts"):
                continue
            n_exp = getattr(module, "num_experts", None)
            if not isinstance(n_exp, int):
                continue
            layer = layer_index(name)
            self._handles.append(module.register_forward_pre_hook(
                lambda m, args, kwargs, e=n_exp, li=layer: self._record(args, kwargs, e, li),
                with_kwargs=True))
        return self

    def _record(self, args, kwargs, n_exp: int, layer: int) -> None:
        idx = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
        if isinstance(idx, torch.Tensor) and not idx.is_floating_point():
            flat = idx.reshape(-1).long()
            flat = flat[(flat >= 0) & (flat < n_exp)]
            self.counts.append((layer, torch.bincount(flat, minlength=n_exp)))

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def first_layer_histogram(self) -> tuple[int | None, list[int] | None]:
        """(layer index, tokens per expert) of the first MoE layer called; (None, None) if none."""
        if not self.counts:
            return None, None
        layer, counts = self.counts[0]
        return layer, [int(c) for c in counts.tolist()]

    def experts_hit(self) -> list[int] | None:
        """Distinct experts that got at least one token, per MoE layer call in call order; None
        if no layer was called."""
        if not self.counts:
            return None
        return [int((c > 0).sum()) for _, c in self.counts]

    def mean_experts_hit(self) -> float | None:
        """Distinct experts that got at least one token, averaged over the MoE layers called."""
        hits = self.experts_hit()
        return None if hits is None else sum(hits) / len(hits)


def layer_index(name: str) -> int:
    """The layer number in a module's dotted name (``model.layers.3.mlp.experts`` → 3), else -1."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return -1
