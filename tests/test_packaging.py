"""The wheel holds every subpackage and the data folders; nothing top-level besides ``perfmodel``.

A full plain install is checked by ``scripts/check_plain_install.sh`` (CI runs it); these are the
fast structural checks behind it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from perfmodel import paths

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_every_subpackage_is_in_the_wheel():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "perfmodel").rglob("__init__.py")}
    listed = set(SETUPTOOLS["packages"])
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert all(name == "perfmodel" or name.startswith("perfmodel.") for name in listed)


def test_data_folders_are_shipped_and_found():
    mapping = SETUPTOOLS["package-dir"]
    for package, folder in mapping.items():
        assert package.startswith("perfmodel._data."), package
        assert (ROOT / folder).is_dir(), folder
        assert SETUPTOOLS["package-data"][package], f"no data globs for {package}"
    shipped = {folder: package for package, folder in mapping.items()}
    for data_dir in (paths.HARDWARE_DIR, paths.MODELS_DIR, paths.PROFILES_DIR, paths.RESULTS_DIR):
        top = data_dir.relative_to(paths.ROOT).parts[0]
        assert top in shipped, f"{data_dir} is not shipped in the wheel"
        assert any(data_dir.iterdir())


def test_globs_cover_every_committed_data_file():
    """Every spec, profile and result file matches a package-data glob (so the wheel has it)."""
    mapping = SETUPTOOLS["package-dir"]
    for package, folder in mapping.items():
        globs = SETUPTOOLS["package-data"][package]
        wanted = {p for p in (ROOT / folder).rglob("*")
                  if p.is_file() and p.suffix in {".yaml", ".csv", ".json", ".jsonl"} and "__pycache__" not in p.parts}
        covered = {p for g in globs for p in (ROOT / folder).glob(g)}
        assert wanted <= covered, f"not shipped: {sorted(str(p.relative_to(ROOT)) for p in wanted - covered)}"


def test_a_checkout_reads_its_own_data():
    assert paths.IS_CHECKOUT and paths.ROOT == ROOT
