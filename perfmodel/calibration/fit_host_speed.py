"""How the engine's host times follow the host's speed: ``latency.host_probe_ref_ms`` and
``latency.host_speed_exponent`` of a vllm profile (:mod:`perfmodel.host_speed`).

The rows: vLLM runs of a model cut to one layer (``layers`` = 1), whose GPU step is far below
the host's, so that a decode step is the host's time alone, with the engine core in this
process, and with the host's probe time measured before and after their runs
(``host_probe_ms``) no more than :data:`STABLE_RATIO` apart (a host that changed speed within a
point's runs gives no single speed to read the step against). Each engine measured its points
several times over (``--passes``), so one batch is seen at several host speeds.

The fit: least squares on log ITL = log(a + B·b) + α·log(p), p the mean of the row's two probe
times, a, b, α free (the host's time per step and per sequence at a probe of 1 ms, and the
elasticity α). α is ``host_speed_exponent``. The reference, ``host_probe_ref_ms``, is the median
probe time of the training rows that have one (in-process rows of the training models as built
among the rows the end-to-end fit reads, and the rows α is fitted on): the profile's host times
are fitted with rows without a probe taken at that speed, a typical state of the lent machines.
Rows of held-out models, variants and the training models' held-out rows (the what-if file) do
not move it.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection
from typing import Any

import numpy as np

from perfmodel.host_speed import row_probe_ms

#: Largest ratio of a row's two probe times for it to count as run at one host speed.
STABLE_RATIO = 1.25


def _in_process(row: dict[str, Any]) -> bool:
    from perfmodel.measuring.compare import row_engine_process

    return not row_engine_process(row)


def host_only_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the exponent is fitted on (see the module docstring), every pass of each point."""
    out = []
    for row in rows:
        probes = row.get("host_probe_ms") or []
        if (row.get("status") == "ok" and row.get("layers") == 1 and row.get("output_len", 0) > 1
                and row.get("itl_ms") and len(probes) == 2 and min(probes) > 0
                and max(probes) / min(probes) <= STABLE_RATIO and _in_process(row)):
            out.append(row)
    return out


def reference_rows(rows: list[dict[str, Any]], train: Collection[str],
                   chosen: list[dict[str, Any]], chunk: int | None = None) -> list[dict[str, Any]]:
    """The rows whose median probe is the reference: the in-process ok rows with a probe of a
    training model as built (``train``, unquantized, the KV cache at the model's dtype: the rows
    that fit the host's terms, which each scheme's fit then holds fixed; under an engine that
    chunks prefills into ``chunk`` tokens, those the end-to-end fit takes:
    :func:`perfmodel.calibration.fit.rides_chunks`), and the host-only rows ``chosen`` (variants:
    one layer)."""
    from perfmodel.calibration.fit import rides_chunks
    from perfmodel.measuring.compare import is_variant, row_kv_dtype, row_quant

    return [r for r in rows if r.get("status") == "ok" and _in_process(r) and row_probe_ms(r) is not None
            and r.get("model") in train and not is_variant(r) and row_quant(r) is None
            and row_kv_dtype(r) is None
            and not rides_chunks(r, chunk)] + list(chosen)


def fit_host_speed(rows: list[dict[str, Any]], train: Collection[str],
                   fitted: list[dict[str, Any]] | None = None,
                   chunk: int | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """``{"host_probe_ref_ms", "host_speed_exponent", "record"}`` from every measured row
    (all passes), the training models being ``train``, and the point ids the exponent was fitted
    on; (None, []) with fewer than five host-only rows or fewer than two batch sizes among them.
    ``fitted``: the rows the end-to-end fit reads (default ``rows``), whose training rows set the
    reference beside the host-only rows; ``chunk``: the engine's prefill chunk (tokens), as the
    end-to-end fit takes rows (:func:`reference_rows`)."""
    from scipy.optimize import least_squares

    chosen = host_only_rows(rows)
    batches = np.array([float(r["batch"]) for r in chosen])
    if len(chosen) < 5 or len(set(batches)) < 2:
        return None, []
    itl = np.array([r["itl_ms"] * 1e-3 for r in chosen])
    probe = np.array([row_probe_ms(r) for r in chosen])

    def residuals(x: np.ndarray) -> np.ndarray:
        log_a, log_b, alpha = x
        return np.log(np.exp(log_a) + batches * np.exp(log_b)) + alpha * np.log(probe) - np.log(itl)

    fit = least_squares(residuals, x0=[np.log(1e-3), np.log(1e-5), 0.5], bounds=([-20, -25, 0], [0, 0, 2]))
    alpha = float(fit.x[2])
    probed = [row_probe_ms(r) for r in reference_rows(rows if fitted is None else fitted, train, chosen, chunk)]
    reference = float(statistics.median(probed))
    without = least_squares(lambda x: residuals(np.array([x[0], x[1], 0.0])), x0=fit.x[:2],
                            bounds=([-20, -25], [0, 0]))
    spread = {name: round(float(np.mean(np.abs(np.expm1(r)))) * 100, 1)
              for name, r in (("with", fit.fun), ("without", without.fun))}
    record = {
        "rows": len(chosen), "batches": sorted({int(b) for b in batches}),
        "probe_ms_range": [round(float(probe.min()), 1), round(float(probe.max()), 1)],
        "reference_rows": len(probed),
        "mape_pct": {"with_probe": spread["with"], "without_probe": spread["without"]},
        "source": ("least squares on log ITL = log(a + B*b) + alpha*log(probe) over the in-process rows "
                   f"of models cut to one layer whose two probe times lie within {STABLE_RATIO}x; "
                   "host_probe_ref_ms: the median probe of the in-process training rows with one (the "
                   "training models as built in the end-to-end fit's file, and these rows)"),
    }
    values = {"host_probe_ref_ms": round(reference, 2), "host_speed_exponent": round(alpha, 3),
              "record": record}
    return values, sorted({r["point_id"] for r in chosen})
