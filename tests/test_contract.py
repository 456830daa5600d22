"""Every registered detector keeps the one contract of `specad.models.base`, and a new detector is
one class plus one registry line (the toy below) before every command can use it."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import checksums, make_dataset, one_line_failure, run_specad
from safetensors.torch import load_file, save_file

import specad
from specad.data import load_dataset
from specad.errors import SpecadError
from specad.evaluate import evaluate_detector
from specad.export import export_detector
from specad.fit import fit_on_dataset
from specad.inference import Detector
from specad.metrics import ThresholdWarning
from specad.models import registry
from specad.models.base import FORMAT_VERSION, BaseDetector, Exportable, NonNegative, detector
from specad.models.efficientad.config import ModelConfig, Training
from specad.models.registry import DETECTORS, load_detector, read_file
from specad.report import ReportConfig, write_report

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

    assert ("onnx" in det.runtimes) == isinstance(det, Exportable)  # exports are a mixin

    train, val, test = _images(4, 1), _images(3, 2), _images(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)  # 3 val images cannot measure 1 %
        assert det.fit(train, val) is det
        for i, runtime in enumerate(det.runtimes[1:]):  # each runtime its own threshold
            det.calibrate(det.scores(val) + i + 1.0, runtime=runtime)
    maps = det.score_maps(test)
    assert maps.shape == (2, 1, 64, 64) and torch.isfinite(maps).all()
    scores = det.scores(test)
    assert scores.tolist() == [det.score(m) for m in maps] == [float(m.max()) for m in maps]
    threshold = det.calibration_.threshold
    assert threshold > max(det.calibration_.val_scores)  # too few val images: above the largest
    assert det.predict(test).tolist() == (scores >= threshold).tolist()
    assert not det.predict(val).any()

    det.save(tmp_path / "m.safetensors")
    loaded = load_detector(tmp_path / "m.safetensors")
    assert type(loaded) is type(det) and loaded.get_params() == det.get_params()
    assert loaded.calibration_ == det.calibration_  # saved whole
    thresholds = [loaded.calibration_.threshold_for(r) for r in det.runtimes]
    assert len(set(thresholds)) == len(det.runtimes)  # a threshold per runtime, kept
    assert thresholds == [det.calibration_.threshold_for(r) for r in det.runtimes]
    torch.testing.assert_close(loaded.score_maps(test), maps, rtol=0, atol=1e-5)
    with pytest.raises(SpecadError, match=f"{kind} has no runtime 'tpu'"):
        det.calibrate([1.0], runtime="tpu")


def test_the_base_class_is_lean() -> None:
    """What every detector must have, and nothing only some have (those are mixins): at most
    15 public methods and properties (class attributes such as ``kind`` aside)."""
    kinds = property | classmethod | staticmethod
    public = [
        name
        for name, value in vars(BaseDetector).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, kinds))
    ]
    assert 8 <= len(public) <= 15, public  # the count itself: fit, predict, save ... are found


def test_no_code_reads_older_files() -> None:
    src = Path(specad.__file__).parent
    found = [str(p) for p in src.rglob("*.py") if re.search("legacy", p.read_text(), re.I)]
    assert not found


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
    root = make_dataset(tmp_path / "ds", counts=(6, 4, 4))
    ds = load_dataset(root)
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

    before = checksums(tmp_path / "run")
    with pytest.raises(SpecadError, match=r"run/model.safetensors: brightness models are not "):
        export_detector(loaded, tmp_path / "run")  # one clear line, nothing written
    assert checksums(tmp_path / "run") == before

    cfg = ReportConfig(
        models={"toy": str(tmp_path / "run")},
        datasets=[root],
        out=tmp_path / "report",
        max_images=1,
    )
    assert "toy" in write_report(cfg).read_text()
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert "toy" in json.dumps(summary)


@pytest.fixture(scope="module")
def rx_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset and an RX model fitted on it, saved as `specad fit` saves."""
    root = make_dataset(tmp_path_factory.mktemp("rx") / "ds", size=32, counts=(2, 2, 1))
    run = root.parent / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)
        fit_on_dataset("rx", load_dataset(root), device="cpu").save(run)
    return root, run


@pytest.mark.parametrize(
    ("written", "needle"),
    [
        (None, "written by an older specad (format 0"),
        ("specad.detector/2", "written by an older specad (format 2"),
        (f"specad.detector/{FORMAT_VERSION + 1}", "written by a newer specad"),
        ("another.tool/1", "not a specad detector file"),
    ],
)
def test_a_file_of_another_format_version_is_refused_in_one_line(
    rx_run: tuple[Path, Path], tmp_path: Path, written: str | None, needle: str
) -> None:
    root, run = rx_run
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.json").write_bytes((run / "model.json").read_bytes())
    metadata, _ = read_file(run / "model.safetensors")
    metadata = {k: v for k, v in metadata.items() if k != "format"}
    metadata |= {} if written is None else {"format": written}
    save_file(load_file(run / "model.safetensors"), old / "model.safetensors", metadata)
    with pytest.raises(SpecadError, match=rf"old/model.safetensors: {re.escape(needle)}"):
        Detector.load(old)
    before = checksums(old, root)
    cube = next((root / "test").rglob("*.tif"))
    done = run_specad("predict", str(old), str(cube), "--out", str(tmp_path / "out"), timeout=60)
    line = one_line_failure(done, "model.safetensors", needle)
    assert ("refit it with `specad fit` or `specad train`" in line) == ("older" in needle)
    assert checksums(old, root) == before and not (tmp_path / "out").exists()


def test_model_json_is_checked_once_the_format_is_known(
    rx_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, run = rx_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    meta = json.loads((run / "model.json").read_text())
    meta["preprocess"]["image_size"] = 8
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SpecadError, match="bad/model.json: preprocess.image_size: must be 0"):
        Detector.load(bad)


def test_a_detector_without_exports_is_not_exportable_in_one_line(
    rx_run: tuple[Path, Path],
) -> None:
    _, run = rx_run
    before = checksums(run)
    done = run_specad("export", str(run), timeout=60)
    one_line_failure(done, "model.safetensors: rx models are not exportable")
    assert checksums(run) == before
