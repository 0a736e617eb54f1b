"""The README's accuracy table reads as the committed H200 vllm profile's own record of its fit.

The table in "How accurate" is written by hand; each regime row's point count, MAPE and band
must be the profile's ``fit.residuals['band points']`` entry, rounded as printed, so that a refit
which moves them fails here until the README says what the profile now says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "calibration" / "profiles" / "h200-sxm-vllm.yaml"

# README row label -> the regime's keys in fit.residuals['band points'], by metric column
ROWS = {
    "decode step set by the GPU": {"itl": "decode_step GPU-bound", "throughput": "throughput GPU-bound"},
    "decode step held to the host's time": {"itl": "decode_step host-bound",
                                            "throughput": "throughput host-bound"},
    "prefill set by the GPU": {"ttft": "ttft GPU-bound"},
    "prefill held to the host's launch floor": {"ttft": "ttft launch-bound"},
    "prefill replayed from a captured CUDA graph": {"ttft": "ttft graph-replayed"},
}
COLUMNS = ("itl", "throughput", "ttft")
CELL = re.compile(r"^(?P<mape>\d+(?:\.\d+)?)% \(±(?P<band>\d+(?:\.\d+)?)%\)$")


def _table_row(readme: str, label: str) -> list[str]:
    line = next((ln for ln in readme.splitlines() if ln.startswith(f"| {label}")), None)
    assert line is not None, f"README has no accuracy row starting {label!r}"
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert len(cells) == 5, f"row {label!r}: expected label, points, ITL, throughput, TTFT: {cells}"
    return cells


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


@pytest.mark.parametrize("label", sorted(ROWS))
def test_the_readme_accuracy_row_is_the_profiles_record(label):
    readme = (ROOT / "README.md").read_text()
    points = yaml.safe_load(PROFILE.read_text())["fit"]["residuals"]["band points"]
    cells = _table_row(readme, label)
    wanted = ROWS[label]
    counts = {points[key]["n"] for key in wanted.values()}
    assert counts == {int(cells[1])}, f"row {label!r}: {cells[1]} points, the profile has {counts}"
    for column, cell in zip(COLUMNS, cells[2:]):
        if column not in wanted:
            assert cell == "", f"row {label!r}: {column} should be empty, reads {cell!r}"
            continue
        match = CELL.match(cell)
        assert match, f"row {label!r}: {column} cell {cell!r} is not 'M% (±B%)'"
        record = points[wanted[column]]
        for name, key in (("mape", "mape_pct"), ("band", "p90_abs_pct")):
            printed = match[name]
            assert float(printed) == round(record[key], _decimals(printed)), (
                f"row {label!r}, {column} {name}: README {printed}%, profile {record[key]:.3g}%")
