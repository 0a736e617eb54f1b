"""Verdicts: does a predicted change reproduce a claimed one?

For one value v (%) against a claim [low, high] (%) with tolerance t (percentage points):

- **reproduced**: low − t ≤ v ≤ high + t, and v has the claimed sign when the range excludes
  zero (a range that holds zero, "flat to +15%", takes either sign within the tolerance);
- **size off**: outside that band, with the claimed sign (or a flat claim missed);
- **sign wrong**: outside it, with the other sign.

Beside the paper, the model is judged against our own measurements of the same comparison:
at each measured pair its change for exactly those two points against the measured change, in
percentage points. The effect **tracks** the measurement when every pair is within the
tolerance, **partly** when some are, **off** when none are (:func:`judge_tracking`).

A claim with a sign but no size is reproduced when v has that sign. A claim over several points
(``statistic: each``) takes the worst verdict of its points; ``mean``/``max``/``min`` judge one
reduced value. An effect takes the worst verdict of its claims, or **not expressible** when the
paper leaves out a parameter it depends on (its claims are then judged at an assumption).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from perfmodel.validate.paper.effects import Claim

REPRODUCED = "reproduced"
SIZE_OFF = "size off"
SIGN_WRONG = "sign wrong"
NOT_EXPRESSIBLE = "not expressible"
NO_VALUE = "no value"
TRACKS = "tracks"
PARTLY = "partly"
OFF = "off"
#: Worst last.
SEVERITY = (REPRODUCED, SIZE_OFF, SIGN_WRONG)


def judge_value(value: float, claim: Claim, tolerance: float) -> str:
    """The verdict for one predicted value (%) against ``claim`` (see the module)."""
    sign = claim.sign
    if claim.low is None and claim.high is None:
        return REPRODUCED if value * sign > 0 else SIGN_WRONG
    low = -math.inf if claim.low is None else claim.low
    high = math.inf if claim.high is None else claim.high
    excludes_zero = low > 0 or high < 0
    if low - tolerance <= value <= high + tolerance and not (excludes_zero and value * sign <= 0):
        return REPRODUCED
    if sign == 0 or value * sign > 0:
        return SIZE_OFF
    return SIGN_WRONG


def reduce(values: Sequence[float], statistic: str) -> list[float]:
    """The values a claim is judged on: all of them (``each``) or their mean, max or min."""
    if statistic == "each" or not values:
        return list(values)
    fn = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[statistic]
    return [float(fn(values))]


def worst(verdicts: Sequence[str]) -> str:
    """The most severe of some verdicts (reproduced < size off < sign wrong)."""
    judged = [v for v in verdicts if v in SEVERITY]
    return max(judged, key=SEVERITY.index) if judged else NO_VALUE


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim judged: the values it was judged on (%), their verdict, how many points."""

    claim: Claim
    values: tuple[float, ...]
    verdict: str
    points: int

    @property
    def shown(self) -> str:
        """The judged value(s) as text: ``+34%`` or ``+34…+56%``."""
        if not self.values:
            return "–"
        return pct_range(self.values)


def pct(value: float) -> str:
    """A change in % with its sign: ``+34%``, ``−0.4%`` below 1% (a true minus sign)."""
    return (f"{value:+.1f}%" if abs(value) < 1 else f"{value:+.0f}%").replace("-", "−")


def pct_range(values: Sequence[float]) -> str:
    """Changes in %: ``+34%``, or ``+34…+56%`` when they differ."""
    if not values:
        return "–"
    lo, hi = pct(min(values)), pct(max(values))
    return lo if lo == hi else f"{lo.removesuffix('%')}…{hi}"


def judge_claim(claim: Claim, values: Sequence[float], tolerance: float) -> ClaimVerdict:
    """Judge a claim on the values of its points (%), reduced by its statistic."""
    judged = reduce([float(v) for v in values if v == v], claim.statistic)
    verdict = worst([judge_value(v, claim, tolerance) for v in judged])
    return ClaimVerdict(claim, tuple(judged), verdict, len(values))


def effect_verdict(claims: Sequence[ClaimVerdict], missing: str | None = None) -> str:
    """An effect's verdict: the worst of its claims', or not expressible when a parameter the
    effect depends on is missing from the paper."""
    if missing:
        return NOT_EXPRESSIBLE
    return worst([c.verdict for c in claims])


@dataclass(frozen=True)
class Tracking:
    """The model against our measurements of one effect: its gap to the measured change at each
    measured pair (percentage points), and the verdict (:func:`judge_tracking`)."""

    gaps: tuple[float, ...]
    tolerance: float
    verdict: str

    @property
    def within(self) -> int:
        """How many pairs are within the tolerance."""
        return sum(g <= self.tolerance for g in self.gaps)

    @property
    def shown(self) -> str:
        """``tracks: 6 of 6 pairs within ±10 pp`` or ``off: 0 of 4 within ±10 pp (largest 53 pp)``;
        ``–`` without pairs."""
        if not self.gaps:
            return "–"
        pairs = f"{len(self.gaps)} pair{'s' if len(self.gaps) != 1 else ''}"
        text = f"{self.verdict}: {self.within} of {pairs} within ±{self.tolerance:g} pp"
        return text if self.verdict == TRACKS else f"{text} (largest {max(self.gaps):.0f} pp)"


def judge_tracking(predicted: Sequence[float], measured: Sequence[float], tolerance: float) -> Tracking:
    """The model's changes against the measured ones at the same pairs (%): tracks, partly, off
    (see the module); no verdict without pairs."""
    gaps = tuple(abs(p - m) for p, m in zip(predicted, measured))
    within = sum(g <= tolerance for g in gaps)
    verdict = NO_VALUE if not gaps else TRACKS if within == len(gaps) else PARTLY if within else OFF
    return Tracking(gaps, tolerance, verdict)
