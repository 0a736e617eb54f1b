"""The accuracy figures written by hand read as the committed profiles and validation reports do.

"How accurate" is written by hand. Each regime row of its table (point count, MAPE and band) must
be the H200 vllm profile's ``fit.residuals['band points']`` entry, rounded as printed, and each
vLLM verdict it states (per GPU, and each GPU's fit carried to the other) the three MAPEs of the
committed report's verdict line; its H200 serving figures the profile's serving_error_band; and
each row of docs/accuracy.md's table of how each scheme takes the band its profile's check of
that scheme (points, within or not, ITL p90), so that a
refit or a regenerated report that moves them fails here until the page says what they now say.
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


VERDICT = re.compile(r"Decode step \(ITL\) (?P<itl>[\d.]+)%.*?TTFT (?P<ttft>[\d.]+)%.*?Throughput (?P<thr>[\d.]+)%")

# committed validation report -> how the README's "How accurate" prints its verdict's three MAPEs
VERDICTS = {
    "h200-vllm-validation.md": "**PASS, ITL {itl}%, TTFT {ttft}%, throughput {thr}% over",
    "h100-vllm-validation.md": "**PASS, ITL {itl}%, TTFT {ttft}%, throughput {thr}%**",
    "h100-vllm-transfer-validation.md": "**ITL {itl}%, TTFT {ttft}%, throughput {thr}%**",
    "h200-vllm-transfer-validation.md": "**{itl} / {ttft} / {thr}%**",
}


@pytest.mark.parametrize("report", sorted(VERDICTS))
def test_the_readme_states_each_vllm_verdict_as_its_report_does(report):
    text = (ROOT / "validate" / "results" / report).read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("Verdict: PASS")), None)
    assert line is not None, f"{report}: no PASS verdict line"
    match = VERDICT.search(line)
    assert match, f"{report}: verdict line without the three MAPEs: {line[:200]}"
    readme = " ".join((ROOT / "README.md").read_text().split())
    expected = VERDICTS[report].format(**match.groupdict())
    assert expected in readme, f"README does not state {report}'s verdict as {expected!r}"


# docs/accuracy.md's table of how each scheme takes the band: row prefix -> (profile GPU, residuals key, name)
SCHEME_ROWS = {
    "| H200 | fp8 W8A8": ("h200-sxm", "quantization", "fp8"),
    "| H200 | int4 weight-only": ("h200-sxm", "quantization", "w4a16"),
    "| H200 | fp8 in 128×128 blocks": ("h200-sxm", "quantization", "fp8-block"),
    "| H200 | MXFP4 experts": ("h200-sxm", "quantization", "mxfp4-moe"),
    "| H200 | MXFP4 on Marlin": ("h200-sxm", "quantization", "mxfp4-moe-marlin"),
    "| H200 | int8 weight-only experts": ("h200-sxm", "quantization", "w8a16-experts"),
    "| H200 | fp8 KV cache": ("h200-sxm", "kv_cache", "fp8"),
    "| H100 | fp8 W8A8": ("h100-sxm", "quantization", "fp8"),
    "| H100 | fp8 in 128×128 blocks": ("h100-sxm", "quantization", "fp8-block"),
    "| H100 | MXFP4 experts": ("h100-sxm", "quantization", "mxfp4-moe"),
}


@pytest.mark.parametrize("prefix", sorted(SCHEME_ROWS))
def test_the_scheme_band_table_reads_as_the_profiles_check(prefix):
    gpu, kind, name = SCHEME_ROWS[prefix]
    lines = [ln for ln in (ROOT / "docs" / "accuracy.md").read_text().splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, f"docs/accuracy.md: {len(lines)} rows start {prefix!r}"
    cells = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    profile = yaml.safe_load((ROOT / "calibration" / "profiles" / f"{gpu}-vllm.yaml").read_text())
    check = profile["fit"]["residuals"][kind][name]
    assert int(cells[2]) == check["points"], f"{prefix}: {cells[2]} points, the profile has {check['points']}"
    assert cells[3].startswith("yes" if check["within"] else "no"), f"{prefix}: within is {check['within']}"
    itl = float(cells[4].split("%")[0])
    assert itl == round(check["p90_abs_pct"]["decode_step GPU-bound"], 1), f"{prefix}: ITL p90 {itl}%"


def _pct(fraction: float, decimals: int = 0) -> str:
    return f"{100 * fraction:.{decimals}f}%"


def test_the_readme_states_the_h200_serving_accuracy_as_the_profile_records_it():
    """The serving figures `plan` stands on: the share of held-out runs within each target and
    the band (the H200 vllm profile's serving_error_band), as the README's Serving bullet gives them."""
    serving = yaml.safe_load(PROFILE.read_text())["serving_error_band"]
    within = serving["accuracy"]["within_target"]
    expected = (
        f"On the H200 ({serving['runs']} such runs of seven models): served tokens/s within 10% in "
        f"{_pct(within['served_tok_s'])} of them, ITL p50 within 15% in {_pct(within['itl_p50'])}, ITL p90 in "
        f"{_pct(within['itl_p90'])}, TTFT p50 in {_pct(within['ttft_p50'])}, TTFT p90 in "
        f"{_pct(within['ttft_p90'])}; band TTFT p50 ±{_pct(serving['ttft_p50'])}, p90 ±{_pct(serving['ttft_p90'])}, "
        f"ITL p50 ±{_pct(serving['itl_p50'], 1)}, p90 ±{_pct(serving['itl_p90'])}.")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert expected in readme, f"README's H200 serving figures should read: {expected}"


def test_the_readme_states_a_dense_plans_serving_band_as_the_h100_profile_records_it():
    """The serving band a dense model's plan takes on the H100: the dense models' runs checked
    against the MoE models' band (serving_error_band.dense), their own 90th percentile where wider."""
    serving = yaml.safe_load((PROFILE.parent / "h100-sxm-vllm.yaml").read_text())["serving_error_band"]
    dense = serving["dense"]
    assert dense["own_band"] and not dense["within"]
    ttft, itl = (max(serving[m], dense["errors"][m]) for m in ("ttft_p50", "itl_p50"))
    expected = f"takes their own 90th percentile, TTFT p50 ±{_pct(ttft)} and ITL p50 ±{_pct(itl)}, and"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert expected in readme, f"README's dense serving band should read: {expected}"
