"""How a detector becomes a saved model: fitted on a dataset in seconds (`fit_on_dataset`,
``specad fit``), or trained in a run folder (`train`, ``specad train``). Either way it is then
thresholded on ``val/good`` exactly as ``specad predict`` scores (`_thresholded`) and packaged
with what its cubes need (``model.json``).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import field_validator
from tqdm import tqdm

from specad.bounds import Channels, ImageSize, Rate, Strict, check_image_size, validate
from specad.data import (
    Dataset,
    Inputs,
    Preprocess,
    Sample,
    load_dataset,
    load_inputs,
    select_channels,
)
from specad.errors import SpecadError
from specad.export import calibration_images, export_detector, measure_runtimes
from specad.inference import Detector, run_split
from specad.io import Cube
from specad.metrics import DEFAULT_FAR
from specad.models.base import BaseDetector
from specad.models.efficientad.config import EfficientADConfig
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.efficientad.run import training_run
from specad.models.envelope import EnvelopeSample, tensor_envelope
from specad.models.modelfile import MODEL_FILE, ModelMeta
from specad.models.registry import DETECTORS, fit_on_dataset_names
from specad.runtime import DeviceName, pick_device


class FitOptions(Strict):
    """What ``specad fit`` and ``specad evaluate NAME`` take besides the detector's own
    parameters (`fit_on_dataset`)."""

    channels: Channels = "all"
    image_size: ImageSize | None = None
    """None: the detector's own input size."""
    far: Rate = DEFAULT_FAR
    device: DeviceName = "auto"

    @field_validator("image_size", mode="before")
    @classmethod
    def _given(cls, size: Any) -> Any:
        if size is None:  # `--set image_size=`: leaving it out is how to get the default
            raise ValueError("needs a value (0: the cube's own size)")
        return size

    _size = field_validator("image_size")(check_image_size)

    @classmethod
    def split(cls, raw: dict[str, Any]) -> tuple[FitOptions, dict[str, Any]]:
        """The options among ``--set`` values, validated, and the rest (the detector's)."""
        options = {k: v for k, v in raw.items() if k in cls.model_fields}
        rest = {k: v for k, v in raw.items() if k not in cls.model_fields}
        return validate(cls, options, None, "--set "), rest


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
    if name not in DETECTORS:
        names = ", ".join(fit_on_dataset_names())
        raise SpecadError(f"unknown detector '{name}' (one of {names})")
    if DETECTORS[name].needs_training:
        raise SpecadError(f"{name} is trained by `specad train -c CONFIG`, not fitted here")
    model = DETECTORS[name](**params)
    train, val_samples = dataset.require("train"), dataset.require("val")
    size = model.input_size if image_size is None else image_size
    pre, chosen = _input_of(train, channels, size)
    envelope = EnvelopeSample(len(train), pre.channels)
    first = _first_pass(train, pre, envelope)
    val: Any = []
    if model.input_size:  # standardised input, image_size 0 included (the cubes' own size)
        pre.fit(first)  # unfitted: not normalised
        images: Any = CubeImages(train, pre, pick_device(device))
        val = CubeImages(val_samples, pre, images.device)
    else:
        images = first
    model.fit_maps(images, val, wavelengths=chosen.wavelengths, units=pre.units())
    deque(first, maxlen=0)  # the cubes a detector that learns nothing from them left unread
    meta = ModelMeta(name, pre, chosen.bands, chosen.wavelengths, chosen.rgb, envelope.envelope())
    return _thresholded(model, meta, device, val_samples, far)


def _first_pass(
    samples: Sequence[Sample], pre: Preprocess, envelope: EnvelopeSample
) -> Iterator[torch.Tensor]:
    """Each sample's input (not yet standardised), read for the fit's first pass over them,
    which also draws the normal envelope's pixels from the cube at its own size."""
    for sample in samples:
        cube = sample.read()
        envelope.add(cube.data)
        yield pre.cube_tensor(cube, sample.path)


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


