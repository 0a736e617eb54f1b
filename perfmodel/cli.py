"""The ``perfmodel`` command line: predict, formula, sweep, list (and the measuring side).

Bad input of any kind ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import click
import typer

from perfmodel.errors import InputError, PerfModelError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Symbolic, calibrated performance model of MoE LLM inference.")


class PhaseName(str, Enum):
    request = "request"
    prefill = "prefill"
    decode = "decode"


class Quantity(str, Enum):
    flops = "flops"
    bytes = "bytes"
    weight_bytes = "weight_bytes"
    act_bytes = "act_bytes"
    kv_bytes = "kv_bytes"
    comm = "comm"
    params = "params"
    time = "time"


class ListWhat(str, Enum):
    models = "models"
    gpus = "gpus"
    engines = "engines"


_GPU = typer.Option("h200-sxm", "--gpu", help="GPU name or alias (perfmodel list gpus).")
_ENGINE = typer.Option("roofline", "--engine", help="Engine profile (perfmodel list engines).")
_SET = typer.Option(None, "--set", help="Override a hyperparameter: KEY=VALUE (repeatable).")


def _console():
    from rich.console import Console

    return Console()


@app.command()
def predict(
    model: str = typer.Argument(..., help="Zoo name or path to a config.json."),
    gpu: str = _GPU,
    engine: str = _ENGINE,
    phase: PhaseName = typer.Option(PhaseName.request, "--phase"),
    batch: int = typer.Option(1, "--batch", "-b", help="Sequences in the batch (B)."),
    input_len: int = typer.Option(128, "--input-len", "-s", help="Input tokens per sequence (S)."),
    output_len: int = typer.Option(128, "--output-len", "-o", help="Output tokens per sequence (O)."),
    context: Optional[int] = typer.Option(None, "--context", "-l", help="Decode context L (default S)."),
    tp: int = typer.Option(1, "--tp"),
    ep: int = typer.Option(1, "--ep"),
    pp: int = typer.Option(1, "--pp"),
    dtype: str = typer.Option("bf16", "--dtype", help="Weights: fp32, bf16, fp16, fp8, int8, fp4."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="KV cache dtype (default bf16/dtype)."),
    skew: float = typer.Option(0.0, "--skew", help="Routing skew in [0, 1] (0 = uniform)."),
    set_: Optional[List[str]] = _SET,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predict TTFT, ITL, E2E, throughput and memory of one fixed-batch workload."""
    from perfmodel.prediction import predict as run

    result = run(model, gpu=gpu, engine=engine, phase=phase.value, batch=batch,
                 input_len=input_len, output_len=output_len, context=context, tp=tp, ep=ep,
                 pp=pp, dtype=dtype, kv_dtype=kv_dtype, skew=skew, overrides=set_ or [])
    if as_json:
        print(json.dumps(_strict_json(result.to_dict()), default=str, allow_nan=False))
        return
    from perfmodel.report_terminal import print_prediction

    print_prediction(result, _console())


def _strict_json(value: Any) -> Any:
    """NaN and infinities (a metric a phase does not have) as null: json.dumps would write
    NaN, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


@app.command()
def formula(
    model: str = typer.Argument(..., help="Zoo name or path to a config.json."),
    op: str = typer.Option(..., "--op", help="Op name (e.g. moe.experts), or 'list'."),
    quantity: Quantity = typer.Option(Quantity.flops, "--quantity"),
    phase: PhaseName = typer.Option(PhaseName.prefill, "--phase", help="prefill or decode."),
    latex: bool = typer.Option(False, "--latex", help="Print LaTeX."),
    set_: Optional[List[str]] = _SET,
) -> None:
    """Print an op's cost formula: symbolic, with the phase substituted, and with the model's numbers."""
    from perfmodel.formulas import op_formula

    lines = op_formula(model, op, quantity.value, phase.value, latex, set_ or [])
    print("\n".join(lines))


@app.command("list")
def list_(what: ListWhat = typer.Argument(..., help="models, gpus or engines")) -> None:
    """List the zoo's models, the known GPUs or the engine profiles."""
    if what is ListWhat.models:
        from perfmodel.specs.zoo import zoo, zoo_names

        for name in zoo_names():
            entry = zoo()[name]
            print(f"{name:24s} {entry.config['model_type']:12s} {entry.display_name}")
    elif what is ListWhat.gpus:
        from perfmodel.specs.hardware import gpu_catalog

        for gpu in sorted({g.name: g for g in gpu_catalog().values()}.values(), key=lambda g: g.name):
            print(f"{gpu.name:16s} bf16 {gpu.peak_tflops.get('bf16', 0):7.1f} TFLOP/s  "
                  f"{gpu.hbm_bandwidth_tb_s:5.2f} TB/s  {gpu.hbm_capacity_gib:6.1f} GiB  {gpu.full_name}")
    else:
        from perfmodel.profile import list_engines

        print("\n".join(list_engines()))


