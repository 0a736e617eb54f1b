"""The measured band of an ITL percentile, from the client's output times of a sample of requests."""

import json

import numpy as np
import pytest

from perfmodel.validate import serving as sv
from perfmodel.validate.serving_quantiles import band, client_gaps, load_client_gaps


def _sample(point_id, outputs):
    return {"point_id": point_id, "every": 16, "columns": ["request", "submitted_s", "output_s", "tokens"],
            "requests": [[i, 0.0, list(times), [1] * len(times)] for i, times in enumerate(outputs)]}


def test_client_gaps_are_the_differences_of_each_requests_output_times():
    gaps = client_gaps(_sample("p", [[0.1, 0.2, 0.5], [1.0], [2.0, 2.01]]))
    assert gaps == pytest.approx([0.1, 0.3, 0.01])  # a request with one output has no gap


def test_a_two_moded_distribution_gives_a_wide_band_at_its_boundary():
    # 48% of gaps long (40 ms), 52% short (15 ms): the median sits at the boundary
    gaps = np.r_[np.full(52, 0.015), np.full(48, 0.040)]
    lo, hi = band(gaps, 50.0)
    assert lo == pytest.approx(0.015) and hi == pytest.approx(0.040)
    lo90, hi90 = band(gaps, 90.0)
    assert lo90 == hi90 == pytest.approx(0.040)  # deep inside the long mode: a sharp percentile
    assert band(np.zeros(0), 50.0) is None


def test_the_tokens_file_beside_the_rows_is_read(tmp_path):
    rows = tmp_path / "r.jsonl"
    rows.write_text("")
    assert load_client_gaps(rows) == {}
    (tmp_path / "r-tokens.jsonl").write_text(json.dumps(_sample("a", [[0.0, 0.02, 0.05]])) + "\n")
    assert load_client_gaps(rows)["a"] == pytest.approx([0.02, 0.03])


def test_compare_serving_marks_whether_a_replayed_percentile_is_inside_its_band(monkeypatch):
    from tests.test_validate_serving import _per_request, _row

    monkeypatch.setattr(sv, "predict_row", lambda row, gpu: {
        "ttft_s": {"p50": 0.1, "p90": 0.2}, "itl_s": {"p50": 0.030, "p90": 0.041, "mean": 0.027},
        "output_tok_s": 100.0, "submitted": 10, "completed": 10, "aborted": 0,
        "per_request": {"submitted_s": [0.1 * i for i in range(10)], "ttft_s": [0.1] * 10, "e2e_s": [1.0] * 10,
                        "output_tokens": [8] * 10}, "kv_tokens": 1000, "saturation_rate_per_replica": 5.0})
    row = _row(2.0, achieved=2.0, served=100.0, per_request=_per_request(10, 2.0, lambda i: 100.0))
    gaps = np.r_[np.full(52, 0.015), np.full(48, 0.040)]
    result = sv.compare_serving([row], client_gaps={row["point_id"]: gaps})
    by = {p["metric"]: p for p in result["points"]}
    assert by["itl_p50"]["in_band"] is True and by["itl_p50"]["band"] == pytest.approx((0.015, 0.040))
    assert by["itl_p90"]["in_band"] is False  # 41 ms against a band of 40–40 ms
    assert "band" not in by["itl_mean"] and "band" not in by["ttft_p50"]
    assert "1 of 2 replayed ITL percentiles lie inside it" in sv.band_summary(result["points"])
    assert "(inside)" in sv.band_text(by["itl_p50"])
    # without a client sample there is no band, and no sentence about one
    plain = sv.compare_serving([row])
    assert all("band" not in p for p in plain["points"]) and sv.band_summary(plain["points"]) == ""
