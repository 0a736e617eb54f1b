"""A candidate deployment and how it is judged: engine configuration, replicas, cost, latencies
against the SLOs, goodput. Times in seconds, costs in US dollars."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from perfmodel.planning.simulate import SimResult
from perfmodel.specs.layout import Layout

#: Latency metrics of a candidate, each with mean, p50, p90, p99.
METRICS = ("ttft", "itl", "tpot", "e2e")


def weights_text(dtype: str, kv_dtype: str | None) -> str:
    """A candidate's weights as its label names them: the dtype or scheme, with `` kv-<dtype>``
    where the KV cache's dtype is set (``fp8``, ``bf16 kv-fp8``)."""
    return dtype + (f" kv-{kv_dtype}" if kv_dtype else "")


@dataclass(frozen=True)
class Engine:
    """One replica's configuration: GPU type, weight dtype, TP/EP/PP layout, scheduler limits,
    and the KV cache's dtype where it is not the weights' unquantized one (``kv_dtype``)."""

    gpu: str
    dtype: str
    layout: Layout
    max_num_seqs: int
    max_batched_tokens: int
    kv_dtype: str | None = None

    @property
    def gpus(self) -> int:
        return self.layout.gpus

    def layout_label(self) -> str:
        t = self.layout
        parts = ([f"TP{t.tp}"] + ([f"DP{t.dp}"] if t.dp > 1 else []) + ([f"EP{t.ep}"] if t.ep > 1 else [])
                 + ([f"PP{t.pp}"] if t.pp > 1 else []))
        return "·".join(parts) + ("+EP" if t.expert_parallel else "")

    def weights_label(self) -> str:
        """Its weights' dtype or scheme, with its KV cache's where that is set: ``fp8``, ``bf16 kv-fp8``."""
        return weights_text(self.dtype, self.kv_dtype)

    def label(self, seqs: bool = True) -> str:
        text = f"{self.gpu} {self.weights_label()} {self.layout_label()}"
        return f"{text} seqs≤{self.max_num_seqs}" if seqs else text

    def to_dict(self) -> dict[str, Any]:
        out = {"gpu": self.gpu, "gpus_per_replica": self.gpus, "dtype": self.dtype,
               "layout": {"tp": self.layout.tp, "ep": self.layout.ep, "pp": self.layout.pp, "dp": self.layout.dp,
                          "expert_parallel": self.layout.expert_parallel},
               "max_num_seqs": self.max_num_seqs, "max_batched_tokens": self.max_batched_tokens}
        return {**out, "kv_dtype": self.kv_dtype} if self.kv_dtype else out


@dataclass
class Pool:
    """Replicas of one engine configuration (the whole deployment, or one pool of two)."""

    engine: Engine
    replicas: int
    usd_per_gpu_hour: float

    @property
    def gpus(self) -> int:
        return self.engine.gpus * self.replicas

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.usd_per_gpu_hour


@dataclass
class Evaluation:
    """One candidate at the question's rate: where its latencies come from (``simulation`` or
    ``closed form``), whether it meets every SLO, and why not."""

    kind: str  # colocated or disaggregated
    pools: list[Pool]  # one, or prefill and decode
    source: str
    stable: bool
    metrics: dict[str, dict[str, float]]
    failures: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # predicted / target per SLO
    details: dict[str, Any] = field(default_factory=dict)
    sim: Optional[SimResult] = None
    setups: list = field(default_factory=list, repr=False)  # the step tables behind each pool

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    @property
    def usd_per_hour(self) -> float:
        return sum(p.usd_per_hour for p in self.pools)

    @property
    def meets(self) -> bool:
        return self.stable and not self.failures

    @property
    def outcome(self) -> str:
        """``meets SLOs``, or the first limit or SLO it fails."""
        if self.meets:
            return "meets SLOs"
        if not self.stable:
            return "overloaded"
        return self.failures[0].split(" ", 1)[0]

    def label(self) -> str:
        if self.kind == "disaggregated":
            p, d = self.pools
            return (f"P: {p.replicas}× {p.engine.label(seqs=False)} + "
                    f"D: {d.replicas}× {d.engine.label()}")
        pool = self.pools[0]
        return f"{pool.replicas}× {pool.engine.label()}"

    def config_label(self) -> str:
        """The configuration without the replica count."""
        if self.kind == "disaggregated":
            p, d = self.pools
            return f"disaggregated P {p.engine.label(seqs=False)} / D {d.engine.label()}"
        return self.pools[0].engine.label()


def judge(metrics: dict[str, dict[str, float]], targets: dict[str, float],
          tolerance: float = 1.0) -> tuple[list[str], dict[str, float]]:
    """Failed SLOs (``"ttft_p90 1.31 s > 1.00 s"``) and predicted/target ratios; a target is
    met when predicted ≤ target × ``tolerance``."""
    failures, ratios = [], {}
    for name, target in targets.items():
        metric, pct = name.split("_")
        value = metrics.get(metric, {}).get(pct, math.nan)
        ratio = value / target if value == value else math.inf
        ratios[name] = ratio
        if not ratio <= tolerance:
            failures.append(f"{name} {value:.3g} s > {target:.3g} s")
    return failures, ratios


def request_goodput(ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray,
                    targets: dict[str, float]) -> float:
    """Fraction of requests within the per-request SLO (vLLM bench serve's goodput): TTFT ≤
    the largest TTFT target, TPOT ≤ the largest ITL target, E2E ≤ the E2E target (those given)."""
    if len(ttft) == 0:
        return math.nan
    ok = np.ones(len(ttft), dtype=bool)
    for metric, values in (("ttft", ttft), ("itl", tpot), ("e2e", e2e)):
        limits = [v for k, v in targets.items() if k.startswith(metric + "_")]
        if limits:
            ok &= values <= max(limits)
    return float(ok.mean())
