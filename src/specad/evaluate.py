"""Running a detector on a dataset or a single scene and scoring it against the truth.

The glue between :mod:`specad.infer` (maps) and :mod:`specad.metrics` (numbers), shared by
``specad evaluate``, ``specad scene`` and the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from specad.data import Dataset, Preprocess, Sample
from specad.errors import SpecadError
from specad.infer import Detector
from specad.io import read_cube
from specad.metrics import DEFAULT_FAR, evaluate, is_anomalous, pixel_auroc
from specad.modelfile import ModelMeta
from specad.models.bands import BandPrep
from specad.models.registry import DETECTORS
from specad.runtime import pick_device
from specad.scoring import SplitResults, run_split

if TYPE_CHECKING:
    from specad.distributed import Cluster


def fit_on_dataset(
    name: str,
    dataset: Dataset,
    channels: str | list = "all",
    device: str = "auto",
    far: float = DEFAULT_FAR,
    image_size: int | None = None,
    **params: Any,
) -> Detector:
    """A detector that needs no training run, fitted on ``train/good`` and thresholded on
    ``val/good`` exactly as ``specad predict`` scores, packaged like any trained model.

    Detectors with an ``input_size`` (knn: 256; ``image_size`` overrides it) see cubes resized
    to it and standardised per channel with train/good statistics, as EfficientAD's input is,
    val/good also for scaling maps; train/good is read twice (statistics, then features) and
    never held whole (`CubeImages`). The others (RX, the scene detectors) stream train/good at
    native size.
    ``params`` go to the detector's class.
    """
    from specad.data import select_channels

    if name not in DETECTORS:
        names = ", ".join(n for n, cls in DETECTORS.items() if not cls.needs_training)
        raise SpecadError(f"unknown detector '{name}' (one of {names})")
    if DETECTORS[name].needs_training:
        raise SpecadError(f"{name} is trained by `specad train -c CONFIG`, not fitted here")
    model = DETECTORS[name](**params)
    train, val_samples = dataset.require("train"), dataset.require("val")
    first = train[0].read()
    idx = select_channels(first, channels, train[0].path)
    size = model.input_size if image_size is None else image_size
    pre = Preprocess(first.channels, idx, size)
    chosen = first.select(idx)
    val: Any = []
    if size:
        pre.fit(pre.cube_tensor(s.read(), s.path) for s in train)  # unfitted: not normalised
        images: Any = CubeImages(train, pre, pick_device(device))
        val = CubeImages(val_samples, pre, images.device)
    else:
        images = (pre.cube_tensor(s.read(), s.path) for s in train)
    model.fit_maps(images, val, wavelengths=chosen.wavelengths, units=pre.units())
    meta = ModelMeta(name, pre, chosen.bands, chosen.wavelengths, chosen.rgb)
    det = Detector(model, meta, device)
    model.calibrate(run_split(det, val_samples).scores, far)
    return det


class CubeImages(Sequence[torch.Tensor]):
    """Samples read and preprocessed only when indexed: a fit that takes a few at a time holds
    those, not the dataset (knn at 1024 px would otherwise hold every cube before resizing)."""

    def __init__(self, samples: Sequence[Sample], pre: Preprocess, device: torch.device) -> None:
        self.samples, self.pre, self.device = samples, pre, device

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        """[C, S, S] input of sample ``i``, on the device."""
        sample = self.samples[i]
        return self.pre.cube_tensor(sample.read(), sample.path).to(self.device)


def evaluate_split(
    test: SplitResults, val: SplitResults, far: float = DEFAULT_FAR, threshold: float | None = None
) -> dict[str, Any]:
    """Metrics of a test run, with thresholds calibrated on the validation (normal) run.

    ``threshold`` is the detector's fitted image threshold; given, it is the one the
    ``val_far`` operating point and each test cube's verdict use (as ``specad predict`` does),
    instead of one refitted at ``far``. ``cubes`` lists every test cube's score and verdict.
    """
    summary = evaluate(
        test.scores,
        test.labels,
        test.maps,
        test.masks,
        test.class_names,
        val_scores=val.scores,
        val_maps=val.maps,
        far=far,
        image_threshold=threshold,
    )
    used = summary["thresholds"]["val_far"]["image_threshold"]
    summary["cubes"] = [
        {
            "file": str(sample.path),
            "label": sample.label,
            "score": float(score),
            "anomalous": is_anomalous(float(score), used),
        }
        for sample, score in zip(test.samples, test.scores, strict=True)
    ]
    return summary


def evaluate_detector(
    detector: Detector,
    dataset: Dataset,
    *,
    far: float | None = None,
    tiled: bool = False,
    progress: bool = False,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Run on ``val/good`` and ``test`` and return :func:`specad.metrics.evaluate`'s summary;
    with ``cluster``, on its Dask workers (see :mod:`specad.distributed`).

    Verdicts use the detector's own threshold, as ``predict`` does, unless ``far`` asks for a
    threshold refitted on the validation scores at that false-alarm rate.
    """
    threshold = detector.threshold if far is None else None
    far = DEFAULT_FAR if far is None else far
    if cluster is not None:
        val = cluster.run_split(dataset.require("val"), tiled=tiled)
        test = cluster.run_split(dataset.require("test"), tiled=tiled)
        return evaluate_split(test, val, far, threshold)
    val = run_split(detector, dataset.require("val"), tiled=tiled, progress=progress)
    test = run_split(detector, dataset.require("test"), tiled=tiled, progress=progress)
    return evaluate_split(test, val, far, threshold)


