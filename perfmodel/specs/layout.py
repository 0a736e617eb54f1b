"""Parallel layouts: how one model replica is split over GPUs (tensor, expert, pipeline, data).

The cost formulas (:mod:`perfmodel.ops`) shard as follows, and the rules below are what those
shardings need to put whole heads, experts and layers on every GPU:

- ``tp``: query heads and the FFN widths (dense, routed experts, shared experts) are split
  over tp GPUs. KV heads are split too while tp ≤ KV heads; beyond, each KV head is
  replicated over tp/KV-heads GPUs, every GPU holding one (vLLM's rule: the KV heads must
  divide tp or be divisible by it).
- ``ep``: the routed experts are split over ep groups, each expert sharded over its group's
  tp GPUs, so the expert layer spans tp·ep GPUs.
- ``pp``: the layers are split evenly over pp stages.
- ``dp``: vLLM's data parallelism (``--data-parallel-size``): dp ranks of tp GPUs each, every
  rank running the attention and dense layers of its own B/dp sequences (its KV cache holds
  only theirs: an MLA model's latent cache, which tp replicates, is split dp ways), while each
  MoE layer runs across all of them: the ranks gather one another's tokens before the experts
  and reduce-scatter the outputs after (:func:`perfmodel.ops.comm.dp_gather`), and the routed
  experts are spread over the tp·dp GPUs, their widths split (vLLM's default). dp > 1 and
  ep > 1 are not combined.
- ``expert_parallel``: vLLM's ``--enable-expert-parallel``: whole routed experts, E/(tp·dp) on
  each of the tp·dp GPUs, which compute the rows routed to them
  (:func:`perfmodel.ops.moe.expert_split`). So tp = 1, dp = 8 with it is vLLM's
  ``--data-parallel-size 8 --enable-expert-parallel`` on eight GPUs, and tp = 4 with it
  ``--tensor-parallel-size 4 --enable-expert-parallel``. Not combined with ep > 1.

GPUs used: tp·ep·pp·dp (:attr:`Layout.gpus`). ``ep`` is not vLLM's expert parallelism (which
reuses the tp × dp GPUs and does not shard experts by tp): it adds ep groups of tp GPUs, the
experts split over the groups, each sharded by tp within its group.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from perfmodel.errors import InputError
from perfmodel.specs.model import ModelSpec


@dataclass(frozen=True)
class _Rule:
    """A condition on the degrees and the model's sizes (keyed by the names of their symbols in
    :mod:`perfmodel.symbols`); ``holds`` works on numbers and numpy arrays alike."""

    applies: Callable[[ModelSpec], bool]
    holds: Callable[[Mapping[str, Any]], Any]
    message: str  # formatted with the degrees and sizes


_RULES = (
    _Rule(lambda m: m.moe is None, lambda v: v["ep"] == 1, "ep > 1 needs a model with experts"),
    _Rule(lambda m: m.moe is not None, lambda v: v["E"] % v["ep"] == 0,
          "ep ({ep}) must divide the number of experts ({E})"),
    _Rule(lambda m: True, lambda v: v["N_layers"] % v["pp"] == 0,
          "pp ({pp}) must divide the number of layers ({N_layers})"),
    _Rule(lambda m: True, lambda v: v["n_h"] % v["tp"] == 0,
          "tp ({tp}) must divide the number of attention heads ({n_h})"),
    _Rule(lambda m: m.attention.kind == "gqa",
          lambda v: (v["n_kv"] % v["tp"] == 0) | (v["tp"] % v["n_kv"] == 0),
          "tp ({tp}) must divide the number of KV heads ({n_kv}) or be a multiple of it"),
    _Rule(lambda m: m.moe is None, lambda v: np.logical_not(v["expert_parallel"]),
          "expert parallelism needs a model with experts"),
    _Rule(lambda m: m.is_moe, lambda v: v["expert_parallel"] | (v["I_e"] % v["tp"] == 0),
          "tp ({tp}) must divide the experts' FFN width ({I_e})"),
    _Rule(lambda m: m.is_moe, lambda v: v["expert_parallel"] | (v["I_e"] % (v["tp"] * v["dp"]) == 0),
          "tp·dp ({tp}·{dp}) must divide the experts' FFN width ({I_e}), or place whole experts "
          "(expert parallelism)"),
    _Rule(lambda m: m.is_moe, lambda v: np.logical_not(v["expert_parallel"]) | (v["E"] % (v["tp"] * v["dp"]) == 0),
          "with expert parallelism tp·dp ({tp}·{dp}) must divide the number of experts ({E})"),
    _Rule(lambda m: True, lambda v: np.logical_not(v["expert_parallel"]) | (v["ep"] == 1),
          "expert parallelism (vLLM's, over the tp·dp GPUs) and ep groups ({ep}) are not combined"),
    _Rule(lambda m: m.is_moe and m.moe is not None and m.moe.n_shared > 0,
          lambda v: (v["n_sh"] * v["I_sh"]) % v["tp"] == 0,
          "tp ({tp}) must divide the shared experts' FFN width ({n_sh}×{I_sh})"),
    _Rule(lambda m: m.n_dense_layers > 0, lambda v: v["I_d"] % v["tp"] == 0,
          "tp ({tp}) must divide the dense MLP width ({I_d})"),
    _Rule(lambda m: True, lambda v: (v["dp"] == 1) | (v["ep"] == 1),
          "dp ({dp}) and ep ({ep}) are not combined: give one of them"),
)


def expected_max_normal(g: Any) -> Any:
    """The expected largest of g independent standard normal draws (z_busy of
    :func:`perfmodel.ops.moe.local_load`), by Blom's approximation Φ⁻¹((g − 0.375)/(g + 0.25))
    (within 0.03 of the exact value from g = 2 on; exactly 0 at g = 1); numbers or arrays."""
    g = np.asarray(g, dtype=float)
    with np.errstate(invalid="ignore"):  # a NaN layout stays NaN
        out = _normal_quantile((g - 0.375) / (g + 0.25))
    return float(out) if out.ndim == 0 else out


#: Φ⁻¹ of the standard normal, elementwise (the standard library's, which needs no scipy import
#: on the way to a prediction).
_normal_quantile = np.vectorize(statistics.NormalDist().inv_cdf, otypes=[float])


def sizes(model: ModelSpec) -> dict[str, int]:
    """The model sizes the rules look at, keyed by symbol name."""
    m = model.moe
    return {"N_layers": model.n_layers, "n_h": model.attention.n_heads,
            "n_kv": model.attention.n_kv_heads, "I_d": model.dense_intermediate,
            "E": m.n_experts if m else 1, "I_e": m.expert_intermediate if m else 1,
            "n_sh": m.n_shared if m else 0, "I_sh": m.shared_intermediate if m else 0}


def layout_holds(model: ModelSpec, values: Mapping[str, Any]) -> Any:
    """Whether a layout suits the model, for a sweep: ``values`` holds ``tp``, ``ep``, ``pp``
    and any sizes to use instead of the model's, by symbol name (``n_h``, ``n_kv``, ``E``,
    ``I_e``, ``I_d``, ``n_sh``, ``I_sh``, ``N_layers``), as numbers or numpy arrays; the result
    broadcasts them. The model decides which rules apply (e.g. KV heads for GQA only)."""
    v = {"tp": 1, "ep": 1, "pp": 1, "dp": 1, "expert_parallel": False, **sizes(model), **values}
    ok: Any = True
    for rule in _RULES:
        if rule.applies(model):
            ok = ok & rule.holds(v)
    return ok


@dataclass(frozen=True)
class Layout:
    """Degrees of tensor (``tp``), expert (``ep``), pipeline (``pp``) and data (``dp``) parallelism."""

    tp: int = 1
    ep: int = 1
    pp: int = 1
    dp: int = 1
    expert_parallel: bool = False

    @property
    def gpus(self) -> int:
        """GPUs the layout uses: tp·ep·pp·dp (see the module's docstring)."""
        return self.tp * self.ep * self.pp * self.dp

    @property
    def streams(self) -> int:
        """Request streams a replica's traffic splits into evenly: its pp pipeline stages' (which
        share its sequences and KV cache) times its dp data-parallel ranks' (each its own)."""
        return self.pp * self.dp

    def check(self, model: ModelSpec) -> None:
        """Raise :class:`InputError` naming the first rule the layout breaks for this model."""
        v = {**sizes(model), "tp": self.tp, "ep": self.ep, "pp": self.pp, "dp": self.dp,
             "expert_parallel": self.expert_parallel}
        for rule in _RULES:
            if rule.applies(model) and not rule.holds(v):
                raise InputError(rule.message.format(**v))
