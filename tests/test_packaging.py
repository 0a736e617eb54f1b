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



#: Modules that run on a GPU machine only (benchmarks, the measuring runners): they may import
#: torch, transformers or vLLM at module level. Every other module must import without them, as a
#: plain install's replay commands (validate, report, calibrate fit) import them.
GPU_SIDE = {
    "perfmodel.calibration.bench_attn", "perfmodel.calibration.bench_gemm", "perfmodel.calibration.bench_io",
    "perfmodel.calibration.bench_layers", "perfmodel.calibration.bench_mem", "perfmodel.measuring.hf_build",
    "perfmodel.measuring.hf_estimate", "perfmodel.measuring.hf_routing", "perfmodel.measuring.hf_runner",
    "perfmodel.measuring.hf_steps", "perfmodel.measuring.profiler_split", "perfmodel.measuring.timing",
    "perfmodel.measuring.vllm_dummy_worker", "perfmodel.measuring.vllm_kernels",
}

#: Python run first in a subprocess: the GPU-side libraries cannot be imported, as in a plain install.
WITHOUT_GPU_LIBS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "vllm", "triton"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def _run_without_gpu_libs(code: str, *args: str, cwd: Path = ROOT):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", WITHOUT_GPU_LIBS + code, *args], capture_output=True,
                          text=True, cwd=cwd)


def test_only_gpu_side_modules_need_torch():
    """A plain install has no torch: a module outside :data:`GPU_SIDE` that imports it (directly
    or through another) breaks the commands that replay committed measurements."""
    import json

    out = _run_without_gpu_libs("""
import importlib, json, pkgutil
import perfmodel
failed = {}
for m in pkgutil.walk_packages(perfmodel.__path__, "perfmodel."):
    if not m.name.endswith("__main__"):
        try:
            importlib.import_module(m.name)
        except ModuleNotFoundError as exc:
            failed[m.name] = str(exc)
print(json.dumps(failed))
""")
    assert out.returncode == 0, out.stderr
    failed = json.loads(out.stdout)
    assert set(failed) - GPU_SIDE == set(), {m: failed[m] for m in set(failed) - GPU_SIDE}
    assert GPU_SIDE - set(failed) == set(), f"no longer need torch; drop from GPU_SIDE: {GPU_SIDE - set(failed)}"


def test_validate_replays_profiled_rows_without_torch(tmp_path):
    """The replay of committed rows whose steps were profiled (the report's table of kernel time by
    op category) runs where torch is not installed."""
    out = _run_without_gpu_libs("from perfmodel.commands import main; main(sys.argv[1:])",
                                "validate", "olmoe-1b-7b", "--backend", "vllm", "--out", str(tmp_path / "v"),
                                cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = (tmp_path / "v" / "summary.md").read_text()
    assert "by op category: profiled kernels / the model" in summary


def test_a_missing_gpu_library_is_one_line():
    """A command that needs torch, run where it is not installed, says which extra brings it."""
    out = _run_without_gpu_libs("""
from perfmodel import cli
def needs_torch():
    import torch
cli.app.command("needs-torch")(needs_torch)
cli.main(["needs-torch"])
""")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "perfmodel: error: this command needs torch, which is not installed here (pip install 'perfmodel[gpu]' "
        "on the GPU machine; replays of committed measurements need neither)"]
