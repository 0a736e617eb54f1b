"""The ``measure`` command: sweep real inference over models x B x S x O and append JSONL rows.

The lead mounts :func:`measure` as ``perfmodel measure``; ``python -m perfmodel.measuring.measure`` runs the
same function through :data:`app`. Errors in the arguments raise
:class:`perfmodel.errors.InputError` (the CLI turns it into one line on stderr and exit code 2),
and so does a machine that cannot measure: without torch/transformers or without a CUDA GPU
(:mod:`perfmodel.measuring.preflight`; the hidden ``--allow-cpu`` lets tests run tiny models on CPU).
"""

import sys
from pathlib import Path
from typing import List, Optional

import typer

from perfmodel.errors import InputError
from perfmodel.measuring.preflight import check_budget, require_gpu, require_gpu_libraries
from perfmodel.measuring.runner import Reporter, SweepSummary, run_sweep
from perfmodel.measuring.points import FullRunSpec, build_points, parse_int_list, parse_models, parse_phases

app = typer.Typer(add_completion=False, help="Measure MoE inference (TTFT, ITL, E2E, throughput).")

EXPERTS_IMPLS = ("grouped_mm", "batched_mm", "eager", "deepgemm", "sonicmoe")
VLLM_MISSING = "vllm is not installed (pip install 'perfmodel[vllm]')"
#: What works without a GPU, said when measure refuses to run on one without.
NO_GPU_HINT = "the committed results replay with `perfmodel validate`"


def default_out(backend: str) -> Path:
    """``validate/results/<gpu-short-name>-<backend>.jsonl``."""
    from perfmodel.paths import RESULTS_DIR
    from perfmodel.measuring.env import gpu_short_name

    return RESULTS_DIR / f"{gpu_short_name()}-{backend}.jsonl"


