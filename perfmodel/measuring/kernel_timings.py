"""vLLM's fused-MoE kernel timed alone (``scripts/bench_moe_tiles.py``): reading its rows.

One JSON row per (expert shape, pass, tile choice): ``experts``, ``width``, ``hidden``, ``top_k``,
``scheme``, ``tokens``, ``tiles`` (``table``: the tiles vLLM picks; ``default``: its default
rule), ``us`` (µs per call) with its provenance; a row that failed has ``error`` and no ``us``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perfmodel.errors import InputError

#: The fields a timed row must have.
FIELDS = ("experts", "width", "hidden", "top_k", "scheme", "tokens", "tiles", "us")


def read_kernel_timings(path: Path) -> list[dict[str, Any]]:
    """The timed rows of a kernel-timings file (the failed ones left out); one clear line for a
    line that is not JSON or a timed row that lacks a field."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path.name}, line {number}: not JSON") from None
        if not isinstance(row, dict) or "error" in row or "us" not in row:
            continue
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise InputError(f"{path.name}, line {number}: a timed row without {', '.join(missing)}")
        rows.append(row)
    return rows
