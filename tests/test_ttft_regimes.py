"""TTFT by what sets the prefill: the regime of a prediction, and the validation's table of it."""

import pandas as pd
import pytest

from perfmodel.prediction import GPU_BOUND, GRAPH_REPLAYED, LAUNCH_BOUND, prefill_regime
from perfmodel.validate.report_metrics import regime_rows


def test_the_regime_of_a_prefill():
    assert prefill_regime({"prefill_s": 0.030, "prefill_launch_s": 0.030}, True) == LAUNCH_BOUND
    assert prefill_regime({"prefill_s": 0.300, "prefill_launch_s": 0.030}, True) == GPU_BOUND
    assert prefill_regime({"prefill_s": 0.004, "prefill_launch_s": 0.0}, True) == GRAPH_REPLAYED
    # an engine that does not launch its prefills from the host: its GPU time sets them
    assert prefill_regime({"prefill_s": 0.004, "prefill_launch_s": 0.0}, False) == GPU_BOUND
    # a decode phase has no prefill
    assert prefill_regime({"prefill_s": float("nan"), "prefill_launch_s": 0.0}, True) == GPU_BOUND


def test_the_validation_table_of_ttft_per_regime_leaves_speculative_rows_out():
    def point(regime, err, split="held-out", metric="ttft", spec=False, engine="cal"):
        return {"engine": engine, "metric": metric, "split": split, "prefill_regime": regime,
                "rel_error": err, "speculative": spec}
    points = pd.DataFrame([point(GPU_BOUND, 0.10), point(GPU_BOUND, -0.20), point(LAUNCH_BOUND, 0.40),
                           point(LAUNCH_BOUND, 0.90, spec=True), point(GPU_BOUND, 0.5, metric="decode_step"),
                           point(GPU_BOUND, 0.7, engine="roofline"), point(GPU_BOUND, 0.02, split="train")])
    table = regime_rows(points, "cal")
    by = {(r[0], r[1]): r for r in table["rows"]}
    assert set(by) == {("held-out", GPU_BOUND), ("held-out", LAUNCH_BOUND), ("train", GPU_BOUND)}
    assert float(by["held-out", GPU_BOUND][2]) == pytest.approx(15.0) and by["held-out", GPU_BOUND][5] == "2"
    assert float(by["held-out", LAUNCH_BOUND][2]) == pytest.approx(40.0) and by["held-out", LAUNCH_BOUND][5] == "1"
    assert regime_rows(points.drop(columns="prefill_regime"), "cal") == {"header": [], "rows": []}
