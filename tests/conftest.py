"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml


class SchemesFile:
    """The quantization schemes' file a test edits: ``original`` is a fresh copy of
    ``specs/quantization.yaml``; ``write(data)`` makes ``data`` the file the loader reads."""

    def __init__(self, path: Path, original: str) -> None:
        self.path, self._original = path, original

    @property
    def original(self) -> dict:
        return yaml.safe_load(self._original)

    def write(self, data: dict) -> None:
        from perfmodel import quantization

        self.path.write_text(yaml.safe_dump(data))
        quantization.load_schemes.cache_clear()


@pytest.fixture
def schemes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SchemesFile]:
    """The quantization schemes' file, redirected to a copy the test edits (the loader's cache
    cleared after the test)."""
    from perfmodel import quantization

    edited = SchemesFile(tmp_path / "quantization.yaml", quantization.SCHEMES_FILE.read_text())
    monkeypatch.setattr(quantization, "SCHEMES_FILE", edited.path)
    try:
        yield edited
    finally:
        quantization.load_schemes.cache_clear()
