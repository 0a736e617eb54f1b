"""The ``validate`` command: predicted vs measured, live on a GPU or a labelled replay."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from perfmodel.cli import GPU_OPTION, JSON_OPTION, check_writable, make_console, print_json
from perfmodel.errors import InputError


def validate(
    model: str = typer.Argument(..., help="Zoo name, or 'all'."),
    backend: Optional[str] = typer.Option(None, "--backend", help="hf (default) or vllm; --serving: vllm."),
    gpu: str = GPU_OPTION,
    as_json: bool = JSON_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default reports/validate/MODEL)."),
    serving: bool = typer.Option(False, "--serving", help="Serving runs (measure --serving) against the "
                                 "planning simulation, replayed."),
    results: Optional[Path] = typer.Option(None, "--results", help="The rows to replay (default: live on a GPU, "
                                           "else validate/results/{gpu}-{backend}.jsonl with its what-if "
                                           "rows; --serving: validate/results/{gpu}-vllm-serving.jsonl)."),
    fitted_on: Optional[str] = typer.Option(None, "--fitted-on", help="Predict with the profile fitted on this "
                                            "GPU (default: --gpu's own), or with a profile file (.yaml): a "
                                            "transfer check, every row held out."),
    changes: bool = typer.Option(False, "--changes", help="The model's changes against measured pairs of "
                                 "--gpu's vLLM rows that differ in one knob (quant, top_k, ffn, num_experts), "
                                 "held out; writes validate/results/{gpu}-vllm-changes.json (or --out FILE), "
                                 "the band sweep --baseline shows."),
    moe_kernel: bool = typer.Option(False, "--moe-kernel", help="The model's fused-MoE ops against vLLM's "
                                    "fused-MoE kernel timed alone pass by pass "
                                    "(validate/results/{gpu}-vllm-moe-kernel.jsonl); writes "
                                    "validate/results/{gpu}-vllm-moe-kernel-validation.md (or --out FILE)."),
    mixed_steps: bool = typer.Option(False, "--mixed-steps", help="The model's engine step against vLLM's "
                                     "profiled steps that add a prompt to running decodes "
                                     "(validate/results/{gpu}-vllm-mixed-steps.jsonl); writes "
                                     "validate/results/{gpu}-vllm-mixed-steps-validation.md (or --out FILE)."),
) -> None:
    """Predicted vs measured: live on a GPU, else a labelled replay of committed measurements."""
    reports = [flag for flag, on in (("--changes", changes), ("--moe-kernel", moe_kernel),
                                     ("--mixed-steps", mixed_steps)) if on is True]
    if len(reports) > 1:
        raise InputError(f"{' and '.join(reports)} are separate reports: give one")
    if changes is True:
        _changes(model, backend, gpu, out, results, serving, fitted_on, as_json)
        return
    if moe_kernel is True:
        _moe_kernel(model, backend, gpu, out, results, serving, fitted_on, as_json)
        return
    if mixed_steps is True:
        _mixed_steps(model, backend, gpu, out, results, serving, fitted_on, as_json)
        return
    if serving is True:
        from perfmodel.validate.serving import print_serving_validation, run_serving_validation

        if backend not in (None, "vllm"):
            raise InputError(f"--serving replays vLLM serving runs: --backend {backend} does not apply")
        result = run_serving_validation(model, gpu=gpu, results=results, out_dir=out)
        if as_json:
            print_json(result)
        else:
            print_serving_validation(result, make_console())
        return
    from perfmodel.validate.validation import run_validation

    result = run_validation(model, backend=backend if isinstance(backend, str) else "hf", gpu=gpu, out_dir=out,
                            results=results if isinstance(results, Path) else None,
                            fitted_on=fitted_on if isinstance(fitted_on, str) else None)
    if as_json:
        print_json(result)
        return
    from perfmodel.validate.terminal import print_validation

    print_validation(result, make_console())


def _check_file_report(flag: str, model, backend, out, results, serving, fitted_on, *, scope: str,
                       engine: str, taken: str, writes: str) -> None:
    """The checks of a report over a GPU's committed files that ``flag`` writes to one file: every
    model (``scope`` says why), vLLM's rows (``engine``), no rows or profile of the user's
    (``taken``: what it takes), and an ``--out`` that is not a folder (``writes``: what it writes)."""
    if model != "all":
        raise InputError(f"{flag} {scope}: give 'all', not '{model}'")
    if backend not in (None, "vllm"):
        raise InputError(f"{flag} {engine}: --backend {backend} does not apply")
    given = [name for name, value in (("--serving", serving is True), ("--results", isinstance(results, Path)),
                                      ("--fitted-on", isinstance(fitted_on, str))) if value]
    if given:
        raise InputError(f"{flag} takes {taken} and the GPU's own profile: {given[0]} does not apply")
    if isinstance(out, Path) and out.is_dir():
        raise InputError(f"--out {out}: {flag} writes {writes}, and this is a folder")
    if isinstance(out, Path):
        check_writable(out)  # before the report is computed, not after


def _changes(model, backend, gpu, out, results, serving, fitted_on, as_json) -> None:
    """``validate all --changes``: the change band of a GPU's vLLM rows, written and shown."""
    from perfmodel.validate.change_band import write_change_band

    _check_file_report("--changes", model, backend, out, results, serving, fitted_on, scope="pairs every model's rows",
                       engine="pairs vLLM rows", taken="the committed rows", writes="one JSON file")
    result = write_change_band(gpu, out if isinstance(out, Path) else None)
    if as_json:
        print_json(result)
        return
    from perfmodel.validate.terminal import print_change_band

    print_change_band(result, make_console())


def _page(flag, write, shown, model, backend, gpu, out, results, serving, fitted_on, as_json, **checks) -> None:
    """A report over a GPU's committed files written as one markdown page by ``write(gpu, out)``,
    after :func:`_check_file_report`'s checks (``checks``), and shown: its JSON, or the line
    ``shown(result)``."""
    _check_file_report(flag, model, backend, out, results, serving, fitted_on, writes="one markdown file", **checks)
    result = write(gpu, out if isinstance(out, Path) else None)
    if as_json:
        print_json(result)
        return
    make_console().print(f"{shown(result)}; wrote {result['path']}", highlight=False, markup=False)


def _mape(result: dict) -> str:
    """A report's held-out MAPE, '–' where it has no held-out point."""
    mape = result["held_out_mape_pct"]
    return "–" if mape is None else f"{mape:.1f}%"


def _moe_kernel(*args) -> None:
    """``validate all --moe-kernel``: the fused-MoE ops against the kernel timed alone, written and shown."""
    from perfmodel.validate.moe_kernel import write_moe_kernel_validation

    _page("--moe-kernel", write_moe_kernel_validation,
          lambda r: f"held-out MAPE {_mape(r)} over {r['held_out_points']} passes of {len(r['shapes'])} "
                    "shape × tile choices", *args,
          scope="compares every timed expert shape", engine="times vLLM's kernel", taken="the committed timings")


def _mixed_steps(*args) -> None:
    """``validate all --mixed-steps``: the model's step against the profiled mixed steps, written and shown."""
    from perfmodel.validate.mixed_steps import write_mixed_steps_validation

    _page("--mixed-steps", write_mixed_steps_validation,
          lambda r: f"held-out MAPE {_mape(r)} over {r['held_out_points']} profiled steps", *args,
          scope="compares every profiled model", engine="profiles vLLM's steps", taken="the committed profiles")
