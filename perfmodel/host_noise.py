"""The host's jitter: how the host time of a launched step varies within a serving run.

A step the engine launches from the host (a prompt beyond its largest CUDA graph) takes the
host's time for it, and on the lent H200 that time is not the same from one launch to the next
at a fixed host speed: within one serving run, the gap a launch holds the outputs of the step
before it (:mod:`perfmodel.measuring.step_compare`) spreads about the model's by a factor of
0.81–1.29 (10th–90th percentile, 55 runs of six models), and two launches close in time are
alike (the correlation of their log times is about 0.6 within 0.1 s, 0.25 at 1–2 s, under 0.1
beyond 4 s). The spread sets the tail of TTFT and ITL that a replay at one host time per run misses.

The model of it: the log of a launched step's host time over the model's is the sum of three
independent Gaussian parts, z_w + z_f(t) + z_s(t):

- z_w, drawn anew at each launch (sd σ_w);
- z_f and z_s, each an Ornstein–Uhlenbeck process in time (stationary sd σ_f, σ_s; correlation
  e^(−Δt/τ) between two launches Δt apart), a fast and a slow one. From one launch to the
  next, Δt later, each moves exactly as :func:`ou_step` says.

So two launches Δt > 0 apart have log host times of covariance :data:`COVARIANCE`, and one
launch's log host time has variance :data:`VARIANCE`; less the mean of a run T_run long (which
the host's speed as a whole stands for, :mod:`perfmodel.host_speed`), both lose the variance of
that mean (:data:`CENTERED_COVARIANCE`, :data:`CENTERED_VARIANCE`). The factor e^z has median 1: the model's
host times are fitted on the medians of repeated launches, and stay the median. The profile
holds the five parameters (``latency.launch_noise``, fitted by
:mod:`perfmodel.calibration.fit_launch_noise`); the serving simulation draws a factor for each
launched step (:class:`HostNoise`), seeded, so a replay is repeatable, about the run's own
level. The closed form of steady serving (:mod:`perfmodel.planning.serving`) keeps each launch at
the model's time, the median: taken at its mean, e^(VARIANCE/2) (×1.024 on the H200 fit), it put
the closed-form saturation 2–3% lower, further from three of the four measured capacities it is
checked on. Times in seconds.
"""

from __future__ import annotations

import math
from functools import cache
from statistics import NormalDist
from typing import TYPE_CHECKING, Callable

import numpy as np
import sympy as sp

from perfmodel import symbols as s

if TYPE_CHECKING:
    from perfmodel.profile import LaunchNoise

#: Spacing (s) of the grid a run's drifting parts are laid out on.
GRID_S = 0.005
#: The longest stretch of a run (s) its drifting parts are laid out over: a longer run (a low
#: arrival rate) reuses the stretch from its start, as a path many correlation times long is
#: as likely one stretch as another (720,000 grid points).
MAX_LAYOUT_S = 3600.0
#: Covariance of the log host times of two launches Δt > 0 apart.
COVARIANCE: sp.Expr = s.sigma_f**2 * sp.exp(-s.lag / s.tau_f) + s.sigma_s**2 * sp.exp(-s.lag / s.tau_s)
#: Variance of one launch's log host time.
VARIANCE: sp.Expr = s.sigma_w**2 + s.sigma_f**2 + s.sigma_s**2


def mean_variance(sigma: sp.Symbol, tau: sp.Symbol) -> sp.Expr:
    """Variance of a drifting part's mean over a run of T_run seconds:
    σ²·(2τ/T)·(1 − (τ/T)(1 − e^(−T/τ)))."""
    return sigma**2 * 2 * tau / s.T_run * (1 - tau / s.T_run * (1 - sp.exp(-s.T_run / tau)))


#: What a run's mean takes from the variance (the launches' own parts average out).
RUN_MEAN_VARIANCE: sp.Expr = mean_variance(s.sigma_f, s.tau_f) + mean_variance(s.sigma_s, s.tau_s)
#: Covariance of two launches Δt > 0 apart, each less its run's mean (as the fit measures them).
CENTERED_COVARIANCE: sp.Expr = COVARIANCE - RUN_MEAN_VARIANCE
#: Variance of one launch's log host time less its run's mean.
CENTERED_VARIANCE: sp.Expr = VARIANCE - RUN_MEAN_VARIANCE


def ou_step(sigma: sp.Symbol, tau: sp.Symbol) -> sp.Expr:
    """A drifting part's value Δt after it was z: the exact Ornstein–Uhlenbeck update
    z·e^(−Δt/τ) + σ·√(1 − e^(−2Δt/τ))·ε, ε a standard normal draw."""
    decay = sp.exp(-s.lag / tau)
    return s.z_launch * decay + sigma * sp.sqrt(1 - decay**2) * s.eps_launch


