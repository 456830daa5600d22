"""Scoring on a Dask cluster, with the same outputs as one process.

The driver lists the inputs, names the outputs and writes ``scores.csv``; every worker holds the
detector once (a worker plugin carries how to load it, so a worker that joins or restarts loads
it too, and tasks carry only file names), reads its cubes from the shared path and writes maps
and overlays into the output's temporary folder under the names a local run uses. Bad input
comes back as the same one line a local run prints; a task whose worker dies is rerun elsewhere
by Dask and rewrites the same files. Needs the ``dask`` extra (``pip install 'specad[dask]'``).
"""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from specad.data import Sample, read_mask
from specad.errors import SpecadError
from specad.infer import Detector
from specad.models.registry import ModelSpec
from specad.scoring import SplitResults, score_file

try:
    from distributed import Client, LocalCluster, WorkerPlugin, get_worker
except ImportError as err:  # the optional extra
    raise SpecadError("--scheduler and --workers need Dask: pip install 'specad[dask]'") from err


@dataclass(frozen=True)
class ModelSource:
    """How a worker gets the driver's detector: a saved model on a path every worker reads,
    loaded with the runtime the driver resolved (same maps, same threshold), or the detector
    itself, pickled, when it was fitted in this process (``rx``/``knn`` on a dataset)."""

    path: str | None
    device: str = "auto"
    runtime: str = "auto"
    pickled: bytes | None = None

    @classmethod
    def of(
        cls, detector: Detector, model: str | Path | ModelSpec | None, device: str = "auto"
    ) -> ModelSource:
        path = None if model is None else ModelSpec.parse(model).path
        if path is None:
            return cls(None, pickled=pickle.dumps(detector))
        return cls(str(path.resolve()), device, detector.runtime)

    def load(self) -> Detector:
        if self.pickled is not None:
            return pickle.loads(self.pickled)
        return Detector.load(self.path, device=self.device, runtime=self.runtime)


class _ModelPlugin(WorkerPlugin):
    """Holds one worker's detector, loaded on first use (a load error is then the task's)."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self._detector: Detector | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"])

    @property
    def detector(self) -> Detector:
        with self._lock:
            if self._detector is None:
                self._detector = self.source.load()
            return self._detector

    def teardown(self, worker: Any) -> None:
        self._detector = None


def _detector(plugin: str) -> Detector:
    return get_worker().plugins[plugin].detector


def _score_file(plugin: str, shown: str, path: str, tmp: str, name: str, opts: dict) -> float | str:
    """Worker side of one ``predict`` input: its score, or the one-line failure naming the
    input as the user gave it."""
    try:
        return score_file(_detector(plugin), Path(path), Path(tmp), Path(name), **opts)
    except SpecadError as err:
        return str(err).replace(path, shown, 1)


def _score_samples(plugin: str, samples: list[Sample], tiled: bool) -> tuple | str:
    """Worker side of one batch of ``evaluate``: scores, maps and masks, as ``run_split``."""
    try:
        det = _detector(plugin)
        cubes = [s.read() for s in samples]
        preds = det.predict(cubes, tiled=tiled, paths=[s.path for s in samples])
        masks = [read_mask(s, c.shape[:2]) for s, c in zip(samples, cubes, strict=True)]
    except SpecadError as err:
        return str(err)
    return [p.score for p in preds], [p.anomaly_map for p in preds], masks


class Cluster:
    """A Dask client whose workers each hold the detector of ``source``."""

    def __init__(self, client: Client, source: ModelSource) -> None:
        self.client = client
        self.plugin = "specad-model-" + hashlib.sha256(pickle.dumps(source)).hexdigest()[:16]
        client.register_plugin(_ModelPlugin(source), name=self.plugin)

    def score_files(
        self, files: Sequence[Path], names: Sequence[Path], tmp: Path, opts: dict
    ) -> Iterator[float | str]:
        """Score each file into ``tmp`` (a folder the workers share) under its output name;
        scores or failures in input order."""
        futures = [
            self.client.submit(
                _score_file,
                self.plugin,
                str(f),
                str(f.resolve()),
                str(tmp.resolve()),
                str(name),
                opts,
                pure=False,
            )
            for f, name in zip(files, names, strict=True)
        ]
        for future in futures:
            yield future.result()

    def run_split(
        self, samples: Sequence[Sample], *, tiled: bool = False, batch_size: int = 8
    ) -> SplitResults:
        """``specad.scoring.run_split`` with its batches on the workers: the same batches, so
        the same maps."""
        futures = [
            self.client.submit(
                _score_samples,
                self.plugin,
                [_resolved(s) for s in samples[i : i + batch_size]],
                tiled,
                pure=False,
            )
            for i in range(0, len(samples), batch_size)
        ]
        scores, maps, masks = [], [], []
        for future, start in zip(futures, range(0, len(samples), batch_size), strict=True):
            result = future.result()
            if isinstance(result, str):
                for s in samples[start : start + batch_size]:
                    result = result.replace(str(_resolved(s).path), str(s.path), 1)
                raise SpecadError(result)
            scores += result[0]
            maps += result[1]
            masks += result[2]
        return SplitResults(list(samples), np.asarray(scores, dtype=np.float64), maps, masks)


def _resolved(s: Sample) -> Sample:
    """The sample with absolute paths: workers may run in another folder or on another host."""
    mask = s.mask.resolve() if s.mask is not None else None
    return replace(s, path=s.path.resolve(), mask=mask)


@contextmanager
def open_cluster(
    scheduler: str | None, workers: int | None, source: ModelSource
) -> Iterator[Cluster]:
    """Connect to ``scheduler``, or start ``workers`` local worker processes (one thread each;
    Dask also limits torch to one core per worker, so N workers for N cores), with the detector
    registered on every worker."""
    if scheduler is not None and workers is not None:
        raise SpecadError("give --scheduler or --workers, not both")
    local = None
    try:
        if scheduler is not None:
            client = Client(scheduler, timeout="30s")
        else:
            local = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(local)
    except (OSError, TimeoutError) as err:
        raise SpecadError(f"cannot reach the Dask scheduler ({err})", scheduler) from err
    cluster = Cluster(client, source)
    try:
        yield cluster
    finally:
        if local is None:
            client.unregister_worker_plugin(cluster.plugin)
        client.close()
        if local is not None:
            local.close()
