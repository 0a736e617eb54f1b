"""Fitting the vLLM engine profile end to end, from measured vLLM runs alone.

``perfmodel calibrate fit --engine vllm`` writes ``calibration/profiles/<gpu>-vllm.yaml``. No
microbenchmark of vLLM's own kernels exists, so every parameter comes from least squares on
log(predicted/measured) TTFT and decode step of the training models' end-to-end rows
(:data:`perfmodel.calibration.fit.TRAIN_MODELS`, as built, no variants), and on the attention
and fused-MoE kernels of their profiled decode steps (:data:`KERNEL_PROFILE`: those rows are
training points). What each parameter stands for in vLLM (0.26, offline ``LLM``, CUDA graphs;
``shared/reference/vllm.md``):

- ``grouped_gemm`` memory and compute η: the fused-MoE Triton kernel (tokens sorted by expert,
  rows padded to BLOCK_SIZE_M, gate/up and down GEMMs), tuned or default tile configs; its
  ``exposed`` fraction: the part of the shorter of its compute and memory times that the
  kernel's pipeline does not hide behind the longer (t = max + a·min). The profiled steps show
  it: between the two bounds (tens to a hundred rows per expert) the kernel runs 10–25% slower
  than the larger of the two, in every model;
- ``gemm`` compute η: cuBLAS for the dense projections and the LM head; their memory curve (η_m
  and its half) is not fitted where the GPU has a GEMM microbenchmark: it is the benchmark's
  (:func:`dense_gemm_bench`), as is the memory multiplier of the dense GEMMs of per-tensor fp8;
- ``dense_mlp``: the GEMMs of a dense MLP (a dense model's, DeepSeek's first dense layers), the
  same cuBLAS GEMMs, which no training model runs: the GEMM microbenchmark's whole curve, compute
  and memory, where the GPU has one (:func:`dense_gemm_bench`); else they run as ``gemm``;
- ``attention`` memory and compute η: FlashAttention 3 over each sequence's real context
  (paged; never the allocated length), FlashMLA-style absorbed decode for MLA; its
  ``context_half``: the kernel's work per sequence and head, which a short context does not
  hide (each sequence's cache read costs C + C_half keys);
- ``per_step_s`` and ``per_layer_s``: a decode step replayed from a full CUDA graph still pays
  the scheduler, input preparation and sampling once per step, and graph nodes per layer;
  ``per_kernel_s`` is not fitted: it is the benchmarked cost of one kernel node in a replayed
  CUDA graph on the same GPU (:func:`graph_node_cost`), so that ops with more kernels (an
  unfused expert loop, activation-quantization passes) cost what their launches cost; nor is
  ``per_small_kernel_s``, a small kernel's duration (norms, rotary, cache writes, top-k), the
  median of the training models' profiled decode steps
  (:mod:`perfmodel.calibration.fit_small_kernels`);
- ``host_step_s`` and ``host_seq_s``: the host's work for one decode step (scheduling it,
  preparing its inputs, processing its outputs), per step and per sequence it holds. vLLM's
  asynchronous scheduling prepares step k + 1 while the GPU runs step k, so the step takes
  max(GPU, host) (:func:`perfmodel.prediction.decode_host_floor`): it shows where the GPU's
  step is short beside many sequences (OLMoE-1B-7B at B = 1,024: GPU busy 15 ms, step 21 ms).
  The end-to-end rows that show it are the training models' profiled rows at B up to 1,024,
  which join the least squares with their TTFT and decode step (:data:`KERNEL_PROFILE`);
- ``request_s``: an offline ``generate`` call's host time per request, serial with the
  engine: the front end admits every request before the first step (each row's
  ``admission_ms``, the spread of the requests' arrival stamps, measures that part: about
  0.1 ms per request) and returns every output after the last; TTFT and E2E pay B of them
  once (:func:`perfmodel.prediction.request_metrics`). A serving engine admits requests as they
  arrive, beside its steps: the planner's step times do not hold it.
- ``eager_step_s`` and ``eager_layer_s``: prefill runs from piecewise CUDA graphs with the
  attention between the pieces launched from the host, and each engine step schedules its
  requests: a prefill step takes at least that host time (``prefill_eager``), unless the
  prefill's B·S tokens fit the largest captured graph (``cudagraph_max_tokens``: 512, vLLM's
  default cap; each measured row states its own capture sizes), which is replayed.
  ``eager_layer_s`` is an MoE layer's (its fused-MoE op, opaque to the compiler, runs from
  Python); a layer with a dense MLP launches only its attention between compiled pieces, and its
  ``dense_layer_s`` is ``piecewise_layer_s``, once fitted (:func:`perfmodel.prediction.launch_floor`):
  the training models are MoE throughout, and the H100's dense models, held out, check it.
- ``uncompiled_op_s``: the host's time, in such a launched step, for each op vLLM runs from
  Python inside an opaque custom op rather than in its compiled code: the shared experts, which
  the fused-MoE op (``moe_forward_shared``) calls op by op (:attr:`perfmodel.ops.base.Op.uncompiled`).
  Fitted with the rest: Qwen1.5-MoE-A2.7B is the training model with shared experts, OLMoE-1B-7B and
  Mixtral-8x7B have none. Checked on Qwen1.5-MoE measured with and without its shared expert
  (``h200-vllm-shared-experts.jsonl``, which no fit reads) and on DeepSeek-V2-Lite, held out.
- ``piecewise_layer_s``: such a replayed prefill still launches each layer's attention between
  the graph's pieces from the host, serial with the GPU's work. Fitted after the rest, from the
  training models' rows whose prefill fit the engine's capture sizes
  (:func:`fit_piecewise_layer`); the other models' such rows are held out.
- ``draft_pass_s``: speculative decoding with a draft model runs γ draft passes per step, each
  a graph replay between host work the replay does not hide (the proposer prepares the pass's
  inputs and samples its token). Fitted after the rest, from the speculative rows of one draft,
  γ and batch (:data:`TRAIN_DRAFT`) whose verify pass was replayed from a graph; the other
  drafts, γ and batches are held out (:func:`fit_draft_pass`).
- ``launch_serial_s``: a serving step launched from the host (prompt tokens beyond the largest
  CUDA graph) takes more than its kernels where they set it: the host's scheduling, inputs and
  first launches before them, its sampling and outputs after. Fitted before ``eager_seq_s``, from
  the profiled steps of ``scripts/profile_mixed_steps.py`` (every GPU's, at the reference host)
  that hold a training model's prompt alone and that the GPU set (:mod:`perfmodel.calibration.fit_launch_serial`);
  the other models' are its check, and every serving run is held out. The offline passes do not
  take it: their host terms are fitted end to end on offline TTFTs, which hold it.
- ``launch_serial_seq_s``: what each further sequence of such a step (a decode beside the prompt)
  adds to that time: fitted next, the least-squares slope over D of the same profiles with D
  decodes beside the prompt, through ``launch_serial_s``
  (:func:`perfmodel.calibration.fit_launch_serial.fit_launch_serial_seq`).
- ``eager_seq_s``: a launched step's host work for each sequence it holds (the scheduler's, the
  model runner's input preparation), serial with the launch; offline prefills hide it, a serving
  step with hundreds of decodes beside a prompt chunk does not. Fitted after the rest, from the
  serving step traces of the training models' runs that filled ``max_num_seqs``
  (:mod:`perfmodel.calibration.fit_step_host`); every other serving run is held out.
- ``mla_split_layer_s``: a step holding a prompt beside decodes runs an MLA model's attention as
  two paths, the second launched from the host. Fitted after ``eager_seq_s``, from the profiled
  steps of ``scripts/profile_mixed_steps.py`` (every GPU's, at the reference host) whose host was
  steady and set the step (:mod:`perfmodel.calibration.fit_mla_split`); every serving run is held out.
- ``launch_noise``: how a launched step's host time varies within a serving run (a part drawn
  anew at each launch, a fast and a slow drifting one: :mod:`perfmodel.host_noise`). Fitted
  after ``eager_seq_s``, from the launches in the training models' traced bf16 serving runs
  (:mod:`perfmodel.calibration.fit_launch_noise`); the other traced runs are its check.
- ``quantization.<scheme>.tile_s`` and ``k_step_s``: a scheme whose routed experts run in a
  tiled kernel (gpt-oss's MXFP4 experts: triton_kernels' ``matmul_ogs``, one 256-column tile of
  one touched expert per SM, K loops of 128) cannot finish a decode step's experts before its
  waves of K loops, however few bytes they move. Fitted after the rest, from the expert kernels
  of gpt-oss-120b's profiled decode steps; every other model's are held out
  (:mod:`perfmodel.calibration.fit_tiles`). Its ``host_layer_s``: the host time per layer of
  that kernel's launches from Python in a launched prefill (triton_kernels builds each launch on
  the host), from gpt-oss-120b's launched prefills at B = 1
  (:func:`~perfmodel.calibration.fit_tiles.fit_tile_host`). Its ``bitmatrix_*_s``: the times of
  the bitmatrix pack a staged MoE block runs before that kernel (vLLM's ``--moe-backend
  triton_unfused``), from the kernel timed alone over 8 to 512 experts
  (:func:`~perfmodel.calibration.fit_tiles.fit_bitmatrix`); every model's profiled packs held out.
- ``quantization.<scheme>.host_layer_s`` of a scheme that quantizes its activations on the fly
  (fp8, fp8-block): the host time per MoE layer of the routed experts' input quantization, which
  vLLM's fused-MoE op (opaque to the compiler) launches from Python in a launched prefill. Fitted
  after the scheme's multipliers, on the TTFT of its training models' launch-bound prefills, each
  at its host's probe (:func:`fit_quant_hosts`); every other model's such rows held out
  (``fit.quantization_host``). A fit anchored on another GPU's takes the anchor's, a host time.
- a scheme no training model was measured in (:data:`SCHEME_TRAIN`: gpt-oss's MXFP4 experts on
  vLLM's Marlin MoE kernel, ``mxfp4-moe-marlin``) has its kernel multipliers fitted on the rows of
  the models named there, every other model's held out.
- ``kv_cache.<dtype>.attention_memory``: the attention kernels' η_m multiplier with vLLM's KV
  cache stored in another dtype (``kv_cache_dtype="fp8"``: FlashAttention-3's fp8 path reads half
  the bytes, not twice as fast). Fitted after the rest, from the decode steps of the training
  models' rows at that dtype; every other model's are held out
  (:mod:`perfmodel.calibration.fit_kv_cache`).
- ``host_probe_ref_ms`` and ``host_speed_exponent``: the host's speed as an input
  (:mod:`perfmodel.host_speed`). Fitted first, from the rows of a model cut to one layer that
  recorded the host's probe time (:mod:`perfmodel.calibration.fit_host_speed`); every row with a
  probe is then predicted at its own host's speed, in the fit as in validation.

Elementwise kernels (fused RMSNorm, SiLU-and-mul) keep a stated η (:data:`FIXED_EFFICIENCY`);
on another GPU the fitted efficiencies apply as fractions of its datasheet peaks. A GPU measured
in fewer kinds of rows than the H200 (the H100: its models' end-to-end rows) is fitted anchored
on the H200's fit: its efficiencies and the schemes it ran from its own rows, the host's terms,
the fixed times per step and per layer and what it never ran from the H200's
(:mod:`perfmodel.calibration.fit_anchor`). A prefill
larger than ``max_num_batched_tokens`` (16,384 tokens) runs in ⌈B·S/16384⌉ engine steps, each
paying the per-pass and host costs (``options.prefill_chunk_tokens``).

The error band comes from held-out points only: the held-out models and the hypothetical
variants (``<gpu>-vllm-whatif.jsonl``). The serving error band, last, from the serving runs
replayed on the fitted profile, the runs ``eager_seq_s`` and ``launch_noise`` come from left
out (:mod:`perfmodel.calibration.fit_serving_band`). Routing of vLLM's dummy weights is not uniform for
every model: the fit reports the held-out residuals as measured, and says which models decode
faster than the HBM floor of uniform routing allows (their experts are not all touched).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.calibration.fit import (HELD_OUT_MODELS, TRAIN_MODELS, _compare_with, _predict_many,
                                       _profile, _rows, _sig, held_out_residuals, on_bounds, one_gpu_rows)
from perfmodel.calibration.fit_host_speed import fit_host_speed
from perfmodel.calibration.fit_kv_cache import fit_kv_cache, kv_dtypes
from perfmodel.calibration.fit_launch_noise import fit_launch_noise
from perfmodel.calibration.fit_serving_band import fit_serving_band
from perfmodel.calibration.fit_small_kernels import fit_small_kernel
from perfmodel.calibration.fit_launch_serial import fit_launch_serial, fit_launch_serial_seq
from perfmodel.calibration.fit_mla_split import fit_mla_split
from perfmodel.calibration.fit_step_host import fit_eager_seq, traced_runs_path
from perfmodel.calibration.fit_tiles import TILE_TRAIN, fit_bitmatrix, fit_tile_host, fit_tile_times
from perfmodel.calibration.fit_vllm_memory import fit_activation_reserve
from perfmodel.errors import SpecError
from perfmodel.measuring.results import read_rows
from perfmodel.measuring.routing_floor import collapsed_routing, floor_ratios, group_name, routing_group
from perfmodel.paths import ROOT

#: Options of vLLM's engine (paged attention over the context, absorbed MLA, graph decode,
#: piecewise-graph prefill with host-launched attention).
VLLM_OPTIONS = {
    "decode_attention_span": "context",
    "mla_cache": "latent",
    "mla_absorb_decode": True,
    "decode_kv_expand": False,
    "prefill_eager": True,
    "prefill_chunk_tokens": 16384,  # vLLM 0.26's offline default on H100/H200 (engine logs)
    "cudagraph_max_tokens": 512,  # vLLM 0.26: min(2·max_num_seqs, 512) at its default max_num_seqs
    "async_scheduling": True,  # vLLM 0.26's default ("Asynchronous scheduling is enabled", engine logs)
    "memory_usable_fraction": 0.9,
}

#: The attention kernels' compute efficiency is bounded by the best published fraction of the
#: dense bf16 peak that FlashAttention-3 (vLLM's prefill kernel on Hopper) reaches: 740 of 989
#: TFLOPS on an H100 SXM (Shah et al., "FlashAttention-3", 2024). A prefill's attention is a small
#: share of the training rows' TTFT, so without it the fit can trade attention time for launch
#: time and run the fraction to the peak itself.
ATTENTION_COMPUTE_MAX = 0.75

#: Fitted parameters: (section, key, field or None), start, lower, upper, typical size.
PARAMETERS: tuple[tuple[tuple[str, str, str | None], float, float, float, float], ...] = (
    (("efficiency", "grouped_gemm", "memory"), 0.65, 0.05, 1.2, 1.0),
    (("efficiency", "grouped_gemm", "compute"), 0.65, 0.05, 1.0, 1.0),
    (("efficiency", "grouped_gemm", "exposed"), 0.2, 0.0, 1.0, 1.0),
    (("efficiency", "gemm", "memory"), 0.80, 0.05, 1.2, 1.0),
    (("efficiency", "gemm", "compute"), 0.78, 0.05, 1.0, 1.0),
    (("efficiency", "attention", "memory"), 0.80, 0.05, 1.2, 1.0),
    (("efficiency", "attention", "compute"), 0.55, 0.05, ATTENTION_COMPUTE_MAX, 1.0),
    (("efficiency", "attention", "context_half"), 100.0, 0.0, 4096.0, 100.0),
    (("latency", "per_step_s", None), 3e-4, 0.0, 0.05, 1e-3),
    (("latency", "per_layer_s", None), 1e-5, 0.0, 1e-3, 1e-5),
    (("latency", "eager_step_s", None), 1e-2, 0.0, 0.2, 1e-2),
    (("latency", "eager_layer_s", None), 5e-4, 0.0, 1e-2, 1e-3),
    (("latency", "uncompiled_op_s", None), 2e-4, 0.0, 5e-3, 1e-4),
    (("latency", "request_s", None), 1e-4, 0.0, 2e-3, 1e-4),
    (("latency", "host_step_s", None), 2.5e-3, 0.0, 0.02, 1e-3),
    (("latency", "host_seq_s", None), 2e-5, 0.0, 1e-4, 1e-5),
)


#: Efficiencies not fitted: fused RMSNorm / SiLU-and-mul kernels and the custom all-reduce move
#: bytes near copy bandwidth (the H200's device copy reaches 4.18 of 4.8 TB/s: 0.87; 0.8 leaves
#: room for their short launches). The fitted classes start from the same values.
FIXED_EFFICIENCY = {
    "elementwise": {"compute": 1.0, "memory": 0.8},
    "comm": {"compute": 1.0, "memory": 0.8},
}


def graph_node_cost(gpu: str) -> tuple[float, str]:
    """The cost of one kernel node in a replayed CUDA graph on this GPU, s, from the
    microbenchmark tables (``calibration/data/<gpu>/memory.csv``, graph_tiny_kernel rows): the
    same hardware mechanism every kernel of a graph-replayed vLLM step pays. 0 when the GPU has
    no tables (the fitted per-layer time then carries it)."""
    from perfmodel.calibration.fit_tables import graph_kernel_cost, memory_rows, read_table
    from perfmodel.paths import CALIBRATION_DATA_DIR
    from perfmodel.specs.hardware import load_gpu

    data_dir = CALIBRATION_DATA_DIR / gpu
    try:
        _, graph, _, _ = memory_rows(read_table(data_dir, "memory.csv"), load_gpu(gpu).hbm_bandwidth)
    except SpecError:
        return 0.0, f"none: {data_dir} has no memory.csv"
    cost = graph_kernel_cost(graph)
    if cost is None:
        return 0.0, f"none: {data_dir}/memory.csv has no graph_tiny_kernel rows"
    return _sig(cost[0]), f"{data_dir.relative_to(ROOT)}/memory.csv, {cost[1]}"


#: The dense GEMMs' parameter of :data:`PARAMETERS` that a GPU with a GEMM microbenchmark takes
#: from it instead (:func:`dense_gemm_bench`).
DENSE_GEMM_MEMORY = ("efficiency", "gemm", "memory")
#: Quantization schemes whose dense GEMMs the microbenchmark times, and the dtype of its rows:
#: vLLM's fp8 W8A8 with per-tensor scales runs its linear layers as fp8 tensor-core GEMMs, as
#: ``torch._scaled_mm`` with per-tensor scales does in the benchmark.
BENCH_DENSE_SCHEMES = {"fp8": "float8_e4m3fn"}


def dense_gemm_bench(gpu: str, node_s: float) -> tuple[dict[str, float] | None, dict[str, float], dict[str, Any]]:
    """The dense GEMMs' curves, {memory: η_m, memory_half: bytes, compute: η_c, compute_half:
    tokens}, fitted to this GPU's GEMM microbenchmark (``calibration/data/<gpu>/gemm.csv``: the
    bf16 rows of the training models' shapes, each kernel at a graph node's cost ``node_s``, s;
    :func:`perfmodel.calibration.fit_kernels.fit_gemm_class`); the memory multiplier of the dense
    GEMMs of each scheme of :data:`BENCH_DENSE_SCHEMES` (its rows' η_m over the bf16 rows'); and
    the record. vLLM's unquantized linear layers and LM head call the same cuBLAS GEMMs through
    torch's ``linear``, so the benchmark times the kernels a decode step streams its dense
    weights through, the small ones with their fixed cost (the half: about 4 µs of a 2–20 MB
    GEMM), which the end-to-end rows cannot tell from a step's fixed time per layer (fitted
    freely there, η_m ran to its bound, 1.2 of the datasheet bandwidth). The projections' compute
    curve stays fitted end to end: a prefill's time holds launches, copies and attention the fit
    cannot tell from its GEMMs'. The dense MLP's GEMMs (``dense_mlp``) take the benchmark's whole
    curve: no training model has a dense MLP, so the fit cannot speak to them, and they run the
    same cuBLAS kernels the benchmark times. (None, {}, why) where the GPU has no such table."""
    from perfmodel.calibration.fit_kernels import fit_gemm_class
    from perfmodel.paths import CALIBRATION_DATA_DIR
    from perfmodel.specs.hardware import load_gpu

    data_dir, spec = CALIBRATION_DATA_DIR / gpu, load_gpu(gpu)
    try:
        params, stats = fit_gemm_class(data_dir, spec, node_s, set(HELD_OUT_MODELS))
    except SpecError as exc:
        return None, {}, {"source": f"none: {exc}"}
    record = {"source": f"{(data_dir / 'gemm.csv').relative_to(ROOT)}: the training models' shapes",
              "bf16": {"rows": stats.n_rows, "median_abs_rel_err": _sig(stats.median_abs_rel_err, 3),
                       "p90_abs_rel_err": _sig(stats.p90_abs_rel_err, 3), "at_bound": list(stats.at_bound)}}
    schemes = {}
    for scheme, dtype in BENCH_DENSE_SCHEMES.items():
        try:
            theirs, their_stats = fit_gemm_class(data_dir, spec, node_s, set(HELD_OUT_MODELS), dtype)
        except SpecError:
            continue
        schemes[scheme] = _sig(theirs["memory"] / params["memory"])
        record[scheme] = {"rows": their_stats.n_rows, "memory": _sig(theirs["memory"]),
                          "median_abs_rel_err": _sig(their_stats.median_abs_rel_err, 3)}
    return {key: _sig(params[key]) for key in ("memory", "memory_half", "compute", "compute_half")}, schemes, record


def _base(gpu: str) -> dict[str, Any]:
    efficiency = {name: {**e, "compute_half": 0.0, "memory_half": 0.0}
                  for name, e in {**FIXED_EFFICIENCY, "gemm": {"compute": 0.78, "memory": 0.8},
                                  "grouped_gemm": {"compute": 0.65, "memory": 0.65},
                                  "attention": {"compute": 0.55, "memory": 0.8}}.items()}
    return {
        "name": f"{gpu}-vllm", "engine": "vllm", "gpu": gpu, "calibrated": True,
        "peaks": "datasheet", "efficiency": efficiency,
        "latency": {"per_kernel_s": graph_node_cost(gpu)[0], "per_layer_s": 0.0, "per_step_s": 0.0,
                    "eager_layer_s": 0.0, "eager_step_s": 0.0, "uncompiled_op_s": 0.0},
        "options": dict(VLLM_OPTIONS),
    }


def _with(base: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    out = {**base, "efficiency": {k: dict(v) for k, v in base["efficiency"].items()},
           "latency": dict(base["latency"])}
    for ((section, key, field), *_), value in zip(PARAMETERS, values):
        if field is None:
            out[section][key] = float(value)
        else:
            out[section][key][field] = float(value)
    return out


#: Kernel categories of the training models' profiled decode steps that join the end-to-end fit
#: with their kernels' time: category → (models whose steps are taken, smallest batch taken).
#: FlashAttention over the cache (what ``attention`` memory η and ``context_half`` stand for),
#: from OLMoE-1B-7B's steps at B ≥ 64: below it a step's fixed time per layer, which
#: ``per_layer_s`` carries, hides the kernel's work. The fused-MoE Triton kernel (``grouped_gemm``
#: η and its ``exposed`` overlap), from every training model's steps at B ≥ 16: the end-to-end
#: rows alone let the other ops' parameters absorb its time. The other models' profiled steps check both.
KERNEL_PROFILE: dict[str, tuple[tuple[str, ...], int]] = {
    "attention": (("olmoe-1b-7b",), 64),
    "expert_gemm": (TRAIN_MODELS, 16),
}


def plain_bf16_row(row: dict[str, Any], models: tuple[str, ...]) -> bool:
    """Whether a row is an ok one of ``models`` as built (any routing; unquantized, with the KV
    cache at the model's dtype; no speculative decoding): what the profiled kernels the fit reads
    are measured on."""
    from perfmodel.measuring.compare import is_variant, row_kv_dtype, row_quant, row_speculative

    return (row.get("status") == "ok" and row.get("model") in models and not is_variant(row)
            and row_quant(row) is None and row_kv_dtype(row) is None and not row_speculative(row))


def kernel_profile_rows(rows: list[dict[str, Any]], category: str, models: tuple[str, ...],
                        min_batch: int) -> list[dict[str, Any]]:
    """The one-GPU rows of :func:`plain_bf16_row` whose decode profile measured kernels of
    ``category``, at B ≥ ``min_batch``, and whose prefill fits one engine step (B·S ≤ the chunk: a
    decode profile of a chunked prefill also holds the decodes that ride along its later chunks):
    the latest row of each point id. A quantized row's profile is left to its scheme's fit: its
    TTFT and decode step would join the bf16 fit's end-to-end rows."""
    from perfmodel.calibration.fit import one_gpu_rows
    from perfmodel.measuring.compare import profiled_context

    chunk = VLLM_OPTIONS["prefill_chunk_tokens"]
    latest = {r["point_id"]: r for r in one_gpu_rows(rows)
              if plain_bf16_row(r, models) and r["batch"] >= min_batch
              and profiled_context(r) is not None
              and r["batch"] * r["input_len"] <= chunk
              and ((r.get("decode_profile") or {}).get("split_ms") or {}).get(category)}
    return list(latest.values())


def category_op_names(rows: list[dict[str, Any]], profile, category: str) -> list[frozenset[str]]:
    """The names of the ops of each row's decode graph that run as kernels of ``category`` (the
    graph's structure, which no fitted number changes)."""
    from perfmodel.measuring.compare import graph_categories, row_overrides, row_quant
    from perfmodel.prediction import Workload, graph_options
    from perfmodel.specs.model import load_model

    out = []
    for row in rows:
        categories = graph_categories(load_model(row["model"], row_overrides(row)),
                                      graph_options(profile, Workload(quant=row_quant(row))))
        out.append(frozenset(name for name, c in categories.items() if c == category))
    return out


def profiled_kernels_s(rows: list[dict[str, Any]], names: list[frozenset[str]], profile,
                       gpu_spec) -> np.ndarray:
    """The model's time (s) of some ops of one decode step of each row at the context its profile
    measured (:func:`perfmodel.measuring.compare.profiled_context`), under a profile object;
    ``names``: each row's ops (:func:`category_op_names`). A row listed twice is evaluated once."""
    from perfmodel.measuring.compare import model_workload, profiled_context, row_overrides, row_quant
    from perfmodel.prediction import Workload, evaluate
    from perfmodel.specs.model import load_model

    evaluated: dict[str, list[dict[str, Any]]] = {}
    out = []
    for row, ops_of in zip(rows, names):
        if row["point_id"] not in evaluated:
            w = Workload(input_len=row["input_len"], output_len=row["output_len"], quant=row_quant(row),
                         context=profiled_context(row), **model_workload(row, profile))
            evaluated[row["point_id"]] = evaluate(load_model(row["model"], row_overrides(row)), gpu_spec,
                                                  profile, w, "decode").ops
        out.append(sum(op["time_s"] for op in evaluated[row["point_id"]] if op["name"] in ops_of))
    return np.array(out)


def kernel_profile_points(rows: list[dict[str, Any]], train: tuple[str, ...],
                          profile) -> tuple[list[dict[str, Any]], list[frozenset[str]], np.ndarray, dict]:
    """The profiled kernels the fit takes (:data:`KERNEL_PROFILE`, models among ``train``): one
    entry per row and category, as (rows, their ops of the category, measured time in s, and the
    ``fit.kernel_profile`` record: per category its models, smallest batch and point ids)."""
    out_rows, names, measured, record = [], [], [], {}
    for category, (models, min_batch) in KERNEL_PROFILE.items():
        models = tuple(m for m in models if m in train)
        chosen = kernel_profile_rows(rows, category, models, min_batch)
        out_rows += chosen
        names += category_op_names(chosen, profile, category)
        measured += [r["decode_profile"]["split_ms"][category] * 1e-3 for r in chosen]
        record[category] = {"models": list(models), "min_batch": min_batch,
                            "points": sorted(r["point_id"] for r in chosen)}
    return out_rows, names, np.array(measured), record


def fit_parameters(rows: list[dict[str, Any]], base: dict[str, Any], gpu: str,
                   kernels: tuple[list[dict[str, Any]], list[frozenset[str]], np.ndarray] = ([], [], np.array([])),
                   held: frozenset[tuple[str, str, str | None]] = frozenset()) -> np.ndarray:
    """Least squares on log(predicted/measured) TTFT and decode step, and on log(predicted/
    measured) time of the profiled kernels ``kernels`` (rows, their ops, measured s:
    :func:`kernel_profile_points`); values in their units. The parameters named in ``held``
    keep ``base``'s values (an anchored fit: :mod:`perfmodel.calibration.fit_anchor`)."""
    from scipy.optimize import least_squares

    from perfmodel.specs.hardware import load_gpu

    gpu_spec = load_gpu(gpu)
    measured = np.array([(r["ttft_ms"] * 1e-3, r["itl_ms"] * 1e-3) for r in rows])
    kernel_rows, names, kernel_s = kernels
    scale = np.array([p[4] for p in PARAMETERS])
    free = np.array([name not in held for name, *_ in PARAMETERS])
    every = np.array([start if f else (base[section][key] if field is None else base[section][key][field])
                      for ((section, key, field), start, *_), f in zip(PARAMETERS, free)]) / scale
    lower = np.array([p[2] for p in PARAMETERS])[free] / scale[free]
    upper = np.array([p[3] for p in PARAMETERS])[free] / scale[free]

    def expanded(x: np.ndarray) -> np.ndarray:
        out = every.copy()
        out[free] = x
        return out * scale

    def residuals(x: np.ndarray) -> np.ndarray:
        profile = _profile(_with(base, expanded(x)))
        predicted = _predict_many(rows, profile, gpu_spec)
        profiled = (np.log(profiled_kernels_s(kernel_rows, names, profile, gpu_spec) / kernel_s)
                    if len(kernel_s) else np.array([]))
        return np.concatenate([np.log(predicted / measured).ravel(), profiled])

    result = least_squares(residuals, every[free], bounds=(lower, upper), method="trf", x_scale="jac")
    x = expanded(on_bounds(result.x, lower, upper))
    return np.array([_sig(float(v)) for v in x])


#: Quantization schemes whose kernel multipliers are fitted when training rows exist at them. Two
#: multipliers per scheme, each shared by the dense and the grouped GEMMs (memory μ_m: how much
#: of the bf16 kernels' bandwidth fraction the quantized kernels reach; compute μ_c, likewise of
#: the peak): the training rows cannot tell the two GEMM classes apart, since the expert GEMMs
#: carry nearly all of the quantized bytes. Each parameter: (name, lower, upper, start), the
#: multipliers starting at the bf16 kernels' rates.
FITTED_SCHEMES = ("fp8", "fp8-block", "w4a16", "w8a16-experts", "mxfp4-moe-marlin")
#: Schemes no training model is measured in, with the models whose rows fit their multipliers
#: instead (every other model's held out): gpt-oss's MXFP4 experts on vLLM's Marlin MoE kernel,
#: from gpt-oss-120b, as the tiled kernel's times are (:data:`perfmodel.calibration.fit_tiles.TILE_TRAIN`).
SCHEME_TRAIN: dict[str, tuple[str, ...]] = {"mxfp4-moe-marlin": ("gpt-oss-120b",)}
QUANT_MULTIPLIERS = (("memory", 0.3, 1.5, 1.0), ("compute", 0.3, 1.5, 1.0))
#: Schemes whose linear layers run on another kind of kernel than their routed experts, and the
#: scheme whose dense multipliers theirs take. vLLM runs fp8-block's linear layers as
#: block-scaled fp8 tensor-core GEMMs (DeepGEMM, else CUTLASS), as per-tensor fp8 runs them on
#: cuBLASLt's fp8 GEMMs, but its experts in the Triton fused-MoE kernel with block scales (no
#: tuned tile config for most shapes), far slower per FLOP. Its training rows cannot tell the two
#: classes apart (the experts carry nearly all of the quantized bytes and FLOPs), so one shared
#: multiplier made every dense layer as slow as the experts: DeepSeek-V3's fp8-block prefills
#: (held out) ran their dense GEMMs in 0.43 of the model's time. So only the grouped multipliers
#: are fitted there, the dense ones held at the named scheme's.
DENSE_AS: dict[str, str] = {"fp8-block": "fp8"}
#: A weight-only scheme's kernels also get their dequantization work fitted, n_dq, as a share of
#: the scheme file's estimate (an upper bound: that counts every weight's unpacking and scaling
#: as un-overlapped CUDA-core work): a decode step's kernels that overlap it with their loads
#: hide most of it, which the memory and compute multipliers alone cannot say.
DEQUANT_SHARE = ("dequant", 0.0, 1.0, 0.5)
#: ... and their memory half, the bytes at which they reach half their bandwidth (a fixed cost
#: per kernel), in units of 1e8 bytes: a small expert's few bytes, or a one-token step's, feel it.
QUANT_MEMORY_HALF = ("memory_half", 0.0, 20.0, 1.0)


def _quant_parameters(scheme: str) -> tuple[tuple[str, float, float, float], ...]:
    """The fitted parameters of a scheme: :data:`QUANT_MULTIPLIERS`, and :data:`DEQUANT_SHARE`
    and :data:`QUANT_MEMORY_HALF` where its kernels dequantize weights (weight-only, with an
    estimate of that work)."""
    from perfmodel.quantization import load_schemes

    estimate = load_schemes()[scheme].dequant_flops_per_weight
    return QUANT_MULTIPLIERS + ((DEQUANT_SHARE, QUANT_MEMORY_HALF) if estimate > 0 else ())


def _quant_entry(x: np.ndarray, scheme: str, dense: dict[str, float] | None = None) -> dict[str, float]:
    """A scheme's multipliers from the fitted values ``x``; ``dense``: the dense GEMMs' own, those
    it names (``gemm_memory``, ``gemm_compute``: :data:`DENSE_AS`; ``gemm_memory`` alone:
    :data:`BENCH_DENSE_SCHEMES`), else the fitted ones shared."""
    from perfmodel.quantization import load_schemes

    memory, compute, *weight_only = (float(v) for v in x)
    entry = {"gemm_memory": memory, "grouped_gemm_memory": memory,
             "gemm_compute": compute, "grouped_gemm_compute": compute}
    if dense is not None:
        entry.update({k: dense[k] for k in ("gemm_memory", "gemm_compute") if k in dense})
    if weight_only:
        dequant, half = weight_only
        entry["dequant_flops_per_weight"] = dequant * load_schemes()[scheme].dequant_flops_per_weight
        entry["memory_half"] = half * 1e8
    return entry


def fit_quant_multipliers(rows: list[dict[str, Any]], base: dict[str, Any], gpu: str,
                          scheme: str, dense: dict[str, float] | None = None) -> dict[str, float]:
    """The kernel multipliers of one quantization scheme (:func:`_quant_parameters`), by least
    squares on log(predicted/measured) TTFT and decode step of the training models' rows at that
    scheme, every other parameter held at the bf16 fit's value; ``dense``: the dense GEMMs'
    multipliers where they are not fitted (:data:`DENSE_AS`, :data:`BENCH_DENSE_SCHEMES`). The memory multiplier stays at
    or under 1/η_m of the fused-MoE class: the expert kernels, which carry nearly all of the
    quantized bytes, read them no faster than the datasheet bandwidth (with a fitted memory
    half, a larger one would trade a fixed cost per kernel for a bandwidth no HBM has)."""
    from scipy.optimize import least_squares

    from perfmodel.specs.hardware import load_gpu

    gpu_spec = load_gpu(gpu)
    measured = np.array([(r["ttft_ms"] * 1e-3, r["itl_ms"] * 1e-3) for r in rows])
    parameters = _quant_parameters(scheme)
    lower, upper, start = (np.array([m[i] for m in parameters]) for i in (1, 2, 3))
    upper[0] = min(upper[0], 1.0 / float(base["efficiency"]["grouped_gemm"]["memory"]))
    start = np.minimum(start, upper)

    def residuals(x: np.ndarray) -> np.ndarray:
        profile = _profile({**base, "quantization": {scheme: _quant_entry(x, scheme, dense)}})
        return np.log(_predict_many(rows, profile, gpu_spec) / measured).ravel()

    result = least_squares(residuals, start, bounds=(lower, upper), method="trf")
    x = on_bounds(result.x, lower, upper)
    return {name: _sig(value) for name, value in _quant_entry(x, scheme, dense).items()}


def uniform_floor_violations(rows: list[dict[str, Any]], gpu: str) -> dict[str, float]:
    """Models whose measured decode step is shorter than the HBM floor of uniform routing:
    measured/floor, worst point per model, where < 1
    (:func:`perfmodel.measuring.routing_floor.floor_ratios`)."""
    worst: dict[str, float] = {}
    for (model, *_), ratio in floor_ratios(rows, gpu).items():
        worst[model] = min(ratio, worst.get(model, 1.0))
    return {m: _sig(r, 3) for m, r in sorted(worst.items())}


#: Draft models whose speculative rows fit ``draft_pass_s``; every other draft is held out.
#: The speculative rows the draft-pass time is fitted on: draft model, draft tokens γ, batch B.
TRAIN_DRAFT = ("qwen3-1.7b", 4, 1)


def fit_draft_pass(rows: list[dict[str, Any]], base: dict[str, Any], gpu: str) -> tuple[float | None, list[str]]:
    """``draft_pass_s`` (s) and the point ids it comes from: the mean over the speculative rows of
    :data:`TRAIN_DRAFT` whose verify pass was graph-replayed
    (:func:`perfmodel.measuring.compare.verify_replayed`)
    of (measured − predicted ITL)·τ/(γ·h), the predictions taken without the term. The ITL of
    such a row is γ·h·t_draft/τ plus terms that do not hold t_draft, so each row's value is exact
    for it: h is the host factor at the row's probe (:func:`perfmodel.host_speed.host_factor`; 1
    for a row without one), as the validation predicts it, so that the fitted time is the
    reference host's. ``rows`` may repeat a point id (every measurement of it, as
    :func:`perfmodel.measuring.results.read_rows` gives them with ``unique=False``): each
    repeat counts once, so that one engine start's draft passes do not stand for all. Every
    other draft, γ and batch is held out. None (and no points) when there are none."""
    from perfmodel.host_speed import factor_at, row_probe_ms
    from perfmodel.measuring.compare import row_speculative, verify_replayed

    draft, tokens, batch = TRAIN_DRAFT
    train = [r for r in rows if r.get("status") == "ok" and verify_replayed(r) and r.get("batch") == batch
             and row_speculative(r)["spec_draft"] == draft and row_speculative(r)["spec_tokens"] == tokens
             and isinstance(r.get("spec_mean_accepted_len"), (int, float))]
    if not train:
        return None, []
    ids = tuple(dict.fromkeys(r["point_id"] for r in train))
    without = {**base, "latency": {**base["latency"], "draft_pass_s": 0.0}}
    ref, alpha = base["latency"].get("host_probe_ref_ms"), base["latency"].get("host_speed_exponent")
    per_pass = []
    for row in train:  # one at a time: repeats of a point id probed hosts of their own
        points = _compare_with(without, [row], gpu, (), ids)
        predicted = float(points[points["metric"] == "decode_step"]["predicted"].iloc[0])
        per_pass.append((row["itl_ms"] * 1e-3 - predicted) * row["spec_mean_accepted_len"]
                        / (row_speculative(row)["spec_tokens"] * factor_at(row_probe_ms(row), ref, alpha)))
    return max(0.0, _sig(float(np.mean(per_pass)))), list(ids)


def fit_piecewise_layer(rows: list[dict[str, Any]], base: dict[str, Any], gpu: str,
                        train: tuple[str, ...]) -> tuple[float | None, list[str]]:
    """``piecewise_layer_s`` (s) and the point ids it comes from: over the rows of the training
    models as built (no speculative decoding) whose prefill the engine replayed from piecewise
    CUDA graphs (:func:`perfmodel.prediction.prefill_regime` ``graph-replayed``: B·S within the
    row's largest capture size), the mean of (measured − predicted TTFT)/N_layers, the
    predictions taken without the term (TTFT of such a row is its one prefill step, which holds
    N_layers·t_piece_layer once). Every other model's such rows are held out. None (and no
    points) when there are none."""
    from perfmodel.measuring.compare import is_variant, row_kv_dtype, row_speculative
    from perfmodel.prediction import GRAPH_REPLAYED
    from perfmodel.specs.model import load_model

    candidates = [r for r in rows if r.get("status") == "ok" and r["model"] in train and not is_variant(r)
                  and row_kv_dtype(r) is None and not row_speculative(r)]
    if not candidates:
        return None, []
    points = _compare_with({**base, "latency": {**base["latency"], "piecewise_layer_s": 0.0}}, candidates, gpu,
                           train)
    ttft = points[(points["metric"] == "ttft") & (points["prefill_regime"] == GRAPH_REPLAYED)]
    if ttft.empty:
        return None, []
    per_layer = [(p.measured - p.predicted) / load_model(p.model).n_layers for p in ttft.itertuples()]
    return max(0.0, _sig(float(np.mean(per_layer)))), list(ttft["point_id"])


#: The backends whose fused-MoE op quantizes a W8A8 scheme's expert inputs from Python (vLLM 0.26's
#: Triton fused-MoE kernel).
ACT_QUANT_BACKENDS = ("triton",)


def fit_quant_hosts(every_row: list[dict[str, Any]], base: dict[str, Any], gpu: str, train: tuple[str, ...],
                    schemes: Iterable[str]) -> dict[str, Any]:
    """``host_layer_s`` of each scheme of ``schemes`` that quantizes its activations on the fly
    and has no tiled MoE kernel (fp8, fp8-block): the host time per layer of the routed experts'
    activation quantization, which vLLM's fused-MoE op (opaque to the compiler) launches from
    Python in a launched prefill (:func:`perfmodel.ops.quant.with_activation_quant`). Fitted on
    the TTFT of the scheme's training models' (:data:`SCHEME_TRAIN`, else ``train``) launch-bound
    prefills, each at its host's probe, the scheme's multipliers in ``base``
    (:func:`~perfmodel.calibration.fit_tiles.fit_tile_host`); written into ``base``. Returns the
    record per scheme fitted (its points, training and held-out TTFT errors)."""
    from perfmodel.quantization import load_schemes

    records: dict[str, Any] = {}
    for scheme in schemes:
        spec = load_schemes()[scheme]
        if not spec.quantizes_activations or spec.moe_tile is not None:
            continue
        host, points, record = fit_tile_host(every_row, base, gpu, scheme, SCHEME_TRAIN.get(scheme, train),
                                             ACT_QUANT_BACKENDS)
        if host is None:
            continue
        entry = base["quantization"][scheme]
        entry["host_layer_s"] = host
        models = sorted({point.split("|")[1] for point in points})
        entry["reason"] += (f"; host_layer_s (the routed experts' activation quantization launched from Python "
                            f"in a launched prefill) fitted on the TTFT of {len(points)} launch-bound prefills of "
                            f"{', '.join(models)} (every other model's held out: fit.quantization_host)")
        records[scheme] = record
    return records


def fit_vllm_profile(gpu: str = "h200-sxm", *, results: Path | None = None,
                     train: tuple[str, ...] = TRAIN_MODELS,
                     held_out: tuple[str, ...] = HELD_OUT_MODELS, anchor: str | None = "auto") -> dict[str, Any]:
    """The fitted vllm profile of a GPU as a YAML-ready dict (same data -> same dict). ``anchor``:
    the GPU whose fit gives the terms this GPU's rows do not (:mod:`perfmodel.calibration.fit_anchor`;
    ``"auto"``: the reference GPU's, for any other GPU; None: every term from this GPU's rows)."""
    from perfmodel.calibration.fit_moe_tables import fit_l2_spill, fit_off_table, fit_table_extra
    from perfmodel.calibration.fit_anchor import (PROFILE_PINNED, anchor_path, anchor_record, carried_entries,
                                                  carried_regime_bands, held_parameters, note_carried_checks,
                                                  own_host_rows, read_anchor, same_compute, seeded)
    from perfmodel.measuring.compare import (load_with_what_ifs, row_engine_process, row_speculative,
                                             verify_replayed, what_if_file)
    from perfmodel.paths import results_file

    results = results or results_file("vllm", gpu)
    base = _base(gpu)
    # first: the fused-MoE kernel at vLLM's tuned tables, timed alone against its default rule, so
    # the experts' terms are fitted with those tables' cost in place (the terms: the default rule's)
    table_extra, table_record = fit_table_extra(results, gpu)
    if table_extra:
        base["options"]["moe_table_extra"] = table_extra
    # then: what the engine keeps out of its KV cache, for the rows that run in waves
    reserve, reserve_record = fit_activation_reserve(results, train)
    if reserve is not None:
        base["activation_reserve"] = reserve
    anchored = anchor_path(gpu, anchor)
    reference = read_anchor(anchored) if anchored is not None else None
    rows = _rows(results, train, chunk=VLLM_OPTIONS["prefill_chunk_tokens"])
    main_rows = read_rows(results, unique=False, warn=False).rows  # every pass of each point
    every_row = main_rows + read_rows(what_if_file(results), unique=False, warn=False).rows
    host_speed, host_points = (None, []) if reference is not None else fit_host_speed(
        one_gpu_rows(every_row), train, fitted=one_gpu_rows(main_rows), chunk=VLLM_OPTIONS["prefill_chunk_tokens"])
    if host_speed is not None:  # first: the rows with a probe are fitted at their host's speed
        base["latency"].update({k: host_speed[k] for k in ("host_probe_ref_ms", "host_speed_exponent")})
    # the kernels timed rather than fitted: the dense GEMMs' memory curve and a dense MLP's whole
    # curve (the GEMM microbenchmark), and a small kernel's duration (the training models' profiled
    # decode steps)
    dense, dense_schemes, dense_record = dense_gemm_bench(gpu, base["latency"]["per_kernel_s"])
    if dense is not None:
        base["efficiency"]["gemm"].update({k: dense[k] for k in ("memory", "memory_half")})
        base["efficiency"]["dense_mlp"] = dict(dense)
    small_kernel, small_record = fit_small_kernel(one_gpu_rows(every_row), train)
    if small_kernel is not None:
        base["latency"]["per_small_kernel_s"] = small_kernel
    *kernels, kernel_record = kernel_profile_points(every_row, train, _profile(base))
    taken: list[str] = []
    shared_compute = reference is not None and same_compute(gpu, reference["gpu"])
    unprofiled = tuple(c for c in PROFILE_PINNED if not kernel_record.get(c, {}).get("points"))
    if reference is not None:  # the host's terms, a graph node's cost where no tables are here, the
        # compute of a GPU of the same die, and what kernel profiles pin where this GPU has none
        base, taken = seeded(base, reference, shared_compute, unprofiled)
    # a profiled row is a training point: its TTFT and decode step join the end-to-end rows (the
    # only ones of the training models at the uniform routing the model assumes, up to B = 1,024,
    # where the host's time per step and per sequence shows)
    ids = {r["point_id"] for r in rows}
    rows += list({r["point_id"]: r for r in kernels[0] if r["point_id"] not in ids}.values())
    fitted = [r["point_id"] for r in rows]  # every row a parameter is fitted on
    # an anchored fit's own host times per decode step, where its training rows hold batches the host paces
    own_host = own_host_rows(rows) if reference is not None else []
    held = held_parameters(shared_compute, unprofiled, bool(own_host)) if reference is not None else frozenset()
    values = fit_parameters(rows, base, gpu, tuple(kernels),
                            held=held | ({DENSE_GEMM_MEMORY} if dense is not None else set()))
    base = _with(base, values)
    # the fused-MoE kernel on experts larger than the L2 cache, timed alone (the bf16 fit in place)
    l2_spill, l2_record = fit_l2_spill(results, base, gpu, train)
    if l2_spill is not None:
        base["options"]["moe_l2_spill"] = l2_spill
    quant_fits: dict[str, int] = {}
    for scheme in FITTED_SCHEMES:
        try:
            quant_rows = _rows(results, SCHEME_TRAIN.get(scheme, train), quant=scheme,
                               chunk=VLLM_OPTIONS["prefill_chunk_tokens"])
        except SpecError:
            continue
        like = DENSE_AS.get(scheme)
        dense_as = (base.get("quantization") or {}).get(like)
        if scheme in dense_schemes:  # the dense GEMMs' memory multiplier, timed alone
            dense_as = {"gemm_memory": dense_schemes[scheme]}
        multipliers = fit_quant_multipliers(quant_rows, base, gpu, scheme, dense_as)
        fitted += [r["point_id"] for r in quant_rows]
        models = sorted({r["model"] for r in quant_rows})
        methods = sorted({str((r.get("engine") or {}).get("quantization")) for r in quant_rows})
        methods += [f"--moe-backend {b}" for b in sorted({r.get("moe_backend", "triton") for r in quant_rows})
                    if b != "triton"]
        dequant = ", n_dq and the memory half with them" if "dequant_flops_per_weight" in multipliers else ""
        dense_note = ("; the dense GEMMs' memory multiplier is the GEMM microbenchmark's (fit.dense_gemm_memory)"
                      if scheme in dense_schemes else
                      f"; the dense GEMMs' multipliers are {like}'s (their kernels are alike; its experts' "
                      "are not: fit_vllm.DENSE_AS)" if dense_as is not None else "")
        base.setdefault("quantization", {})[scheme] = {
            **multipliers, "reason": (f"fitted on {len(quant_rows)} {scheme} rows of {', '.join(models)} "
                                      f"(vLLM --quantization {', '.join(methods)}), the bf16 fit held fixed"
                                      f"{dequant}{dense_note}; every other model's held out: "
                                      "fit.residuals.quantization")}
        quant_fits[scheme] = len(quant_rows)
    quant_hosts = {} if reference is not None else fit_quant_hosts(every_row, base, gpu, train, quant_fits)
    fitted += [p for record in quant_hosts.values() for p in record["points"]]
    tile_fits: dict[str, Any] = {}
    for scheme in TILE_TRAIN:  # a tiled MoE kernel's times, from its profiled kernels
        times, tile_points, record = fit_tile_times(every_row, base, gpu, scheme)
        if times is None:
            continue
        entry = base.setdefault("quantization", {}).setdefault(scheme, {})
        entry.update(times)
        entry.setdefault("reason", (
            f"tile_s and k_step_s fitted on the expert kernels of {len(tile_points)} profiled decode steps of "
            f"{', '.join(record['models'])} (the tiled kernel's backends: {', '.join(record['backends'])}; every "
            "other model's held out: fit.tiles); no kernel multipliers fitted"))
        fitted += tile_points
        tile_fits[scheme] = record
        pack_times, pack_record = fit_bitmatrix(every_row, gpu, scheme)
        if pack_times is not None:  # the staged block's bitmatrix pack, from its kernel timed alone
            entry.update(pack_times)
            entry["reason"] += (f"; the bitmatrix pack's times fitted on {pack_record['bench_rows']} passes of the "
                                f"kernel timed alone ({pack_record['bench']}; every profiled pack held out: "
                                "fit.tiles)")
            record["bitmatrix"] = pack_record
        launch_s, launch_points, launch_record = (fit_tile_host(every_row, base, gpu, scheme) if reference is None
                                                  else (None, [], {}))  # a host time: the anchor's
        if launch_s is not None:  # its launches from Python, from launched prefills
            entry["host_layer_s"] = launch_s
            entry["reason"] += (f"; host_layer_s fitted on the TTFT of {len(launch_points)} launched prefills of "
                                f"{', '.join(launch_record['models'])} (every other model's held out: fit.tiles)")
            fitted += launch_points
            record["host"] = launch_record
    kv_fits: dict[str, Any] = {}
    for kv in kv_dtypes(every_row):  # the attention kernels with the KV cache in another dtype
        mu, kv_points, record = fit_kv_cache(every_row, base, gpu, kv, train)
        if mu is None:
            continue
        base.setdefault("kv_cache", {})[kv] = {"attention_memory": mu, "reason": (
            f"fitted on the decode steps of {len(kv_points)} rows of {', '.join(record['models'])} with vLLM's "
            f"KV cache in {kv} (--kv-cache-dtype), the bf16 fit held fixed; every other model's held out: "
            "fit.kv_cache")}
        fitted += kv_points
        kv_fits[kv] = record
    off_table, off_points, off_record = fit_off_table(every_row, results, gpu)
    if off_table is not None:  # the tiles of a tuned table made for larger passes, from an A/B
        base["options"]["moe_off_table_memory"] = off_table
        base["options"]["moe_off_table_schemes"] = list(off_record["schemes"])
        fitted += off_points
    all_rows = load_with_what_ifs(results)
    draft_points, eager_seq_runs, piecewise_points, noise_record, noise_runs = [], [], [], {}, []
    split_record: dict = {}
    serial_record: dict = {}
    serial_seq_record: dict = {}
    carried = []
    if reference is None:  # the host's terms, last, from this GPU's rows
        draft_pass, draft_points = fit_draft_pass(one_gpu_rows(every_row), base, gpu)
        if draft_pass is not None:
            base["latency"]["draft_pass_s"] = draft_pass
        launch_serial, serial_record = fit_launch_serial(base, train)
        if launch_serial is not None:
            base["latency"]["launch_serial_s"] = launch_serial
        serial_seq, serial_seq_record = fit_launch_serial_seq(base, train)
        if serial_seq is not None:
            base["latency"]["launch_serial_seq_s"] = serial_seq
        eager_seq, eager_seq_runs = fit_eager_seq(base, gpu, train)
        if eager_seq is not None:
            base["latency"]["eager_seq_s"] = eager_seq
        mla_split, split_record = fit_mla_split(base)
        if mla_split is not None:
            base["latency"]["mla_split_layer_s"] = mla_split
        piecewise, piecewise_points = fit_piecewise_layer(one_gpu_rows(all_rows), base, gpu, train)
        if piecewise is not None:  # and a dense layer's launch: its attention between compiled pieces alone
            base["latency"]["piecewise_layer_s"] = base["latency"]["dense_layer_s"] = piecewise
        launch_noise, noise_record, noise_runs = fit_launch_noise(base, gpu, train, results_dir=results.parent)
        if launch_noise is not None:
            base["latency"]["launch_noise"] = launch_noise
    else:  # the anchor's host terms stand (seeded); its schemes and KV dtypes not measured here join
        carried = carried_entries(base, reference, DENSE_AS)
    collapsed = sorted(collapsed_routing(all_rows, gpu))
    note = ""
    if collapsed:
        note = ("; not from the rows of " + ", ".join(group_name(*key) for key in collapsed)
                + ": some of their decode steps beat the HBM floor of uniform routing, or their router "
                "adds a bias that outweighs the logits under dummy weights, so vLLM's dummy "
                "weights routed them to fewer experts than real weights do (their residuals are in "
                "fit.residuals and the validation report)")
    eager_verify = {r["point_id"] for r in all_rows if row_speculative(r) and not verify_replayed(r)}
    if eager_verify:
        note += ("; not from the speculative rows whose verify pass exceeded their engine's captured "
                 "CUDA graphs (the runner's capture sizes then stopped at B tokens: such decode steps ran "
                 "without a graph, which a serving engine's capture sizes avoid)")
    engine_process = {r["point_id"] for r in all_rows if row_engine_process(r)}
    if engine_process:
        note += ("; not from the rows whose engine core ran in a process of its own (mp=1, vLLM's "
                 "default): its front end hands an offline batch's requests to the engine while the "
                 "engine steps, so E2E minus TTFT need not be O - 1 steps of B sequences (each row's "
                 "engine_itl_ms is the engine's own step); the model describes a batch admitted "
                 "before its first step, as the in-process rows were")
    fitted += [*draft_points, *piecewise_points, *host_points]
    # the training points are the rows some parameter was fitted on, and nothing else: a row of a
    # training model that no fit took (e.g. a what-if engine setting) is held out
    # a regime too few of this GPU's rows state: the anchor's, where they check it
    carry = None if reference is None else (lambda band, own: carried_regime_bands(band, own, reference))
    stats, base["error_band"] = held_out_residuals(
        base, results, gpu, (), held_out, note, train_points=tuple(fitted),
        band_exclude=lambda r: (routing_group(r) in collapsed or r["point_id"] in eager_verify
                                or r["point_id"] in engine_process), carry_bands=carry)
    note_carried_checks(base, stats)  # the band holds where checked
    prov = next((r for r in all_rows if r.get("status") == "ok"), {})
    node_s, per_kernel_source = graph_node_cost(gpu)
    if reference is not None and not node_s:
        per_kernel_source = (f"{reference.get('gpu')}'s: "
                             f"{(reference.get('fit') or {}).get('per_kernel_source', 'its fit')}")
    base["description"] = (
        f"vLLM {prov.get('vllm')} offline engine (CUDA graphs, fused Triton MoE, FlashAttention 3, "
        f"prefix cache off, default chunk) on {gpu}; fitted end to end by perfmodel calibrate fit "
        "--engine vllm" + ("" if reference is None else
                           f", anchored on {reference['gpu']}'s fit for the terms its rows cannot fit (fit.anchor)"))
    base["fitted_from"] = (f"{results.relative_to(ROOT)} (end-to-end, training models only; "
                           f"{prov.get('gpu_name')}, driver {prov.get('driver')}, torch "
                           f"{prov.get('torch')}, vllm {prov.get('vllm')}, "
                           f"{str(prov.get('date'))[:10]}, commit {prov.get('git_commit')})")
    base["fit"] = {
        "train_models": list(train), "held_out_models": list(held_out),
        "kernel_fit": {"dtype": "bf16",
                       "source": ("none: end-to-end fit of every parameter but per_kernel_s, "
                                  "per_small_kernel_s and the dense GEMMs' memory curve (fit.small_kernel, "
                                  "fit.dense_gemm_memory)"
                                  + ("" if reference is None else " and those taken from fit.anchor")
                                  + ", with the kernels of the profiled decode steps in kernel_profile")},
        "per_kernel_source": per_kernel_source,
        "dense_gemm_memory": dense_record,
        **({"small_kernel": small_record} if small_record else {}),
        "kernel_profile": kernel_record,
        "activation_reserve": reserve_record,
        "quantization_rows": quant_fits,
        **({"quantization_host": quant_hosts} if quant_hosts else {}),
        "tiles": tile_fits,
        "kv_cache": kv_fits,
        **({"moe_off_table": off_record} if off_record else {}),
        **({"moe_table_extra": table_record} if table_record else {}),
        **({"moe_l2_spill": l2_record} if l2_record else {}),
        **({"draft_pass": {"draft": TRAIN_DRAFT[0], "spec_tokens": TRAIN_DRAFT[1], "batch": TRAIN_DRAFT[2],
                           "points": draft_points},
            "eager_seq": {"source": str(traced_runs_path(gpu).relative_to(ROOT)), "runs": eager_seq_runs},
            "mla_split": split_record,
            "launch_serial": serial_record,
            "launch_serial_seq": serial_seq_record,
            "piecewise_layer": {"points": piecewise_points},
            "launch_noise": noise_record} if reference is None
           else {"anchor": anchor_record(anchored, reference, taken, carried, own_host)}),
        **({"host_speed": {**host_speed["record"], "points": host_points}} if host_speed is not None else {}),
        "points": sorted(set(fitted)),
        "residuals": stats,
        "faster_than_uniform_routing_floor": uniform_floor_violations(one_gpu_rows(all_rows), gpu),
        "band_excludes": [group_name(*key) for key in collapsed],
    }
    serving = fit_serving_band(base, gpu, [(traced_runs_path(gpu).name, run) for run in eager_seq_runs]
                               + noise_runs, results_dir=results.parent,
                               anchor=None if reference is None else (reference["gpu"],
                                                                      reference.get("serving_error_band")))
    if serving is not None:  # last: the serving runs replayed on the profile as fitted
        base["serving_error_band"] = serving
    return base
