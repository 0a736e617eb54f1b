"""The whole ``perfmodel`` command line: the core's commands and those of the layers above it.

The core (:mod:`perfmodel.cli`: predict, formula, sweep, list) imports nothing from the measuring
side. This module, the console entry point, registers the upper layers' commands on the same app:
``measure`` (:mod:`perfmodel.measuring`), ``calibrate`` (:mod:`perfmodel.calibration`) and
``validate`` (:mod:`perfmodel.validate`). Each imports its heavy dependencies only when run.
"""

from __future__ import annotations

from perfmodel import cli

_registered = False


def register() -> None:
    """Add the measuring side's commands to :data:`perfmodel.cli.app` (once)."""
    global _registered
    if _registered:
        return
    from perfmodel.calibration.cli import app as calibrate_app
    from perfmodel.measuring.cli import measure
    from perfmodel.validate.cli import validate

    cli.app.command("measure")(measure)
    cli.app.add_typer(calibrate_app, name="calibrate", help="Measure kernels and fit profiles.")
    cli.app.command("validate")(validate)
    from perfmodel.planning.cli import plan

    cli.app.command("plan")(plan)
    from perfmodel.validate.paper.cli import app as report_app

    cli.app.add_typer(report_app, name="report", help="Reports: the model against published results.")
    _registered = True


def main(argv: list[str] | None = None) -> None:
    """Entry point: every command, bad input as one line on stderr (see :func:`perfmodel.cli.main`)."""
    register()
    cli.main(argv)
