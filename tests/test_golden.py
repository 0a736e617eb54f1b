"""Golden predictions: fixed points whose metrics must not change by accident.

The points (MoE families of the zoo; request, prefill and decode phases; bf16 and fp8; TP=2
once; H200 and H100; the uncalibrated ``roofline`` engine) and their metrics are stored in
``tests/data/golden_predictions.json`` and compared at a relative tolerance of 1e-9.

When a change to the predictions is intended (a formula, a spec, the roofline profile),
regenerate the file and review its diff:

    python tests/regen_golden.py
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GOLDEN = json.loads((HERE / "data" / "golden_predictions.json").read_text())


def _regen_module():
    spec = importlib.util.spec_from_file_location("regen_golden", HERE / "regen_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regen = _regen_module()


def test_golden_file_matches_the_point_list():
    """The JSON holds exactly the points regen_golden.py defines (same inputs, same metrics):
    a point edited in one place and not the other is caught here."""
    assert GOLDEN["metrics"] == list(regen.GOLDEN_METRICS)
    stored = [{k: v for k, v in p.items() if k not in ("metrics", "engine")} for p in GOLDEN["points"]]
    assert stored == regen.POINTS
    assert all(p["engine"] == "roofline" for p in GOLDEN["points"])
    assert len(GOLDEN["points"]) >= 8
    assert {p["phase"] for p in GOLDEN["points"]} == {"request", "prefill", "decode"}
    assert {p["workload"].get("dtype") for p in GOLDEN["points"]} == {"bf16", "fp8"}


@pytest.mark.parametrize("point", GOLDEN["points"], ids=[p["id"] for p in GOLDEN["points"]])
def test_golden_prediction(point):
    got = regen.evaluate_point(point)
    assert set(got) == set(point["metrics"])
    for metric, expected in point["metrics"].items():
        value = got[metric]
        if expected is None:
            assert value is None, f"{metric}: expected NaN, got {value}"
        else:
            assert value is not None and math.isclose(value, expected, rel_tol=1e-9), (
                f"{point['id']} {metric}: {value!r} != golden {expected!r} "
                f"(intended? run `python tests/regen_golden.py`)")
