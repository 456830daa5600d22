"""Scoring a list of cube files into an output folder: maps, overlays and ``scores.csv``.

The folder is built under a temporary name and published at the end (:func:`specad.io.atomic_dir`),
so a run that fails, or is killed, leaves nothing that looks complete. Each input keeps its path
relative to the inputs' common folder, so ``test/good/000.tif`` and ``test/crack/000.tif`` get
two maps, one per ``scores.csv`` row. With a Dask cluster (:mod:`specad.distributed`) workers
score the files into the same temporary folder under the same names; this process writes
``scores.csv``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from specad.errors import SpecadError
from specad.infer import Detector
from specad.io import CUBE_SUFFIXES, atomic_dir
from specad.metrics import is_anomalous
from specad.scoring import score_file

if TYPE_CHECKING:
    from specad.distributed import Cluster


@dataclass
class PredictRun:
    """What a prediction run wrote, and the inputs it could not score (one line each)."""

    out: Path
    scored: int
    failed: list[str] = field(default_factory=list)


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Cube files among ``inputs`` (folders searched recursively), each once, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(
                p for p in item.rglob("*") if p.suffix.lower() in CUBE_SUFFIXES and p.is_file()
            )
        else:
            files.append(item)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_names(files: Sequence[Path]) -> list[Path]:
    """A collision-free relative name per input (no suffix): its path below the common folder.

    Two inputs that differ only in their format (``a.tif``, ``a.npy``) keep the suffix in it.
    """
    resolved = [f.resolve() for f in files]
    if not resolved:
        return []
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    rel = [p.relative_to(common) for p in resolved]
    stems = [r.with_suffix("") for r in rel]
    clashes = {s for s in stems if stems.count(s) > 1}
    return [r if s in clashes else s for r, s in zip(rel, stems, strict=True)]


def _score_here(
    detector: Detector, files: Sequence[Path], names: Sequence[Path], tmp: Path, opts: dict
) -> Iterator[float | str]:
    for path, name in zip(files, names, strict=True):
        try:
            yield score_file(detector, path, tmp, name, **opts)
        except SpecadError as e:
            yield str(e)


def cluster(
    scheduler: str | None, workers: int | None, detector: Detector, model: str, device: str
) -> AbstractContextManager[Cluster | None]:
    """A Dask cluster holding ``detector`` (saved at ``model``, or fitted here) when
    ``scheduler`` or ``workers`` is given; otherwise None, for scoring in this process."""
    if scheduler is None and workers is None:
        return nullcontext()
    from specad.distributed import ModelSource, open_cluster

    return open_cluster(scheduler, workers, ModelSource.of(detector, model, device))


def predict_files(
    detector: Detector,
    files: Sequence[Path],
    out: Path,
    *,
    tiled: bool = False,
    force: bool = False,
    variable: str | None = None,
    layout: str | None = None,
    progress: bool = False,
    cluster: Cluster | None = None,
) -> PredictRun:
    """Score ``files`` and publish ``out`` with ``maps/``, ``overlays/`` and ``scores.csv``.

    An input that cannot be read or scored (including a non-finite map) is listed in
    ``failed`` and gets no row; if none can be scored, nothing is written and this raises.
    With ``cluster`` its workers score the files; ``out``'s parent must be a path they share.
    """
    from tqdm import tqdm

    if not files:
        raise SpecadError("no cube files among the inputs")
    names = output_names(files)
    failed: list[str] = []
    threshold = detector.threshold
    opts = {"tiled": tiled, "variable": variable, "layout": layout}
    with atomic_dir(out, force) as tmp:
        if cluster is None:
            outcomes = _score_here(detector, files, names, tmp, opts)
        else:
            outcomes = cluster.score_files(files, names, tmp, opts)
        with open(tmp / "scores.csv", "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["file", "map", "score", "anomalous", "threshold"])
            jobs = zip(files, names, outcomes, strict=True)
            for path, name, score in tqdm(
                jobs, total=len(files), unit="cube", disable=not progress
            ):
                if isinstance(score, str):
                    failed.append(score)
                    continue
                rows.writerow(
                    [
                        str(path),
                        (Path("maps") / f"{name}.tif").as_posix(),
                        f"{score:.6g}",
                        int(is_anomalous(score, threshold)),
                        f"{threshold:.6g}",
                    ]
                )
        if len(failed) == len(files):
            raise SpecadError(
                f"none of the {len(files)} inputs could be scored (first: {failed[0]})"
            )
    return PredictRun(out, len(files) - len(failed), failed)
