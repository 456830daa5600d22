"""Micro-batching for `specad serve`: one worker thread scores the cubes that wait together.

Requests queue their cube; the worker takes the oldest and, with it, up to ``size - 1`` others
waiting for the same model and of the same shape, and scores them in one `Detector.predict`
call, since every runtime is faster per image in a batch. Nothing waits for a batch to fill
unless ``wait`` says so: under load, cubes pile up while the previous batch runs, and one client
alone is scored at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from specad.errors import SpecadError
from specad.inference import Prediction
from specad.io import Cube
from specad.line.verdict import Loaded


@dataclass
class Job:
    """One cube waiting to be scored on the model that was current when it arrived."""

    cube: Cube
    loaded: Loaded
    path: Path
    future: Future[tuple[Prediction, int]] = field(default_factory=Future)

    def fits(self, other: Job) -> bool:
        return self.loaded is other.loaded and self.cube.shape == other.cube.shape


class Batcher:
    """The queue and its worker; ``size`` is the largest batch, ``wait`` how long (seconds) the
    worker may hold a first cube for others to join it."""

    def __init__(
        self, size: int = 8, wait: float = 0.0, on_batch: Callable[[int], None] | None = None
    ) -> None:
        if size < 1:
            raise SpecadError(f"the batch size must be at least 1, got {size}")
        self.size, self.wait = size, wait
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.on_batch = on_batch  # told each batch's size (the metrics)
        self._worker = threading.Thread(target=self._run, name="specad-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Cubes waiting, not counting the batch being scored."""
        return len(self._jobs)

    def submit(self, cube: Cube, loaded: Loaded, path: Path) -> Future[tuple[Prediction, int]]:
        """Queue a cube; the future gives its prediction and the size of the batch it ran in."""
        job = Job(cube, loaded, path)
        with self._ready:
            if self._closed:
                raise SpecadError("the server is shutting down")
            self._jobs.append(job)
            self._ready.notify()
        return job.future

    def close(self) -> None:
        """Score what is queued, then stop the worker."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._worker.join(timeout=60)

    def _take(self) -> list[Job] | None:
        with self._ready:
            while not self._jobs:
                if self._closed:
                    return None
                self._ready.wait()
            first = self._jobs[0]
            deadline = time.monotonic() + self.wait
            while self._count(first) < self.size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._ready.wait(left):
                    break
            batch = [j for j in self._jobs if j.fits(first)][: self.size]
            for job in batch:
                self._jobs.remove(job)
            return batch

    def _count(self, first: Job) -> int:
        return sum(j.fits(first) for j in self._jobs)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._score(batch)

    def _score(self, batch: list[Job]) -> None:
        detector = batch[0].loaded.detector
        try:
            preds = detector.predict([j.cube for j in batch], paths=[j.path for j in batch])
        except SpecadError as err:
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            for job in batch:  # one cube's fault: score each alone, so the others get theirs
                self._score([job])
            return
        except Exception as err:  # noqa: BLE001 - a bug: every caller gets it, the worker lives on
            for job in batch:
                job.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for job, pred in zip(batch, preds, strict=True):
            job.future.set_result((pred, len(batch)))
