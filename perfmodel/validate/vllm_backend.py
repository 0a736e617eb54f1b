"""The ``vllm`` backend: the same sweep points and row schema, measured with vLLM's offline engine.

Translation (pure functions, testable without vLLM):

- :func:`vllm_config_json` - the model's config.json (zoo / path + overrides + ``architectures``)
  written into a temporary directory; ``load_format="dummy"`` needs nothing else.
- :func:`engine_kwargs` - ``LLM(...)`` arguments for a group of points sharing one engine:
  ``max_num_seqs`` = the largest B, ``max_model_len`` = the largest S + O,
  ``max_num_batched_tokens`` = the largest B*S (capped; beyond the cap the prefill is chunked,
  which the row records), CUDA graphs on (``enforce_eager=False``), TP / EP / quantization,
  ``hf_overrides`` with the raw config fields of the ``--set`` overrides.
- :func:`make_requests` / :func:`sampling_kwargs` - B token-id prompts of length S and
  ``SamplingParams(max_tokens=O, min_tokens=O, ignore_eos=True, temperature=0)``.

Measuring (needs vLLM): TTFT is the median wall time of ``generate`` with O = 1 (the seed's
method), E2E the median of the full runs; ITL = (E2E - TTFT)/(O - 1). Times are host wall clock
(``perf_counter``), the engine being host-driven. The requested MoE backend is passed as
``moe_backend`` when the installed vLLM's ``EngineArgs`` has that field; the row records the
request and whether it was applied.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from perfmodel.specs.zoo import config_field, load_hf_config, parse_override
from perfmodel.validate import env
from perfmodel.validate.sweep_spec import SweepPoint

#: model_type -> the vLLM architecture class name written into config.json.
ARCHITECTURES = {
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "phimoe": "PhiMoEForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

#: Largest prefill chunk by default (tokens per engine step).
DEFAULT_MAX_BATCHED_TOKENS = 32768


def vllm_available() -> bool:
    """Whether ``import vllm`` can work here."""
    return importlib.util.find_spec("vllm") is not None


def point_settings(tp: int = 1, expert_parallel: bool = False, quantization: str | None = None,
                   moe_backend: str = "triton") -> dict[str, str]:
    """Engine settings that are part of each point's id."""
    return {
        "tp": str(int(tp)),
        "ep": str(int(bool(expert_parallel))),
        "quant": quantization or "none",
        "moe_backend": moe_backend,
    }


def _settings(point: SweepPoint) -> dict[str, str]:
    return dict(point.settings)


def _layer_overrides(point: SweepPoint) -> list[str]:
    return list(point.overrides) + ([f"num_layers={point.layers}"] if point.layers else [])


def vllm_config_json(point: SweepPoint) -> dict[str, Any]:
    """The config.json a dummy-weights vLLM engine loads for this point's model."""
    cfg = load_hf_config(point.model, _layer_overrides(point))
    model_type = cfg["model_type"]
    if model_type not in ARCHITECTURES:
        raise ValueError(f"no vLLM architecture known for model_type {model_type}")
    cfg = dict(cfg)
    cfg["architectures"] = [ARCHITECTURES[model_type]]
    cfg.setdefault("torch_dtype", point.dtype)
    return cfg


def hf_overrides(point: SweepPoint) -> dict[str, Any]:
    """Raw config fields set by the point's ``--set`` / ``--layers`` (already in config.json;
    passed again so that the engine log shows them)."""
    model_type = load_hf_config(point.model)["model_type"]
    out = {}
    for item in _layer_overrides(point):
        key, value = parse_override(item)
        out[config_field(model_type, key)] = value
    return out


def engine_kwargs(points: list[SweepPoint], model_dir: str | Path, *,
                  max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
                  gpu_memory_utilization: float = 0.9,
                  accepted: set[str] | None = None) -> dict[str, Any]:
    """``vllm.LLM(**kwargs)`` for a group of points sharing one engine.

    ``accepted``: the installed vLLM's EngineArgs field names; optional arguments it lacks
    (``moe_backend``) are dropped. None keeps everything (translation tests).
    """
    if not points:
        raise ValueError("no points")
    p0 = points[0]
    s = _settings(p0)
    max_b = max(p.batch for p in points)
    prefill_tokens = max(p.batch * p.input_len for p in points)
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": p0.dtype,
        "tensor_parallel_size": int(s.get("tp", "1")),
        "enable_expert_parallel": s.get("ep", "0") == "1",
        "quantization": None if s.get("quant", "none") == "none" else s["quant"],
        "max_num_seqs": max_b,
        "max_num_batched_tokens": max(min(prefill_tokens, max_batched_tokens), max(p.max_cache_len for p in points)),
        "max_model_len": max(p.max_cache_len for p in points),
        "enforce_eager": not p0.cuda_graphs,
        "enable_prefix_caching": False,
        "gpu_memory_utilization": gpu_memory_utilization,
        "seed": 0,
        "hf_overrides": hf_overrides(p0),
        "moe_backend": s.get("moe_backend", "triton"),
    }
    if accepted is not None:
        for optional in ("moe_backend", "enable_prefix_caching"):
            if optional not in accepted:
                kwargs.pop(optional)
    return kwargs


