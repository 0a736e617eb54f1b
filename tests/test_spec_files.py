"""Spec and config files: what a file's bytes may do to the reader (nothing but one error),
and names that two files of a spec folder both claim."""

from __future__ import annotations

import pytest
import yaml

from perfmodel.errors import SpecError
from perfmodel.paths import HARDWARE_DIR
from perfmodel.specs import zoo as zoo_module
from perfmodel.specs.files import read_data
from perfmodel.specs.hardware import gpu_catalog


@pytest.mark.parametrize("content, reason", [
    (b"a: \xff\n", "not UTF-8 text (byte 0xff at offset 3)"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"a: 1" + b"0" * 5000 + b"\n", "integer string conversion"),
    (b"a: [1\n", "flow sequence"),
])
def test_unreadable_content_is_one_value_error(tmp_path, content, reason):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_data(path)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_a_byte_order_mark_is_not_content(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"model_type": "mixtral"}')
    assert read_data(path, as_json=True) == {"model_type": "mixtral"}


def _gpu(folder, file: str, **fields) -> None:
    data = {**yaml.safe_load((HARDWARE_DIR / "h200-sxm.yaml").read_text()), **fields}
    (folder / file).write_text(yaml.safe_dump(data))


def test_two_gpu_files_claiming_one_name_are_refused(tmp_path):
    _gpu(tmp_path, "a.yaml", name="gpu-a", aliases=["fast"])
    _gpu(tmp_path, "b.yaml", name="gpu-b", aliases=["FAST"])
    with pytest.raises(SpecError, match="'fast' is given by both a.yaml and b.yaml"):
        gpu_catalog(tmp_path)


def test_a_gpu_may_repeat_its_own_name_as_an_alias(tmp_path):
    _gpu(tmp_path, "a.yaml", name="gpu-a", aliases=["GPU-A", "a"])
    assert set(gpu_catalog(tmp_path)) == {"gpu-a", "a"}


@pytest.mark.parametrize("second, message", [
    ({"name": "m2", "aliases": ["M1"]}, "model name 'm1' is given by two zoo files"),
    ({"name": "m2", "aliases": "m3"}, "name and aliases: expected non-empty strings"),
    ({"name": 7, "aliases": []}, "name and aliases: expected non-empty strings"),
])
def test_zoo_names_are_strings_claimed_once(tmp_path, monkeypatch, second, message):
    config = {"model_type": "mixtral"}
    (tmp_path / "m1.yaml").write_text(yaml.safe_dump(
        {"name": "m1", "display_name": "M1", "source": "x", "config": config}))
    (tmp_path / "m2.yaml").write_text(yaml.safe_dump(
        {"display_name": "M2", "source": "x", "config": config, **second}))
    monkeypatch.setattr(zoo_module, "MODELS_DIR", tmp_path)
    zoo_module.zoo.cache_clear()
    try:
        with pytest.raises(SpecError, match=message):
            zoo_module.zoo()
    finally:
        zoo_module.zoo.cache_clear()
