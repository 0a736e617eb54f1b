"""scripts/moe_tile_file.py on a stand-in of vLLM's fused-MoE module: the file it names for this
GPU, a table copied from another GPU's, and the default rule written at powers of two (no vLLM,
no GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "moe_tile_file.py"
HERE = "NVIDIA_H200"


@pytest.fixture()
def vllm(tmp_path, monkeypatch):
    """A stand-in ``vllm.model_executor.layers.fused_moe.fused_moe`` whose shipped tables live in
    ``tmp_path/configs`` and whose GPU is an H200."""
    (tmp_path / "configs").mkdir()
    fm = types.ModuleType("vllm.model_executor.layers.fused_moe.fused_moe")
    fm.__file__ = str(tmp_path / "fused_moe.py")
    fm.get_config_file_name = lambda e, n, dtype: f"E={e},N={n},device_name={HERE}" + (
        f",dtype={dtype}" if dtype else "") + ".json"
    fm.get_default_config = lambda m, e, n, k, top_k, dtype: {"BLOCK_SIZE_M": 16 if m <= 32 else 64, "K": k}
    package = types.ModuleType("vllm.model_executor.layers.fused_moe")
    package.fused_moe = fm
    for name in ("vllm", "vllm.model_executor", "vllm.model_executor.layers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.fused_moe", package)
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.fused_moe.fused_moe", fm)
    return tmp_path


def _run(monkeypatch, *args: str) -> None:
    spec = importlib.util.spec_from_file_location("moe_tile_file", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["moe_tile_file.py", *args])
    module.main()


def test_another_gpus_table_is_copied_under_this_gpus_name(vllm, tmp_path, monkeypatch):
    shipped = vllm / "configs" / "E=16,N=6400,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json"
    shipped.write_text(json.dumps({"256": {"BLOCK_SIZE_M": 64}}))
    out = tmp_path / "tiles"
    _run(monkeypatch, str(out), "16", "6400", "fp8_w8a8", "--from-device", "NVIDIA_H100_80GB_HBM3")
    written = out / f"E=16,N=6400,device_name={HERE},dtype=fp8_w8a8.json"
    assert json.loads(written.read_text()) == {"256": {"BLOCK_SIZE_M": 64}}


def test_the_default_rule_is_written_at_powers_of_two(vllm, tmp_path, monkeypatch):
    out = tmp_path / "tiles"
    _run(monkeypatch, str(out), "16", "6400", "none", "--default", "4096", "2")
    table = json.loads((out / f"E=16,N=6400,device_name={HERE}.json").read_text())
    assert list(table) == [str(2 ** i) for i in range(17)]
    assert table["1"] == {"BLOCK_SIZE_M": 16, "K": 4096} and table["64"]["BLOCK_SIZE_M"] == 64
