"""Drift watch: are the normal cubes on the line still the normal cubes a model was calibrated
on? Two running comparisons against the calibration, with bounds taken from it alone (no label):

- **Alarms**: how many of the last ``window`` cubes were flagged, against what the calibration
  promises. The threshold flags ``k`` of the ``n`` normal val scores, so a new normal cube is
  flagged at the rate ``(k + 1) / (n + 1)`` on average (the rank of an exchangeable score among
  them), and the number of ``m`` new normal cubes flagged is beta-binomial ``(m, k + 1, n - k)``
  exactly: the rate itself is uncertain when ``n`` is small (30 val cubes pin it down
  loosely), and the binomial at the mean rate would cry drift on a quiet line. The bound is the
  count that distribution reaches with probability at most ``alpha``. It moves first when
  normal cubes begin to look anomalous.
- **Scores**: the two-sample Kolmogorov-Smirnov statistic between the last ``window`` scores
  judged normal and the calibration's scores below the threshold (both sides of the same cut, so
  that an unchanged line compares like with like). Its bound is the ``1 - alpha`` quantile of
  the statistic when both samples come from one distribution: it depends on the two sample sizes
  alone, and is found once by random splits of their ranks (seeded, so always the same). It
  moves when normal scores creep up before they cross the threshold.

``alpha`` is per observation: over a long quiet run a bound is tested many times, so it is
small (1e-3 by default; the windows overlap, so the tests are far from independent).
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
ALPHA = 1e-3
"""Chance that a bound is crossed at one observation of an unchanged line."""
SPLITS = 20_000
"""Random splits the score statistic's bound is the quantile of."""


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
        alpha: float = ALPHA,
        seed: int = 0,
    ) -> None:
        scores = np.asarray(val_scores, dtype=np.float64).ravel()
        if scores.size == 0 or not np.isfinite(scores).all():
            raise SpecadError("drift watch needs the finite normal val scores of a calibration")
        if window < 2 or not 0 < alpha < 1:
            raise SpecadError(
                f"drift watch needs window >= 2, 0 < alpha < 1 (got {window}, {alpha})"
            )
        self.threshold, self.window = float(threshold), window
        flagged = is_anomalous(scores, self.threshold)
        if flagged.all():
            raise SpecadError(f"the threshold {threshold:g} flags every val score: no normal")
        self.reference = np.sort(scores[~flagged])
        k, n = int(flagged.sum()), scores.size
        self.rate = (k + 1) / (n + 1)
        self.alarm_bounds = [alarm_bound(m, k, n, alpha) for m in range(window + 1)]
        self.score_bound = ks_bound(self.reference.size, window, alpha, seed)
        self.recent: deque[bool] = deque(maxlen=window)  # flagged or not, every cube
        self.normal: deque[float] = deque(maxlen=window)  # scores judged normal
        self.seen = self.alarms = 0
        self.drifting = False

    @classmethod
    def from_calibration(
        cls, calibration: CalibrationLike, *, window: int = WINDOW, alpha: float = ALPHA
    ) -> DriftMonitor:
        """A monitor of the scores a detector with this calibration gives."""
        threshold = calibration.threshold
        if threshold is None:
            raise SpecadError("drift watch needs a calibrated detector (no threshold yet)")
        return cls(calibration.val_scores, threshold, window=window, alpha=alpha)

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


def ks_bound(n: int, m: int, alpha: float, seed: int = 0, splits: int = SPLITS) -> float:
    """The ``1 - alpha`` quantile of the KS statistic between samples of sizes ``n`` and ``m``
    from one continuous distribution: random splits of ``n + m`` ranks (distribution-free), a
    thousand at a time."""
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, splits, 1000):
        rows = min(1000, splits - start)
        in_a = rng.random((rows, n + m)).argsort(axis=1) < n  # which ranks fall in the n-sample
        gap = np.cumsum(in_a, axis=1) / n - np.cumsum(~in_a, axis=1) / m
        stats.append(np.abs(gap).max(axis=1))
    return float(np.quantile(np.concatenate(stats), 1 - alpha, method="higher"))
