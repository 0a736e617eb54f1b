"""The ``hf`` backend: transformers modeling code, a StaticCache, decode steps replayed from CUDA graphs.

Protocol for one point (B sequences, S input tokens, O output tokens), all times in ms:

1. A ``StaticCache`` of ``max_cache_len = S + O`` (transformers 5.17 keeps the write position in
   a per-layer device counter, ``cumulative_length``; the runner sets it explicitly before every
   call so that positions never run past the allocation).
2. **TTFT** = prefill forward of the B x S batch with ``logits_to_keep=1`` plus the argmax, eager,
   timed by CUDA events: a first run (warm-up, also records the tokens-per-expert histogram of
   the first MoE layer), an optional profiled run, then 5 / 3 / 2 timed runs (first run under
   0.2 s / 1.5 s / longer); the median is TTFT.
3. **Decode**: one step = forward of B tokens at cache position c, argmax, and the argmax written
   back as the next input, all captured in one CUDA graph (static input ids; the cache counter
   advances inside the graph). The graph is replayed at sampled steps j in {1, 1+O/4, 1+O/2,
   1+3O/4, O-1} (cache position c = S + j - 1, context after the step c + 1), one warm replay then
   5 timed replays (3 for steps over 30 ms), median per sample.
   The decode total over the O-1 steps is the trapezoid integral through the samples plus half
   of the two end samples (exact when step time is linear in j).
4. E2E = TTFT + decode total; ITL = decode total / (O-1); throughput = B(S+O)/E2E;
   output tok/s = B*O/E2E (the seed study's definitions).
5. ``full_run`` points also replay all O-1 steps back to back (CUDA events around the loop) and
   report the full E2E and its ratio to the sampled estimate.
6. torch.profiler: one prefill (skipped when the first prefill took over 1.5 s) and one decode step
   at the middle sample, eager, with scope hooks; GPU kernel time total and per category
   (:mod:`perfmodel.measuring.profiler_split`), next to the graph-replay time of that step.
7. Routing: the tokens-per-expert histogram of the first MoE layer of the warm-up prefill, and the
   distinct experts hit per layer in one untimed decode step (:mod:`perfmodel.measuring.hf_routing`).

Models that cannot be captured: one eager step runs under :class:`perfmodel.measuring.hf_build.CaptureSpy`
first; known host copies are patched at build time (PhiMoE's rotary embedding). If the spy still
finds host syncs / copies, or capture raises, decode time at each sample is the profiler's summed
GPU kernel time of one eager step (``decode_method="kernel_sum"``; no full run); should the
profiler itself fail, CUDA events around eager steps are used (``decode_method="eager"``,
launch-bound). On CPU (tests) decode steps are timed eagerly by wall clock (``"eager"``).
Profiler failures never fail a point: the profile fields are then null, with a note.

Modules: this one holds the backend (:class:`HFBackend`) and a point's measurement
(:func:`measure_point`: the row, its passes, the derived metrics); the timed passes (prefill,
cache positions, sampled decode steps, capture, full run) are in
:mod:`perfmodel.measuring.hf_steps`, the routing recorder in :mod:`perfmodel.measuring.hf_routing`,
and the time estimate that plans a sweep's budget in :mod:`perfmodel.measuring.hf_estimate`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from perfmodel.measuring import env
from perfmodel.measuring.hf_build import ModelInfo, build_model, make_config, meta_info
from perfmodel.measuring.hf_estimate import PassTimes, estimate_point_s, pass_times
from perfmodel.measuring.hf_steps import (
    cache_bytes, full_run, integrate_steps, measure_decode, measure_prefill, sample_steps,
)
from perfmodel.measuring.points import SweepPoint

_FATAL_MARKERS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc",
    "cuda error: an illegal",
    "device kernel image is invalid",
)


@dataclass
class Handle:
    """A built model shared by a group of points."""

    model: nn.Module
    config: Any
    info: ModelInfo
    display_name: str


class HFBackend:
    """Measures sweep points with transformers modeling code (see the module docstring)."""

    name = "hf"

    def __init__(self, device: str | None = None, profile: bool = True,
                 log: Callable[[str], None] | None = None, decode_reps: int = 5,
                 gpu: bool | None = None) -> None:
        self.device = device or env.device_kind()  # where tensors live
        # whether to use the CUDA timing machinery (events, graphs); tests may fake it on CPU
        self.gpu = (self.device == "cuda") if gpu is None else gpu
        self.profile = profile
        self.decode_reps = decode_reps
        self.log = log or (lambda msg: print(msg, flush=True))
        self._meta: dict[tuple, tuple[Any, ModelInfo]] = {}
        self._describe_cache: dict[tuple, dict[str, Any]] = {}
        self._coarse_noted = False
        try:
            import transformers

            transformers.logging.set_verbosity_error()
        except Exception:  # noqa: BLE001 - logging setup is cosmetic
            pass

    # -- static information -------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        return env.provenance()

    def uses_graphs(self, point: SweepPoint) -> bool:
        return point.cuda_graphs and self.gpu

    def describe(self, point: SweepPoint) -> dict[str, Any]:
        key = point.group_key
        if key not in self._describe_cache:
            from perfmodel.specs.zoo import display_name

            try:
                cfg, _ = make_config(point.model, point.overrides, point.layers)
                model_type = cfg.get("model_type")
            except Exception:  # noqa: BLE001 - a bad model becomes an error row later
                model_type = None
            self._describe_cache[key] = {"model_type": model_type, "display_name": display_name(point.model)}
        out = dict(self._describe_cache[key])
        out["engine"] = {
            "name": "hf",
            "cuda_graphs": self.uses_graphs(point),
            "experts_implementation": point.experts_impl,
            "attn_implementation": "sdpa",
            "dtype": point.dtype,
            "max_cache_len": point.max_cache_len,
            "cache": "StaticCache",
            "device": self.device,
            "weights": "random normal(0, initializer_range)",
        }
        return out

    # -- build ----------------------------------------------------------------------------

    def prepare(self, points: list[SweepPoint]) -> Handle:
        from perfmodel.specs.zoo import display_name

        p = points[0]
        if p.dtype != "bfloat16":
            raise ValueError(f"the hf runner measures bfloat16 only (got {p.dtype})")
        _, config = make_config(p.model, p.overrides, p.layers)
        torch.manual_seed(0)
        model, info = build_model(config, self.device, experts_impl=p.experts_impl)
        self.log(
            f"built {p.model} ({info.model_type}, {info.params_total / 1e9:.2f} B params, "
            f"{info.weight_bytes / 2**30:.1f} GiB) in {info.build_s:.1f} s"
            + (f"; patches {info.patches}" if info.patches else "")
            + (f"; re-drawn {len(info.reinitialized)} zero matrices" if info.reinitialized else "")
        )
        return Handle(model=model, config=config, info=info, display_name=display_name(p.model))

    def release(self, handle: Handle | None) -> None:
        if handle is not None:
            handle.model = None  # type: ignore[assignment]
        gc.collect()
        self.recover()

    def recover(self) -> None:
        gc.collect()
        if self.gpu:
            try:
                torch.cuda.synchronize()
            except RuntimeError:
                pass
            torch.cuda.empty_cache()

    def is_oom(self, exc: BaseException) -> bool:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        text = str(exc).lower()
        return "out of memory" in text or "cublas_status_alloc_failed" in text

    def is_fatal(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return self.gpu and any(m in text for m in _FATAL_MARKERS)

    # -- planning ---------------------------------------------------------------------------

    def estimate_s(self, handle: Handle | None, point: SweepPoint) -> float:
        """A rough wall-time estimate (s) for budget planning, GPU only
        (:mod:`perfmodel.measuring.hf_estimate`)."""
        if not self.gpu:
            return 0.0
        times = self.pass_times(handle, point)
        return estimate_point_s(times, point, profile=self.profile, build=handle is None,
                                decode_reps=self.decode_reps)

    def pass_times(self, handle: Handle | None, point: SweepPoint) -> PassTimes:
        """The roofline's prefill and decode step of ``point`` on this GPU (coarse without the
        model; said once in the log)."""
        times = pass_times(point, env.gpu_short_name(),
                           lambda: handle.info if handle is not None else self._meta_info(point))
        if times.source != "roofline" and not self._coarse_noted:
            self._coarse_noted = True
            self.log("planning with COARSE time estimates: perfmodel.prediction cannot be imported "
                     "here (it needs pydantic)")
        return times

    def _meta_info(self, point: SweepPoint) -> ModelInfo:
        key = point.group_key
        if key not in self._meta:
            _, config = make_config(point.model, point.overrides, point.layers)
            self._meta[key] = (config, meta_info(config, point.experts_impl))
        return self._meta[key][1]

    # -- measuring --------------------------------------------------------------------------

    def measure(self, handle: Handle, point: SweepPoint) -> dict[str, Any]:
        return measure_point(self, handle, point)


def measure_point(backend: HFBackend, handle: Handle, point: SweepPoint) -> dict[str, Any]:
    """Measure one point (see the module docstring); returns the row's metric fields."""
    from transformers import StaticCache

    dev, gpu = backend.device, backend.gpu
    model, config, info = handle.model, handle.config, handle.info
    b, s, o = point.batch, point.input_len, point.output_len
    notes: list[str] = list(info.notes)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device=dev).manual_seed(1234)
    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (b, s), device=dev, generator=gen)
    cache = StaticCache(config=config, max_cache_len=s + o)
    graph = None
    row: dict[str, Any] = {
        "display_name": handle.display_name,
        "model_type": info.model_type,
        "num_hidden_layers": info.num_hidden_layers,
        "num_experts": info.num_experts,
        "top_k": info.top_k,
        "params_total": info.params_total,
        "params_active": info.params_active,
        "weights_gib": round(info.weight_bytes / 2**30, 4),
        "build_s": round(info.build_s, 3),
        "patches": list(info.patches),
    }
    row["engine_detail"] = {
        "attn_implementation": info.attn_implementation,
        "experts_implementation": info.experts_implementation,
    }
    try:
        with torch.inference_mode():
            ttft = measure_prefill(backend, model, cache, ids, row, notes)
            nxt = row.pop("_next_tokens")
            static_ids = nxt.reshape(b, 1).clone()

            def step() -> None:
                out = model(input_ids=static_ids, past_key_values=cache, use_cache=True)
                static_ids.copy_(out.logits[:, -1, :].argmax(-1, keepdim=True))

            steps = sample_steps(o)
            method, graph, samples = measure_decode(backend, point, model, cache, step, steps, row, notes)
            decode_total = integrate_steps([(d["step"], d["ms"]) for d in samples], o - 1)
            if point.full_run and o > 1:
                full_run(gpu, method, graph, step, cache, s, o, row, notes)
        e2e = ttft + decode_total
        row.update(_derived(b, s, o, ttft, decode_total, e2e))
        row["decode_method"] = method
        row["decode_samples"] = samples
        if row.get("full_decode_ms") is not None:
            full_e2e = ttft + row["full_decode_ms"]
            row["full_e2e_ms"] = full_e2e
            row["full_itl_ms"] = row["full_decode_ms"] / (o - 1)
            row["full_vs_sampled"] = full_e2e / e2e
        row["kv_cache_gib"] = round(cache_bytes(cache) / 2**30, 4)
        if gpu:
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        row["notes"] = notes
        return row
    finally:
        if graph is not None:
            graph.reset()
        del graph, cache, ids
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()


def _derived(b: int, s: int, o: int, ttft: float, decode_total: float, e2e: float) -> dict[str, float]:
    """The request metrics of a point from its TTFT, decode total and E2E (ms)."""
    return {
        "ttft_ms": ttft,
        "decode_total_ms": decode_total,
        "e2e_ms": e2e,
        "itl_ms": decode_total / (o - 1) if o > 1 else 0.0,
        "throughput_tok_s": b * (s + o) / (e2e / 1e3),
        "output_tok_s": b * o / (e2e / 1e3),
    }
