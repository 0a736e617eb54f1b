"""A deterministic backend without any model, for tests and dry runs of the sweep machinery.

Rows it produces are schema-valid with made-up but self-consistent numbers (a point's TTFT grows
with B*S, its decode step with B). It can be told to fail: raise a given exception at given point
ids (``failures``), or die like a killed process after ``kill_after`` measured points
(:class:`Killed` derives from BaseException, so the driver does not catch it).
"""

from __future__ import annotations

from typing import Any

from perfmodel.measuring.points import SweepPoint


class Killed(BaseException):
    """Stands in for SIGKILL: propagates through ``except Exception``."""


class FakeBackend:
    name = "fake"

    def __init__(self, failures: dict[str, BaseException] | None = None, kill_after: int | None = None,
                 build_failure: BaseException | None = None, estimate: float = 0.0) -> None:
        self.failures = dict(failures or {})
        self.kill_after = kill_after
        self.build_failure = build_failure
        self.estimate = estimate
        self.measured: list[str] = []
        self.builds = 0
        self.releases = 0
        self.recovers = 0

    def provenance(self) -> dict[str, Any]:
        return {"gpu_name": "FakeGPU", "driver": "0.0", "cuda": None, "torch": None, "transformers": None,
                "vllm": None, "date": "2026-01-01T00:00:00+00:00", "git_commit": None}

    def describe(self, point: SweepPoint) -> dict[str, Any]:
        return {"model_type": "fake", "engine": {"cuda_graphs": point.cuda_graphs,
                                                 "experts_implementation": point.experts_impl,
                                                 "attn_implementation": "none", "dtype": point.dtype,
                                                 "max_cache_len": point.max_cache_len}}

    def prepare(self, points: list[SweepPoint]) -> dict[str, Any]:
        self.builds += 1
        if self.build_failure is not None:
            raise self.build_failure
        return {"model": points[0].model}

    def release(self, handle: Any) -> None:
        self.releases += 1

    def recover(self) -> None:
        self.recovers += 1

    def estimate_s(self, handle: Any, point: SweepPoint) -> float:
        return self.estimate

    def is_oom(self, exc: BaseException) -> bool:
        return "out of memory" in str(exc).lower()

    def is_fatal(self, exc: BaseException) -> bool:
        return "illegal memory access" in str(exc).lower()

    def measure(self, handle: Any, point: SweepPoint) -> dict[str, Any]:
        if self.kill_after is not None and len(self.measured) >= self.kill_after:
            raise Killed(point.point_id)
        self.measured.append(point.point_id)
        if point.point_id in self.failures:
            raise self.failures[point.point_id]
        b, s, o = point.batch, point.input_len, point.output_len
        ttft = 5.0 + 1e-3 * b * s
        step = 2.0 + 0.01 * b
        decode = step * (o - 1)
        e2e = ttft + decode
        return {
            "ttft_ms": ttft, "decode_total_ms": decode, "e2e_ms": e2e,
            "itl_ms": step if o > 1 else 0.0,
            "throughput_tok_s": b * (s + o) / (e2e / 1e3), "output_tok_s": b * o / (e2e / 1e3),
            "decode_method": "cuda_graph",
            "decode_samples": [{"step": 1, "context_len": s + 1, "ms": step, "p10_ms": step, "p90_ms": step,
                                "reps": 1}] if o > 1 else [],
        }
