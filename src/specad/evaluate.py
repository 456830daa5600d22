"""Running a detector on a dataset or a single scene and scoring it against the truth.

The glue between :mod:`specad.infer` (maps) and :mod:`specad.metrics` (numbers), shared by
``specad evaluate``, ``specad scene`` and the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specad.data import Dataset
from specad.errors import SpecadError
from specad.infer import Detector, SplitResults, run_split
from specad.io import read_cube
from specad.metrics import evaluate, pixel_auroc


def evaluate_split(test: SplitResults, val: SplitResults, far: float = 0.01) -> dict[str, Any]:
    """Metrics of a test run, with thresholds calibrated on the validation (normal) run."""
    return evaluate(
        test.scores,
        test.labels,
        test.maps,
        test.masks,
        test.class_names,
        val_scores=val.scores,
        val_maps=val.maps,
        far=far,
    )


def evaluate_detector(
    detector: Detector,
    dataset: Dataset,
    *,
    far: float = 0.01,
    tiled: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run on ``val/good`` and ``test`` and return :func:`specad.metrics.evaluate`'s summary."""
    val = run_split(detector, dataset.require("val"), tiled=tiled, progress=progress)
    test = run_split(detector, dataset.require("test"), tiled=tiled, progress=progress)
    return evaluate_split(test, val, far)


def scene_scores(
    file: str | Path, truth: str | None = None, variable: str | None = None
) -> tuple[np.ndarray, float | None]:
    """Global RX of one scene against its own background, and pixel AUROC when truth is given.

    ``truth`` is a mask image, or the name of a variable stored in the same ``.mat``/``.npz``.
    """
    from specad.models.rx import rx_scene

    file = Path(file)
    cube = read_cube(file, variable=variable)
    score_map = rx_scene(cube.data)
    if truth is None:
        return score_map, None
    mask = _truth_mask(file, truth)
    if mask.shape != score_map.shape:
        raise SpecadError(
            f"truth mask is {mask.shape[0]}x{mask.shape[1]}, the scene is "
            f"{score_map.shape[0]}x{score_map.shape[1]}",
            truth,
        )
    return score_map, float(pixel_auroc([score_map], [mask]))


def _truth_mask(file: Path, truth: str) -> np.ndarray:
    path = Path(truth)
    if path.is_file():
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 0
    if file.suffix.lower() == ".mat":
        import scipy.io

        arrays = scipy.io.loadmat(file)
        if truth not in arrays:
            raise SpecadError(f"no truth variable '{truth}' and no such mask file", file)
        return np.asarray(arrays[truth]) > 0
    raise SpecadError("truth mask file not found", truth)