@dataclass
class SceneRun:
    """One detector's result on one scene: its (H, W) map, pixel AUROC (None without truth),
    wall-clock seconds and the parameters it ran with."""

    detector: str
    params: dict
    score_map: np.ndarray
    auroc: float | None
    seconds: float


def scene_scores(
    file: str | Path,
    truth: str | None = None,
    variable: str | None = None,
    layout: str | None = None,
    detectors: Sequence[str] = ("rx",),
    params: dict[str, dict] | None = None,
    prep: BandPrep | None = None,
) -> tuple[list[SceneRun], dict]:
    """Score every pixel of one scene against its own background with each detector, after the
    band preparation ``prep``; pixel AUROC when truth is given. Returns the runs and the record
    of the band preparation.

    ``truth`` is a mask image, or the name of a variable stored in the same ``.mat``/``.npz``;
    ``params`` maps a detector name to its parameters (see :mod:`specad.models.scene`).
    """
    from specad.models.scene import make_detector

    file = Path(file)
    cube = read_cube(file, variable=variable, layout=layout)
    mask = None if truth is None else read_truth(file, truth)
    if mask is not None and mask.shape != cube.shape[:2]:
        raise SpecadError(
            f"truth mask is {mask.shape[0]}x{mask.shape[1]}, the scene is "
            f"{cube.shape[0]}x{cube.shape[1]}",
            truth,
        )
    runs = []
    try:  # the detectors' own errors do not know the file
        data, record = (prep or BandPrep()).apply(cube)
        for name in detectors:
            det = make_detector(name, **(params or {}).get(name, {}))
            start = time.perf_counter()
            score_map = det.score_cube(data)
            seconds = time.perf_counter() - start
            auroc = None if mask is None else float(pixel_auroc([score_map], [mask]))
            runs.append(SceneRun(name, det.get_params(), score_map, auroc, seconds))
    except SpecadError as err:
        if err.path is not None:
            raise
        raise SpecadError(str(err), file) from err
    return runs, record


def write_scene_outputs(
    runs: list[SceneRun], out: Path, mask: np.ndarray | None, summary: dict, force: bool = False
) -> None:
    """``out/<detector>.tif`` (the float32 map), ``out/<detector>.png`` (the map with the truth
    outlined) and ``out/scene.json`` (``summary``), written as one folder that appears whole."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    from specad.io import atomic_dir

    with atomic_dir(out, force) as tmp:
        for run in runs:
            tifffile.imwrite(tmp / f"{run.detector}.tif", run.score_map.astype(np.float32))
            fig, ax = plt.subplots(figsize=(5, 5))
            lo, hi = np.percentile(run.score_map, [1, 99.5])
            ax.imshow(run.score_map, cmap="inferno", vmin=lo, vmax=hi)
            if mask is not None and mask.any():
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
            auroc = "" if run.auroc is None else f", pixel AUROC {run.auroc:.4f}"
            ax.set_title(f"{run.detector}{auroc}", fontsize=10)
            ax.set_axis_off()
            fig.savefig(tmp / f"{run.detector}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
        (tmp / "scene.json").write_text(json.dumps(summary, indent=2) + "\n")


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
