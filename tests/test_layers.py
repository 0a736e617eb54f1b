"""The layers import downwards only: model core <- measuring <- calibration, validate.

- the core (``perfmodel`` outside the three upper packages) imports none of them;
- ``perfmodel.measuring`` imports neither ``perfmodel.calibration`` nor ``perfmodel.validate``;
- ``perfmodel.calibration`` and ``perfmodel.validate`` do not import each other.
Only :mod:`perfmodel.commands` (the console entry point) sees every layer.
Imports are read from the source (``ast``), function-local imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "perfmodel"
UPPER = ("measuring", "calibration", "validate")
#: layer -> the perfmodel subpackages it may not import
FORBIDDEN = {
    "core": {"measuring", "calibration", "validate"},
    "measuring": {"calibration", "validate"},
    "calibration": {"validate"},
    "validate": {"calibration"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    if rel[0] in UPPER:
        return rel[0]
    return "entry" if rel == ("commands.py",) else "core"


def _imported_subpackages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "perfmodel" and len(parts) > 1:
                found.add(parts[1])
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "_data" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    layer = _layer(path)
    bad = _imported_subpackages(path) & FORBIDDEN.get(layer, set())
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports perfmodel.{', perfmodel.'.join(sorted(bad))}"


def test_the_entry_point_registers_every_layer():
    from perfmodel import cli
    from perfmodel.commands import register

    register()
    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    groups = {g.name for g in cli.app.registered_groups}
    assert {"predict", "formula", "sweep", "list", "measure", "validate"} <= names
    assert "calibrate" in groups
