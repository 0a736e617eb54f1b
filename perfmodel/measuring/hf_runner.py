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

Models that cannot be captured: one eager step runs under :class:`perfmodel.measuring.hf_build.CaptureSpy`
first; known host copies are patched at build time (PhiMoE's rotary embedding). If the spy still
finds host syncs / copies, or capture raises, decode time at each sample is the profiler's summed
GPU kernel time of one eager step (``decode_method="kernel_sum"``; no full run); should the
profiler itself fail, CUDA events around eager steps are used (``decode_method="eager"``,
launch-bound). On CPU (tests) decode steps are timed eagerly by wall clock (``"eager"``).
Profiler failures never fail a point: the profile fields are then null, with a note.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from perfmodel.measuring.timing import capture_step, summarize
from perfmodel.measuring import env
from perfmodel.measuring.hf_build import CaptureSpy, ModelInfo, build_model, make_config, meta_info
from perfmodel.measuring.profiler_split import ProfileSplit, profile_call
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

#: Prefills whose first run took longer than this (ms) are not profiled.
PREFILL_PROFILE_MAX_MS = 1500.0


@dataclass
class Handle:
    """A built model shared by a group of points."""

    model: nn.Module
    config: Any
    info: ModelInfo
    display_name: str


# --------------------------------------------------------------------------- cache helpers


def set_cache_position(cache: Any, position: int) -> None:
    """Make the next write of every cache layer land at ``position`` (0 = empty cache)."""
    for layer in cache.layers:
        if not hasattr(layer, "cumulative_length"):
            raise NotImplementedError(f"unsupported cache layer {type(layer).__name__}")
        limit = getattr(layer, "max_cache_len", None)
        if limit is not None and position >= limit:
            raise ValueError(f"cache position {position} outside the allocated {limit} tokens")
        if getattr(layer, "is_initialized", False):
            layer.cumulative_length.fill_(position)
        elif position != 0:
            raise RuntimeError("cache not initialised yet (run the prefill first)")


def cache_bytes(cache: Any) -> int:
    """Bytes held by an initialised StaticCache."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def sample_steps(output_len: int, n: int = 4) -> list[int]:
    """Decode steps to time: j in {1, 1+O/4, 1+O/2, 1+3O/4, O-1} (deduplicated, within 1..O-1)."""
    last = output_len - 1
    if last < 1:
        return []
    steps = {min(last, 1 + (output_len * i) // n) for i in range(n)} | {last}
    return sorted(s for s in steps if 1 <= s <= last)


def integrate_steps(samples: list[tuple[int, float]], n_steps: int) -> float:
    """Sum of step times over steps 1..n_steps from sampled (step, ms) points (ms).

    Trapezoid through the samples plus half of each end sample; a single sample is held flat.
    """
    if n_steps <= 0:
        return 0.0
    pts = sorted(samples)
    if not pts:
        raise ValueError("no decode samples")
    if len(pts) == 1:
        return pts[0][1] * n_steps
    total = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    total += (pts[0][1] + pts[-1][1]) / 2
    # steps outside the sampled range (only when the samples do not cover 1..n_steps)
    total += (pts[0][0] - 1) * pts[0][1] + (n_steps - pts[-1][0]) * pts[-1][1]
    return total


# --------------------------------------------------------------------------- routing recorder


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
            layer = _layer_index(name)
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
        if not self.counts:
            return None, None
        layer, counts = self.counts[0]
        return layer, [int(c) for c in counts.tolist()]

    def mean_experts_hit(self) -> float | None:
        if not self.counts:
            return None
        hits = [int((c > 0).sum()) for _, c in self.counts]
        return sum(hits) / len(hits)


def _layer_index(name: str) -> int:
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return -1


# --------------------------------------------------------------------------- the backend


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
        """A rough, deliberately pessimistic wall-time estimate (s) for budget planning (GPU only)."""
        if not self.gpu:
            return 0.0
        info = handle.info if handle is not None else self._meta_info(point)
        return estimate_point_s(info, point, profile=self.profile, build=handle is None)

    def _meta_info(self, point: SweepPoint) -> ModelInfo:
        key = point.group_key
        if key not in self._meta:
            _, config = make_config(point.model, point.overrides, point.layers)
            self._meta[key] = (config, meta_info(config, point.experts_impl))
        return self._meta[key][1]

    # -- measuring --------------------------------------------------------------------------

    def measure(self, handle: Handle, point: SweepPoint) -> dict[str, Any]:
        return measure_point(self, handle, point)


def estimate_point_s(info: ModelInfo, point: SweepPoint, *, profile: bool = True, build: bool = False) -> float:
    """Planning estimate of one point's wall time on an H200-class GPU (s).

    Prefill: max(eager launch floor of 1.5 ms per layer, 2 * active params * B*S / 300 TFLOP/s);
    decode step: bytes read (dense weights, the expected share of expert weights hit by B tokens
    under uniform routing, the KV cache) / 2 TB/s; plus fixed costs for capture and profiling.
    """
    b, s, o = point.batch, point.input_len, point.output_len
    layers = max(1, info.num_hidden_layers)
    floor = 1.5e-3 * layers
    prefill = max(floor, 2.0 * info.params_active * b * s / 300e12) + 0.002 * b * s / 1024
    e, k = info.num_experts, info.top_k
    if e and k:
        hit = 1.0 - (1.0 - k / e) ** b
    else:
        hit = 1.0
    dense_bytes = 2 * (info.params_total - info.params_routed)
    bytes_step = dense_bytes + 2 * info.params_routed * hit + b * point.max_cache_len * info.kv_bytes_per_token
    step = max(bytes_step / 2.0e12, 0.3e-3 * layers / 4)
    runs = 1 + 5 if prefill < 0.2 else (1 + 3 if prefill < 1.5 else 1 + 2)
    if profile and prefill < 1.5:
        runs += 1
    t = runs * prefill
    t += 4 * max(floor, step) + 5 * (1 + 5) * step  # spy, warm-ups, capture; samples
    if profile:
        t += max(floor, step) + 1.0
    if point.full_run:
        t += (o - 1) * step
    t += 0.5 + (3.0 + info.weight_bytes / 50e9 if build else 0.0)
    return t


def _events_time(fn: Callable[[], Any], gpu: bool, reps: int,
                 before: Callable[[], None] | None = None) -> list[float]:
    """Per-call times (ms) of ``fn``: CUDA events on GPU, wall clock on CPU; ``before`` runs untimed."""
    out = []
    if gpu:
        pairs = []
        for _ in range(reps):
            if before:
                before()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in pairs]
    for _ in range(reps):
        if before:
            before()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _safe_profile(fn: Callable[[], Any], dev: str, model: nn.Module, notes: list[str]) -> ProfileSplit | None:
    """Profile ``fn`` once; a profiler failure (no CUPTI...) is a note, not a failed point.
    Out-of-memory errors propagate (they are a result)."""
    try:
        return profile_call(fn, dev, model)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "out of memory" in str(exc).lower():
            raise
        note = "profiler failed: " + (str(exc).splitlines() or [""])[0][:200]
        if note not in notes:
            notes.append(note)
        return None


def _sync(gpu: bool) -> None:
    if gpu:
        torch.cuda.synchronize()


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
            ttft = _measure_prefill(backend, model, cache, ids, row, notes)
            nxt = row.pop("_next_tokens")
            static_ids = nxt.reshape(b, 1).clone()

            def step() -> None:
                out = model(input_ids=static_ids, past_key_values=cache, use_cache=True)
                static_ids.copy_(out.logits[:, -1, :].argmax(-1, keepdim=True))

            steps = sample_steps(o)
            method, graph, samples = _measure_decode(backend, point, model, cache, step, steps, row, notes)
            decode_total = integrate_steps([(d["step"], d["ms"]) for d in samples], o - 1)
            if point.full_run and o > 1:
                _full_run(gpu, method, graph, step, cache, s, o, row, notes)
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
    return {
        "ttft_ms": ttft,
        "decode_total_ms": decode_total,
        "e2e_ms": e2e,
        "itl_ms": decode_total / (o - 1) if o > 1 else 0.0,
        "throughput_tok_s": b * (s + o) / (e2e / 1e3),
        "output_tok_s": b * o / (e2e / 1e3),
    }


def _measure_prefill(backend: HFBackend, model: nn.Module, cache: Any, ids: torch.Tensor,
                     row: dict[str, Any], notes: list[str]) -> float:
    dev, gpu = backend.device, backend.gpu
    holder: dict[str, torch.Tensor] = {}

    def prefill() -> None:
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        holder["next"] = out.logits[:, -1, :].argmax(-1)

    def reset() -> None:
        set_cache_position(cache, 0)

    recorder = RoutingRecorder(model)
    with recorder:
        first = _events_time(prefill, gpu, 1)[0]
    row["routing_layer"], row["prefill_tokens_per_expert"] = recorder.first_layer_histogram()
    if backend.profile and first <= PREFILL_PROFILE_MAX_MS:
        reset()
        split = _safe_profile(prefill, dev, model, notes)
        row["prefill_profile"] = split.as_dict() if split is not None else None
    else:
        row["prefill_profile"] = None  # not profiled (--no-profile, or too long)
    reps = 5 if first < 200 else (3 if first < PREFILL_PROFILE_MAX_MS else 2)
    if first < 200 and not backend.profile:
        reset()
        prefill()  # a second warm-up for short prefills
    times = _events_time(prefill, gpu, reps, before=reset)
    stats = summarize(times, "cuda_events" if gpu else "wall")
    row["ttft_p10_ms"] = stats.p10_ms
    row["ttft_p90_ms"] = stats.p90_ms
    row["ttft_reps"] = stats.n_reps
    row["ttft_first_ms"] = first
    row["_next_tokens"] = holder["next"]
    return stats.median_ms


def _measure_decode(backend: HFBackend, point: SweepPoint, model: nn.Module, cache: Any,
                    step: Callable[[], None], steps: list[int], row: dict[str, Any],
                    notes: list[str]):
    """Returns (decode_method, graph or None, samples)."""
    dev, gpu = backend.device, backend.gpu
    s = point.input_len
    if not steps:
        return ("cuda_graph" if backend.uses_graphs(point) else ("kernel_sum" if gpu else "eager")), None, []
    mid = steps[len(steps) // 2]
    method = "kernel_sum" if gpu else "eager"
    graph = None
    if backend.uses_graphs(point):
        graph = _try_capture(model, cache, step, s, notes)
        if graph is not None:
            method = "cuda_graph"
    samples: list[dict[str, Any]] = []
    row["decode_profile"] = None

    def eager_samples(reps: int, label: str) -> list[dict[str, Any]]:
        """Eager decode steps timed with CUDA events at each sampled context."""
        out = []
        for j in steps:
            pos = s + j - 1
            times = _events_time(step, gpu, reps, before=lambda p=pos: set_cache_position(cache, p))
            st = summarize(times, label)
            out.append(_sample(j, pos, st.median_ms, st.p10_ms, st.p90_ms, st.n_reps))
        return out

    if method == "cuda_graph":
        for j in steps:
            pos = s + j - 1

            def before(p=pos) -> None:
                set_cache_position(cache, p)

            warm = _events_time(graph.replay, gpu, 1, before=before)[0]
            reps = backend.decode_reps if warm <= 30 else min(3, backend.decode_reps)
            times = _events_time(graph.replay, gpu, reps, before=before)
            st = summarize(times, "cuda_graph")
            samples.append(_sample(j, pos, st.median_ms, st.p10_ms, st.p90_ms, st.n_reps))
    elif method == "eager":
        samples = eager_samples(2, "wall")
    else:  # kernel_sum: summed GPU kernel time of one eager step per sample
        set_cache_position(cache, s)
        step()  # warm-up
        for j in steps:
            set_cache_position(cache, s + j - 1)
            split = _safe_profile(step, dev, model, notes)
            if split is None:  # no profiler: CUDA events around eager steps (launch-bound)
                method, samples = "eager", []
                break
            samples.append(_sample(j, s + j - 1, split.kernel_ms, split.kernel_ms, split.kernel_ms, 1))
            if j == mid:
                row["decode_profile"] = dict(split.as_dict(), context_len=s + j, graph_ms=None)
        if method == "eager":
            samples = eager_samples(3, "cuda_events")
    if backend.profile and row["decode_profile"] is None:
        set_cache_position(cache, s + mid - 1)
        split = _safe_profile(step, dev, model, notes)
        graph_ms = next((d["ms"] for d in samples if d["step"] == mid), None)
        if split is not None:
            row["decode_profile"] = dict(split.as_dict(), context_len=s + mid, graph_ms=graph_ms)
    # routing of one decode step (a separate eager step: the hooks add small kernels and syncs)
    set_cache_position(cache, s + mid - 1)
    recorder = RoutingRecorder(model)
    with recorder:
        step()
    _sync(gpu)
    row["decode_experts_hit_mean"] = recorder.mean_experts_hit()
    return method, graph, samples


def _sample(j: int, pos: int, ms: float, p10: float, p90: float, reps: int) -> dict[str, Any]:
    return {"step": j, "cache_position": pos, "context_len": pos + 1, "ms": ms,
            "p10_ms": p10, "p90_ms": p90, "reps": reps}


def _try_capture(model: nn.Module, cache: Any, step: Callable[[], None], s: int,
                 notes: list[str]):
    """A CUDA graph of one decode step (write position S when captured), or None (with a note)."""
    set_cache_position(cache, s)
    spy = CaptureSpy()
    with spy:
        step()
    torch.cuda.synchronize()
    if spy.issues:
        notes.append("decode step not capturable: " + ", ".join(spy.issues[:5]))
        return None
    try:
        return capture_step(step, lambda: set_cache_position(cache, s))
    except RuntimeError as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            raise
        notes.append("CUDA graph capture failed: " + (str(exc).splitlines() or [""])[0][:200])
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass
        return None


def _full_run(gpu: bool, method: str, graph, step: Callable[[], None], cache: Any, s: int, o: int,
              row: dict[str, Any], notes: list[str]) -> None:
    """All O-1 decode steps back to back: graph replays on GPU (the graph advances the cache
    position and feeds its argmax back itself), eager steps on CPU."""
    if gpu and method != "cuda_graph":
        notes.append("full run skipped: no CUDA graph for this point")
        return
    set_cache_position(cache, s)
    run = graph.replay if method == "cuda_graph" else step
    if gpu:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(o - 1):
            run()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end)
    else:
        t = time.perf_counter()
        for _ in range(o - 1):
            run()
        ms = (time.perf_counter() - t) * 1e3
    row["full_decode_ms"] = ms if math.isfinite(ms) and ms > 0 else None
