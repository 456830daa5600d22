"""Drift watch: are the normal cubes on the line still the normal cubes a model was calibrated
on? Two running comparisons against the calibration, with bounds taken from it alone (no label),
chosen so that a line that never changes is called drifting within ``horizon`` cubes with
probability at most ``alpha`` (a union bound over every test in that run, half of ``alpha``
for each comparison; conservative, never optimistic):

- **Alarms**: how many of the last ``window`` cubes were flagged. The threshold flags ``k`` of
  the ``n`` normal val scores, so a new normal cube is flagged at the rate ``(k + 1) / (n + 1)``
  on average (the rank of an exchangeable score among them), and the number of ``m`` new
  normal cubes flagged is beta-binomial ``(m, k + 1, n - k)``: the rate itself is uncertain
  when ``n`` is small (30 val cubes pin it down loosely), and a binomial at the mean rate
  would cry drift on a quiet line whose threshold happens to sit low. The bound is the count
  that distribution reaches with probability at most ``alpha / 2 / horizon``. This moves first
  when normal cubes begin to look anomalous.
- **Scores**: the two-sample Kolmogorov-Smirnov statistic between the last ``window`` scores
  judged normal and the calibration's scores below the threshold (both on the same side of
  the cut). The calibration is one fixed sample, tested against again and again, so its bound
  is the sum of two one-sample bounds (exact, `scipy.stats.kstwo`): how far the calibration's
  distribution may lie from the truth (probability ``alpha / 4``, once), plus how far a window
  may (``alpha / 4 / horizon`` per window). This moves when normal scores creep up before they
  cross the threshold; with 30 val cubes it sees only a gross shift, and more tighten it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from specad.errors import SpecadError
from specad.metrics.measures import is_anomalous

WINDOW = 50
"""Recent cubes each comparison looks at."""
HORIZON = 1000
"""Cubes of an unchanged line over which a false drift is unlikely (``ALPHA``)."""
ALPHA = 0.01
"""Chance that an unchanged line is called drifting within ``HORIZON`` cubes, at most."""


class CalibrationLike(Protocol):
    """What a detector's ``calibration_`` (`specad.models.base.Calibration`) offers here."""

    @property
    def val_scores(self) -> Sequence[float]: ...
    @property
    def threshold(self) -> float | None: ...


@dataclasses.dataclass(frozen=True)
class DriftState:
    """Where the line stands, for a metrics endpoint (`dataclasses.asdict` gives JSON)."""

    seen: int
    """Scores observed."""
    alarm_rate: float
    """Share of all observed cubes flagged (anomalies included: nothing here knows which)."""
    calibrated_rate: float
    """The rate at which the threshold flags normal cubes, from the calibration: (k + 1) /
    (n + 1) where it flags k of n val scores."""
    window_alarms: int
    """Cubes flagged among the last ``window``."""
    alarm_bound: int
    """``window_alarms`` at or above this is drift."""
    score_statistic: float
    """KS statistic of the recent scores judged normal against the calibration's (0 until the
    window is full)."""
    score_bound: float
    """``score_statistic`` at or above this is drift."""
    drifting: bool


