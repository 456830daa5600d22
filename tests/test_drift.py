"""The drift watch (`specad.metrics.drift`): quiet on an unchanged line, one line when normal
scores drift, deterministic, with bounds that hold what they promise."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.stats import betabinom, ks_2samp

from specad.errors import SpecadError
from specad.metrics import DriftMonitor, threshold_at_far
from specad.metrics.drift import alarm_bound, ks_bound, ks_statistic
from specad.models.base import Calibration

pytestmark = pytest.mark.filterwarnings("ignore::specad.metrics.ThresholdWarning")


def _monitor(seed: int, n: int = 30) -> DriftMonitor:
    """A monitor calibrated on ``n`` standard normal val scores at a 1 % false-alarm rate (with
    30, just above the largest: the threshold rule's warning is expected)."""
    val = np.random.default_rng(seed).normal(size=n)
    return DriftMonitor(val, threshold_at_far(val, 0.01))


def _run(monitor: DriftMonitor, scores: np.ndarray) -> list[tuple[int, str]]:
    return [(i, line) for i, s in enumerate(scores) if (line := monitor.observe(s)) is not None]


def test_quiet_over_unchanged_lines() -> None:
    """20 calibrations of 30 val scores, 1000 normal cubes each (the default horizon): quiet in
    all, although a threshold set on 30 scores flags anywhere from 0 to about 10 % of them."""
    for seed in range(20):
        monitor = _monitor(seed)
        assert _run(monitor, np.random.default_rng(100 + seed).normal(size=1000)) == []
        assert monitor.state.seen == 1000 and not monitor.state.drifting


@pytest.mark.parametrize(("n", "shift"), [(30, 3.0), (200, 1.5)])
def test_fires_soon_after_the_line_shifts_and_says_so_once(n: int, shift: float) -> None:
    monitor = _monitor(0, n)
    rng = np.random.default_rng(1)
    stream = np.concatenate([rng.normal(size=300), rng.normal(loc=shift, size=200)])
    alerts = _run(monitor, stream)
    assert len(alerts) == 1  # once per crossing, not once per cube
    at, line = alerts[0]
    assert 300 <= at < 350 and "\n" not in line and line.startswith(f"drift after {at + 1} cubes")
    state = monitor.state
    assert state.drifting and state.alarm_rate > state.calibrated_rate


def test_creeping_scores_below_the_threshold_are_caught_by_the_score_statistic() -> None:
    monitor = _monitor(0, n=200)
    quiet = monitor.state
    high = np.sort(np.random.default_rng(0).normal(size=200))[150:190]  # the top quarter, unflagged
    stream = np.random.default_rng(2).choice(high, size=60)
    alerts = _run(monitor, stream)
    state = monitor.state
    assert alerts and state.window_alarms == 0  # no alarm: the scores alone drifted
    assert state.score_statistic >= state.score_bound > quiet.score_statistic == 0


def test_deterministic_and_reported_as_json() -> None:
    stream = np.random.default_rng(3).normal(loc=0.5, size=300)
    first, second = _monitor(4), _monitor(4)
    assert _run(first, stream) == _run(second, stream)
    assert first.state == second.state
    record = json.loads(json.dumps(dataclasses.asdict(first.state)))
    assert record["seen"] == 300 and set(record) >= {"alarm_bound", "score_bound", "drifting"}


def test_alarm_bound_is_the_calibrations_tail() -> None:
    for m, k, n in [(50, 0, 30), (20, 2, 200), (5, 0, 30)]:
        bound = alarm_bound(m, k, n, 1e-3)
        assert betabinom.sf(bound - 1, m, k + 1, n - k) <= 1e-3  # P(X >= bound)
        assert betabinom.sf(bound - 2, m, k + 1, n - k) > 1e-3 or bound == 1


def test_ks_bound_holds_its_rate_and_the_statistic_is_scipys() -> None:
    rng = np.random.default_rng(5)
    bound = ks_bound(30, 50, 0.1, 0.1)  # reached with probability at most 0.2
    a, b = rng.exponential(size=(2000, 30)), rng.exponential(size=(2000, 50))
    stats = np.array([ks_statistic(x, np.sort(y)) for x, y in zip(a, b, strict=True)])
    assert 0.001 < np.mean(stats >= bound) <= 0.2
    for x, y, d in zip(a[:20], b[:20], stats[:20], strict=True):
        assert d == pytest.approx(ks_2samp(x, y).statistic)
    assert ks_bound(30, 50, 1e-3, 1e-3) > bound  # a rarer event needs a larger gap


def test_built_from_a_detectors_calibration() -> None:
    val = np.random.default_rng(6).normal(size=40)
    calibration = Calibration(val_scores=tuple(val), threshold=float(val.max()) + 1)
    monitor = DriftMonitor.from_calibration(calibration, window=20)
    assert monitor.state.calibrated_rate == pytest.approx(1 / 41)
    assert monitor.observe(float(val.max()) + 2) is None  # one alarm is not drift
    with pytest.raises(SpecadError, match="no threshold yet"):
        DriftMonitor.from_calibration(Calibration(val_scores=tuple(val)))
    with pytest.raises(SpecadError, match="flags every val score"):
        DriftMonitor(val, float(val.min()))
