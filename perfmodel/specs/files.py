"""Reading spec and config files (YAML or JSON) without letting their content crash the reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

#: libyaml's parser where PyYAML was built with it (about 10x faster on the specs), else PyYAML's own
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader, except that a key given twice in one mapping is an error (YAML leaves it to
    the reader; PyYAML keeps the last value, which would silently drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor says so
                repeated = False
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)  # the mark gives the line
        return super().construct_mapping(node, deep=deep)


def read_data(path: Path, *, as_json: bool = False) -> Any:
    """The parsed content of a UTF-8 YAML file (JSON when ``as_json``).

    Raises :class:`OSError` when the file cannot be read, and :class:`ValueError` with a
    one-line reason when it is not UTF-8 text, not well-formed, or nested too deeply to parse.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text) if as_json else yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: also integers too long to convert
        if "exceeded maximum nesting depth" in str(exc):  # libyaml's limit, PyYAML's RecursionError
            raise ValueError("nested too deeply") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)  # where the parser gave up (0-based)
        raise ValueError(f"{first} (line {mark.line + 1}, column {mark.column + 1})" if mark else first) from None


def read_mapping(path: Path, error: type[Exception], *, what: str = "",
                 expected: str = "a mapping at the top level") -> dict[str, Any]:
    """The parsed content of a YAML file that must be a mapping; anything else raises ``error``
    (e.g. :class:`perfmodel.errors.SpecError` for shipped data, ``InputError`` for a user's
    file) with one line: ``what`` names the file's kind ("price file "), ``expected`` its shape."""
    try:
        data = read_data(Path(path))
    except ValueError as exc:
        raise error(f"malformed YAML in {what}{path}: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {what}{path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what}{path}: expected {expected}")
    return data
