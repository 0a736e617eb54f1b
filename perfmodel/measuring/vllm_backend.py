"""The ``vllm`` backend: the same sweep points and row schema, measured with vLLM's offline engine.

Translation (pure functions, testable without vLLM):

- :func:`vllm_config_json` - the model's config.json (zoo / path + overrides + ``architectures``)
  written into a temporary directory; ``load_format="dummy"`` needs nothing else.
- :func:`engine_kwargs` - ``LLM(...)`` arguments for a group of points sharing one engine:
  ``max_num_seqs`` = the largest B (every sequence of a batch is scheduled at once),
  ``max_model_len`` = the largest S + O, ``max_num_batched_tokens`` left to vLLM's own default
  (16384 for the offline engine on an H100/H200: a larger prefill is chunked, as users get it)
  unless given, CUDA graphs on (``enforce_eager=False``; the capture sizes are vLLM's default list
  cut at the largest B, so every measured B is a captured size), prefix caching off, per-request
  engine timestamps on (``disable_log_stats=False``), TP / EP / PP / quantization, ``hf_overrides``
  with the raw config fields of the ``--set`` overrides. An engine over several GPUs (tp·pp > 1)
  runs its workers under vLLM's multiprocessing executor (``distributed_executor_backend="mp"``).
  vLLM's EP reuses the tp GPUs of a pipeline stage (experts whole, E/tp per GPU): with tp = 1 it
  changes nothing. Data parallelism (``--dp``) is :mod:`perfmodel.measuring.vllm_replicas`.
- :func:`make_requests` / :func:`sampling_kwargs` - B token-id prompts of length S and
  ``SamplingParams(max_tokens=O, min_tokens=O, ignore_eos=True)``, sampled at temperature 1
  (``sampling=random``, the default) or greedy (``sampling=greedy``, temperature 0). With dummy
  weights the next-token logits are nearly flat and depend almost only on the current token, so
  greedy decoding iterates one fixed token-to-token map: after some steps the sequences of a batch
  run into the same few tokens and every router sends them to the same experts (decode then reads
  far fewer expert weights than real traffic would). Random sampling keeps the decode tokens of a
  batch distinct, so the routing is as spread as the prompts'.
- :func:`fused_moe_config_name` - the tuned fused-MoE tile file vLLM looks up for the model's
  expert shape (``E=..,N=..,device_name=..[,dtype=..].json``); the row records whether it exists.

Measuring (needs vLLM): TTFT is the median wall time of ``generate`` with O = 1 (the seed's
method), E2E the median of the full runs; ITL = (E2E - TTFT)/(O - 1). Times are host wall clock
(``perf_counter``), the engine being host-driven. Each shape is warmed up first (one O = 1 run and
one short decode), so no Triton JIT compile or first-use allocation is timed. The engine's own
per-request timestamps give a second ITL, ``engine_itl_ms`` = (last token - first token)/(O - 1)
averaged over the batch, and the engine-side TTFT (first token - scheduled), from the full runs
(``engine_ttft_ms``) and from the timed O = 1 runs themselves (``ttft_engine_ms``: where the wall
clock's TTFT of those runs far exceeds it, the front end or the host, not the prefill, held them
up). A batch whose KV cache the engine does not hold at once: ``preemptions`` counts the requests
vLLM preempted per full run (``vllm:num_preemptions``), and ``request_timeline_s`` keeps each
request's scheduled, first-token and last-token times of the last full run where it preempted or
ran the batch in waves. The requested MoE backend is passed as ``moe_backend`` when the installed vLLM's
``EngineArgs`` has that field; the row records the request and whether it was applied.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from perfmodel.specs.families import FAMILIES, family
from perfmodel.specs.zoo import config_field, load_hf_config, parse_override
from perfmodel.host_speed import probe_ms
from perfmodel.measuring import env
from perfmodel.measuring.points import SweepPoint
from perfmodel.measuring.vllm_replicas import DP_MODES

#: model_type -> the vLLM architecture class name written into config.json (each family's).
ARCHITECTURES = {model_type: adapter.vllm_architecture for model_type, adapter in FAMILIES.items()}

#: vLLM's default CUDA-graph capture sizes: 1, 2, 4, then steps of 8 to 256, then steps of 16.
DEFAULT_CAPTURE_SIZES = (1, 2, 4, *range(8, 256, 8), *range(256, 513, 16))

#: Full runs timed per point (after one short warm-up decode); TTFT runs are cheap and use ``reps``.
FULL_RUN_REPS = 2


def capture_sizes(max_batch: int) -> list[int]:
    """vLLM's default capture sizes up to the smallest one that holds ``max_batch`` sequences."""
    sizes = [s for s in DEFAULT_CAPTURE_SIZES if s < max_batch]
    sizes.append(next((s for s in DEFAULT_CAPTURE_SIZES if s >= max_batch), max_batch))
    return sizes


def fused_moe_config_name(num_experts: int, intermediate_per_shard: int, device_name: str,
                          dtype: str | None = None, block_shape: list[int] | None = None) -> str:
    """The file name vLLM's fused MoE looks up for tuned tile configs (``E`` experts,
    ``N`` = expert FFN width per TP shard; H200 variants share ``NVIDIA_H200``; a block-quantized
    kernel's ``block_shape``, e.g. [128, 128])."""
    device = device_name.replace(" ", "_").replace("-", "_")
    if "H200" in device.split("_"):
        device = "NVIDIA_H200"
    suffix = f",dtype={dtype}" if dtype else ""
    if block_shape:
        suffix += ",block_shape=[" + ",".join(str(int(n)) for n in block_shape) + "]"
    return f"E={num_experts},N={intermediate_per_shard},device_name={device}{suffix}.json"