@cache
def _ou_coefficients() -> Callable[..., tuple[float, float]]:
    """(decay, scale) of :func:`ou_step` as a function of (Δt, σ, τ): the drifting part Δt on
    is decay·z + scale·ε."""
    sigma, tau = sp.Symbol("sigma", nonnegative=True), sp.Symbol("tau", positive=True)
    step = ou_step(sigma, tau)
    return sp.lambdify((s.lag, sigma, tau), (sp.diff(step, s.z_launch), sp.diff(step, s.eps_launch)), "math")


def ou_path(points: int, step_s: float, sigma: float, tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """A drifting part at ``points`` times ``step_s`` apart, from its stationary distribution."""
    decay, scale = _ou_coefficients()(step_s, sigma, tau_s)
    start = float(rng.standard_normal()) * sigma
    return first_order_recursion(scale * rng.standard_normal(points), decay, start)


#: Samples per block of :func:`first_order_recursion`.
_BLOCK = 128


def first_order_recursion(x: np.ndarray, a: float, y_before: float) -> np.ndarray:
    """y[n] = a·y[n − 1] + x[n], with y[−1] = ``y_before`` (0 ≤ a ≤ 1), as scipy's
    ``lfilter([1], [1, −a], x, zi=[a·y_before])`` gives it, without importing scipy.signal (0.6 s).
    In blocks of :data:`_BLOCK` samples: each block's response from rest, a matrix product with the
    powers a^(i − j), j ≤ i, plus a^(i + 1) times the last value of the block before."""
    n = len(x)
    blocks = -(-n // _BLOCK)
    padded = np.zeros(blocks * _BLOCK)
    padded[:n] = x
    lags = np.arange(_BLOCK)
    powers = np.where(lags[:, None] >= lags[None, :], float(a) ** np.maximum(lags[:, None] - lags[None, :], 0), 0.0)
    rest = padded.reshape(blocks, _BLOCK) @ powers.T
    carry_in = float(a) ** (lags + 1)
    out, last = np.empty_like(rest), float(y_before)
    for b in range(blocks):
        out[b] = rest[b] + carry_in * last
        last = out[b, -1]
    return out.reshape(-1)[:n]


def parameters(noise: LaunchNoise) -> dict[sp.Symbol, float]:
    """The noise's five parameters by their symbols."""
    return {s.sigma_w: noise.sigma_white, s.sigma_f: noise.sigma_fast, s.tau_f: noise.tau_fast_s,
            s.sigma_s: noise.sigma_slow, s.tau_s: noise.tau_slow_s}


def factor_range(noise: LaunchNoise, q: float = 0.9) -> tuple[float, float]:
    """The (1 − q) and q quantiles of one launch's factor e^z, z normal of :data:`VARIANCE`."""
    sd = math.sqrt(float(VARIANCE.subs(parameters(noise))))
    z = NormalDist().inv_cdf(q)
    return math.exp(-z * sd), math.exp(z * sd)


@cache
def centered_fn() -> Callable[..., np.ndarray]:
    """:data:`CENTERED_COVARIANCE` (Δt > 0) and :data:`CENTERED_VARIANCE` (Δt = 0) as one numpy
    function of (Δt, σ_w, σ_f, τ_f, σ_s, τ_s, T_run)."""
    args = (s.lag, s.sigma_w, s.sigma_f, s.tau_f, s.sigma_s, s.tau_s, s.T_run)
    cov = sp.lambdify(args, CENTERED_COVARIANCE, "numpy")
    var = sp.lambdify(args, CENTERED_VARIANCE, "numpy")

    def both(lag, *params):
        lag = np.asarray(lag, dtype=float)
        return np.where(lag > 0, cov(lag, *params), var(lag, *params))

    return both


class HostNoise:
    """Draws the factor each launched step's host time is multiplied by (see the module), over a
    run of ``span_s`` seconds, from a ``seed``. The drifting parts are laid out in advance on a
    grid of :data:`GRID_S` and taken less their mean over the run: the fit measures the noise
    about each run's own level (:mod:`perfmodel.calibration.fit_launch_noise`), which the host's
    speed sets (:mod:`perfmodel.host_speed`). A launch after ``span_s`` takes the grid's last value;
    a run longer than :data:`MAX_LAYOUT_S` is laid out over that much and reuses it."""

    def __init__(self, noise: LaunchNoise, span_s: float, seed: int = 0):
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self._repeats = span_s > MAX_LAYOUT_S
        points = int(math.ceil(min(max(span_s, GRID_S), MAX_LAYOUT_S) / GRID_S)) + 1
        drift = (ou_path(points, GRID_S, noise.sigma_fast, noise.tau_fast_s, self._rng)
                 + ou_path(points, GRID_S, noise.sigma_slow, noise.tau_slow_s, self._rng))
        self._drift = (drift - drift.mean()).tolist()

    def factor(self, t: float) -> float:
        """The factor (dimensionless, median 1 over a run) of a launch at time ``t`` (s)."""
        k = max(int(t / GRID_S), 0)
        k = k % len(self._drift) if self._repeats else min(k, len(self._drift) - 1)
        return math.exp(self._drift[k] + self.noise.sigma_white * float(self._rng.standard_normal()))
