"""Every registered detector keeps the one contract of `specad.models.base`, and a new detector is
one class plus one registry line (the toy below) before every command can use it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import make_dataset

from specad.config import ModelConfig, Training
from specad.data import load_dataset
from specad.errors import SpecadError
from specad.evaluate import evaluate_detector, fit_on_dataset
from specad.infer import Detector
from specad.metrics import ThresholdWarning
from specad.models import registry
from specad.models.base import BaseDetector, NonNegative, detector
from specad.models.registry import DETECTORS, load_detector

SMALL = {
    "efficientad": {
        "model": ModelConfig(teacher="pdn-random"),
        "training": Training.model_validate(
            {"train": {"steps": 2, "device": "cpu", "export": []}, "penalty": {"enabled": False}}
        ),
    },
    "knn": {"coreset_size": 16, "sigma": 1.0},
    "lrx": {"outer": 7, "inner": 3},
    "crd": {"outer": 5, "inner": 3},
    "2s-glrt": {"outer": 7, "inner": 3},
}


def _images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.4 + 0.05 * torch.randn(n, 3, 64, 64, generator=gen)


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_every_detector_keeps_the_contract(kind: str, tmp_path: Path) -> None:
    det = DETECTORS[kind](**SMALL.get(kind, {}))
    assert not [a for a in vars(det) if a.endswith("_")]  # __init__ stores parameters only
    assert det.get_params() == DETECTORS[kind](**SMALL.get(kind, {})).get_params()
    with pytest.raises(SpecadError, match="not fitted"):
        det.predict(_images(1, 0))
    if det.fitted:
        with pytest.raises(SpecadError, match=f"{kind} detector is not fitted"):
            det.score_maps(_images(1, 0))

    train, val, test = _images(4, 1), _images(3, 2), _images(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)  # 3 val images cannot measure 1 %
        assert det.fit(train, val) is det
    maps = det.score_maps(test)
    assert maps.shape == (2, 1, 64, 64) and torch.isfinite(maps).all()
    scores = det.scores(test)
    assert scores.tolist() == [det.score(m) for m in maps] == [float(m.max()) for m in maps]
    assert det.threshold_ > det.val_scores_.max()  # too few val images: just above the largest
    assert det.predict(test).tolist() == (scores >= det.threshold_).tolist()
    assert not det.predict(val).any()

    det.save(tmp_path / "m.safetensors")
    loaded = load_detector(tmp_path / "m.safetensors")
    assert type(loaded) is type(det) and loaded.get_params() == det.get_params()
    assert loaded.threshold_ == det.threshold_
    torch.testing.assert_close(loaded.score_maps(test), maps, rtol=0, atol=1e-5)


def test_bad_parameters_are_one_line_naming_the_detector() -> None:
    with pytest.raises(SpecadError, match=r"^knn coreset_size: Input should be greater"):
        DETECTORS["knn"](coreset_size=0)
    with pytest.raises(SpecadError, match="rx colour: Unexpected keyword argument"):
        DETECTORS["rx"](colour=1)


@detector
class Brightness(BaseDetector):
    """A toy detector: the distance of each pixel's spectrum from the mean normal spectrum,
    ``|x - mu| / scale``. Images [B, C, H, W] -> maps [B, 1, H, W]."""

    kind: ClassVar[str] = "brightness"
    fitted: ClassVar[tuple[str, ...]] = ("mean_",)
    runtimes: ClassVar[tuple[str, ...]] = ("numpy",)
    scale: NonNegative = 1.0

    def fit_maps(self, train, val, *, wavelengths=None, units=None) -> Brightness:  # noqa: ANN001
        self.mean_ = torch.stack(list(train)).mean(dim=(0, 2, 3))  # [C]
        return self

    def _score_maps(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_.view(1, -1, 1, 1)).norm(dim=1, keepdim=True) / self.scale

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_}

    def _restore(self, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
        self.mean_ = tensors["mean"]


def test_a_new_detector_is_one_class_and_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.DETECTORS, Brightness.kind, Brightness)  # the one line
    ds = load_dataset(make_dataset(tmp_path / "ds", counts=(6, 4, 4)))
    det = fit_on_dataset("brightness", ds, scale=2.0)
    assert det.runtime == "numpy" and np.isfinite(det.threshold)
    metrics = evaluate_detector(det, ds)
    assert metrics["image_auroc"] == 1.0  # the planted SWIR squares are far from the mean
    det.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["kind"] == "brightness"
    loaded = Detector.load(tmp_path / "run")
    assert loaded.model.scale == 2.0 and loaded.threshold == det.threshold
    cubes = [s.read() for s in ds.require("test")]
    for a, b in zip(det.predict(cubes), loaded.predict(cubes), strict=True):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
