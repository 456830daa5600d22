"""The training-free knn detector: estimator contract, files, a planted defect, the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_failure, run_specad

from specad.data import Preprocess, load_dataset
from specad.errors import SpecadError
from specad.evaluate import evaluate_detector
from specad.fit import fit_on_dataset
from specad.inference import Detector, run_split
from specad.models.knn import KNN, SPECTRAL_WEIGHT, greedy_coreset, spectral_weight
from specad.models.knn_graph import nearest_distance
from specad.models.maps import gaussian_blur, normalise
from specad.models.pixel_spectra import PixelSpectra
from specad.models.registry import load_detector

SMALL = {"image_size": 64, "coreset_size": 128}


@pytest.fixture(scope="module")
def root(tiny_root: Path) -> Path:
    return tiny_root


@pytest.fixture(scope="module")
def detector(root: Path) -> Detector:
    return fit_on_dataset("knn", load_dataset(root), device="cpu", **SMALL)


def test_init_stores_params_and_fit_returns_fitted_self() -> None:
    knn = KNN(coreset_size=32, sigma=0)
    assert not any(name.endswith("_") for name in vars(knn))
    assert knn.get_params()["coreset_size"] == 32
    x = torch.rand(3, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    assert knn.fit(x, x) is knn
    calibration = knn.calibration_  # too few images for 1 %: above the largest
    assert calibration.threshold > max(calibration.val_scores)
    assert knn.bank_.shape == (32, 344)  # blocks 4, 10, 12: 40 + 112 + 192 features per patch
    assert knn.fitted_input.channels == 2
    assert knn.score_maps(x).shape == (3, 1, 64, 64)


def test_unfitted_and_bad_input_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecadError, match="knn detector is not fitted"):
        KNN().score_maps(torch.zeros(1, 3, 64, 64))
    with pytest.raises(SpecadError, match="not fitted"):
        KNN().save(tmp_path / "m.safetensors")
    for bad in ({"coreset_size": 0}, {"projection": 1.5}, {"sigma": -1}):
        with pytest.raises(SpecadError, match="knn"):
            KNN(**bad)
    with pytest.raises(SpecadError, match="knn needs normal val images"):
        KNN(coreset_size=8).fit_maps(torch.rand(1, 6, 64, 64), [])
    knn = KNN(coreset_size=8).fit_maps(torch.rand(1, 3, 64, 64), [])  # no spectral maps: no val
    with pytest.raises(SpecadError, match=r"knn expects \[B, 3, S, S\]"):
        knn.score_maps(torch.rand(1, 4, 64, 64))
    (tmp_path / "bad.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(SpecadError, match="bad.safetensors: corrupt model weights"):
        load_detector(tmp_path / "bad.safetensors")


def test_greedy_coreset_covers_every_cluster() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in centres])
    chosen = greedy_coreset(points, 3, projection=8, generator=gen)
    assert sorted((chosen // 50).tolist()) == [0, 1, 2]
    assert len(greedy_coreset(points, 500, 8, gen)) == len(points)


def test_search_by_matmul_finds_cdists_nearest_neighbour() -> None:
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 40, generator=gen), torch.randn(70, 40, generator=gen)
    nearest = nearest_distance(queries, bank, bank.square().sum(1))
    torch.testing.assert_close(nearest, torch.cdist(queries, bank).amin(1), atol=1e-4, rtol=1e-5)


def test_fit_streams_a_lazy_sequence_to_the_same_bank() -> None:
    # knn reads `_BATCH` images at a time: a lazy sequence is never held whole, and the bank
    # is the one the same images in one tensor give
    images = _six_band_images(9, 0)[:, :3]
    read: list[int] = []

    class Lazy(Sequence[torch.Tensor]):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
            read.append(i)
            return images[i]

    params = {"coreset_size": 64, "sigma": 2.0}
    eager = KNN(**params).fit_maps(images, images[:2])
    lazy = KNN(**params).fit_maps(Lazy(), images[:2])
    torch.testing.assert_close(lazy.bank_, eager.bank_, atol=0, rtol=0)
    assert lazy.calibration_.quantiles == eager.calibration_.quantiles
    assert read == [0, *range(9)]  # the first image for its shape, then each once


def test_preprocess_statistics_stream_image_by_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = 100 + 5 * torch.rand(7, 3, 20, 20, generator=gen)
    whole, streamed = Preprocess(3, [0, 1, 2], 20), Preprocess(3, [0, 1, 2], 20)
    whole.fit(x)
    streamed.fit(iter(list(x)))
    assert streamed.mean == whole.mean and streamed.std == whole.std
    torch.testing.assert_close(
        torch.tensor(whole.mean, dtype=torch.float64), x.double().mean((0, 2, 3))
    )
    torch.testing.assert_close(
        torch.tensor(whole.std, dtype=torch.float64), x.double().std((0, 2, 3))
    )


def _six_band_images(n: int, seed: int) -> torch.Tensor:
    """Smooth random textures [n, 6, 64, 64] whose bands 3-5 repeat bands 0-2."""
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.nn.functional.avg_pool2d(torch.randn(n, 3, 68, 68, generator=gen), 5, 1)
    return torch.cat([rgb, rgb], dim=1)


def test_spectral_map_finds_what_the_adapted_stem_cannot_see() -> None:
    # The stem sums bands 0 and 3 with equal weights, so raising one and lowering the other by
    # the same amount is invisible to every patch feature; only the spectra differ.
    train, val, test = _six_band_images(8, 0), _six_band_images(8, 1), _six_band_images(2, 2)
    clean = test.clone()
    test[1, 0, 24:40, 24:40] += 1.5
    test[1, 3, 24:40, 24:40] -= 1.5
    params = {"coreset_size": 256, "sigma": 2.0}
    patch_only = KNN(spectral=0, **params).fit(train, val)
    both = KNN(**params).fit(train, val)
    torch.testing.assert_close(
        patch_only.score_maps(test), patch_only.score_maps(clean), atol=1e-4, rtol=1e-4
    )
    assert not patch_only.predict(test)[1]
    maps = both.score_maps(test)
    assert both.predict(test).tolist() == [False, True]
    peak = divmod(int(maps[1, 0].argmax()), 64)
    assert 24 <= peak[0] < 40 and 24 <= peak[1] < 40


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_spectral_maps_stay_off_where_every_band_has_its_own_stem_filter(channels: int) -> None:
    # The rule (knn.spectral_weight): with at most three channels nothing is folded into a
    # shared filter, so the patch map sees every band and spectral maps would only add noise
    # (real RGB and grayscale photographs lost image AUROC with them).
    images = _six_band_images(4, 0)[:, :channels]
    knn = KNN(coreset_size=32, sigma=2.0).fit(images, images)
    assert knn.spectral_weight_ == 0 and knn.spectra_ is None
    raw, spectra = knn._raw_maps(images)
    assert spectra == []
    scale = knn.calibration_.quantiles["patch"]
    torch.testing.assert_close(knn.score_maps(images), normalise(raw, *scale))


@pytest.mark.parametrize("channels", [4, 6])
def test_spectral_maps_come_on_where_bands_share_a_stem_filter(channels: int) -> None:
    images = _six_band_images(4, 0)[:, :channels]
    knn = KNN(coreset_size=32, sigma=2.0).fit(images, images)
    assert knn.spectral_weight_ == SPECTRAL_WEIGHT > 0 and knn.spectra_ is not None


def test_a_given_spectral_weight_overrides_the_rule_and_survives_saving(tmp_path: Path) -> None:
    images = _six_band_images(4, 0)[:, :3]
    knn = KNN(coreset_size=32, sigma=2.0, spectral=0.25).fit(images, images)
    assert knn.spectral_weight_ == 0.25 and knn.spectra_ is not None
    knn.save(tmp_path / "m.safetensors")
    loaded = load_detector(tmp_path / "m.safetensors")
    assert loaded.spectral_weight_ == 0.25
    torch.testing.assert_close(loaded.score_maps(images), knn.score_maps(images))
    assert spectral_weight(None, 3) == 0 and spectral_weight(None, 31) == SPECTRAL_WEIGHT


def test_spectral_shape_is_blind_to_a_lamp_gain_and_the_level_is_relative() -> None:
    gen = torch.Generator().manual_seed(0)
    images = 0.2 + 0.5 * torch.rand(6, 4, 32, 32, generator=gen)  # positive, cube units
    spectra = PixelSpectra.fit(images, None, seed=0)
    level, shape = spectra.maps(images[:2])
    dim_level, dim_shape = spectra.maps(0.6 * images[:2])  # the same trays under a dimmer lamp
    torch.testing.assert_close(dim_shape, shape, rtol=1e-4, atol=1e-4)  # float32 transforms
    assert level.shape == shape.shape == (2, 1, 32, 32)
    shifted_level, _ = spectra.maps(images[:2] + 0.3)  # brighter everywhere: nothing stands out
    torch.testing.assert_close(shifted_level, level)
    assert len(PixelSpectra.fit(images[:, :1], None, seed=0).maps(images[:1, :1])) == 1


def test_planted_defects_score_above_every_normal_cube(root: Path, detector: Detector) -> None:
    res = run_split(detector, load_dataset(root).require("test"))
    assert res.scores[res.labels == 1].min() > res.scores[res.labels == 0].max()
    for anomaly_map, mask in zip(res.maps, res.masks, strict=True):
        if mask.any():  # the map peaks on the defect
            assert mask[np.unravel_index(anomaly_map.argmax(), mask.shape)] > 0
    assert np.isfinite(detector.threshold)
    assert detector.runtime == "torch"


def test_save_load_round_trip_gives_identical_maps(
    root: Path, detector: Detector, tmp_path: Path
) -> None:
    path = detector.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["kind"] == "knn"
    loaded = Detector.load(tmp_path / "run", device="cpu")
    assert loaded.threshold == detector.threshold
    assert loaded.model.get_params() == detector.model.get_params()
    samples = load_dataset(root).require("test")
    a, b = run_split(detector, samples), run_split(loaded, samples)
    for x, y in zip(a.maps, b.maps, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(SpecadError, match="no int8 export"):
        Detector.load(path, runtime="int8")


@pytest.mark.slow
def test_cli_evaluate_knn_at_its_default_size(root: Path) -> None:
    done = run_specad("evaluate", "knn", str(root), "--json", check=True)
    metrics = json.loads(done.stdout)
    assert metrics["image_auroc"] == 1.0
    assert metrics["runtime"] == "torch"


def test_cli_fit_knn(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["--set", "image_size=64", "--set", "coreset_size=64"]
    run_specad("fit", "knn", str(root), "--out", str(run), *sets, check=True)
    assert (run / "model.safetensors").is_file()
    assert evaluate_detector(Detector.load(run), load_dataset(root))["image_auroc"] == 1.0
    done = run_specad("fit", "svm", str(root), "--out", str(tmp_path / "y"))
    one_line_failure(done, "unknown detector 'svm'")
    with pytest.raises(SpecadError, match="knn k: Unexpected keyword argument"):
        fit_on_dataset("knn", load_dataset(root), k=3)  # before any data is read


@pytest.mark.parametrize("sigma", [1e308, math.inf])
def test_blur_with_a_huge_sigma_is_the_map_mean(sigma: float) -> None:
    """A model file's sigma of 1e308 once overflowed ``ceil(3 * sigma)`` (found by
    benchmarks/robustness/fuzz.py); a blur wider than the map tends to its mean."""
    maps = torch.rand(2, 1, 9, 7)
    out = gaussian_blur(maps, sigma)
    assert out.shape == maps.shape and torch.isfinite(out).all()
    assert torch.allclose(out, out.mean(dim=(-2, -1), keepdim=True), atol=0.2)
