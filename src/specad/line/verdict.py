"""One verdict, as `specad watch` journals it and `specad serve` answers it, and the model both
hold: a fitted `Detector` behind a slot that a reload swaps atomically.

Both commands judge a score the same way: the detector's own threshold for its runtime, and the
project's one comparison (`specad.metrics.is_anomalous`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from specad.errors import SpecadError
from specad.inference import Detector
from specad.metrics import is_anomalous
from specad.metrics.drift import DriftMonitor


@dataclass(frozen=True)
class Verdict:
    """A scored cube: ``ms`` is the time from reading the cube to its score."""

    file: str
    score: float
    anomalous: bool
    threshold: float
    runtime: str
    ms: float

    def record(self) -> dict[str, object]:
        """The JSON fields of the verdict, with ``verdict`` spelled out for readers of logs."""
        return {
            "file": self.file,
            "score": self.score,
            "verdict": "anomalous" if self.anomalous else "normal",
            "anomalous": self.anomalous,
            "threshold": self.threshold,
            "runtime": self.runtime,
            "ms": round(self.ms, 3),
        }


def judge(detector: Detector, file: str, score: float, started: float) -> Verdict:
    """The verdict on ``score`` by ``detector``'s threshold; ``started`` is a `time.perf_counter`
    reading taken before the cube was read."""
    threshold = detector.threshold
    return Verdict(
        file=file,
        score=float(score),
        anomalous=is_anomalous(score, threshold),
        threshold=float(threshold),
        runtime=detector.runtime,
        ms=(time.perf_counter() - started) * 1000,
    )


def drift_monitor(detector: Detector) -> DriftMonitor | None:
    """The drift watch of ``detector``'s scores against its calibration's normal val scores, at
    the threshold its runtime judges by; None where the calibration keeps no normal val score
    below that threshold to compare with."""
    try:
        return DriftMonitor(detector.model.calibration_.val_scores, detector.threshold)
    except SpecadError:
        return None


@dataclass(frozen=True)
class Loaded:
    """A detector and when it was loaded: what one request or batch runs on from start to end,
    whatever reloads happen meanwhile. ``generation`` counts loads from 1."""

    detector: Detector
    generation: int
    loaded_at: float


class ModelSlot:
    """The model a long-running command serves, reloaded from its path without a pause.

    A reload builds the new detector fully before it takes the slot, so a model that fails to
    load leaves the old one serving; callers take `current` once per unit of work, so whatever
    already holds the old one finishes on it.
    """

    def __init__(self, model: Detector | str | Path, device: str = "auto", runtime: str = "auto"):
        self.path = None if isinstance(model, Detector) else Path(model)
        self._options = {"device": device, "runtime": runtime}
        detector = model if isinstance(model, Detector) else self._load()
        self._current = Loaded(detector, 1, time.time())
        self._lock = threading.Lock()  # one reload at a time

    @property
    def current(self) -> Loaded:
        return self._current  # one attribute read: atomic under the GIL and without it

    def _load(self) -> Detector:
        assert self.path is not None
        return Detector.load(self.path, **self._options)

    def reload(self) -> Loaded:
        """Load the model file again and swap it in; a failure keeps the old one (and raises)."""
        if self.path is None:
            raise SpecadError("this model was given as an object, not a path: nothing to reload")
        with self._lock:
            detector = self._load()
            self._current = Loaded(detector, self._current.generation + 1, time.time())
            return self._current
