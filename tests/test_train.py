"""Training: LR decay fires, resume is exact, quantiles come from val/good, errors are clear."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, tiny_config
from safetensors import safe_open

from specad.data import load_dataset, load_inputs
from specad.errors import SpecadError
from specad.fit import train
from specad.inference import Detector, run_split
from specad.io import Cube, write_cube
from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import EfficientADConfig, load_config


@pytest.fixture
def trained(tiny_root: Path, tiny_efficientad: Path) -> tuple[Path, Path]:
    """The shared tiny EfficientAD (20 steps) and its dataset."""
    return tiny_root, tiny_efficientad


def test_lr_decays_tenfold_at_95_percent_of_steps(trained: tuple[Path, Path]) -> None:
    rows = [json.loads(line) for line in (trained[1] / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows}
    assert lrs[18] == pytest.approx(1e-4)  # the decay step is int(0.95 * 20) = 19
    assert lrs[19] == pytest.approx(1e-5)
    assert lrs[20] == pytest.approx(1e-5)


@pytest.mark.parametrize("flips", ["true", "false"])  # false: teacher outputs are cached
def test_resume_ends_with_the_same_weights(tmp_path: Path, flips: str) -> None:
    root = make_dataset(tmp_path / "ds")
    cfg = tiny_config(
        root, "train.steps=6", "train.checkpoint_every=2", f"data.flips={flips}", "train.export=[]"
    )
    straight = train(cfg, tmp_path / "a", progress=False)
    assert not list(straight.parent.glob("*.onnx"))  # train.export=[] switches exports off
    train(cfg, tmp_path / "b", stop_after=3, progress=False)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = (Detector.load(run).model.network_.state_dict() for run in (straight, resumed))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_student_does_not_start_as_a_copy_of_its_random_teacher() -> None:
    cfg = EfficientADConfig.model_validate(
        {"data": {"root": "."}, "model": {"teacher": "pdn-random"}}
    )
    model = build_efficientad(cfg.model, 3, 64, seed=7)
    student = dict(model.student.named_parameters())
    for name, weight in model.teacher.named_parameters():
        assert not torch.equal(student[name][: weight.shape[0]], weight), name
    again = build_efficientad(cfg.model, 3, 64, seed=7).state_dict()  # reproducible from the seed
    for key, value in model.state_dict().items():
        assert torch.equal(again[key], value), key


def test_quantiles_are_fitted_on_val_good_only(trained: tuple[Path, Path]) -> None:
    root, run = trained
    det = Detector.load(run)
    model, pre = det.model.network_, det.meta.preprocess
    stored = [model.st_p90.item(), model.st_p995.item(), model.ae_p90.item(), model.ae_p995.item()]
    ds = load_dataset(root)
    model.fit_quantiles([load_inputs(pre, ds.split("val")).x])
    assert stored == [
        model.st_p90.item(),
        model.st_p995.item(),
        model.ae_p90.item(),
        model.ae_p995.item(),
    ]
    model.fit_quantiles([load_inputs(pre, ds.split("test")).x])
    assert stored != [
        model.st_p90.item(),
        model.st_p995.item(),
        model.ae_p90.item(),
        model.ae_p995.item(),
    ]


def test_model_file_describes_itself(trained: tuple[Path, Path]) -> None:
    meta = json.loads((trained[1] / "model.json").read_text())
    assert meta["kind"] == "efficientad"
    assert meta["wavelengths"] == [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0]
    assert len(meta["preprocess"]["mean"]) == 6
    assert meta["versions"]["torch"] == torch.__version__
    with safe_open(str(trained[1] / "model.safetensors"), framework="pt") as f:
        header = f.metadata()  # the detector's own file: its parameters and fitted values
    params = json.loads(header["params"])  # the model and training sections, no dataset
    assert header["kind"] == "efficientad" and set(params) == {"model", "training"}
    assert params["training"]["train"]["steps"] > 0 and "root" not in json.dumps(params)
    fitted = json.loads(header["fitted"])
    assert np.isfinite(fitted["calibration"]["threshold"]) and fitted["steps"] > 0
    assert fitted["training_data"] == str(trained[0])  # int8 calibration's default data


def test_trained_model_separates_the_tiny_defects(trained: tuple[Path, Path]) -> None:
    root, run = trained
    res = run_split(Detector.load(run), load_dataset(root).require("test"))
    assert res.scores[res.labels == 1].min() > res.scores[res.labels == 0].max()


def test_channel_mismatch_is_one_clear_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    write_cube(tmp_path / "c3.tif", Cube(np.zeros((64, 64, 3), np.float32)))
    from specad.io import read_cube

    with pytest.raises(SpecadError, match="c3.tif: the model expects cubes with 6 channels"):
        Detector.load(trained[1]).predict(
            read_cube(tmp_path / "c3.tif"), paths=[tmp_path / "c3.tif"]
        )


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {root: x}\ntrain: {stepz: 3}\n")
    with pytest.raises(SpecadError, match=r"bad.yaml: train.stepz: Extra inputs"):
        load_config(bad)
    bad.write_text("data: {root: x}\ntrain: {steps: many}\n")
    with pytest.raises(SpecadError, match="train.steps"):
        load_config(bad)
    with pytest.raises(SpecadError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_training_errors(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    with pytest.raises(SpecadError, match="unknown band name 'NIR'"):
        train(tiny_config(root, "data.channels=[NIR]"), tmp_path / "r1", progress=False)
    with pytest.raises(SpecadError, match="missing.pth"):
        cfg = tiny_config(
            root, "model.teacher=pdn-file", f"model.teacher_file={tmp_path}/missing.pth"
        )
        train(cfg, tmp_path / "r2", progress=False)
    (tmp_path / "r3" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r3" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpecadError, match="last.pt: corrupt or incompatible checkpoint"):
        train(tiny_config(root), tmp_path / "r3", resume=True, progress=False)
    shutil.rmtree(root / "val")
    with pytest.raises(SpecadError, match="'val' split is empty"):
        train(tiny_config(root), tmp_path / "r4", progress=False)


def test_corrupt_model_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    shutil.copytree(trained[1], tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(SpecadError, match="model.safetensors: corrupt model weights"):
        Detector.load(tmp_path / "m")