@app.command()
def sweep(
    model: str = typer.Argument(..., help="Zoo name or path to a config.json."),
    grid: List[str] = typer.Option(..., "--grid", help="KEY=V1,V2,... (repeatable)."),
    gpu: str = _GPU,
    engine: str = _ENGINE,
    phase: PhaseName = typer.Option(PhaseName.request, "--phase"),
    batch: int = typer.Option(1, "--batch", "-b"),
    input_len: int = typer.Option(128, "--input-len", "-s"),
    output_len: int = typer.Option(128, "--output-len", "-o"),
    dtype: str = typer.Option("bf16", "--dtype"),
    set_: Optional[List[str]] = _SET,
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the table to a CSV file."),
) -> None:
    """Evaluate a grid of workloads and hyperparameters (vectorized)."""
    from perfmodel.sweeps import parse_grid, sweep as run

    table = run(model, parse_grid(grid), gpu=gpu, engine=engine, phase=phase.value,
                overrides=set_ or [], batch=batch, input_len=input_len, output_len=output_len,
                dtype=dtype)
    if csv is not None:
        try:
            table.to_csv(csv, index=False)
        except OSError as exc:
            raise InputError(f"cannot write {csv}: {exc.strerror}") from None
        print(f"wrote {len(table)} rows to {csv}")
    else:
        print(table.to_string(index=False, max_rows=60))


@app.command()
def validate(
    model: str = typer.Argument(..., help="Zoo name, or 'all'."),
    backend: str = typer.Option("hf", "--backend", help="hf or vllm."),
    gpu: str = _GPU,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default reports/validate/MODEL)."),
) -> None:
    """Predicted vs measured: live on a GPU, else a labelled replay of committed measurements."""
    from perfmodel.validate.validation import run_validation

    result = run_validation(model, backend=backend, gpu=gpu, out_dir=out)
    if as_json:
        print(json.dumps(_strict_json(result), default=str, allow_nan=False))
        return
    from perfmodel.report_terminal import print_validation

    print_validation(result, _console())


def _mount_measuring_side() -> None:
    """The GPU-side commands live in calibration/ and validate/ (imported on use)."""
    try:
        from perfmodel.calibration.cli import app as calibrate_app
    except ImportError:  # pragma: no cover - the package ships both
        calibrate_app = None
    if calibrate_app is not None:
        app.add_typer(calibrate_app, name="calibrate", help="Measure kernels and fit profiles.")
    try:
        from perfmodel.validate.cli import measure
    except ImportError:  # pragma: no cover
        return
    app.command("measure")(measure)


_mount_measuring_side()


#: Recent typer ships its own copy of click and raises that copy's exceptions (subclasses of
#: typer.TyperException); older typer raises click's. Catch both.
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_CLICK_ERRORS = (click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; any bad input becomes one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="perfmodel", standalone_mode=False)
    except _EXIT as exc:
        sys.exit(exc.exit_code)
    except _CLICK_ERRORS as exc:  # usage errors; no arguments at all (help already printed)
        _fail(exc.format_message() or "missing command (see 'perfmodel --help')")
    except _ABORT:
        _fail("aborted", code=130)
    except PerfModelError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


def _fail(message: str, code: int = 2) -> None:
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"perfmodel: error: {line}", file=sys.stderr)
    sys.exit(code)
