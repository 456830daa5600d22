"""`specad update`: confirmed normals folded into a saved knn or RX model, written as a new one.
RX pools exactly (a refit on the union gives the same statistics), knn's bank takes the new
patches within its budget, the threshold is set again by the one rule, the parent is never
changed and the new model.json says where it came from."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checksums, make_dataset, one_line_failure, run_specad

from specad.data import GOOD, Sample, load_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset
from specad.inference import Detector, run_split
from specad.io import file_sha256
from specad.metrics import threshold_at_far
from specad.models.base import Updatable
from specad.models.knn import KNN
from specad.models.registry import DETECTORS, load_detector
from specad.models.rx import RX
from specad.update import update_model

pytestmark = pytest.mark.filterwarnings("ignore::specad.metrics.ThresholdWarning")
"""Tiny val sets cannot measure 1 %: the threshold goes above the largest, as it should."""


def _cubes(n: int, shift: float, seed: int, size: int = 12) -> list[np.ndarray]:
    """Correlated 5-band cubes, their mean moved by ``shift`` (another batch on the line)."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(size, size, 1)) + 0.3 * rng.normal(size=(size, size, 5)) + 5 + shift
        for _ in range(n)
    ]


# ---------------------------------------------------------------------------- RX pools exactly


@pytest.mark.parametrize("params", [{"shrinkage": 0.1}, {"shrinkage": 0.0, "components": 2}])
def test_pooled_rx_statistics_equal_a_refit_on_the_union(params: dict) -> None:
    old, new = _cubes(3, 0.0, 0), _cubes(2, 1.5, 1)
    updated = RX(**params).fit_cubes(old).update_cubes(new)
    refit = RX(**params).fit_cubes(old + new)
    assert updated.pixels_ == refit.pixels_ == 5 * 12 * 12
    np.testing.assert_allclose(updated.mean_, refit.mean_, rtol=1e-12)
    np.testing.assert_allclose(updated.covariance_, refit.covariance_, rtol=1e-10, atol=1e-12)
    probe = _cubes(1, 3.0, 2)[0]
    np.testing.assert_allclose(updated.score_cube(probe), refit.score_cube(probe), rtol=1e-5)
    before = RX(**params).fit_cubes(old).score_cube(probe)
    assert updated.score_cube(probe).mean() < before.mean()  # the shifted batch is normal now


def test_auto_shrinkage_is_kept_and_the_saved_state_is_enough(tmp_path: Path) -> None:
    old, new = _cubes(3, 0.0, 0), _cubes(2, 1.5, 1)
    fitted = RX().fit_cubes(old).calibrate([1.0, 2.0])
    fitted.save(tmp_path / "rx.safetensors")
    loaded = load_detector(tmp_path / "rx.safetensors")
    assert isinstance(loaded, RX) and isinstance(loaded, Updatable)
    loaded.update_maps(torch.from_numpy(np.stack(new)).permute(0, 3, 1, 2))
    fitted.update_cubes(new)
    refit = RX(shrinkage=fitted.shrinkage_).fit_cubes(old + new)  # Ledoit-Wolf's alpha, kept
    for rx in (loaded, fitted):
        assert rx.shrinkage_ == pytest.approx(RX().fit_cubes(old).shrinkage_, rel=0, abs=0)
        np.testing.assert_allclose(rx.covariance_, refit.covariance_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            rx.whitening_ @ rx.whitening_.T, refit.whitening_ @ refit.whitening_.T
        )


def test_rx_refuses_cubes_of_another_band_count() -> None:
    rx = RX().fit_cubes(_cubes(2, 0.0, 0))
    with pytest.raises(SpecadError, match="cube 0 has 4 channels, the model 5"):
        rx.update_cubes([np.zeros((4, 4, 4))])
    with pytest.raises(SpecadError, match="not fitted"):
        RX().update_cubes(_cubes(1, 0.0, 0))


# ---------------------------------------------------------------------------- knn's bank


def _textures(n: int, seed: int, bright: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(n, 3, 36, 36, generator=gen), 5, 1)
    return x + bright * torch.linspace(-1, 1, 32)  # a gradient: patches the bank never saw


