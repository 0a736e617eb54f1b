"""What sets a decode step: the regime of a prediction, and the validation's table of it."""

import pandas as pd
import pytest

from perfmodel.prediction import GPU_BOUND, HOST_BOUND, decode_regime
from perfmodel.validate.report_metrics import decode_regime_rows


def test_the_regime_of_a_decode_step():
    assert decode_regime({"itl_s": 0.020, "decode_host_s": 0.020}) == HOST_BOUND
    assert decode_regime({"itl_s": 0.020, "decode_host_s": 0.005}) == GPU_BOUND
    # an engine without a host floor, a prefill-only prediction, a speculative one (NaN floor)
    assert decode_regime({"itl_s": 0.020, "decode_host_s": 0.0}) == GPU_BOUND
    assert decode_regime({"ttft_s": 0.1}) == GPU_BOUND
    assert decode_regime({"itl_s": 0.020, "decode_host_s": float("nan")}) == GPU_BOUND


def test_the_validation_table_per_decode_regime():
    def point(regime, err, metric="decode_step", split="held-out", spec=False, engine="cal"):
        return {"engine": engine, "metric": metric, "split": split, "decode_regime": regime,
                "rel_error": err, "speculative": spec}
    points = pd.DataFrame([
        point(GPU_BOUND, 0.10), point(GPU_BOUND, -0.20), point(GPU_BOUND, -0.10, "throughput"),
        point(GPU_BOUND, 0.30, "throughput"), point(HOST_BOUND, -0.40), point(HOST_BOUND, 0.60, "throughput"),
        point(HOST_BOUND, 0.90, spec=True), point(GPU_BOUND, 0.7, engine="roofline"),
        point(GPU_BOUND, 0.5, "ttft"), point(GPU_BOUND, 0.02, split="train")])
    table = decode_regime_rows(points, "cal")
    by = {(r[0], r[1]): r for r in table["rows"]}
    assert set(by) == {("held-out", GPU_BOUND), ("held-out", HOST_BOUND), ("train", GPU_BOUND)}
    assert [float(v) for v in by["held-out", GPU_BOUND][2:6]] == pytest.approx([15.0, 20.0, 20.0, 30.0])
    assert by["held-out", GPU_BOUND][6] == "2" and by["held-out", HOST_BOUND][6] == "1"
    assert float(by["held-out", HOST_BOUND][2]) == pytest.approx(40.0)
    # no table without the column, or where every step is the GPU's (an engine without a floor)
    assert decode_regime_rows(points.drop(columns="decode_regime"), "cal") == {"header": [], "rows": []}
    assert decode_regime_rows(points[points["decode_regime"] == GPU_BOUND], "cal")["rows"] == []
