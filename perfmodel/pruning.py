"""Expert pruning as a transformation of a :class:`perfmodel.specs.model.ModelSpec`.

- inter-expert (``experts`` = R): drop a fraction R of the routed experts,
  E' = E − round(R·E); the router then scores E' experts;
- intra-expert (``ffn`` = R): narrow every routed expert's FFN, I' = I − round(R·I). The
  width is kept as that exact integer: vLLM's fused MoE runs any width (how fast an unusual
  width runs is the engine profile's business, not this module's).

``round`` rounds halves up. R is in [0, 1); R = 0 leaves the model as it is. Shared experts
and dense layers are not pruned. The pruned model must still route: top-k ≤ E' and I' ≥ 1,
else :class:`perfmodel.errors.InputError`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from perfmodel.errors import InputError
from perfmodel.specs.model import ModelSpec, MoESpec

#: Pruning options by name (``--prune-experts``, ``--prune-ffn``; ``prune_experts=`` in Python).
PRUNE_KEYS = ("prune_experts", "prune_ffn")


def check_ratio(name: str, value: Any) -> float | None:
    """A pruning ratio in [0, 1) as a ``float`` (None when not given)."""
    if value is None:
        return None
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not number or not 0.0 <= value < 1.0:  # NaN fails the comparison
        shown = value if number else repr(value)
        raise InputError(f"{name.replace('_', '-')} must be in [0, 1), got {shown}")
    return float(value)


def pruned_count(total: int, ratio: float) -> int:
    """What remains of ``total`` after dropping round(ratio·total) of it (halves round up)."""
    return total - math.floor(ratio * total + 0.5)


def prune(model: ModelSpec, experts: Any = None, ffn: Any = None) -> ModelSpec:
    """The model with a fraction ``experts`` of its routed experts dropped and its experts'
    FFN width narrowed by a fraction ``ffn`` (None: not pruned; 0: unchanged)."""
    experts, ffn = check_ratio("prune_experts", experts), check_ratio("prune_ffn", ffn)
    if experts is None and ffn is None:
        return model
    if model.moe is None or not model.is_moe:
        raise InputError(f"pruning needs a model with routed experts; {model.name} has none")
    moe = model.moe
    n_experts = pruned_count(moe.n_experts, experts or 0.0)
    width = pruned_count(moe.expert_intermediate, ffn or 0.0)
    if moe.top_k > n_experts:
        raise InputError(f"prune-experts {experts:g} leaves {n_experts} of {moe.n_experts} experts, "
                         f"fewer than top-k ({moe.top_k})")
    if width < 1:
        raise InputError(f"prune-ffn {ffn:g} leaves no FFN width of {moe.expert_intermediate}")
    new_moe = MoESpec.model_validate({**moe.model_dump(), "n_experts": n_experts,
                                      "expert_intermediate": width})
    return model.model_copy(update={"moe": new_moe})


def pruning_record(before: ModelSpec, after: ModelSpec, experts: float | None,
                   ffn: float | None) -> dict[str, Any] | None:
    """What :func:`prune` did, for a prediction's header and JSON: each ratio given, with the
    expert count (``num_experts``) or width (``moe_intermediate_size``) as [before, after];
    None when no ratio was given."""
    if experts is None and ffn is None or before.moe is None or after.moe is None:
        return None
    record: dict[str, Any] = {}
    if experts is not None:
        record.update(prune_experts=experts, num_experts=[before.moe.n_experts, after.moe.n_experts])
    if ffn is not None:
        record.update(prune_ffn=ffn, moe_intermediate_size=[before.moe.expert_intermediate,
                                                            after.moe.expert_intermediate])
    return record


def pruning_text(record: dict[str, Any] | None) -> str:
    """A pruning record as a header shows it, e.g. ``prune_experts=0.25 (num_experts 128 → 96)``."""
    if not record:
        return "none"
    return ", ".join(f"{key}={record[key]:g} ({size} {record[size][0]} → {record[size][1]})"
                     for key, size in (("prune_experts", "num_experts"), ("prune_ffn", "moe_intermediate_size"))
                     if key in record)
