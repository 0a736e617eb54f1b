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
) -> None:
    """Run the microbenchmarks (GEMM, grouped GEMM, MoE block, attention, memory) into CSV tables."""
    from calibration.bench import default_out_dir, run_bench

    from perfmodel.errors import InputError

    if budget_s is not None and budget_s <= 0:
        raise InputError("--budget-s must be > 0")
    run_bench(out or default_out_dir(), quick=quick, budget_s=budget_s)
