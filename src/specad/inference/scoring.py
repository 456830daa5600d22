"""Scoring cubes with a fitted `Detector`, one way for local runs and Dask workers alike
(:mod:`specad.distributed`): a split's scores, maps and masks (evaluate, report) and one file's
map, overlay and, asked to explain, its regions (predict).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specad.data import Sample, read_mask
from specad.errors import SpecadError
from specad.inference.detector import Detector, Prediction
from specad.inference.regions import find_regions
from specad.inference.tiling import batch_of
from specad.io import Cube, read_cube
from specad.io.files import escaped


@dataclass
class SplitResults:
    """A detector's output on every cube of a split, with the truth needed to score it."""

    samples: list[Sample]
    scores: np.ndarray
    maps: list[np.ndarray]
    masks: list[np.ndarray]

    @property
    def class_names(self) -> list[str]:
        return [s.label for s in self.samples]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.anomalous for s in self.samples], dtype=int)


def run_split(
    detector: Detector,
    samples: Sequence[Sample],
    *,
    tiled: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> SplitResults:
    """Predict every sample (reading cubes ``batch_size`` at a time; default: as many as
    `specad.inference.tiling.batch_of` allows at the model's input size, at most 8) and collect
    maps, scores and masks."""
    from tqdm import tqdm

    if batch_size is None:
        pre = detector.meta.preprocess
        batch_size = batch_of(len(pre.channels), pre.image_size) if pre.image_size else 8
    scores, maps, masks = [], [], []
    with tqdm(total=len(samples), disable=not progress, unit="cube") as bar:  # closed on error
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = score_batch(detector, chunk, tiled)
            scores += batch[0]
            maps += batch[1]
            masks += batch[2]
            bar.update(len(chunk))
    return SplitResults(list(samples), np.asarray(scores, dtype=np.float64), maps, masks)


def score_batch(
    detector: Detector, samples: Sequence[Sample], tiled: bool
) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """One batch of `run_split`: scores, maps and masks. Shared by local runs and Dask workers,
    so both compute the same maps."""
    cubes = [s.read() for s in samples]
    preds = detector.predict(cubes, tiled=tiled, paths=[s.path for s in samples])
    masks = [read_mask(s, c.shape[:2]) for s, c in zip(samples, cubes, strict=True)]
    return [p.score for p in preds], [p.anomaly_map for p in preds], masks


def score_file(
    detector: Detector,
    path: Path,
    tmp: Path,
    name: Path,
    *,
    tiled: bool = False,
    variable: str | None = None,
    axes: str | None = None,
    explain: bool = False,
) -> float:
    """Score one cube into ``tmp/maps/NAME.tif`` and ``tmp/overlays/NAME.png``; its score, or a
    `SpecadError` (`score_files`). Shared by local runs and Dask workers, so both write the
    same files."""
    options = {"tiled": tiled, "variable": variable, "axes": axes, "explain": explain}
    (outcome,) = score_files(detector, [path], tmp, [name], **options)
    if isinstance(outcome, str):
        raise SpecadError(outcome)
    return outcome


def score_files(
    detector: Detector,
    paths: Sequence[Path],
    tmp: Path,
    names: Sequence[Path],
    *,
    tiled: bool = False,
    variable: str | None = None,
    axes: str | None = None,
    explain: bool = False,
) -> list[float | str]:
    """Score cubes as one batch of maps (each runtime is faster per cube in a batch) into
    ``tmp/maps/NAME.tif`` and ``tmp/overlays/NAME.png``; per cube its score, or the one line
    that kept it from being scored (a cube that cannot be read, or that the model refuses: a
    batch the model refuses is scored cube by cube, so the others still are). ``explain``
    also writes each map's regions (`specad.inference.regions`) as JSON lines to
    ``tmp/regions/NAME.jsonl``, which `specad.predict` gathers into ``regions.jsonl``."""
    outcomes: list[float | str] = [""] * len(paths)
    cubes: dict[int, Cube] = {}
    for i, path in enumerate(paths):
        try:
            cubes[i] = read_cube(path, variable=variable, axes=axes)
        except SpecadError as err:
            outcomes[i] = str(err)
    try:
        preds = dict(zip(cubes, _predicted(detector, cubes, paths, tiled), strict=True))
    except SpecadError:
        if len(cubes) == 1:
            raise
        preds = {}
        for i, cube in cubes.items():
            try:
                preds[i] = _predicted(detector, {i: cube}, paths, tiled)[0]
            except SpecadError as err:
                outcomes[i] = str(err)
    for i, pred in preds.items():
        _write(detector, cubes[i], pred, paths[i], tmp, names[i], explain)
        outcomes[i] = pred.score
    return outcomes


def _predicted(
    detector: Detector, cubes: dict[int, Cube], paths: Sequence[Path], tiled: bool
) -> list[Prediction]:
    return detector.predict(list(cubes.values()), tiled=tiled, paths=[paths[i] for i in cubes])


def _write(
    detector: Detector,
    cube: Cube,
    pred: Prediction,
    path: Path,
    tmp: Path,
    name: Path,
    explain: bool,
) -> None:
    """A scored cube's map, overlay and (``explain``) regions, under ``tmp``."""
    from PIL import Image

    from specad.visual import cube_overlay

    map_file = tmp / "maps" / f"{name}.tif"
    map_file.parent.mkdir(parents=True, exist_ok=True)
    write_map(map_file, pred.anomaly_map)
    png = tmp / "overlays" / f"{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(cube_overlay(cube, pred.anomaly_map, detector.threshold)).save(png)
    if explain:
        rows = explained(detector, cube, pred.anomaly_map, path)
        jsonl = tmp / "regions" / f"{name}.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def explained(detector: Detector, cube: Cube, anomaly_map: np.ndarray, path: Path) -> list[dict]:
    """``regions.jsonl`` rows of one cube's map: each region at or above the threshold with
    its area, box, scores and the bands that deviate most from the model's normal envelope
    (none without one)."""
    meta = detector.meta
    data = cube.data[:, :, meta.preprocess.channels]
    regions = find_regions(
        anomaly_map, detector.threshold, data, meta.envelope, meta.bands, meta.wavelengths
    )
    return [{"file": escaped(path), "region": k + 1} | r.record() for k, r in enumerate(regions)]


def write_map(path: Path, anomaly_map: np.ndarray) -> None:
    """A float32 TIFF, zlib-compressed; maps of large cubes in 256 x 256 tiles, so viewers and
    readers can open any window of a gigapixel map without reading all of it."""
    import tifffile

    tile = (256, 256) if min(anomaly_map.shape) >= 256 else None
    tifffile.imwrite(path, anomaly_map.astype(np.float32), tile=tile, compression="zlib")
