"""``perfmodel report paper``: the model against the seed study's headline effects."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from perfmodel.cli import JSON_OPTION, make_console, print_json
from perfmodel.errors import InputError
from perfmodel.profile import DEFAULT_ENGINE

app = typer.Typer(no_args_is_help=True, help="Reports that check the model against published results.")


@app.command("paper")
def paper(
    gpu: str = typer.Option("h100-sxm", "--gpu", help="GPU of the predictions (the paper's: h100-sxm)."),
    engine: str = typer.Option(DEFAULT_ENGINE, "--engine", help="Engine profile (perfmodel list engines)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default reports/paper)."),
    study: str = typer.Option("moe-inference-bench", "--study", help="Study name (specs/studies/) or YAML path."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Predict each headline effect of the study in its setup, beside our measurements, and judge it."""
    from perfmodel.validate.paper.report import DEFAULT_OUT, build, to_json, write

    report = build(gpu=gpu, engine=engine, study=study)
    target = out if out is not None else DEFAULT_OUT
    try:
        html, md = write(report, target)
    except OSError as exc:
        raise InputError(f"cannot write the report into {target}: {exc.strerror or exc}") from None
    if as_json:
        print_json(to_json(report, {"report_html": str(html), "report_md": str(md)}))
        return
    from perfmodel.validate.paper.terminal import print_report

    print_report(report, make_console(), (str(html), str(md)))
