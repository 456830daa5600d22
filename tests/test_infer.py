"""`specad.inference.Detector`: maps at each cube's size, tiling that keeps small defects, the one
threshold and comparison, and the runtime choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import BANDS, WAVELENGTHS, make_dataset

from specad.data import load_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset
from specad.inference import Detector
from specad.io import Cube


@pytest.fixture(scope="module")
def knn(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    root = make_dataset(tmp_path_factory.mktemp("d") / "ds", size=64)
    ds = load_dataset(root)
    return fit_on_dataset("knn", ds, device="cpu", image_size=64, coreset_size=256, sigma=1.0)


def _wide_cube_with_a_speck(size: int = 256, speck: int = 4) -> tuple[Cube, tuple[int, int]]:
    """Normal texture with a ``speck`` x ``speck`` px defect in the SWIR bands only."""
    rng = np.random.default_rng(1)
    data = (0.4 + 0.05 * rng.standard_normal((size, size, 6))).astype(np.float32)
    y, x = 150, 90
    data[y : y + speck, x : x + speck, 3:] += 0.5
    return Cube(data, BANDS[:6], WAVELENGTHS[:6]), (y + speck // 2, x + speck // 2)


def test_tiling_keeps_native_texture_normal_and_finds_the_speck(knn: Detector) -> None:
    """A model trained at 64 px scores a 256 px cube tile by tile at native resolution: the
    texture stays normal and only the speck stands out, as it does in the map of the cube
    shrunk to 64 px (where a knn shape map with a redundant band once raised a widespread
    false alarm on the smoother shrunk texture)."""
    cube, (y, x) = _wide_cube_with_a_speck()
    resized = knn.predict(cube)
    tiled = knn.predict(cube, tiled=True)
    assert resized.anomaly_map.shape == tiled.anomaly_map.shape == (256, 256)
    peak = np.unravel_index(tiled.anomaly_map.argmax(), tiled.anomaly_map.shape)
    assert abs(peak[0] - y) <= 10 and abs(peak[1] - x) <= 10  # the tiled map peaks on the speck
    assert tiled.score >= knn.threshold and tiled.mask[y, x]
    assert tiled.mask.mean() < 0.02 and resized.mask.mean() < 0.02 and resized.mask[y, x]


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    kib, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            kib += int(line.split()[1])
    return kib


def test_a_mapped_cube_is_tiled_alike_and_leaves_the_resident_set(
    knn: Detector, tmp_path: Path
) -> None:
    """Rows of a memory-mapped cube that no later tile reads are dropped from the resident set,
    and the map is the one of the same cube in memory (dropped pages come back from the file)."""
    cube, _ = _wide_cube_with_a_speck()
    path = tmp_path / "wide.npy"
    np.save(path, cube.data)
    mapped = Cube(np.load(path, mmap_mode="r"), cube.bands, cube.wavelengths)
    in_memory = knn.predict(cube, tiled=True).anomaly_map
    np.testing.assert_array_equal(knn.predict(mapped, tiled=True).anomaly_map, in_memory)
    touched = float(np.asarray(mapped.data).sum())  # every page resident again
    assert np.isfinite(touched) and _mapped_kib(path) > cube.data.nbytes // 2048
    tiled = knn.predict(mapped, tiled=True).anomaly_map
    np.testing.assert_array_equal(tiled, in_memory)
    assert _mapped_kib(path) < cube.data.nbytes // 4096  # the last rows at most
    np.testing.assert_array_equal(cube.data, np.asarray(mapped.data))  # nothing discarded


def test_maps_come_back_at_each_cubes_size_and_verdicts_use_one_rule(knn: Detector) -> None:
    rng = np.random.default_rng(2)
    cubes = [
        Cube((0.4 + 0.05 * rng.standard_normal((h, w, 6))).astype(np.float32))
        for h, w in ((64, 64), (48, 80), (100, 30))
    ]
    preds = knn.predict(cubes, batch_size=2)
    assert [p.anomaly_map.shape for p in preds] == [(64, 64), (48, 80), (100, 30)]
    for p in preds:
        assert p.score == float(p.anomaly_map.max())
        assert p.threshold == knn.threshold
        np.testing.assert_array_equal(p.mask, p.anomaly_map >= knn.threshold)


def test_the_runtime_is_chosen_among_the_detectors_own(
    knn: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert knn.use_runtime("auto").runtime == "torch"  # fitted in memory: no exports
    with pytest.raises(SpecadError, match="runtime 'onnx' needs the saved model's path"):
        knn.use_runtime("onnx")
    root = make_dataset(tmp_path / "ds", size=32)
    rx = fit_on_dataset("rx", load_dataset(root))
    assert rx.runtime == "numpy" and rx.use_runtime("auto").runtime == "numpy"
    with pytest.raises(SpecadError, match="runtime 'onnx' does not apply to rx models"):
        rx.use_runtime("onnx")
    with pytest.raises(SpecadError, match="unknown runtime 'fast'"):
        rx.use_runtime("fast")


def test_an_unfitted_threshold_is_a_clear_error(knn: Detector) -> None:
    cube, _ = _wide_cube_with_a_speck(64)
    pred = knn.predict(cube)
    pred.threshold = None  # as while a detector is being calibrated
    with pytest.raises(SpecadError, match="no threshold yet"):
        _ = pred.mask
