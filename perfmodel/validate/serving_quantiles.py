"""How sharply a measured inter-token-latency percentile is defined: its band in the client's gaps.

Under load the gaps a client sees between two outputs of a request have two modes: decode-only
steps (a few ms) and steps that also hold prompt tokens (tens of ms; with asynchronous
scheduling the long gap is the one before such a step, the host launching it). When the share
of gaps in the long mode is near 1 − q/100, the q-th percentile sits on the boundary between the
modes: a shift of a few percent of the gaps from one mode to the other moves it by a factor of
two or more, while the mean hardly moves. The engine's steps show it (OLMoE at 54 req/s: steps
holding prompts were 47% of the decodes' steps measured, 52% replayed, and the measured ITL p50
is 16 ms against a replayed 32 ms).

So a percentile is set beside its **band**: the measured distribution's percentiles q − w and
q + w (w = :data:`BAND_POINTS` points), from the client's own output times of every 16th
completed request (``<rows>-tokens.jsonl`` beside the rows,
:func:`perfmodel.measuring.vllm_serving.client_token_sample`; the gaps are those the row's
percentiles are computed from, a sample of them). A prediction inside the band differs from
the measurement by less than the measurement's own percentile moves when w percent of the gaps
change mode. The band is reported beside the error, not instead of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Half-width of a percentile's band, percentile points.
BAND_POINTS = 5.0


def client_gaps(sample: dict) -> np.ndarray:
    """The gaps (s) between consecutive outputs of each request of one row's client sample
    (the ``requests`` of a ``<rows>-tokens.jsonl`` line: [request, submitted_s, output_s,
    tokens]), all requests together."""
    gaps = [np.diff(np.asarray(request[2], dtype=float)) for request in sample.get("requests", [])
            if len(request[2]) > 1]
    return np.concatenate(gaps) if gaps else np.zeros(0)


def load_client_gaps(rows_path: Path) -> dict[str, np.ndarray]:
    """Point id → the client's gaps (s) of that run, for the rows of ``rows_path`` whose
    client sample is beside them (``<stem>-tokens.jsonl``); empty without one."""
    from perfmodel.measuring.vllm_serving import trace_path

    path = trace_path(Path(rows_path), "tokens")
    if not path.exists():
        return {}
    out: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            sample = json.loads(line)
            out[sample["point_id"]] = client_gaps(sample)
    return out


def band(gaps: np.ndarray, q: float, width: float = BAND_POINTS) -> tuple[float, float] | None:
    """The measured percentiles q − width and q + width of ``gaps`` (s; clipped to 0 and 100,
    linear interpolation as the rows' own percentiles), or None without gaps."""
    if len(gaps) == 0:
        return None
    lo, hi = np.percentile(gaps, [max(0.0, q - width), min(100.0, q + width)])
    return float(lo), float(hi)