def test_knn_bank_takes_the_new_patches_within_its_budget() -> None:
    train, new = _textures(2, 0), _textures(2, 1, bright=3.0)
    roomy = KNN(coreset_size=10_000, sigma=0).fit(train, train)
    patches = len(roomy.bank_)  # every patch of the two images: below the budget
    before = roomy.score_maps(new).amax()
    roomy.update_maps(new)
    assert len(roomy.bank_) == 2 * patches  # the new images' patches all joined
    assert roomy.score_maps(new).amax() < 0.5 * before  # the new normals look normal now
    tight = KNN(coreset_size=patches // 2, sigma=0).fit(train, train)
    tight.update_maps(new)
    assert len(tight.bank_) == patches // 2  # selected again within the same budget
    with pytest.raises(SpecadError, match=r"knn was fitted on \[B, 3, 32, 32\] images"):
        tight.update_maps(_textures(1, 2)[:, :, :16, :16])


def test_knn_spectral_statistics_are_pooled() -> None:
    gen = torch.Generator().manual_seed(0)
    train = 0.2 + 0.5 * torch.rand(4, 4, 32, 32, generator=gen)  # 4 bands: spectral maps on
    new = 0.2 + 0.5 * torch.rand(2, 4, 32, 32, generator=gen)
    new[:, 1] *= 1.8  # another batch's colour
    knn = KNN(coreset_size=64, sigma=0).fit(train, train)
    level = knn.spectra_.level
    pixels, mean = level.pixels_, level.mean_.copy()
    knn.update_maps(new)
    assert level.pixels_ == pixels + 2 * 32 * 32  # weighted by the images' pixels
    assert not np.allclose(level.mean_, mean)


# ---------------------------------------------------------------------------- specad update


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny dataset, and a folder of three more normal cubes from another seed."""
    base = tmp_path_factory.mktemp("update")
    root = make_dataset(base / "ds", size=32, counts=(3, 3, 2), defects=1)
    extra = make_dataset(base / "extra", size=32, counts=(3, 0, 0), defects=0, seed=7)
    return root, extra / "train" / "good"


@pytest.fixture(scope="module")
def rx_model(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rx") / "model"
    fit_on_dataset("rx", load_dataset(data[0]), device="cpu").save(out)
    return out


def test_update_records_provenance_and_leaves_the_parent_alone(
    data: tuple[Path, Path], rx_model: Path, tmp_path: Path
) -> None:
    root, extra = data
    before = checksums(rx_model)
    new = update_model(rx_model, [extra], tmp_path / "new", device="cpu")
    assert checksums(rx_model) == before  # byte for byte
    assert sorted(p.name for p in new.parent.iterdir()) == ["model.json", "model.safetensors"]
    (record,) = json.loads((new.parent / "model.json").read_text())["updates"]
    assert record["parent"] == file_sha256(rx_model / "model.safetensors")
    files = sorted(extra.iterdir())
    assert record["added"] == [{"file": str(f.resolve()), "sha256": file_sha256(f)} for f in files]
    assert record["val"] is None
    assert (
        datetime.now().astimezone() - datetime.fromisoformat(record["time"])
    ).total_seconds() < 600

    # the threshold: the one rule on the parent's stored val scores plus the added cubes,
    # scored by the new model as predict scores them
    parent, det = Detector.load(rx_model, device="cpu"), Detector.load(new, device="cpu")
    added = run_split(det, [Sample(f, "val", GOOD) for f in files]).scores
    stored = parent.model.calibration_.val_scores
    assert det.model.calibration_.val_scores == (*stored, *added)
    assert det.threshold == threshold_at_far([*stored, *added], parent.model.calibration_.far)
    assert det.model.pixels_ == parent.model.pixels_ + 3 * 32 * 32

    again = update_model(new, [files[0]], tmp_path / "again", val=root, device="cpu")
    history = json.loads((again.parent / "model.json").read_text())["updates"]
    assert [h["parent"] for h in history] == [record["parent"], file_sha256(new)]
    twice = Detector.load(again, device="cpu")
    val = run_split(twice, load_dataset(root).require("val")).scores
    first = run_split(twice, [Sample(files[0], "val", GOOD)]).scores
    assert twice.threshold == threshold_at_far([*val, *first], parent.model.calibration_.far)
    assert history[1]["val"] == str(root.resolve())


def test_a_larger_coreset_budget_keeps_more_of_the_bank(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, extra = data
    fit_on_dataset("knn", load_dataset(root), device="cpu", image_size=32, coreset_size=40).save(
        tmp_path / "knn"
    )
    same = update_model(tmp_path / "knn", [extra], tmp_path / "same", device="cpu")
    larger = update_model(
        tmp_path / "knn", [extra], tmp_path / "larger", coreset_size=80, device="cpu"
    )
    assert len(load_detector(same).bank_) == 40
    loaded = Detector.load(larger, device="cpu")
    assert len(loaded.model.bank_) == 80 and loaded.model.coreset_size == 80
    with pytest.raises(
        SpecadError, match="coreset_size: Input should be greater than or equal to 1"
    ):
        update_model(tmp_path / "knn", [extra], tmp_path / "bad", coreset_size=0, device="cpu")


def test_cli_update_and_its_refusals(
    data: tuple[Path, Path], rx_model: Path, tmp_path: Path
) -> None:
    root, extra = data
    done = run_specad("update", str(rx_model), str(extra), "--out", str(tmp_path / "n"), check=True)
    assert done.stdout.strip().endswith("model.safetensors")
    assert Detector.load(tmp_path / "n").kind == "rx"
    before = checksums(rx_model)
    same = run_specad("update", str(rx_model), str(extra), "--out", str(rx_model))
    one_line_failure(same, "the output is the input")
    inside = run_specad("update", str(rx_model), str(extra), "--out", str(rx_model / "x"))
    one_line_failure(inside, "lies inside the input")
    knob = run_specad(
        "update", str(rx_model), str(extra), "--out", str(tmp_path / "k"), "--coreset-size", "9"
    )
    one_line_failure(knob, "--coreset-size is for knn; rx models keep no coreset")
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_specad("update", str(rx_model), str(empty), "--out", str(tmp_path / "e"))
    one_line_failure(none, "no cubes to add")
    assert checksums(rx_model) == before
    assert not (tmp_path / "k").exists() and not (tmp_path / "e").exists()


def test_cli_refuses_models_that_cannot_take_normals(
    data: tuple[Path, Path], tiny_efficientad: Path, tmp_path: Path
) -> None:
    extra = data[1]
    done = run_specad("update", str(tiny_efficientad), str(extra), "--out", str(tmp_path / "n"))
    one_line_failure(done, "cannot update efficientad models: a training run made their network")
    assert not (tmp_path / "n").exists()
    assert {k for k, cls in DETECTORS.items() if issubclass(cls, Updatable)} == {"knn", "rx"}


def test_a_cube_of_another_band_count_is_one_line(
    data: tuple[Path, Path], rx_model: Path, tmp_path: Path
) -> None:
    other = make_dataset(tmp_path / "other", size=32, channels=4, counts=(1, 0, 0), defects=0)
    done = run_specad("update", str(rx_model), str(other / "train"), "--out", str(tmp_path / "n"))
    one_line_failure(done, "train000.tif")
    assert not (tmp_path / "n").exists()
    shutil.rmtree(other)