def sampling_kwargs(output_len: int) -> dict[str, Any]:
    """``SamplingParams(**kwargs)``: exactly O greedy tokens, EOS ignored, no detokenizing."""
    return {
        "max_tokens": int(output_len),
        "min_tokens": int(output_len),
        "ignore_eos": True,
        "temperature": 0.0,
        "detokenize": False,
    }


def make_requests(batch: int, input_len: int, vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """B prompts of S random token ids in [10, vocab - 10) (away from special ids)."""
    rng = random.Random(seed)
    hi = max(11, vocab_size - 10)
    return [{"prompt_token_ids": [rng.randrange(10, hi) for _ in range(input_len)]} for _ in range(batch)]


class VLLMBackend:
    """Runs points through ``vllm.LLM`` (one engine per group of points)."""

    name = "vllm"

    def __init__(self, reps: int = 3, log=None) -> None:
        self.reps = reps
        self.log = log or (lambda msg: print(msg, flush=True))
        self._tmp: tempfile.TemporaryDirectory | None = None

    def provenance(self) -> dict[str, Any]:
        return env.provenance()

    def describe(self, point: SweepPoint) -> dict[str, Any]:
        s = _settings(point)
        try:
            model_type = load_hf_config(point.model)["model_type"]
        except Exception:  # noqa: BLE001
            model_type = None
        return {
            "model_type": model_type,
            "moe_backend": s.get("moe_backend"),
            "engine": {
                "name": "vllm",
                "cuda_graphs": point.cuda_graphs,
                "experts_implementation": "vllm_fused_moe:" + s.get("moe_backend", "default"),
                "attn_implementation": "vllm_default",
                "dtype": point.dtype,
                "max_cache_len": point.max_cache_len,
                "tp": int(s.get("tp", "1")),
                "ep": s.get("ep", "0") == "1",
                "quantization": s.get("quant", "none"),
            },
        }

    def estimate_s(self, handle, point: SweepPoint) -> float:
        return 0.0

    def prepare(self, points: list[SweepPoint]):
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs

        self._tmp = tempfile.TemporaryDirectory(prefix="perfmodel-vllm-")
        model_dir = Path(self._tmp.name)
        cfg = vllm_config_json(points[0])
        (model_dir / "config.json").write_text(json.dumps(cfg, indent=1))
        accepted = {f.name for f in dataclasses.fields(EngineArgs)}
        kwargs = engine_kwargs(points, model_dir, accepted=accepted)
        self.log(f"vllm engine: {kwargs}")
        llm = LLM(**kwargs)
        return {"llm": llm, "vocab": int(cfg["vocab_size"]), "kwargs": kwargs,
                "moe_backend_applied": "moe_backend" in kwargs}

    def measure(self, handle, point: SweepPoint) -> dict[str, Any]:
        from vllm import SamplingParams

        llm = handle["llm"]
        prompts = make_requests(point.batch, point.input_len, handle["vocab"])

        def run(o: int) -> tuple[float, list]:
            params = SamplingParams(**sampling_kwargs(o))
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            return (time.perf_counter() - t) * 1e3, outs

        run(1)  # warm-up
        ttfts = [run(1)[0] for _ in range(self.reps)]
        o = point.output_len
        e2es = []
        produced = None
        for _ in range(self.reps + 1):
            ms, outs = run(o)
            e2es.append(ms)
            produced = [len(x.outputs[0].token_ids) for x in outs]
        e2es = e2es[1:]  # the first full run is a warm-up
        ttft = statistics.median(ttfts)
        e2e = max(statistics.median(e2es), ttft)
        notes = []
        if produced and any(n != o for n in produced):
            notes.append(f"generated lengths {sorted(set(produced))} != O={o}")
        if not handle["moe_backend_applied"]:
            notes.append("this vLLM has no moe_backend engine argument: MoE kernel left to vLLM")
        if point.batch * point.input_len > handle["kwargs"]["max_num_batched_tokens"]:
            notes.append("prefill chunked (B*S > max_num_batched_tokens)")
        decode_total = e2e - ttft
        return {
            "ttft_ms": ttft,
            "ttft_reps": len(ttfts),
            "e2e_ms": e2e,
            "decode_total_ms": decode_total,
            "itl_ms": decode_total / (o - 1) if o > 1 else 0.0,
            "throughput_tok_s": point.batch * (point.input_len + o) / (e2e / 1e3),
            "output_tok_s": point.batch * o / (e2e / 1e3),
            "decode_method": "vllm_engine",
            "decode_samples": [],
            "notes": notes,
            "engine_detail": {k: v for k, v in handle["kwargs"].items() if k != "model"},
        }

    def release(self, handle) -> None:
        if handle is not None:
            handle.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.recover()

    def recover(self) -> None:
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def is_oom(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return "out of memory" in text or type(exc).__name__ == "OutOfMemoryError" or "no available memory for the cache" in text

    def is_fatal(self, exc: BaseException) -> bool:
        return "illegal memory access" in str(exc).lower()