class DriftMonitor:
    """Watch a detector's image scores for drift from its calibration.

    >>> monitor = DriftMonitor.from_calibration(detector.model.calibration_)
    >>> line = monitor.observe(score)  # a one-line alert when drift begins, else None
    >>> monitor.state                  # `DriftState`
    """

    def __init__(
        self,
        val_scores: Sequence[float] | np.ndarray,
        threshold: float,
        *,
        window: int = WINDOW,
        horizon: int = HORIZON,
        alpha: float = ALPHA,
    ) -> None:
        scores = np.asarray(val_scores, dtype=np.float64).ravel()
        if scores.size == 0 or not np.isfinite(scores).all():
            raise SpecadError("drift watch needs the finite normal val scores of a calibration")
        if window < 2 or horizon < 1 or not 0 < alpha < 1:
            raise SpecadError(
                "drift watch needs window >= 2, horizon >= 1 and 0 < alpha < 1 "
                f"(got {window}, {horizon}, {alpha})"
            )
        self.threshold, self.window = float(threshold), window
        flagged = is_anomalous(scores, self.threshold)
        if flagged.all():
            raise SpecadError(f"the threshold {threshold:g} flags every val score: no normal")
        self.reference = np.sort(scores[~flagged])
        k, n = int(flagged.sum()), scores.size
        self.rate = (k + 1) / (n + 1)
        self.alarm_bounds = [alarm_bound(m, k, n, alpha / 2 / horizon) for m in range(window + 1)]
        self.score_bound = ks_bound(self.reference.size, window, alpha / 4, alpha / 4 / horizon)
        self.recent: deque[bool] = deque(maxlen=window)  # flagged or not, every cube
        self.normal: deque[float] = deque(maxlen=window)  # scores judged normal
        self.seen = self.alarms = 0
        self.drifting = False

    @classmethod
    def from_calibration(
        cls,
        calibration: CalibrationLike,
        *,
        window: int = WINDOW,
        horizon: int = HORIZON,
        alpha: float = ALPHA,
    ) -> DriftMonitor:
        """A monitor of the scores a detector with this calibration gives."""
        threshold = calibration.threshold
        if threshold is None:
            raise SpecadError("drift watch needs a calibrated detector (no threshold yet)")
        return cls(calibration.val_scores, threshold, window=window, horizon=horizon, alpha=alpha)

    def observe(self, score: float) -> str | None:
        """Take one cube's score; a one-line alert when drift begins (None otherwise, also
        while it goes on: the alert is said once per crossing)."""
        flagged = is_anomalous(score, self.threshold)
        self.seen += 1
        self.alarms += flagged
        self.recent.append(flagged)
        if not flagged:
            self.normal.append(float(score))
        state = self.state
        was, self.drifting = self.drifting, state.drifting
        if self.drifting and not was:
            return (
                f"drift after {state.seen} cubes: {state.window_alarms} of the last "
                f"{len(self.recent)} flagged (bound {state.alarm_bound}, calibrated rate "
                f"{state.calibrated_rate:.3g}); normal scores' KS {state.score_statistic:.3f} "
                f"(bound {state.score_bound:.3f})"
            )
        return None

    @property
    def state(self) -> DriftState:
        window_alarms = sum(self.recent)
        bound = self.alarm_bounds[len(self.recent)]
        full = len(self.normal) == self.window
        statistic = ks_statistic(np.fromiter(self.normal, float), self.reference) if full else 0.0
        return DriftState(
            seen=self.seen,
            alarm_rate=self.alarms / self.seen if self.seen else 0.0,
            calibrated_rate=self.rate,
            window_alarms=window_alarms,
            alarm_bound=bound,
            score_statistic=statistic,
            score_bound=self.score_bound,
            drifting=window_alarms >= bound or statistic >= self.score_bound,
        )


def alarm_bound(m: int, k: int, n: int, alpha: float) -> int:
    """The fewest alarms among ``m`` new normal cubes that happen with probability at most
    ``alpha`` when the threshold flags ``k`` of ``n`` normal val scores (``m + 1``: no count
    is that rare)."""
    from scipy.stats import betabinom  # here: scipy.stats costs every `specad.metrics` import

    return int(betabinom.isf(alpha, m, k + 1, n - k)) + 1


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical
    distribution functions (``b`` sorted)."""
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def ks_bound(n: int, m: int, alpha_n: float, alpha_m: float) -> float:
    """A gap between the distribution functions of a sample of ``n`` and one of ``m`` from one
    continuous distribution that is reached with probability at most ``alpha_n + alpha_m``:
    each sample's own exact one-sample bound, added (the triangle inequality)."""
    from scipy.stats import kstwo

    return float(kstwo.isf(alpha_n, n) + kstwo.isf(alpha_m, m))