def vllm_available() -> bool:
    """Whether ``import vllm`` can work here."""
    return importlib.util.find_spec("vllm") is not None


#: Decode token choice: "random" (temperature 1) or "greedy" (temperature 0); rows measured before
#: the setting existed were greedy.
SAMPLINGS = ("random", "greedy")


#: How the fused-MoE router picks experts: "model" (the model's own router on its dummy weights)
#: or a strategy of vLLM's routing simulator (``VLLM_MOE_ROUTING_SIMULATION_STRATEGY``):
#: "uniform_random" draws each token's top-k uniformly at random, the routing the model assumes.
#: With dummy weights some routers tie (DeepSeek-V2's softmax of bf16 logits in bf16 gives every
#: token the same experts: :mod:`perfmodel.measuring.vllm_routing`), so "uniform_random" is how
#: such a model is measured at a realistic routing.
ROUTINGS = ("model", "uniform_random")
#: vLLM's ``kv_cache_dtype`` values a point may set, and the model's KV dtype of each (``auto``:
#: the model's dtype; ``fp8`` is e4m3 on CUDA): the KV cache stored, written and read in 8 bits.
KV_CACHE_DTYPES = {"auto": None, "fp8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}
_ROUTING_ENV = "VLLM_MOE_ROUTING_SIMULATION_STRATEGY"
#: vLLM's variable for how it starts worker and engine-core processes (fork or spawn).
WORKER_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
#: vLLM's variable naming a folder of fused-MoE tile files it reads before its own.
TILE_FOLDER_ENV = "VLLM_TUNED_CONFIG_FOLDER"


def point_settings(tp: int = 1, expert_parallel: bool = False, quantization: str | None = None,
                   moe_backend: str = "triton", sampling: str = "random", pp: int = 1,
                   dp: int = 1, routing: str = "model", spec_draft: str | None = None,
                   spec_tokens: int | None = None, spec_accept: float | None = None,
                   engine_process: bool = False, kv_cache_dtype: str = "auto",
                   moe_config_dir: str | None = None, dp_mode: str = "replicas") -> dict[str, str]:
    """Engine settings that are part of each point's id. ``pp`` (pipeline stages) and ``dp``
    (data-parallel ranks) appear only above 1, ``dp_mode`` only when it is ``vllm`` (vLLM's data
    parallelism, the MoE layers spanning the ranks, not independent engine replicas:
    :mod:`perfmodel.measuring.vllm_replicas`), ``routing`` only when it is not the
    model's own, ``mp`` (``1``: the engine core in a process of its own, vLLM's default, see
    :func:`apply_engine_process`) only when asked for, ``spec`` (``DRAFT:γ``: speculative
    decoding with a draft model proposing γ tokens per step) and ``spec_accept`` (α: vLLM's
    synthetic rejection sampler accepts each draft token with probability α, see
    :func:`synthetic_acceptance_rates`) only when given, and ``kv`` (the KV cache's dtype, vLLM's
    ``kv_cache_dtype``, :data:`KV_CACHE_DTYPES`) only when not the model's own, and ``moe_cfg``
    (an absolute folder of fused-MoE tile files vLLM reads before its own, :func:`apply_moe_configs`)
    only when given, so the ids of such points are those of the rows measured before these
    settings existed."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling '{sampling}' (one of: {', '.join(SAMPLINGS)})")
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing '{routing}' (one of: {', '.join(ROUTINGS)})")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown kv_cache_dtype '{kv_cache_dtype}' (one of: {', '.join(KV_CACHE_DTYPES)})")
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    settings = {
        "tp": str(int(tp)),
        "ep": str(int(bool(expert_parallel))),
        "quant": quantization or "none",
        "moe_backend": moe_backend,
        "sampling": sampling,
    }
    settings.update({name: str(int(value)) for name, value in (("pp", pp), ("dp", dp)) if int(value) > 1})
    if dp_mode not in DP_MODES:
        raise ValueError(f"unknown data-parallel mode '{dp_mode}' (one of: {', '.join(DP_MODES)})")
    if dp_mode == "vllm":
        if int(dp) < 2:
            raise ValueError("the vllm data-parallel mode needs dp > 1")
        settings["dp_mode"] = "vllm"
    if routing != "model":
        settings["routing"] = routing
    if (spec_draft is None) != (spec_tokens is None):
        raise ValueError("speculative decoding needs both a draft model and its tokens per step")
    if spec_draft is not None:
        if int(spec_tokens) < 1 or ":" in spec_draft or "|" in spec_draft:
            raise ValueError(f"bad speculative setting {spec_draft}:{spec_tokens}")
        settings["spec"] = f"{spec_draft}:{int(spec_tokens)}"
    if spec_accept is not None:
        if spec_draft is None or not 0.0 <= float(spec_accept) <= 1.0:
            raise ValueError(f"bad speculative acceptance {spec_accept} (in [0, 1], with a draft model)")
        settings["spec_accept"] = f"{float(spec_accept):g}"
    if engine_process:
        settings["mp"] = "1"
    if kv_cache_dtype != "auto":
        settings["kv"] = kv_cache_dtype
    if moe_config_dir is not None:
        folder = str(Path(moe_config_dir).resolve())
        if "|" in folder or "=" in folder:
            raise ValueError(f"bad fused-MoE tile folder {moe_config_dir} ('|' and '=' are not allowed)")
        settings["moe_cfg"] = folder
    return settings


def graph_tokens_per_sequence(settings: dict[str, str]) -> int:
    """Tokens a sequence brings to a decode step: 1, or γ + 1 with speculative decoding (the
    target's verify pass). The CUDA-graph capture sizes must hold B of them: vLLM rounds each
    size to a multiple of γ + 1 and drops those above the largest given, so capture sizes made
    for B tokens (``[1, 2, 4, 8, 16]`` at B = 16, γ = 4 -> ``[5, 10]``) would leave the verify
    pass of B = 16 (80 tokens) and the draft's passes without a graph."""
    spec = spec_setting(settings)
    return 1 if spec is None else spec[1] + 1


def spec_setting(settings: dict[str, str]) -> tuple[str, int] | None:
    """(draft model, γ) of point settings with speculative decoding, else None."""
    value = settings.get("spec")
    if not value:
        return None
    draft, tokens = value.rsplit(":", 1)
    return draft, int(tokens)


def synthetic_acceptance_rates(alpha: float, tokens: int) -> list[float]:
    """vLLM's ``synthetic_acceptance_rates`` for a draft whose every token is accepted with
    probability ``alpha`` given the ones before it were: the unconditional rate of position i
    (1-based) is α^i, so a step yields (1−α^(γ+1))/(1−α) tokens on average, the model's τ."""
    return [float(alpha) ** i for i in range(1, int(tokens) + 1)]


#: Folder of the draft model's config.json beside the target's (speculative decoding).
DRAFT_DIR = "draft"


def write_model_dir(points: list[SweepPoint], model_dir: str | Path) -> dict[str, Any]:
    """Write the config.json of the group's model into ``model_dir`` (and, with speculative
    decoding, the draft's into ``model_dir/draft``, in the same dtype); returns the model's."""
    model_dir = Path(model_dir)
    cfg = vllm_config_json(points[0])
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    spec = spec_setting(_settings(points[0]))
    if spec is not None:
        draft = SweepPoint(model=spec[0], batch=1, input_len=1, output_len=1, backend="vllm",
                           dtype=points[0].dtype)
        (model_dir / DRAFT_DIR).mkdir(exist_ok=True)
        (model_dir / DRAFT_DIR / "config.json").write_text(json.dumps(vllm_config_json(draft), indent=1))
    return cfg


#: vLLM's speculative-decoding counters (Prometheus names; a ``_total`` suffix is dropped) and
#: the row fields they go to.
SPEC_COUNTERS = {"vllm:spec_decode_num_drafts": "spec_drafts",
                 "vllm:spec_decode_num_draft_tokens": "spec_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens": "spec_accepted_tokens"}


#: vLLM's counter of requests preempted (their KV cache freed, to be recomputed) -> row field.
PREEMPTION_COUNTER = {"vllm:num_preemptions": "preemptions"}


def engine_counters(llm, names: dict[str, str]) -> dict[str, int]:
    """The engine's counters named in ``names`` (vLLM metric -> field) so far
    (``LLM.get_metrics``; 0 where absent)."""
    out = dict.fromkeys(names.values(), 0)
    try:
        metrics = llm.get_metrics()
    except Exception:  # noqa: BLE001 - an engine without metrics records zeros
        return out
    for metric in metrics:
        field_name = names.get(str(getattr(metric, "name", "")).removesuffix("_total"))
        value = getattr(metric, "value", None)
        if field_name is not None and isinstance(value, (int, float)):
            out[field_name] += int(value)
    return out


def spec_counters(llm) -> dict[str, int]:
    """The engine's speculative-decoding counters so far (``LLM.get_metrics``; 0 where absent)."""
    return engine_counters(llm, SPEC_COUNTERS)


def request_timeline(outputs) -> list[list[float]] | None:
    """Each request's (scheduled, first token, last token) in seconds since the earliest
    scheduled stamp of the run (``RequestOutput.metrics``, engine-core monotonic), ordered by
    first token, rounded to 0.1 ms; None without the stamps. It shows how the engine admitted a
    batch its KV cache does not hold at once: in groups, and with which prompts recomputed late."""
    stamps = []
    for out in outputs:
        m = getattr(out, "metrics", None)
        three = [getattr(m, k, 0.0) or 0.0 for k in ("scheduled_ts", "first_token_ts", "last_token_ts")]
        if not all(three):
            return None
        stamps.append(three)
    if not stamps:
        return None
    t0 = min(s[0] for s in stamps)
    return sorted([[round(t - t0, 4) for t in s] for s in stamps], key=lambda s: s[1])


def in_waves(timeline: list[list[float]]) -> bool:
    """Whether a run's requests (:func:`request_timeline`) ran in waves: one was first scheduled
    after another had finished."""
    return max(s[0] for s in timeline) > min(s[2] for s in timeline)


def spec_fields(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """A row's speculative-decoding fields from the counters around its timed runs: drafts,
    draft and accepted tokens, vLLM's acceptance rate (accepted / drafted tokens: the mean of the
    per-position rates, not the per-token α of the model) and the mean tokens per target step
    τ = 1 + accepted / drafts (None where nothing was drafted)."""
    d = {name: after[name] - before.get(name, 0) for name in after}
    tokens, drafts, accepted = d["spec_draft_tokens"], d["spec_drafts"], d["spec_accepted_tokens"]
    return {**d, "spec_acceptance": accepted / tokens if tokens else None,
            "spec_mean_accepted_len": 1 + accepted / drafts if drafts else None}


def apply_routing(point: SweepPoint) -> str:
    """Set (or clear) vLLM's routing-simulator variable for the engine about to be built for
    ``point`` (read when the model's MoE layers are constructed); returns the routing."""
    routing = _settings(point).get("routing", "model")
    if routing == "model":
        os.environ.pop(_ROUTING_ENV, None)
    else:
        os.environ[_ROUTING_ENV] = routing
    return routing


def apply_moe_configs(point: SweepPoint) -> str | None:
    """Point vLLM at the point's folder of fused-MoE tile files (``moe_cfg`` in its settings:
    files named as vLLM names its own, read before them, ``VLLM_TUNED_CONFIG_FOLDER``), or clear
    it; returns the folder. The tiles a decode step runs can then be set apart from the GPU: a
    tile table tuned for another GPU, or vLLM's default rule where this GPU ships a table."""
    folder = _settings(point).get("moe_cfg")
    if folder is None:
        os.environ.pop(TILE_FOLDER_ENV, None)
    else:
        os.environ[TILE_FOLDER_ENV] = folder
    return folder


def dummy_filled(llm: Any, engine_process: bool) -> int:
    """Quantized tensors the patched dummy loader filled for a checkpoint-quantized engine
    (:mod:`perfmodel.measuring.vllm_dummy`): in this process, or, for an engine core of its own
    process, there, through the worker extension. Raises where none was."""
    from perfmodel.measuring.vllm_dummy import FILLED_METHOD, checked_fill_count, filled_tensors

    return checked_fill_count(llm.collective_rpc(FILLED_METHOD) if engine_process else filled_tensors())


def apply_engine_process(point: SweepPoint) -> bool:
    """Run the engine about to be built for ``point`` with its engine core in a process of its own
    (``mp=1`` in its settings: vLLM's default, ``VLLM_ENABLE_V1_MULTIPROCESSING=1``, where the
    front end turns each step's outputs into request outputs beside the engine core's next step),
    else as the environment says (``scripts/vllm_setup.sh`` keeps it in this process, as one-GPU
    rows without ``mp`` were measured). Returns whether it is in a process of its own."""
    if _settings(point).get("mp") == "1":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
        # this process has already initialised CUDA (provenance, GPU checks): a forked child
        # could not use it again
        os.environ.setdefault(WORKER_METHOD_ENV, "spawn")
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0"


def layout_degrees(settings: dict[str, str]) -> dict[str, int]:
    """``tp``, ``pp`` and ``dp`` of point settings (1 where absent)."""
    return {name: int(settings.get(name, "1")) for name in ("tp", "pp", "dp")}


def visible_gpus() -> int:
    """CUDA GPUs this process sees (``torch.cuda.device_count()``; 0 without torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def model_type_of(model: str) -> str | None:
    """The config.json ``model_type`` of a zoo name or config path, recorded in each row (None
    where it cannot be read: the row is still written)."""
    try:
        return load_hf_config(model)["model_type"]
    except Exception:  # noqa: BLE001
        return None


def _settings(point: SweepPoint) -> dict[str, str]:
    return dict(point.settings)


def _layer_overrides(point: SweepPoint) -> list[str]:
    return list(point.overrides) + ([f"num_layers={point.layers}"] if point.layers else [])


#: vLLM quantization methods that a checkpoint carries in its config.json
#: (``quantization_config``) instead of applying them to bf16 weights on load: a point of one
#: gets the block in its config.json and no ``quantization`` engine argument, and its dummy
#: weights fill the integer parameters too (:mod:`perfmodel.measuring.vllm_dummy`). ``mxfp4``:
#: gpt-oss's format, the routed experts in MXFP4 and every other layer in bf16. ``gptq``: int4
#: weight-only, symmetric, one scale per 128 inputs, no act-order, as GPTQ checkpoints of MoE
#: models ship; the routed experts always, and the linear layers whose names contain an entry of
#: ``modules_in_block_to_quantize`` (vLLM reads that list from the checkpoint's safetensors when
#: the config lacks it, and a dummy model has none): attention, shared experts and dense MLPs,
#: not the router. Run on Marlin (``--moe-backend marlin``). ``fp8-block``: W8A8 fp8 with one
#: fp32 scale per 128x128 block of weights and activations quantized per 1x128 group on the fly
#: (the format of Qwen3's and DeepSeek-V3's FP8 checkpoints; vLLM's ``fp8`` method with
#: ``weight_block_size``): every linear layer vLLM builds with the quantization config, the
#: router too where the model's class does (Qwen3-MoE), as such checkpoints store it.
CHECKPOINT_QUANTIZATIONS = {
    "mxfp4": {"quant_method": "mxfp4"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
             "lm_head": False, "modules_in_block_to_quantize": [
                 "self_attn", "shared_expert.", "shared_experts.", "mlp.gate_up_proj", "mlp.down_proj"]},
    "fp8-block": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                  "weight_block_size": [128, 128]},
}
#: The dtype part of the tuned fused-MoE config name vLLM looks up per ``--quantization`` (its
#: Triton kernel's ``get_config_dtype_str``); bf16 has none.
FUSED_MOE_CONFIG_DTYPES = {"fp8": "fp8_w8a8", "experts_int8": "int8_w8a16", "fp8-block": "fp8_w8a8"}


def checkpoint_quantization(point: SweepPoint) -> dict[str, Any] | None:
    """The ``quantization_config`` a point's config.json carries, None for a bf16 checkpoint
    (unquantized, or quantized by vLLM on load)."""
    block = CHECKPOINT_QUANTIZATIONS.get(_settings(point).get("quant", "none"))
    return dict(block) if block is not None else None


def vllm_config_json(point: SweepPoint) -> dict[str, Any]:
    """The config.json a dummy-weights vLLM engine loads for this point's model."""
    cfg = load_hf_config(point.model, _layer_overrides(point))
    model_type = cfg["model_type"]
    if model_type not in ARCHITECTURES:
        raise ValueError(f"no vLLM architecture known for model_type {model_type}")
    cfg = dict(cfg)
    cfg["architectures"] = [ARCHITECTURES[model_type]]
    cfg.setdefault("torch_dtype", point.dtype)
    cfg.pop("quantization_config", None)  # the checkpoint's format is the point's, not the zoo's
    block = checkpoint_quantization(point)
    if block is not None:
        cfg["quantization_config"] = block
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
                  max_batched_tokens: int | None = None,
                  gpu_memory_utilization: float = 0.9,
                  accepted: set[str] | None = None) -> dict[str, Any]:
    """``vllm.LLM(**kwargs)`` for a group of points sharing one engine.

    ``max_batched_tokens``: the prefill chunk (tokens per engine step); None leaves vLLM's
    default. ``accepted``: the installed vLLM's EngineArgs field names; optional arguments it
    lacks (``moe_backend``) are dropped. None keeps everything (translation tests).
    """
    if not points:
        raise ValueError("no points")
    p0 = points[0]
    s = _settings(p0)
    if int(s.get("dp", "1")) > 1:
        raise ValueError("one engine per replica: build the engines of a dp > 1 point with vllm_replicas")
    max_b = max(p.batch for p in points)
    degrees = layout_degrees(s)
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": p0.dtype,
        "tensor_parallel_size": degrees["tp"],
        "pipeline_parallel_size": degrees["pp"],
        "enable_expert_parallel": s.get("ep", "0") == "1",
        "quantization": (None if s.get("quant", "none") == "none" or checkpoint_quantization(p0) is not None
                         else s["quant"]),
        "max_num_seqs": max_b,
        "max_model_len": max(p.max_cache_len for p in points),
        "enforce_eager": not p0.cuda_graphs,
        "compilation_config": {"cudagraph_capture_sizes": capture_sizes(max_b * graph_tokens_per_sequence(s))},
        "enable_prefix_caching": False,
        "disable_log_stats": False,
        "gpu_memory_utilization": gpu_memory_utilization,
        "seed": 0,
        "hf_overrides": hf_overrides(p0),
        "moe_backend": s.get("moe_backend", "triton"),
    }
    if "kv" in s:
        kwargs["kv_cache_dtype"] = s["kv"]
    spec = spec_setting(s)
    if spec is not None:  # the draft's config.json: write_model_dir
        kwargs["speculative_config"] = {"method": "draft_model", "model": str(Path(model_dir) / DRAFT_DIR),
                                        "num_speculative_tokens": spec[1]}
        if "spec_accept" in s:  # dummy weights accept nothing: draw acceptance at the set α
            kwargs["speculative_config"].update(
                rejection_sample_method="synthetic",
                synthetic_acceptance_rates=synthetic_acceptance_rates(float(s["spec_accept"]), spec[1]))
    if degrees["tp"] * degrees["pp"] > 1:
        kwargs["distributed_executor_backend"] = "mp"  # one worker process per GPU
    if max_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = max(int(max_batched_tokens), kwargs["max_model_len"])
    if accepted is not None:
        for optional in ("moe_backend", "enable_prefix_caching"):
            if optional not in accepted:
                kwargs.pop(optional)
    return kwargs


def sampling_kwargs(output_len: int, sampling: str = "greedy") -> dict[str, Any]:
    """``SamplingParams(**kwargs)``: exactly O tokens, EOS ignored, no detokenizing; greedy
    (temperature 0) or sampled from the full distribution (temperature 1, no top-k/top-p)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling '{sampling}' (one of: {', '.join(SAMPLINGS)})")
    return {
        "max_tokens": int(output_len),
        "min_tokens": int(output_len),
        "ignore_eos": True,
        "temperature": 0.0 if sampling == "greedy" else 1.0,
        "detokenize": False,
    }


def make_requests(batch: int, input_len: int, vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """B prompts of S random token ids in [10, vocab - 10) (away from special ids)."""
    return make_prompts([input_len] * batch, vocab_size, seed)


def make_prompts(lengths: Sequence[int], vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """One prompt of each length (tokens), random token ids in [10, vocab - 10), drawn in turn
    from ``random.Random(seed)``."""
    rng = random.Random(seed)
    hi = max(11, vocab_size - 10)
    return [{"prompt_token_ids": [rng.randrange(10, hi) for _ in range(n)]} for n in lengths]


#: Decode steps of a kernel profile (``--profile``): one step is their mean.
PROFILE_DECODE_STEPS = 16


class VLLMBackend:
    """Runs points through ``vllm.LLM`` (one engine per group of points)."""

    name = "vllm"

    def __init__(self, reps: int = 3, log=None, routing_probe: bool = False, profile: bool = False,
                 engine_args: dict[str, Any] | None = None) -> None:
        self.reps = reps
        #: engine arguments set over those the points give, where this vLLM takes them (a
        #: script's own engine: ``scripts/profile_mixed_steps.py`` turns asynchronous scheduling off)
        self.engine_args = dict(engine_args or {})
        self.routing_probe = routing_probe
        self.profile = profile
        self.log = log or (lambda msg: print(msg, flush=True))
        self._tmp: tempfile.TemporaryDirectory | None = None

    def provenance(self) -> dict[str, Any]:
        return env.provenance()

    def describe(self, point: SweepPoint) -> dict[str, Any]:
        s = _settings(point)
        return {
            "model_type": model_type_of(point.model),
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
                "pp": int(s.get("pp", "1")),
                "dp": int(s.get("dp", "1")),
                "quantization": s.get("quant", "none"),
                "kv_cache_dtype": s.get("kv", "auto"),
            },
        }

    def estimate_s(self, handle, point: SweepPoint) -> float:
        return 0.0

    def prepare(self, points: list[SweepPoint]):
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs

        self._tmp = tempfile.TemporaryDirectory(prefix="perfmodel-vllm-")
        model_dir = Path(self._tmp.name)
        cfg = write_model_dir(points, model_dir)
        accepted = {f.name for f in dataclasses.fields(EngineArgs)}
        kwargs = engine_kwargs(points, model_dir, accepted=accepted)
        if self.routing_probe:  # hooks run only outside CUDA graphs and compiled graphs
            kwargs.pop("compilation_config", None)
            kwargs["enforce_eager"] = True
        kwargs.update({k: v for k, v in self.engine_args.items() if k in accepted})
        self.log(f"vllm engine: {kwargs}")
        t0 = time.perf_counter()
        apply_routing(points[0])
        apply_moe_configs(points[0])
        engine_process = apply_engine_process(points[0])
        stored = checkpoint_quantization(points[0]) is not None
        if stored:
            from perfmodel.measuring.vllm_dummy import FILL_EXTENSION, filled_tensors, patch_dummy_loader

            if engine_process:  # the engine core loads in a process of its own: patch its loader there
                kwargs["worker_extension_cls"] = FILL_EXTENSION
            else:
                patch_dummy_loader()
                filled_tensors(reset=True)  # count this engine's own
        llm = LLM(**kwargs)
        startup_s = time.perf_counter() - t0
        settings = engine_settings(llm)
        if stored:
            settings["dummy_quantized_filled"] = dummy_filled(llm, engine_process)
        settings["startup_s"] = round(startup_s, 1)
        settings["v1_multiprocessing"] = engine_process
        tp = int(_settings(points[0]).get("tp", "1"))
        settings.update(tuned_moe_config(cfg, points[0], tp))
        chunk = int(settings.get("max_num_batched_tokens") or 16384)
        settings.update(fused_moe_tiles(cfg, points[0], tp, [n for p in points
                                                             for n in (p.batch, min(p.batch * p.input_len, chunk))]))
        self.log(f"vllm engine ready in {startup_s:.0f} s: {settings}")
        handle = {"llm": llm, "vocab": int(cfg["vocab_size"]), "kwargs": kwargs, "settings": settings,
                  "moe_backend_applied": "moe_backend" in kwargs}
        if self.routing_probe:
            shape = family(cfg["model_type"]).moe_shape(cfg)
            if shape is None or not shape.experts or not shape.top_k:
                raise ValueError(f"{cfg['model_type']}: no routed experts to probe")
            handle["experts"] = (shape.experts, shape.top_k)
        return handle

    def measure(self, handle, point: SweepPoint) -> dict[str, Any]:
        if self.routing_probe:
            return self.measure_routing(handle, point)
        from vllm import SamplingParams

        llm = handle["llm"]
        prompts = make_requests(point.batch, point.input_len, handle["vocab"])
        o = point.output_len

        sampling = _settings(point).get("sampling", "greedy")

        def run(n: int) -> tuple[float, list]:
            params = SamplingParams(**sampling_kwargs(n, sampling))
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            return (time.perf_counter() - t) * 1e3, outs

        probes = [probe_ms()]  # the host's speed, before and after the timed runs
        run(1)  # warm-up: prefill shape (fused-MoE JIT, chunking)
        if o > 1:
            run(min(o, 16))  # warm-up: decode at this batch
        ttft_runs = [run(1) for _ in range(self.reps)]
        ttfts = [ms for ms, _ in ttft_runs]
        admissions = [a for a in (admission_ms(outs) for _, outs in ttft_runs) if a is not None]
        ttft_engine = [t for t in (engine_times(outs, 1)["engine_ttft_ms"] for _, outs in ttft_runs) if t is not None]
        e2es, engine = [], []
        produced = None
        spec = spec_setting(_settings(point)) is not None
        counted = spec_counters(llm) if spec else {}
        preempted = engine_counters(llm, PREEMPTION_COUNTER)["preemptions"]
        timeline = None
        for _ in range(FULL_RUN_REPS if o > 1 else 0):
            ms, outs = run(o)
            e2es.append(ms)
            engine.append(engine_times(outs, o))
            produced = [len(x.outputs[0].token_ids) for x in outs]
            timeline = request_timeline(outs)
        extra = spec_fields(counted, spec_counters(llm)) if spec else {}
        if e2es:  # preemptions per full run; the last run's requests where the engine preempted
            preempted = (engine_counters(llm, PREEMPTION_COUNTER)["preemptions"] - preempted) / len(e2es)
            extra["preemptions"] = preempted
            if timeline is not None and (preempted or in_waves(timeline)):
                extra["request_timeline_s"] = timeline
        probes.append(probe_ms())
        if self.profile:  # after the timed runs: the profiler slows the host, not the kernels
            extra.update(self.kernel_profiles(lambda n: run(n)[1], o))
        ttft = statistics.median(ttfts)
        e2e = max(statistics.median(e2es), ttft) if e2es else ttft
        notes = []
        if produced and any(n != o for n in produced):
            notes.append(f"generated lengths {sorted(set(produced))} != O={o}")
        if not handle["moe_backend_applied"]:
            notes.append("this vLLM has no moe_backend engine argument: MoE kernel left to vLLM")
        chunk = handle["settings"].get("max_num_batched_tokens")
        if isinstance(chunk, int) and point.batch * point.input_len > chunk:
            notes.append(f"prefill chunked: B*S = {point.batch * point.input_len} > "
                         f"max_num_batched_tokens = {chunk}")
        decode_total = e2e - ttft
        itls = [e["engine_itl_ms"] for e in engine if e.get("engine_itl_ms") is not None]
        ttfts_engine = [e["engine_ttft_ms"] for e in engine if e.get("engine_ttft_ms") is not None]
        return {
            "ttft_ms": ttft,
            "ttft_reps": len(ttfts),
            "e2e_ms": e2e,
            "e2e_reps": len(e2es),
            "decode_total_ms": decode_total,
            "itl_ms": decode_total / (o - 1) if o > 1 else 0.0,
            "engine_itl_ms": statistics.median(itls) if itls else None,
            "engine_ttft_ms": statistics.median(ttfts_engine) if ttfts_engine else None,
            "ttft_engine_ms": statistics.median(ttft_engine) if ttft_engine else None,
            "admission_ms": statistics.median(admissions) if admissions else None,
            "host_probe_ms": [round(ms, 3) for ms in probes],
            "throughput_tok_s": point.batch * (point.input_len + o) / (e2e / 1e3),
            "output_tok_s": point.batch * o / (e2e / 1e3),
            "decode_method": "vllm_engine",
            "decode_samples": [],
            "notes": notes,
            "engine_detail": {**{k: v for k, v in handle["kwargs"].items() if k != "model"},
                              "resolved": handle["settings"]},
            **extra,
        }

    @staticmethod
    def kernel_profiles(run, output_len: int) -> dict[str, Any]:
        """GPU kernels of the prefill (a run with O = 1) and of one decode step (a run of
        n + 1 tokens less the prefill's, over n = min(O − 1, :data:`PROFILE_DECODE_STEPS`)
        steps), as ``prefill_profile`` / ``decode_profile`` (:mod:`perfmodel.measuring.vllm_kernels`)."""
        from perfmodel.measuring import vllm_kernels

        prefill = vllm_kernels.profile_run(lambda: run(1))
        out = {"prefill_profile": vllm_kernels.summary(prefill)}
        steps = min(output_len - 1, PROFILE_DECODE_STEPS)
        if steps >= 1:
            whole = vllm_kernels.profile_run(lambda: run(steps + 1))
            out["decode_profile"] = {**vllm_kernels.summary(vllm_kernels.decode_step(whole, prefill, steps)),
                                     "steps": steps}
        return out

    def measure_routing(self, handle, point: SweepPoint) -> dict[str, Any]:
        """The routing of one point's whole request, prefill (T = B*S) and all O - 1 decode
        steps (T = B), under each sampling of :data:`SAMPLINGS` (``routing`` is the point's own
        sampling, ``routing_by_sampling`` all of them), per :mod:`perfmodel.measuring.vllm_routing`;
        no times (the engine is eager)."""
        from functools import partial

        from vllm import SamplingParams

        from perfmodel.measuring import vllm_routing

        experts, top_k = handle["experts"]
        llm = handle["llm"]
        prompts = make_requests(point.batch, point.input_len, handle["vocab"])
        by_sampling, hooked = {}, 0
        for sampling in SAMPLINGS:
            hooked = llm.apply_model(partial(vllm_routing.install, num_experts=experts, top_k=top_k))
            llm.generate(prompts, SamplingParams(**sampling_kwargs(point.output_len, sampling)),
                         use_tqdm=False)
            records = [r for worker in llm.apply_model(vllm_routing.collect) for r in worker]
            by_sampling[sampling] = vllm_routing.summarize(records, experts, top_k)
        own = _settings(point).get("sampling", "greedy")
        return {"decode_method": "routing_probe", "routers_hooked": hooked,
                "routing": by_sampling[own], "routing_by_sampling": by_sampling,
                "notes": [] if any(by_sampling.values()) else ["no router call was seen: nothing hooked"],
                "engine_detail": {k: v for k, v in handle["kwargs"].items() if k != "model"}}

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


def engine_settings(llm) -> dict[str, Any]:
    """What the engine resolved (chunk size, CUDA-graph mode and sizes, ...), JSON-safe; fields
    this vLLM does not have are left out."""
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    if cfg is None:
        return {}
    sched = getattr(cfg, "scheduler_config", None)
    comp = getattr(cfg, "compilation_config", None)
    model = getattr(cfg, "model_config", None)
    cache = getattr(cfg, "cache_config", None)
    fields = {
        "max_num_batched_tokens": (sched, "max_num_batched_tokens"),
        "max_num_seqs": (sched, "max_num_seqs"),
        "chunked_prefill": (sched, "enable_chunked_prefill"),
        "cudagraph_mode": (comp, "cudagraph_mode"),
        "cudagraph_capture_sizes": (comp, "cudagraph_capture_sizes"),
        "compilation_mode": (comp, "mode"),
        "max_model_len": (model, "max_model_len"),
        "kv_cache_dtype": (cache, "cache_dtype"),
        "num_gpu_blocks": (cache, "num_gpu_blocks"),
        "block_size": (cache, "block_size"),
    }
    out: dict[str, Any] = {}
    for name, (obj, attr) in fields.items():
        if obj is None or not hasattr(obj, attr):
            continue
        value = getattr(obj, attr)
        if isinstance(value, (list, tuple)):
            value = [v if isinstance(v, (int, float, str, bool)) else str(v) for v in value]
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = str(value)
        out[name] = value
    return out


def _moe_shard(cfg: dict[str, Any], point: SweepPoint, tp: int) -> tuple[Any, int, int] | None:
    """The model's routed experts and one GPU's of them, (shape, E, width): E experts of width/tp
    under TP, E/tp whole experts under EP; None for a model without routed experts."""
    shape = family(cfg["model_type"]).moe_shape(cfg)
    if shape is None or not shape.experts or not shape.expert_width:
        return None
    tp = max(tp, 1)
    if _settings(point).get("ep", "0") == "1" and tp > 1:
        return shape, shape.experts // tp, shape.expert_width
    return shape, shape.experts, shape.expert_width // tp


def _moe_kernel_dtype(point: SweepPoint) -> tuple[str | None, list[int] | None]:
    """The dtype name vLLM's fused-MoE tile files carry for a point's scheme, and its weight
    block shape (None for per-tensor scales)."""
    quant = _settings(point).get("quant", "none")
    return FUSED_MOE_CONFIG_DTYPES.get(quant), (CHECKPOINT_QUANTIZATIONS.get(quant) or {}).get("weight_block_size")


def fused_moe_tiles(cfg: dict[str, Any], point: SweepPoint, tp: int, tokens: Sequence[int]) -> dict[str, Any]:
    """The tile config vLLM's Triton fused-MoE kernel runs at each pass size in ``tokens`` (M:
    a decode step's sequences, a prefill step's tokens), as vLLM itself picks it
    (``try_get_optimal_moe_config``: the tuned file's entry nearest M, else its default rule):
    ``{"fused_moe_tiles": {"M": {"BLOCK_SIZE_M": ..., "BLOCK_SIZE_N": ..., ...}}}``. A tuned
    file tuned only for large M (Phi-3.5-MoE's fp8 one on the H100 starts at M = 256) gives a
    decode step those large tiles. Empty for a model without routed experts or Marlin's kernel."""
    shard = _moe_shard(cfg, point, tp)
    if shard is None or _settings(point).get("moe_backend") == "marlin" or not tokens:
        return {}
    shape, experts, width = shard
    dtype, block_shape = _moe_kernel_dtype(point)
    try:
        from vllm.model_executor.layers.fused_moe.fused_moe import try_get_optimal_moe_config

        tiles = {str(m): dict(try_get_optimal_moe_config((experts, 2 * width, shape.hidden),
                                                         (experts, shape.hidden, width), shape.top_k,
                                                         dtype, int(m), block_shape))
                 for m in sorted(set(tokens))}
        return {"fused_moe_tiles": tiles}
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal
        return {"fused_moe_tiles_error": str(exc)[:200]}


def tuned_moe_config(cfg: dict[str, Any], point: SweepPoint, tp: int = 1) -> dict[str, Any]:
    """The tuned fused-MoE config file vLLM looks up for this model on this GPU, and whether this
    vLLM ships it (vLLM falls back to a default tile config, with a warning, when it does not).
    The shape is one GPU's (:func:`_moe_shard`)."""
    shard = _moe_shard(cfg, point, tp)
    if shard is None:
        return {}
    if _settings(point).get("moe_backend") == "marlin":
        return {"fused_moe_config": "none: Marlin's MoE kernel takes no tuned tile config"}
    _, experts, width = shard
    try:
        import torch
        import vllm

        device = torch.cuda.get_device_name()
        name = fused_moe_config_name(experts, width, device, *_moe_kernel_dtype(point))
        own = _settings(point).get("moe_cfg")
        if own is not None and (Path(own) / name).is_file():  # vLLM reads this folder first
            return {"fused_moe_config": name, "fused_moe_config_tuned": True, "fused_moe_config_folder": own}
        folder = Path(vllm.__file__).parent / "model_executor" / "layers" / "fused_moe" / "configs"
        return {"fused_moe_config": name, "fused_moe_config_tuned": (folder / name).is_file()}
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal
        return {"fused_moe_config_error": str(exc)[:200]}


def admission_ms(outputs) -> float | None:
    """The front end's time to admit a ``generate`` call's requests, ms: the spread of their
    arrival times (``RequestOutput.metrics.arrival_time``, wall seconds, stamped as each request
    is processed), which spans B − 1 admissions; 0 for one request, None without the stamps."""
    stamps = [getattr(getattr(out, "metrics", None), "arrival_time", 0.0) or 0.0 for out in outputs]
    if not stamps or not all(stamps):
        return None
    return (max(stamps) - min(stamps)) * 1e3


def engine_times(outputs, output_len: int | Sequence[int]) -> dict[str, float | None]:
    """Per-request engine timestamps (``RequestOutput.metrics``, engine-core monotonic seconds):
    mean (last - first token)/(O - 1) in ms and mean (first token - scheduled) in ms; O, or each
    output's own."""
    itl, ttft = [], []
    lens = [output_len] * len(outputs) if isinstance(output_len, int) else list(output_len)
    for out, o in zip(outputs, lens):
        m = getattr(out, "metrics", None)
        first, last = getattr(m, "first_token_ts", 0.0), getattr(m, "last_token_ts", 0.0)
        scheduled = getattr(m, "scheduled_ts", 0.0)
        if first and last and o > 1:
            itl.append((last - first) * 1e3 / (o - 1))
        if first and scheduled:
            ttft.append((first - scheduled) * 1e3)
    return {"engine_itl_ms": statistics.fmean(itl) if itl else None,
            "engine_ttft_ms": statistics.fmean(ttft) if ttft else None}
