"""``perfmodel calibrate ...``: the calibration commands (the lead mounts :data:`app`)."""

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help="Measure kernels for calibration.")


@app.command()
def bench(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default calibration/data/<gpu>/)."),
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
def fit(
    gpu: str = typer.Option("h200-sxm", "--gpu", help="GPU whose committed data to fit."),
    engine: str = typer.Option("hf", "--engine", help="hf (microbenchmarks + end to end) or vllm (end to end)."),
    check: bool = typer.Option(False, "--check", help="Only report whether the committed profile is up to date."),
) -> None:
    """Fit an engine profile from the committed measurements (deterministic)."""
    import yaml

    from perfmodel.calibration.fit import FIT_RTOL, fit_profile, profile_differences, write_profile
    from perfmodel.errors import InputError
    from perfmodel.paths import PROFILES_DIR

    if engine == "hf":
        profile = fit_profile(gpu)
    elif engine == "vllm":
        from perfmodel.calibration.fit_vllm import fit_vllm_profile

        profile = fit_vllm_profile(gpu)
    else:
        raise InputError(f"unknown --engine '{engine}' (hf or vllm)")
    path = PROFILES_DIR / f"{profile['gpu']}-{profile['engine']}.yaml"
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
    held = profile["fit"]["residuals"]["held-out"]
    print(f"wrote {path}")
    for metric, stats in held.items():
        print(f"  held-out {metric:12s} MAPE {stats['mape_pct']:6.2f} %  p90 {stats['p90_abs_pct']:6.2f} %  (n={stats['n']})")
