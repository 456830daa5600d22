"""Running a detector on a dataset and scoring it against the truth.

The glue between :mod:`specad.infer` (maps) and :mod:`specad.metrics` (numbers), shared by
``specad evaluate`` and the report (single scenes: :mod:`specad.scenes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from specad.data import Dataset, Preprocess, Sample
from specad.errors import SpecadError
from specad.infer import Detector
from specad.io import escaped
from specad.metrics import DEFAULT_FAR, evaluate, is_anomalous
from specad.modelfile import ModelMeta
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
    if model.input_size:  # standardised input, image_size 0 included (the cubes' own size)
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
            "file": escaped(sample.path),
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