class RichReporter(Reporter):
    """A rich progress bar on a terminal; plain flushed lines otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress = None
        self.task = None

    def start(self, total: int, todo: int) -> None:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("measure"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("measure", total=todo)
        super().start(total, todo)

    def point_done(self, point, row) -> None:
        super().point_done(point, row)
        self._advance()

    def skipped(self, point, reason: str) -> None:
        super().skipped(point, reason)
        self._advance()

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, flush=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def check_layout(backend: str, tp: int, pp: int, dp: int, batches: List[int], routing_probe: bool) -> None:
    """Refuse (one line) parallel degrees below 1, ``--pp``/``--dp`` outside the vllm backend, a
    ``--dp`` that does not divide every B (each replica takes B/dp sequences), and ``--dp`` with
    the routing probe."""
    for name, value in (("--tp", tp), ("--pp", pp), ("--dp", dp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if backend != "vllm" and (pp > 1 or dp > 1):
        raise InputError("--pp and --dp apply to --backend vllm only")
    uneven = [b for b in batches if b % dp]
    if uneven:
        raise InputError(f"--dp {dp} does not divide batch size {uneven[0]}: each replica takes B/dp sequences")
    if dp > 1 and routing_probe:
        raise InputError("--routing-probe runs one engine: give it without --dp")


def check_dp_mode(dp: int, dp_mode: str, models: List[str], overrides: List[str]) -> None:
    """Refuse (one line) an unknown ``--dp-mode``, ``vllm`` without ``--dp`` > 1, and ``vllm``
    for a model without routed experts (vLLM runs offline data parallelism for MoE models only)."""
    from perfmodel.measuring.vllm_replicas import DP_MODES

    if dp_mode not in DP_MODES:
        raise InputError(f"unknown --dp-mode '{dp_mode}' (one of: {', '.join(DP_MODES)})")
    if dp_mode != "vllm":
        return
    if dp < 2:
        raise InputError("--dp-mode vllm needs --dp N with N > 1")
    from perfmodel.specs.model import load_model

    for m in models:
        if load_model(m, overrides=overrides).moe is None:
            raise InputError(f"--dp-mode vllm: {m} has no routed experts; vLLM's data parallelism is for "
                             "models with experts (use --dp-mode replicas)")


def require_layout_gpus(tp: int, pp: int, dp: int, visible: int) -> None:
    """Refuse (one line), before any engine is built, a layout over several GPUs that needs more
    than are visible (one GPU was checked already, or waived with ``--allow-cpu``)."""
    needed = tp * pp * dp
    if needed > 1 and needed > visible:
        raise InputError(f"--tp {tp} x --pp {pp} x --dp {dp} needs {needed} GPUs; "
                         f"{visible} visible here (torch.cuda.device_count())")


def _check_spec(backend: str, draft: Optional[str], tokens: Optional[int], probe: bool,
                accept: Optional[float] = None) -> Optional[str]:
    """The draft model's zoo name for ``--spec-draft``/``--spec-tokens``/``--spec-acceptance``
    (None without them; called as a function, an option left out arrives as its typer default)."""
    draft = draft if isinstance(draft, str) else None
    tokens = None if tokens is None or type(tokens).__name__ == "OptionInfo" else tokens
    accept = None if accept is None or type(accept).__name__ == "OptionInfo" else accept
    if draft is None and tokens is None:
        if accept is not None:
            raise InputError("--spec-acceptance needs --spec-draft and --spec-tokens")
        return None
    if backend != "vllm":
        raise InputError("--spec-draft and --spec-tokens apply to --backend vllm")
    if draft is None or tokens is None:
        raise InputError("speculative decoding needs both --spec-draft and --spec-tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise InputError(f"--spec-tokens must be a positive integer, got {tokens}")
    if accept is not None and not 0.0 <= accept <= 1.0:  # NaN fails the comparison
        raise InputError(f"--spec-acceptance must be in [0, 1], got {accept}")
    if probe:
        raise InputError("--routing-probe runs without speculative decoding")
    from perfmodel.specs.model import load_model

    return load_model(draft).name


def _check_kv_cache_dtype(backend: str, kv_cache_dtype: str) -> None:
    """Refuse a KV-cache dtype the backend cannot set (transformers' rows keep the model's)."""
    from perfmodel.measuring.vllm_backend import KV_CACHE_DTYPES

    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise InputError(f"unknown --kv-cache-dtype '{kv_cache_dtype}' (one of: {', '.join(KV_CACHE_DTYPES)})")
    if kv_cache_dtype != "auto" and backend != "vllm":
        raise InputError("--kv-cache-dtype applies to --backend vllm")


def _check_moe_config_dir(backend: str, folder: Optional[Path], serving: bool) -> Optional[Path]:
    """Refuse (one line) ``--moe-config-dir`` outside offline vLLM runs or naming no folder."""
    if not isinstance(folder, Path):  # not given, or called directly
        return None
    if backend != "vllm" or serving:
        raise InputError("--moe-config-dir applies to offline --backend vllm runs only")
    if not folder.is_dir():
        raise InputError(f"--moe-config-dir {folder}: no such folder")
    return folder


def _check_engine_process(backend: str, engine_process: bool, profile: bool, serving: bool) -> bool:
    """Refuse (one line) ``--engine-process`` outside offline vLLM runs, and with ``--profile``
    (the profiler sees only this process's kernels); returns the flag."""
    if not engine_process:
        return False
    if backend != "vllm":
        raise InputError("--engine-process applies to --backend vllm only")
    if serving:
        raise InputError("--serving always runs the engine core in a process of its own: drop --engine-process")
    if profile:
        raise InputError("--profile sees only this process's kernels: give it without --engine-process")
    return True


def _check_models(models: List[str], overrides: List[str], layers: Optional[int]) -> None:
    from perfmodel.specs.zoo import load_hf_config

    for m in models:
        load_hf_config(m, list(overrides) + ([f"num_layers={layers}"] if layers else []))


@app.command()
def measure(
    model: str = typer.Argument(..., help="Zoo name(s), alias(es) or config.json path(s), comma-separated."),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers + CUDA graphs) or vllm."),
    batch: str = typer.Option("1,16,32,64", "--batch", "-b", help="Batch sizes B, comma-separated."),
    input_len: Optional[str] = typer.Option(None, "--input-len", "-s",
                                            help="Input lengths S; ';' separates phases (all models per "
                                                 "phase). Default 128,512,2048; --serving: one S, 1024, or "
                                                 "percentiles p50=512,p90=2048 (lengths drawn as plan draws them)."),
    output_len: Optional[str] = typer.Option(None, "--output-len", "-o",
                                             help="Output lengths O (default: O = S, paired); --serving: one O, "
                                                  "256, or percentiles p50=128,p90=512."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE (repeatable)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Truncate the model to N layers."),
    experts_impl: str = typer.Option("grouped_mm", "--experts-impl", help="grouped_mm, batched_mm or eager."),
    full_run: Optional[str] = typer.Option(None, "--full-run",
                                           help="Points that also get a full decode: [MODEL:]BxS,..."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSONL file (default validate/results/{gpu}-{backend}.jsonl)."),
    budget_s: Optional[float] = typer.Option(None, "--budget-s", help="Stop starting points after this many seconds."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="Replay decode steps from CUDA graphs."),
    profile: Optional[bool] = typer.Option(
        None, "--profile/--no-profile", help="torch.profiler kernel split per point (default: on for hf, off for vllm)."),
    tp: int = typer.Option(1, "--tp", help="vllm: tensor parallel size."),
    expert_parallel: bool = typer.Option(False, "--expert-parallel",
                                         help="vllm: expert parallelism over the tp GPUs of a stage."),
    pp: int = typer.Option(1, "--pp", help="vllm: pipeline parallel size (stages)."),
    dp: int = typer.Option(1, "--dp", help="vllm: data parallel ranks, each on its own tp*pp GPUs "
                                          "taking B/dp sequences."),
    dp_mode: str = typer.Option("replicas", "--dp-mode",
                                help="vllm, with --dp: replicas (independent engines) or vllm (vLLM's data "
                                     "parallelism: the MoE layers span the ranks; with --expert-parallel the "
                                     "experts spread over all tp*dp GPUs). Point ids gain dp_mode=vllm."),
    quantization: Optional[str] = typer.Option(
        None, "--quantization", help="vllm: a method vLLM applies on load (fp8, experts_int8) or a checkpoint "
        "format written into config.json (gptq, mxfp4, fp8-block)."),
    moe_backend: str = typer.Option("triton", "--moe-backend", help="vllm: MoE kernel to pin."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype",
                                       help="vllm: the KV cache's dtype (auto: the model's; fp8). Point ids gain kv=."),
    sampling: str = typer.Option("random", "--sampling",
                                 help="vllm: decode tokens sampled at temperature 1 (random) or greedy."),
    routing: str = typer.Option("model", "--routing",
                                help="vllm: the model's router (model) or vLLM's routing simulator (uniform_random)."),
    spec_draft: Optional[str] = typer.Option(None, "--spec-draft",
                                             help="vllm: speculative decoding with this draft model (zoo name; "
                                                  "dummy weights: the cost side, acceptance as it comes)."),
    spec_tokens: Optional[int] = typer.Option(None, "--spec-tokens",
                                              help="vllm: draft tokens proposed per step (γ), with --spec-draft."),
    spec_accept: Optional[float] = typer.Option(None, "--spec-acceptance",
                                                help="vllm: accept each draft token with probability α (vLLM's "
                                                     "synthetic rejection sampler), with --spec-draft."),
    engine_process: bool = typer.Option(False, "--engine-process",
                                        help="vllm: the engine core in a process of its own (vLLM's default; "
                                             "without it, as the environment says). Point ids gain mp=1."),
    moe_config_dir: Optional[Path] = typer.Option(
        None, "--moe-config-dir", help="vllm: a folder of fused-MoE tile files, named as vLLM names its own, "
        "read before them (vLLM's VLLM_TUNED_CONFIG_FOLDER). Point ids gain moe_cfg=."),
    passes: int = typer.Option(1, "--passes", help="Measure each engine's points this many times over, in "
                               "turn, on the one engine (rows carry their pass): spread and host drift."),
    routing_probe: bool = typer.Option(False, "--routing-probe",
                                       help="vllm: record which experts the router picks (an eager engine; no timing)."),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", hidden=True,
                                   help="Run without a GPU (tiny models in tests; also PERFMODEL_ALLOW_CPU=1)."),
    serving: bool = typer.Option(False, "--serving", help="vllm: serving under Poisson arrivals (async "
                                 "engine), one row per --rate, to validate/results/{gpu}-vllm-serving.jsonl."),
    rate: Optional[str] = typer.Option(None, "--rate", help="--serving: arrival rates, requests/s, comma-separated."),
    num_requests: int = typer.Option(200, "--num-requests", help="--serving: requests per rate."),
    duration_s: Optional[float] = typer.Option(None, "--duration-s", help="--serving: no request is submitted "
                                               "after this many seconds of a rate; at 1.5x the rest are aborted."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="--serving: the engine's max_num_seqs."),
    lengths_file: Optional[Path] = typer.Option(None, "--lengths-file", help="--serving: CSV of input,output "
                                                "token counts; each request's drawn from it (as plan does)."),
    seed: int = typer.Option(0, "--seed", help="--serving: seed of the arrival times and the prompts."),
    burstiness: float = typer.Option(1.0, "--burstiness", help="--serving: gamma shape of the gaps between "
                                     "arrivals, as vllm bench serve's (1: Poisson; below 1 burstier)."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", help="--serving: TTFT target for goodput, s."),
    itl_slo: Optional[float] = typer.Option(None, "--itl-slo", help="--serving: TPOT target for goodput, s."),
) -> SweepSummary:
    """Measure TTFT, ITL, E2E and throughput for each (model, B, S, O); resumable JSONL output."""
    overrides = list(set_ or [])
    models = parse_models(model)
    batches = parse_int_list(batch, "batch size")
    phases = parse_phases(input_len if isinstance(input_len, str) and serving is not True else "128,512,2048")
    outs = parse_int_list(output_len, "output length") if output_len and serving is not True else None
    if layers is not None and layers < 1:
        raise InputError("--layers must be >= 1")
    budget_s = check_budget(budget_s)
    if out is not None and out.is_dir():
        raise InputError(f"--out {out} is a folder; measure appends rows to a JSONL file")
    fr = FullRunSpec.parse(full_run)
    _check_models(models, overrides, layers)
    backend = backend.lower()
    if backend not in ("hf", "vllm"):
        raise InputError(f"unknown --backend '{backend}' (hf or vllm)")
    if backend == "hf" and experts_impl not in EXPERTS_IMPLS:
        raise InputError(f"unknown --experts-impl '{experts_impl}' (one of: {', '.join(EXPERTS_IMPLS)})")
    if backend == "vllm" and sampling not in ("random", "greedy"):
        raise InputError(f"unknown --sampling '{sampling}' (random or greedy)")
    if backend == "vllm" and routing not in ("model", "uniform_random"):
        raise InputError(f"unknown --routing '{routing}' (model or uniform_random)")
    kv_cache_dtype = kv_cache_dtype if isinstance(kv_cache_dtype, str) else "auto"  # called directly
    _check_kv_cache_dtype(backend, kv_cache_dtype)
    spec_draft = _check_spec(backend, spec_draft, spec_tokens, routing_probe is True, spec_accept)
    spec_tokens = spec_tokens if spec_draft is not None else None
    spec_accept = spec_accept if spec_draft is not None else None
    engine_process = _check_engine_process(backend, engine_process is True, profile is True, serving is True)
    moe_config_dir = _check_moe_config_dir(backend, moe_config_dir, serving is True)
    passes = passes if isinstance(passes, int) else 1  # the option's default when called directly
    dp_mode = dp_mode if isinstance(dp_mode, str) else "replicas"
    if passes != 1 and (serving is True or passes < 1):
        raise InputError("--passes must be >= 1, and applies to offline runs (not --serving)")
    if serving is True:
        from perfmodel.measuring import vllm_backend, vllm_serving

        vllm_serving.check_engine_args(backend, routing_probe, dp)
        check_layout(backend, tp, pp, dp, [1], False)
        check_dp_mode(dp, dp_mode, models, overrides)
        settings = vllm_backend.point_settings(tp=tp, expert_parallel=expert_parallel, quantization=quantization,
                                               moe_backend=moe_backend, sampling=sampling, pp=pp,
                                               routing=routing, spec_draft=spec_draft, spec_tokens=spec_tokens,
                                               spec_accept=spec_accept, kv_cache_dtype=kv_cache_dtype)
        return vllm_serving.serving_command(
            models=models, out=out, budget_s=budget_s, allow_cpu=allow_cpu, rates=rate,
            num_requests=num_requests, input_len=input_len, output_len=output_len, max_num_seqs=max_num_seqs,
            seed=seed, duration_s=duration_s, ttft_slo_s=ttft_slo, itl_slo_s=itl_slo, overrides=overrides,
            layers=layers, cuda_graphs=cuda_graphs, settings=settings, lengths_file=lengths_file,
            burstiness=burstiness if isinstance(burstiness, (int, float)) else 1.0)
    if isinstance(rate, str):
        raise InputError("--rate applies to --serving runs")
    if isinstance(lengths_file, Path):
        raise InputError("--lengths-file applies to --serving runs")
    if isinstance(burstiness, (int, float)) and burstiness != 1.0:
        raise InputError("--burstiness applies to --serving runs")
    require_gpu_libraries("measure")
    if backend == "vllm":
        from perfmodel.measuring import vllm_backend

        if not vllm_backend.vllm_available():
            raise InputError(VLLM_MISSING)
    check_layout(backend, tp, pp, dp, batches, routing_probe is True)
    check_dp_mode(dp, dp_mode, models, overrides)
    require_gpu("measure", NO_GPU_HINT, allow_cpu=allow_cpu is True)
    if backend == "vllm":
        require_layout_gpus(tp, pp, dp, vllm_backend.visible_gpus())
    if backend == "hf":
        from perfmodel.measuring.hf_runner import HFBackend

        engine = HFBackend(profile=profile is not False)
        settings = None
    else:
        settings = vllm_backend.point_settings(tp=tp, expert_parallel=expert_parallel,
                                               quantization=quantization, moe_backend=moe_backend,
                                               sampling=sampling, pp=pp, dp=dp, routing=routing,
                                               spec_draft=spec_draft, spec_tokens=spec_tokens,
                                               spec_accept=spec_accept, engine_process=engine_process,
                                               kv_cache_dtype=kv_cache_dtype, moe_config_dir=moe_config_dir,
                                               dp_mode=dp_mode)
        if routing_probe:
            settings["probe"] = "routing"
        if dp > 1:
            from perfmodel.measuring.vllm_replicas import DataParallelBackend, visible_devices

            engine = DataParallelBackend(dp, tp * pp, visible_devices(vllm_backend.visible_gpus()), mode=dp_mode)
        else:
            engine = vllm_backend.VLLMBackend(routing_probe=routing_probe, profile=profile is True)
        experts_impl = "vllm_fused_moe"
    points = build_points(models, batches, phases, outs, backend=backend, overrides=overrides,
                          layers=layers, experts_impl=experts_impl, cuda_graphs=cuda_graphs,
                          full_run=fr, settings=settings)
    out_path = out or default_out(backend)
    reporter = RichReporter()
    reporter.log(f"writing {out_path}")
    try:
        summary = run_sweep(points, engine, out_path, budget_s=budget_s, reporter=reporter, passes=passes)
    finally:
        reporter.stop()
    reporter.log(
        f"done in {summary.elapsed_s:.0f} s: " + ", ".join(f"{k} {v}" for k, v in summary.measured.items())
        + f", already there {summary.already_done}, not started {len(summary.deferred)}"
        + (f" (stopped: {summary.stopped})" if summary.stopped else "")
    )
    if summary.stopped == "fatal device error":
        print("the device is in an unusable state; run the same command again to resume", file=sys.stderr)
        raise typer.Exit(code=3)
    return summary