def train(
    cfg: EfficientADConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> Path:
    """Train EfficientAD in the run folder ``out`` (`specad.models.efficientad.run`), then
    threshold, save and export it; returns the model's path.

    ``stop_after`` ends the run early after that many steps with a checkpoint (time-boxed runs,
    tests of ``resume``), whose path is returned; the model file is only written when all steps
    are done.
    """
    with training_run(cfg, Path(out), resume, force, stop_after, progress) as run:
        needed = ("train", "val", "test") if cfg.train.val_every else ("train", "val")
        ds = load_dataset(cfg.data.root, cfg.data.axes, splits=needed)
        pre, meta, train_x = prepare(cfg, ds)
        val_x = load_inputs(pre, ds.require("val")).x
        monitor = _monitor_set(pre, ds) if cfg.train.val_every and run.main else None
        det = run.fit(train_x, val_x, meta.wavelengths, monitor)
        if run.stopped:  # the checkpoint is the run's output
            return run.checkpoint
        if det is None:  # rank 0 alone calibrates and writes the model
            return run.out / MODEL_FILE
        far = cfg.train.threshold_far
        detector = _thresholded(det, meta, run.device, ds.require("val"), far)
        path = detector.save(run.out / MODEL_FILE)
        if cfg.train.export:
            int8 = "int8" in cfg.train.export
            _export(detector, path, calibration_images(train_x), int8, val_x, far)
        return path


def prepare(cfg: EfficientADConfig, ds: Dataset) -> tuple[Preprocess, ModelMeta, torch.Tensor]:
    """Resolve channel selection against the data, fit the per-channel normalisation, and return
    the normalised training input (loaded anyway to fit it)."""
    train = ds.require("train")
    ds.require("val")
    pre, chosen = _input_of(train, cfg.data.channels, cfg.data.image_size)
    raw = load_inputs(pre, train).x  # not yet normalised: mean/std unset
    if cfg.data.normalize == "train":
        pre.fit(raw)
    elif cfg.data.normalize != "none":
        pre.mean, pre.std = cfg.data.normalize.mean, cfg.data.normalize.std
    kind = EfficientADDetector.kind
    envelope = tensor_envelope(raw)
    meta = ModelMeta(kind, pre, chosen.bands, chosen.wavelengths, chosen.rgb, envelope)
    return pre, meta, pre.normalise(raw)


def _input_of(train: Sequence[Sample], channels: Any, size: int) -> tuple[Preprocess, Cube]:
    """The preprocessing of a dataset's cubes, its channels resolved against the first training
    cube (not yet standardised), and that cube's selected channels: their bands, wavelengths and
    RGB, for ``model.json``."""
    first = train[0].read()
    idx = select_channels(first, channels, train[0].path)
    return Preprocess(first.channels, idx, size), first.select(idx)


def _thresholded(
    model: BaseDetector, meta: ModelMeta, device: str | torch.device, val: list[Sample], far: float
) -> Detector:
    """``model`` with what its cubes need, its threshold set at the false-alarm rate ``far`` on
    the normal ``val`` cubes, scored exactly as ``specad predict`` scores them."""
    det = Detector(model, meta, device)
    model.calibrate(run_split(det, val).scores, far)
    return det


def _export(
    detector: Detector,
    path: Path,
    images: torch.Tensor,
    int8: bool,
    validation: torch.Tensor,
    far: float,
) -> None:
    """The fast CPU runtimes' files, and which is fastest here (`measure_runtimes`); a failure
    costs speed, never the trained model."""
    try:
        export_detector(detector, path, images, int8=int8, validation=validation, far=far)
        if detector.device.type == "cpu":
            measure_runtimes(detector, path, calibration_images(validation, 8))
    except SpecadError as err:
        tqdm.write(f"warning: ONNX export skipped ({err})", file=sys.stderr)


def _monitor_set(pre: Preprocess, ds: Dataset, per_kind: int = 6) -> Inputs:
    """A few normal and anomalous test cubes, to watch AUROC while training.

    Only watched and logged: nothing is chosen on it, so the test split stays a test.
    """
    test = ds.require("test")
    good = [s for s in test if not s.anomalous][:per_kind]
    bad = [s for s in test if s.anomalous][:: max(1, len(test) // per_kind)][:per_kind]
    return load_inputs(pre, good + bad, with_masks=True)
