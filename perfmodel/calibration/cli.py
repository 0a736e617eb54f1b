"""``perfmodel calibrate ...``: the calibration commands (the top-level CLI mounts :data:`app`)."""

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Measure kernels for calibration.")


@app.command()
def bench(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default calibration/data/{gpu}/)."),
    quick: bool = typer.Option(False, "--quick", help="A ~1 minute smoke run."),
    budget_s: Optional[float] = typer.Option(None, "--budget-s", help="Wall-time budget in seconds (default 450; quick 60)."),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", hidden=True,
                                   help="Run the tiny CPU mode without a GPU (tests; also PERFMODEL_ALLOW_CPU=1)."),
) -> None:
    """Run the microbenchmarks (GEMM, grouped GEMM, MoE block, attention, memory) into CSV tables."""
    from perfmodel.calibration.bench import NO_GPU_HINT, default_out_dir, run_bench
    from perfmodel.errors import InputError
    from perfmodel.measuring.preflight import check_budget, require_gpu_stack

    budget_s = check_budget(budget_s)
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; the bench writes its tables into a folder")
    require_gpu_stack("calibrate bench", NO_GPU_HINT, allow_cpu=allow_cpu is True)
    run_bench(out or default_out_dir(), quick=quick, budget_s=budget_s, allow_cpu=allow_cpu is True)


@app.command()
def collectives(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default calibration/data/{gpu}-x{N}/)."),
    world_size: Optional[int] = typer.Option(None, "--world-size", help="Processes, one per GPU (default: every GPU visible)."),
    max_bytes: str = typer.Option("1GiB", "--max-bytes", help="Largest message, e.g. 64MiB (sizes 4KiB, 8KiB, … up to it)."),
    budget_s: Optional[float] = typer.Option(None, "--budget-s", help="Wall time after which no new size starts (default 300)."),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", hidden=True,
                                   help="Run on CPU processes over gloo (tests; also PERFMODEL_ALLOW_CPU=1)."),
) -> None:
    """Time all-reduce, all-gather, reduce-scatter, all-to-all and send/recv between GPUs into collectives.csv."""
    from perfmodel.calibration.bench_collectives import parse_bytes, run_collectives
    from perfmodel.calibration.fit_collectives import fit_collectives
    from perfmodel.errors import PerfModelError
    from perfmodel.measuring.preflight import check_budget

    meta = run_collectives(out, world_size=world_size, max_bytes=parse_bytes(max_bytes),
                           budget_s=check_budget(budget_s), allow_cpu=allow_cpu is True)
    table = Path(meta["out_dir"]) / "collectives.csv"
    print(f"wrote {table} ({meta['rows']} rows, {meta['backend']}, {meta['world_size']} ranks"
          f"{'; cut short by the budget' if meta['truncated'] else ''})")
    if meta["gpu_spec"] is None:
        return
    try:
        fitted = fit_collectives(table, meta["gpu_spec"])
    except PerfModelError as exc:
        print(f"no link fit: {exc}")
        return
    print(f"link fit against {fitted['gpu']} ({fitted['link_gb_s']:g} GB/s per direction):")
    for name, f in {**fitted["collectives"], "joint": fitted["joint"]}.items():
        print(f"  {name:15s} efficiency {f['efficiency']:.3f}  link step {f['link_step_s'] * 1e6:7.2f} us  "
              f"MAPE {f['mape_pct']:5.1f} %  (n={f['rows']})")


@app.command()
def fit(
    gpu: str = typer.Option("h200-sxm", "--gpu", help="GPU whose committed data to fit."),
    engine: str = typer.Option("hf", "--engine", help="hf (microbenchmarks + end to end) or vllm (end to end)."),
    check: bool = typer.Option(False, "--check", help="Only report whether the committed profile is up to date."),
    anchor: str = typer.Option("auto", "--anchor", help="vllm: the GPU whose fit gives the host's terms and "
                               "what this GPU was not measured in (auto: h200-sxm's, for any other GPU; none: "
                               "every term from this GPU's rows). hf: the GPU whose fit gives the engine's "
                               "fixed costs beside this GPU's microbenchmarks (auto: h200-sxm's where this "
                               "GPU has no transformers rows; none: fitted on its rows)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the profile to this file instead of the "
                                       "committed one (with --check: compare with this file), e.g. a fit "
                                       "with --anchor none for validate --fitted-on FILE."),
) -> None:
    """Fit an engine profile from the committed measurements (deterministic)."""
    import yaml

    from perfmodel.calibration.fit import FIT_RTOL, fit_profile, profile_differences, write_profile
    from perfmodel.errors import InputError
    from perfmodel.paths import PROFILES_DIR
    from perfmodel.specs.hardware import load_gpu

    gpu = load_gpu(gpu).name
    if engine == "hf":
        from perfmodel.calibration.fit import hf_anchor

        profile = fit_profile(gpu, anchor=hf_anchor(gpu, anchor))
    elif engine == "vllm":
        from perfmodel.calibration.fit_vllm import fit_vllm_profile

        profile = fit_vllm_profile(gpu, anchor=None if anchor == "none" else
                                   anchor if anchor == "auto" else load_gpu(anchor).name)
    else:
        raise InputError(f"unknown --engine '{engine}' (hf or vllm)")
    path = Path(out) if out is not None else PROFILES_DIR / f"{profile['gpu']}-{profile['engine']}.yaml"
    if out is not None and (path.is_dir() or not path.parent.is_dir()):
        raise InputError(f"--out {path}: " + ("a folder; give the profile's file name" if path.is_dir()
                                              else f"no folder {path.parent}"))
    if check:
        current = yaml.safe_load(path.read_text()) if path.exists() else None
        diff = profile_differences(current, profile) if current is not None else ["no profile"]
        if diff:
            raise InputError(f"{path.name} is not what the committed data fits (committed vs fitted, "
                             f"tolerance {FIT_RTOL:g} relative: {'; '.join(diff[:3])}"
                             f"{'; …' if len(diff) > 3 else ''}): run perfmodel calibrate fit")
        print(f"{path.name} is up to date")
        return
    write_profile(profile, path)
    held = profile["fit"].get("residuals", {}).get("held-out", {})
    print(f"wrote {path}" + ("" if held else f" (no {gpu} rows to check it: no error band)"))
    for metric, stats in held.items():
        print(f"  held-out {metric:12s} MAPE {stats['mape_pct']:6.2f} %  p90 {stats['p90_abs_pct']:6.2f} %  (n={stats['n']})")
