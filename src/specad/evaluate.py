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
    file: str | Path,
    truth: str | None = None,
    variable: str | None = None,
    layout: str | None = None,
) -> tuple[np.ndarray, float | None]:
    """Global RX of one scene against its own background, and pixel AUROC when truth is given.

    ``truth`` is a mask image, or the name of a variable stored in the same ``.mat``/``.npz``.
    """
    from specad.models.rx import rx_scene

    file = Path(file)
    cube = read_cube(file, variable=variable, layout=layout)
    try:
        score_map = rx_scene(cube.data)
    except SpecadError as err:  # the detector's own errors do not know the file
        if err.path is not None:
            raise
        raise SpecadError(str(err), file) from err
    if truth is None:
        return score_map, None
    mask = read_truth(file, truth)
    if mask.shape != score_map.shape:
        raise SpecadError(
            f"truth mask is {mask.shape[0]}x{mask.shape[1]}, the scene is "
            f"{score_map.shape[0]}x{score_map.shape[1]}",
            truth,
        )
    return score_map, float(pixel_auroc([score_map], [mask]))


def read_truth(file: Path, truth: str) -> np.ndarray:
    """A scene's (H, W) truth: a mask image, or a variable of the scene's own ``.mat``/``.npz``
    read by the same reader as the cube (MATLAB v5 and v7.3 alike)."""
    path = Path(truth)
    if path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("L")) > 0
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
            raise SpecadError(f"cannot read truth mask ({type(err).__name__})", path) from err
    if file.suffix.lower() in (".mat", ".npz"):
        data = read_cube(file, variable=truth, layout="hwc").data
        if data.shape[2] != 1:
            raise SpecadError(f"truth variable '{truth}' is not 2-D ({data.shape})", file)
        return data[:, :, 0] > 0
    raise SpecadError("truth mask file not found", truth)
