"""The host's speed as an input: the engine's host times on a faster or slower CPU.

A step the host paces (a graph-replayed decode step of many sequences, a prefill launched from
the host, an offline call admitting its requests) takes what the host takes, and the host's
speed is not fixed: on one lent machine a fixed pure-Python loop took 32 ms, then 70 ms seconds
later, and a host-paced decode step grew with it (``validate/results/h200-vllm-whatif.log``,
calls s13a–d). :func:`probe_ms` times that loop; every vLLM row records it before and after
its runs.

A profile's host times (``latency``: ``host_step_s``, ``host_seq_s``, ``eager_layer_s``,
``eager_step_s``, ``eager_seq_s``, ``uncompiled_op_s``, ``piecewise_layer_s``, ``request_s``,
``draft_pass_s``, ``expert_sync_s``, ``mla_split_layer_s``, ``launch_serial_s``,
``launch_serial_seq_s``, ``dense_layer_s``) hold on a host whose probe takes
``latency.host_probe_ref_ms``. On a host whose probe takes p_host ms each is multiplied by

    h = (p_host / p_ref) ** α_host

(:data:`HOST_FACTOR`), α_host = ``latency.host_speed_exponent``, fitted on the host-only steps
(:mod:`perfmodel.calibration.fit_host_speed`). The GPU's times do not change.
"""

from __future__ import annotations

import math
import numbers
import time
from functools import cache
from typing import TYPE_CHECKING, Callable

import sympy as sp

from perfmodel import symbols as s
from perfmodel.errors import InputError

if TYPE_CHECKING:
    from perfmodel.profile import EngineProfile

#: The factor a host time is multiplied by on a host whose probe takes p_host ms.
HOST_FACTOR: sp.Expr = (s.p_host / s.p_ref) ** s.alpha_host

#: The symbols of host time the factor multiplies (s each).
HOST_TIMES: tuple[sp.Symbol, ...] = (
    s.t_host_step, s.t_host_seq, s.t_eager_layer, s.t_eager_step, s.t_eager_seq, s.t_uncompiled,
    s.t_piece_layer, s.t_req, s.t_draft, s.t_sync, s.t_moe_host, s.t_mla_split, s.t_launch_serial,
    s.t_launch_serial_seq, s.t_dense_launch,
)

#: The profile's ``latency`` fields that hold those host times (s each).
HOST_LATENCY_FIELDS: tuple[str, ...] = (
    "host_step_s", "host_seq_s", "eager_layer_s", "eager_step_s", "eager_seq_s", "uncompiled_op_s",
    "piecewise_layer_s", "request_s", "draft_pass_s", "expert_sync_s", "mla_split_layer_s", "launch_serial_s",
    "launch_serial_seq_s", "dense_layer_s",
)


#: Iterations of :func:`probe_ms`'s pure-Python loop.
HOST_PROBE_LOOPS = 200_000


def probe_ms(loops: int = HOST_PROBE_LOOPS, repeats: int = 3) -> float:
    """The host's speed now: the best of ``repeats`` timings (ms) of a fixed pure-Python loop of
    dict and list work (the kind an engine's scheduler and output processing do per sequence)."""
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        table: dict[int, list[int]] = {}
        for i in range(int(loops)):
            table.setdefault(i & 1023, []).append(i)
            if len(table[i & 1023]) > 8:
                table[i & 1023].pop(0)
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


@cache
def _factor() -> Callable[[float, float, float], float]:
    return sp.lambdify((s.p_host, s.p_ref, s.alpha_host), HOST_FACTOR, "math")


#: The slowest host probe a prediction takes, ms (the lent hosts read 32–85 ms; a probe ten
#: seconds long is a typo, not a host).
MAX_PROBE_MS = 10_000.0


def check_probe(value: float | None) -> float | None:
    """A host probe time (ms) as a float, or None; InputError on anything else."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not 0 < value <= MAX_PROBE_MS):
        raise InputError(f"host_probe_ms must be a number of milliseconds above 0 and at most "
                         f"{MAX_PROBE_MS:,.0f}, got {value!r}")
    return float(value)


def host_factor(profile: EngineProfile, probe: float | None) -> float:
    """:data:`HOST_FACTOR` for a host whose probe takes ``probe`` ms under ``profile`` (1.0 for
    None: the host the profile was fitted on). InputError when the profile has no reference."""
    if probe is None:
        return 1.0
    ref, alpha = profile.latency.host_probe_ref_ms, profile.latency.host_speed_exponent
    if ref is None or alpha is None:
        raise InputError(f"profile '{profile.name}' has no host-speed fit (latency.host_probe_ref_ms "
                         "and host_speed_exponent): drop the host probe time")
    return factor_at(probe, ref, alpha)


def factor_at(probe: float | None, ref: float | None, alpha: float | None) -> float:
    """:data:`HOST_FACTOR` at a probe time ``probe`` (ms), reference ``ref`` (ms) and exponent
    ``alpha``; 1.0 where any is None (no probe, or no host-speed fit to scale by)."""
    if probe is None or ref is None or alpha is None:
        return 1.0
    return float(_factor()(probe, ref, alpha))


def row_probe_ms(row: dict) -> float | None:
    """A measured row's host probe time (ms): the mean of those taken before and after its runs
    (``host_probe_ms``), None when it has none. A serving row's ``host_run`` is read by
    :func:`row_host_ms`, not here."""
    probes = row.get("host_probe_ms")
    if not isinstance(probes, list) or not probes:
        return None
    values = [float(p) for p in probes if isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0]
    return sum(values) / len(values) if values else None


def row_host_ms(row: dict) -> float | None:
    """The host's speed over a measured row (ms, probe-equivalent): a serving row's samples taken
    all through its rate (``host_run``'s ``mean_ms``, :func:`perfmodel.host_trace.run_summary`:
    the time of a fixed piece of work averaged over the run) where it has them, else the probes
    before and after it (:func:`row_probe_ms`); None with neither.

    A serving replay takes this: the lent hosts switch between a fast and a slow state within
    seconds (:mod:`perfmodel.host_trace`), so two probes around a 30-second rate can both land in
    a state the engine spent little of the rate in. Over the 48 serving runs first measured with
    the host sampled (``-hostrun``, ``-lengths``, ``-models``, ``-quant`` in ``validate/results``),
    the launched steps' measured time over the model's spread by a standard deviation of 0.12 in
    log at the run's mean against 0.17 at its probes; over 15 runs measured afterwards
    (``-interleaved``), 0.19 against 0.22 (docs/serving.md, "The host sampled all through a rate")."""
    return row_host(row)[0]


def row_host(row: dict) -> tuple[float | None, str | None]:
    """:func:`row_host_ms` and where it comes from: ``"sampled"`` (``host_run``), ``"probes"``
    (``host_probe_ms``) or None."""
    summary = row.get("host_run")
    mean = summary.get("mean_ms") if isinstance(summary, dict) else None
    if isinstance(mean, (int, float)) and not isinstance(mean, bool) and math.isfinite(mean) and mean > 0:
        return float(mean), "sampled"
    probes = row_probe_ms(row)
    return (probes, "probes") if probes is not None else (None, None)
