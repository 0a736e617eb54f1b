"""The exception classes a typer app raises with ``standalone_mode=False``.

Recent typer ships its own copy of click and raises that copy's exceptions (subclasses of
``typer.TyperException``); older typer raises click's. Each tuple holds both, so that an entry
point catches a usage error as one line whichever typer is installed.
"""

from __future__ import annotations

import click
import typer

#: A command that asked to exit with a code (``--help``, ``--version``).
EXIT = (click.exceptions.Exit, typer.Exit)
#: Ctrl-C at a prompt.
ABORT = (click.exceptions.Abort, typer.Abort)
#: Usage errors: an unknown option, a missing argument, a bad value.
USAGE_ERRORS = (click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException))
