"""RX detector: synthetic sanity checks, persistence, and agreement with numpy on real scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from scipy.io import loadmat
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from specad.errors import SpecadError
from specad.models.registry import load_detector
from specad.models.rx import RX, rx_scene


def _correlated_cubes(n: int, channels: int = 6, size: int = 16, seed: int = 0) -> list:
    """Gaussian cubes whose bands share one strong factor, like correlated real spectra."""
    rng = np.random.default_rng(seed)
    return [
        3.0 * rng.normal(size=(size, size, 1)) + 0.3 * rng.normal(size=(size, size, channels)) + 5
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def fitted() -> RX:
    return RX().fit_cubes(iter(_correlated_cubes(4)))  # a one-pass iterator must do


def test_injected_outlier_spectrum_scores_highest(fitted: RX) -> None:
    cube = _correlated_cubes(1, seed=1)[0]
    # Ordinary per-band values (band std ~3) but a spectral shape the background never shows.
    cube[3, 7] += np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    scores = fitted.score_cube(cube)
    assert scores.shape == (16, 16) and scores.dtype == np.float32
    assert np.unravel_index(np.argmax(scores), scores.shape) == (3, 7)
    clean = _correlated_cubes(1, seed=2)[0]
    assert fitted.score_cube(cube).max() > fitted.score_cube(clean).max()


def test_shrinkage_options() -> None:
    cubes = _correlated_cubes(2)
    pixels = np.concatenate([c.reshape(-1, 6) for c in cubes])
    auto = RX(shrinkage="auto").fit_cubes(cubes)
    assert auto.shrinkage_ == pytest.approx(LedoitWolf().fit(pixels).shrinkage_)
    # Full shrinkage: the covariance is tr(S)/C times the identity.
    identity = RX(shrinkage=1.0).fit_cubes(cubes)
    variance = np.trace(np.cov(pixels.T, bias=True)) / 6
    np.testing.assert_allclose(identity.whitening_ @ identity.whitening_.T, np.eye(6) / variance)
    # Subsampling is seeded: same seed, same model.
    a, b = RX(max_pixels=100, seed=3).fit_cubes(cubes), RX(max_pixels=100, seed=3).fit_cubes(cubes)
    np.testing.assert_array_equal(a.whitening_, b.whitening_)


@pytest.mark.parametrize(
    "kwargs", [{"shrinkage": 1.5}, {"shrinkage": "ledoit"}, {"shrinkage": True}, {"max_pixels": 1}]
)
def test_bad_params_raise(kwargs: dict) -> None:
    with pytest.raises(SpecadError):
        RX(**kwargs)


def test_save_load_round_trip(fitted: RX, tmp_path: Path) -> None:
    path = tmp_path / "rx.safetensors"
    fitted.calibrate([1.0, 2.0, 3.0]).save(path)
    loaded = load_detector(path)
    assert isinstance(loaded, RX) and loaded.calibration_ == fitted.calibration_
    cube = _correlated_cubes(1, seed=5)[0]
    np.testing.assert_array_equal(loaded.score_cube(cube), fitted.score_cube(cube))
    assert (loaded.shrinkage, loaded.shrinkage_) == (fitted.shrinkage, fitted.shrinkage_)
    (tmp_path / "junk").write_bytes(b"not a model")
    with pytest.raises(SpecadError, match="junk"):
        load_detector(tmp_path / "junk")


def test_channel_mismatch_and_unfitted(fitted: RX) -> None:
    with pytest.raises(SpecadError, match="model expects 6 channels, got 5"):
        fitted.score_cube(np.zeros((4, 4, 5)))
    with pytest.raises(SpecadError, match="not fitted"):
        RX().score_cube(np.zeros((4, 4, 5)))
    with pytest.raises(SpecadError, match="channels"):
        RX().fit_cubes([np.zeros((4, 4, 5)), np.zeros((4, 4, 6))])


def _numpy_rx(data: np.ndarray) -> np.ndarray:
    """Textbook global RX: scene mean, pseudo-inverse of the sample covariance."""
    pixels = data.reshape(-1, data.shape[2])
    centred = pixels - pixels.mean(axis=0)
    precision = np.linalg.pinv(np.cov(pixels, rowvar=False))
    return np.einsum("ij,jk,ik->i", centred, precision, centred).reshape(data.shape[:2])


@pytest.mark.real_data
@pytest.mark.parametrize("scene", ["sandiego_plane", "abu-urban-2", "abu-beach-4"])
def test_global_rx_matches_numpy_on_real_scene(scene: str) -> None:
    path = shared_data("had") / f"{scene}.mat"
    mat = loadmat(path)
    data = mat["data"].astype(np.float64)
    truth = mat["map"].ravel() > 0
    ours = roc_auc_score(truth, rx_scene(data).ravel())
    reference = roc_auc_score(truth, _numpy_rx(data).ravel())
    print(f"{scene}: pixel AUROC specad {ours:.4f}, numpy {reference:.4f}")
    assert ours == pytest.approx(reference, abs=0.005)


def _hyperspectral_cubes(n: int, channels: int = 40, seed: int = 0) -> list:
    """Cubes with three strong spectral factors over noise that differs by band, as real
    hyperspectral data has (a seed is one distribution; the cubes are draws from it)."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(3, channels))
    noise = np.linspace(0.05, 0.3, channels)
    return [
        rng.normal(size=(24, 24, 3)) @ loadings + noise * rng.normal(size=(24, 24, channels))
        for _ in range(n)
    ]


def test_components_equal_to_the_band_count_is_full_rx() -> None:
    cubes = _hyperspectral_cubes(3)
    full = RX().fit_cubes(cubes)
    reduced = RX(components=40).fit_cubes(cubes)
    assert reduced.residual_ == 0.0
    test = _hyperspectral_cubes(4)[3]
    np.testing.assert_allclose(reduced.score_cube(test), full.score_cube(test), rtol=1e-5)


def test_reduced_rx_keeps_every_distance_within_the_tail_factor() -> None:
    """`flat_tail`'s promise: with the axes it keeps, every distance lies within TAIL_FACTOR of
    full RX's, including spectra far off the normal axes; and it keeps fewer axes than bands."""
    from specad.models.rx import TAIL_FACTOR

    cubes = _hyperspectral_cubes(3)
    full = RX().fit_cubes(cubes)
    auto = RX(components="auto").fit_cubes(cubes)
    assert 3 <= auto.whitening_.shape[1] < 40 and auto.residual_ > 0
    test = _hyperspectral_cubes(4)[3]
    test[5, 5] += 5.0 * np.sin(np.arange(40))  # off every normal axis
    ratio = auto.score_cube(test) / full.score_cube(test)
    assert ratio.min() >= 1 / TAIL_FACTOR - 1e-6 and ratio.max() <= TAIL_FACTOR + 1e-6
    assert np.unravel_index(np.argmax(auto.score_cube(test)), (24, 24)) == (5, 5)


def test_a_reduced_rx_survives_save_and_load(tmp_path: Path) -> None:
    cubes = _hyperspectral_cubes(2)
    auto = RX(components="auto").fit_cubes(cubes)
    auto.calibrate([1.0, 2.0, 3.0]).save(tmp_path / "rx.safetensors")
    loaded = load_detector(tmp_path / "rx.safetensors")
    assert (loaded.residual_, loaded.whitening_.shape) == (auto.residual_, auto.whitening_.shape)
    np.testing.assert_array_equal(loaded.score_cube(cubes[0]), auto.score_cube(cubes[0]))
