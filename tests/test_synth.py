"""The synthetic tray generator: layout, exact masks, determinism, shared scenes, contrast."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from specad.errors import SpecadError
from specad.io import read_cube
from specad.synth import CLASSES, PRESETS, contrast_table, synthesize
from specad.synth.materials import load_library
from specad.synth.render import render
from specad.synth.scene import make_scene

SMALL = {"size": 96, "n_train": 2, "n_val": 1, "n_test_good": 1, "n_test_anomalous": 40}


def _make(root: Path, name: str, preset: str = "tray6", seed: int = 0) -> Path:
    return synthesize(root / name, preset=preset, seed=seed, **SMALL)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {
        "a": _make(root, "a"),
        "again": _make(root, "again"),
        "seed1": _make(root, "seed1", seed=1),
        "rgb": _make(root, "rgb", preset="tray-rgb"),
        "hsi": _make(root, "hsi", preset="tray-hsi"),
    }


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix in (".tif", ".png"))


def _masks(root: Path) -> dict[str, np.ndarray]:
    return {
        p.stem: np.asarray(Image.open(p)) for p in sorted((root / "ground_truth").glob("*/*.png"))
    }


def test_layout_and_classes(built: dict[str, Path]) -> None:
    root = built["a"]
    classes = json.loads((root / "classes.json").read_text())
    assert classes == {"0": "background", **{str(i + 1): c for i, c in enumerate(CLASSES)}}
    assert len(list((root / "train/good").glob("*.tif"))) == 2
    assert len(list((root / "val/good").glob("*.tif"))) == 1
    assert len(list((root / "test/good").glob("*.tif"))) == 1
    for cls in CLASSES:
        assert len(list((root / "test" / cls).glob("*.tif"))) == 4
    meta = json.loads((root / "synth.json").read_text())
    assert (meta["preset"], meta["seed"], meta["config"]["size"]) == ("tray6", 0, 96)
    assert meta["specad_version"]
    cube = read_cube(next((root / "train/good").glob("*.tif")))
    assert cube.data.shape == (96, 96, 6) and cube.data.dtype == np.float32
    assert cube.bands == ["R", "G", "B", "SWIR1050", "SWIR1200", "SWIR1450"]
    assert cube.wavelengths == [630, 532, 465, 1050, 1200, 1450]
    assert cube.rgb == (0, 1, 2)


def test_masks_carry_exactly_their_class(built: dict[str, Path]) -> None:
    root = built["a"]
    ids = {c: int(i) for i, c in json.loads((root / "classes.json").read_text()).items()}
    assert not (root / "ground_truth/good").exists()
    for cube_path in sorted(root.glob("test/*/*.tif")):
        cls = cube_path.parent.name
        if cls == "good":
            continue
        mask = np.asarray(Image.open(root / "ground_truth" / cls / f"{cube_path.stem}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (96, 96)
        assert set(np.unique(mask)) == {0, ids[cls]}, cube_path


def test_same_seed_same_bytes_other_seed_differs(built: dict[str, Path]) -> None:
    a, again, other = built["a"], built["again"], built["seed1"]
    assert _files(a) == _files(again) == _files(other)
    same = [
        (read_cube(a / f).data.tobytes() == read_cube(again / f).data.tobytes())
        if f.suffix == ".tif"
        else (a / f).read_bytes() == (again / f).read_bytes()
        for f in _files(a)
    ]
    assert all(same)
    stem = Path("train/good/train_0000.tif")
    assert not np.array_equal(read_cube(a / stem).data, read_cube(other / stem).data)
    assert any(
        not np.array_equal(m, n)
        for m, n in zip(_masks(a).values(), _masks(other).values(), strict=True)
    )


def test_rgb_and_hsi_presets_show_the_same_scenes(built: dict[str, Path]) -> None:
    six, rgb, hsi = built["a"], built["rgb"], built["hsi"]
    assert _masks(rgb).keys() == _masks(six).keys() == _masks(hsi).keys()
    for stem, mask in _masks(six).items():
        assert np.array_equal(mask, _masks(rgb)[stem]) and np.array_equal(mask, _masks(hsi)[stem])
    f = Path("test/leaf/leaf_000.tif")
    cube_rgb, cube_hsi = read_cube(rgb / f), read_cube(hsi / f)
    assert cube_rgb.channels == 3 and cube_hsi.channels >= 30
    # the RGB camera is the same camera in both presets: identical pixels, noise included
    np.testing.assert_array_equal(cube_rgb.data, read_cube(six / f).data[..., :3])
    assert min(cube_hsi.wavelengths) <= 400 and max(cube_hsi.wavelengths) >= 1700


def test_contrast_separates_rgb_and_swir_classes(built: dict[str, Path]) -> None:
    table = contrast_table(built["a"])
    assert set(table) == set(CLASSES)
    # soaking barely changes the visible bands but absorbs strongly in the SWIR water bands
    for cls, swir_min in (("water", 4.0), ("alcohol", 1.8), ("foil", 1.2)):
        assert table[cls]["rgb"] < 1.0, (cls, table[cls])
        assert table[cls]["swir"] > max(swir_min, 2 * table[cls]["rgb"]), (cls, table[cls])
    for cls in ("leaf", "fake_leaf", "pla_black", "pla_blue", "pla_white", "pet", "pom"):
        assert table[cls]["rgb"] > 2.5 and table[cls]["swir"] > 1.5, (cls, table[cls])
    rgb_only = contrast_table(built["rgb"])
    assert np.isnan(rgb_only["water"]["swir"]) and rgb_only["water"]["rgb"] < 1.0


def test_fake_leaf_looks_like_leaf_in_rgb_only() -> None:
    lib = load_library()
    cams = PRESETS["tray6"].cameras
    rgb, swir = (lib.weights(c) for c in cams)
    assert np.abs(lib.band("fake_leaf", rgb) - lib.band("leaf", rgb)).max() < 0.01
    assert np.abs(lib.band("fake_leaf", swir) - lib.band("leaf", swir)).max() > 0.3


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SpecadError):
        synthesize(out, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def test_rejects_unknown_settings(tmp_path: Path) -> None:
    with pytest.raises(SpecadError, match="unknown synth settings"):
        synthesize(tmp_path / "x", colour="red")
    with pytest.raises(SpecadError, match="unknown preset"):
        synthesize(tmp_path / "x", preset="tray7")
    with pytest.raises(SpecadError, match="unknown anomaly classes"):
        synthesize(tmp_path / "x", anomaly_mix={"glass": 1.0})
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cls", CLASSES)
def test_mask_covers_everything_the_object_changes(cls: str) -> None:
    """Rendering with and without the object differs only on its mask and a thin fringe.

    The fringe: pixels under 50 % covered (1 px) plus the RGB optics' blur (sigma 0.4 px).
    """
    config = PRESETS["tray6"]
    scene = make_scene(np.random.default_rng(7), 96, config.fov_mm / 96, cls, 1, 1.0)
    empty = replace(scene, patches=[], liquids={})
    rgb = config.cameras[0]
    with_obj, without = (
        render(s, rgb, load_library(), np.random.default_rng(3), 1.0) for s in (scene, empty)
    )
    changed = np.abs(with_obj - without).max(axis=2) > 1e-3
    near = ndimage.binary_dilation(scene.mask > 0, iterations=3)
    assert changed.any() and not (changed & ~near).any()
    assert changed[scene.mask > 0].mean() > 0.5


# --------------------------------------------------------------------------- tray6-hard

# tray6 at 64 px, seed 5, one train cube and one cube per class, as the generator made them
# before the -hard presets existed: the new settings must not change today's presets.
TRAY6_SEED5 = {
    "mean": [0.3613052, 0.3570129, 0.3663236, 0.3563049, 0.3677966, 0.3624399]
    + [0.3720177, 0.371118, 0.3739606, 0.3694265, 0.3661328],
    "std": [0.1667018, 0.1688721, 0.1726871, 0.1659538, 0.1737484, 0.1697634]
    + [0.177057, 0.1758878, 0.1755243, 0.1761139, 0.1751429],
    "mask_px": [23, 25, 74, 37, 33, 2, 2, 4, 19, 83],
}
TINY = {"size": 64, "n_train": 1, "n_val": 0, "n_test_good": 0, "n_test_anomalous": 10}


def test_tray6_output_is_unchanged(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "t6", preset="tray6", seed=5, **TINY)
    cubes = [read_cube(p).data.astype(np.float64) for p in sorted(root.glob("*/*/*.tif"))]
    np.testing.assert_allclose([c.mean() for c in cubes], TRAY6_SEED5["mean"], atol=5e-7)
    np.testing.assert_allclose([c.std() for c in cubes], TRAY6_SEED5["std"], atol=5e-7)
    masks = [int((m > 0).sum()) for m in _masks(root).values()]
    assert masks == TRAY6_SEED5["mask_px"]


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hard")
    small = {**SMALL, "n_train": 6, "n_test_anomalous": 10}
    return {
        name: synthesize(root / name, preset=preset, seed=0, **small)
        for name, preset in (("six", "tray6"), ("hard", "tray6-hard"), ("rgb", "tray-rgb-hard"))
    }


def test_hard_presets_have_the_cameras_and_scenes_of_their_easy_twins(
    hard: dict[str, Path],
) -> None:
    assert PRESETS["tray6-hard"].cameras == PRESETS["tray6"].cameras
    assert PRESETS["tray-rgb-hard"].cameras == PRESETS["tray-rgb"].cameras
    f = Path("test/water/water_000.tif")
    six, rgb = read_cube(hard["hard"] / f), read_cube(hard["rgb"] / f)
    assert six.channels == 6 and rgb.channels == 3
    np.testing.assert_array_equal(rgb.data, six.data[..., :3])
    assert _masks(hard["hard"]).keys() == _masks(hard["rgb"]).keys()
    for stem, mask in _masks(hard["hard"]).items():
        assert np.array_equal(mask, _masks(hard["rgb"])[stem])
    # liquids are not buried: the same spot as in tray6
    assert np.array_equal(_masks(hard["hard"])["water_000"], _masks(hard["six"])["water_000"])


def test_hard_normal_cubes_vary_more_between_trays(hard: dict[str, Path]) -> None:
    def spread(root: Path) -> tuple[float, float]:
        cubes = [read_cube(p).data for p in sorted((root / "train/good").glob("*.tif"))]
        brightness = [c.mean() for c in cubes]
        water_band = [c[..., 5].mean() / c[..., 3].mean() for c in cubes]  # 1450 / 1050
        return float(np.std(brightness)), float(np.std(water_band))

    (b_easy, w_easy), (b_hard, w_hard) = spread(hard["six"]), spread(hard["hard"])
    assert b_hard > 3 * b_easy and w_hard > 3 * w_easy, (b_easy, b_hard, w_easy, w_hard)


def test_hard_preset_keeps_water_and_foil_out_of_rgb(hard: dict[str, Path]) -> None:
    table = contrast_table(hard["hard"])
    for cls in ("water", "alcohol", "foil"):
        assert table[cls]["rgb"] < 1.0, (cls, table[cls])
    assert table["water"]["swir"] > 3.0, table["water"]


def _hard_scene(cls: str, size: int = 96, **settings: object):  # noqa: ANN202 - a Scene
    from specad.synth.presets import Variation
    from specad.synth.variation import vary

    pitch = PRESETS["tray6"].fov_mm / size
    scene = make_scene(np.random.default_rng(11), size, pitch, cls, 1, 1.0)
    vary(scene, np.random.default_rng(12), replace(Variation(), **settings), cls, 1, pitch)
    return scene


def test_partly_buried_objects_are_masked_only_where_visible() -> None:
    scene = _hard_scene("pet", bury_probability=1.0)
    buried = [o for o in scene.objects if "footprint_px" in o]
    assert buried
    for obj in buried:
        assert 0 < obj["visible_px"] < 0.85 * obj["footprint_px"], obj
    visible = sum(int((p.cover >= 0.5).sum()) for p in scene.patches)
    assert (scene.mask > 0).sum() == visible < sum(o["footprint_px"] for o in buried)


def test_pla_pellets_are_one_or_two_pixels() -> None:
    scene = _hard_scene("pla_white", size=256, pellet_probability=1.0, bury_probability=0.0)
    pellets = [p for p, o in zip(scene.patches, scene.objects, strict=True) if o.get("pellet")]
    assert pellets
    for p in pellets:
        masked = (scene.mask[p.rows, p.cols] > 0) & (p.cover > 0)
        assert 1 <= int(masked.sum()) <= 4  # a pellet under half a pixel is still masked
        assert scene.mask[p.rows, p.cols][p.cover == p.cover.max()].all()


def test_objects_cast_shadows_and_shine() -> None:
    scene = _hard_scene("pla_white", bury_probability=0.0, pellet_probability=0.0)
    flat = replace(scene, patches=[replace(p, lift=0.0, gloss=0.0) for p in scene.patches])
    rgb = PRESETS["tray6-hard"].cameras[0]
    lit, unlit = (
        render(s, rgb, load_library(), np.random.default_rng(3), 1.0) for s in (scene, flat)
    )
    diff = (lit - unlit).mean(axis=2)
    outside = ~ndimage.binary_dilation(scene.mask > 0, iterations=2)  # edge pixels, blur
    assert diff[outside].min() < -0.03  # a shadow on the sawdust next to the cube
    assert diff[outside].max() < 1e-3  # and nothing brighter outside the object
    assert diff[scene.mask > 0].max() > 0.01  # the highlight on the cube
