"""The model zoo and Hugging Face ``config.json`` files: loading, overriding, validating.

A zoo entry is ``specs/models/<name>.yaml`` holding the published ``config.json`` fields under
``config:``. Any local ``config.json`` works the same way. ``--set KEY=VALUE`` overrides
take friendly names (``num_experts``, ``top_k``, ``moe_intermediate_size``, ``num_layers``...)
that are translated to each architecture's own field (:func:`config_field`, by the adapters of
:mod:`perfmodel.specs.families`), or the raw config field itself.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from dataclasses import dataclass, field

from perfmodel.errors import InputError, SpecError
from perfmodel.paths import MODELS_DIR
from perfmodel.specs.families import (
    EXPERT_FIELDS, EXPERT_KNOBS, FAMILIES, KNOBS, OPTIONAL_FIELDS, PER_LAYER_FIELDS, SUPPORTED_MODEL_TYPES,
    WRAPPED_TYPES, config_field,
)
from perfmodel.specs.files import read_data


@dataclass(frozen=True)
class ZooEntry:
    """One named model of the zoo (a plain dataclass: the GPU side imports this without pydantic)."""

    name: str
    display_name: str
    source: str
    config: dict[str, Any]
    aliases: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.config, dict) or "model_type" not in self.config:
            raise TypeError("config: expected a mapping with a model_type")
        if not isinstance(self.aliases, list) or not all(
                isinstance(n, str) and n for n in [self.name, *self.aliases]):
            raise TypeError("name and aliases: expected non-empty strings")


@cache
def zoo() -> dict[str, ZooEntry]:
    """All zoo entries keyed by lower-case name and alias."""
    entries: dict[str, ZooEntry] = {}
    for path in sorted(MODELS_DIR.glob("*.yaml")):
        try:
            entry = ZooEntry(**read_data(path))
        except (OSError, ValueError, TypeError) as exc:
            raise SpecError(f"invalid zoo file {path.name}: {str(exc).splitlines()[0]}") from None
        for key in {k.lower() for k in [entry.name, *entry.aliases]}:
            if key in entries:
                raise SpecError(f"model name '{key}' is given by two zoo files ({path.name} and "
                                f"the one of {entries[key].name})")
            entries[key] = entry
    return entries


def zoo_names() -> list[str]:
    """Canonical names of the zoo's models, sorted."""
    return sorted({e.name for e in zoo().values()})


def _read_config_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / "config.json"
    try:
        data = read_data(path, as_json=path.suffix not in (".yaml", ".yml"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"malformed config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"malformed config file {path}: expected a JSON object")
    if "config" in data and isinstance(data["config"], dict) and "model_type" not in data:
        data = data["config"]  # a zoo-style YAML file given by path
    if "text_config" in data and isinstance(data["text_config"], dict):
        data = {**data["text_config"], "model_type": data["text_config"].get("model_type", "")}
        data["model_type"] = WRAPPED_TYPES.get(data["model_type"], data["model_type"])
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE``; the value is read as YAML (ints, floats, bools, null, lists)."""
    if "=" not in item:
        raise InputError(f"bad --set '{item}': expected KEY=VALUE")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key.isidentifier():
        raise InputError(f"bad --set key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        raise InputError(f"bad --set value for '{key}': '{shown}'") from None
    if value is None and raw.strip() not in ("null", "none", "None", "~"):
        raise InputError(f"bad --set value for '{key}': empty")
    return key, value


def override_items(overrides: list[str] | dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, value) of each override, ``KEY=VALUE`` strings parsed."""
    return list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides]


def config_keys(config: dict[str, Any]) -> list[str]:
    """The fields of a config.json that ``--set`` can change: its integer, number and true/false
    fields (not its names, lists or nested blocks)."""
    return [k for k, v in config.items() if isinstance(v, (bool, int, float)) and k != "model_type"]


def apply_overrides(config: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with overrides applied (friendly or raw field names).

    Changing the layer count drops the config's per-layer lists (transformers rebuilds them
    from the other fields), but not those the overrides set themselves.
    """
    items = override_items(overrides)
    out = dict(config)
    model_type = out.get("model_type", "")
    fields = [config_field(model_type, key) for key, _ in items]
    for (key, _), name in zip(items, fields):  # a name and its alias (or the raw field): one would win
        others = [k for (k, _), n in zip(items, fields) if n == name and k != key]
        if others:
            raise InputError(f"--set {key} and --set {others[0]} both set {name}: give one")
    adapter = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    dense = adapter is not None and not adapter.experts
    for (key, value), name in zip(items, fields):
        if dense and (key in EXPERT_KNOBS or name in EXPERT_FIELDS):
            raise InputError(f"--set {key}: a {model_type} model has no experts")
        if key not in KNOBS and name not in out and name not in OPTIONAL_FIELDS:
            raise InputError(
                f"unknown --set key '{key}' for {model_type or 'this model'} (try one of: "
                f"{', '.join(sorted(KNOBS))}; or a field of its config.json: {', '.join(sorted(config_keys(out)))})"
            )
        out[name] = value
    if "num_hidden_layers" in fields:
        for derived in PER_LAYER_FIELDS:
            if derived not in fields:
                out.pop(derived, None)
    return out


def load_hf_config(model: str, overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The Hugging Face config dict of a zoo name, alias, or path, with overrides applied.

    ``model`` is a zoo name (``mixtral-8x7b``), an alias (``mixtral``), a path to a
    ``config.json``, or a directory holding one. Raises :class:`InputError` on bad input.
    """
    if not model.strip():  # Path("") is the working folder, whose config.json nobody meant
        raise InputError("no model given (a zoo name, or a path to a config.json)")
    entry = zoo().get(model.lower())
    if entry is not None:
        config = dict(entry.config)
    elif model.endswith((".json", ".yaml", ".yml")) or Path(model).is_dir():
        config = _read_config_file(Path(model))
    else:
        raise InputError(f"unknown model '{model}' (a zoo name, or a path to a config.json)")
    model_type = config.get("model_type")
    if model_type is None:
        raise InputError(f"the config has no model_type (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"unsupported model_type '{model_type}' "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return apply_overrides(config, overrides or [])


def display_name(model: str) -> str:
    """The zoo's display name for a model, or the argument itself for a path."""
    entry = zoo().get(model.lower())
    return entry.display_name if entry else model
