"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    edited.path.write_text(edited._original)  # the shipped schemes until the test writes its own
    monkeypatch.setattr(quantization, "SCHEMES_FILE", edited.path)
    quantization.load_schemes.cache_clear()
    try:
        yield edited
    finally:
        quantization.load_schemes.cache_clear()


@pytest.fixture
def roofline_with(tmp_path: Path) -> Callable[..., str]:
    """A function writing a copy of the roofline profile with some sections replaced
    (``roofline_with(quantization={...})``, ``kv_cache={...}``) and returning its path."""

    def write(**sections: dict) -> str:
        root = Path(__file__).resolve().parent.parent
        data = yaml.safe_load((root / "calibration/profiles/roofline.yaml").read_text())
        data.update(sections)
        path = tmp_path / "profile.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return write


@pytest.fixture
def launch_profiles(roofline_with) -> Callable[[dict], tuple[str, str]]:
    """A function writing two roofline profiles whose prefills of more than 64 tokens the host
    launches (eager_layer_s 0.1 ms, eager_step_s 1 ms, graphs to 64 tokens), without and with the
    ``quantization`` section given, and returning their paths (plain, with it)."""

    def write(quantization: dict) -> tuple[str, str]:
        latency = {"eager_layer_s": 1e-4, "eager_step_s": 1e-3}
        options = {"prefill_eager": True, "cudagraph_max_tokens": 64}
        plain = Path(roofline_with(latency=latency, options=options))
        plain = plain.rename(plain.with_name("plain.yaml"))
        return str(plain), roofline_with(latency=latency, options=options, quantization=quantization)

    return write
