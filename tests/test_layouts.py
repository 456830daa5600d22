"""Every recognised layout, generated small as its documentation describes it: read in place by
fit, evaluate and predict, and, broken, refused before any work with every problem listed."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import make_dataset, run_specad
from PIL import Image

from specad.data import DATASET_LAYOUTS, DatasetProblems, discover_dataset, load_dataset, read_mask
from specad.data.check import check_dataset
from specad.inference import Detector
from specad.io import Cube, write_cube

SIDE = 24


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path)
    return path


def _photo(seed: int, defect: bool = False, gray: bool = False) -> np.ndarray:
    """Smooth grey-brown noise; a defect is a bright square at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    img = 90 + rng.integers(0, 20, (SIDE, SIDE, 3))
    if defect:
        y, x = 4 + seed % 10, 4 + seed % 8
        img[y : y + 6, x : x + 6] = 250
    img = img.astype(np.uint8)
    return img[..., 0] if gray else img


def _mask(seed: int, value: int = 255) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), np.uint8)
    y, x = 4 + seed % 10, 4 + seed % 8
    m[y : y + 6, x : x + 6] = value
    return m


def _mvtec(root: Path) -> Path:
    for i in range(6):
        _save(root / "train/good" / f"{i:03d}.png", _photo(i))
    for i in range(2):
        _save(root / "test/good" / f"{i:03d}.png", _photo(10 + i))
        _save(root / "test/crack" / f"{i:03d}.png", _photo(20 + i, True))
        _save(root / "ground_truth/crack" / f"{i:03d}_mask.png", _mask(20 + i))
    return root


def _loco(root: Path) -> Path:
    for i in range(3):
        _save(root / "train/good" / f"{i:03d}.png", _photo(i))
        _save(root / "validation/good" / f"{i:03d}.png", _photo(5 + i))
        _save(root / "test/good" / f"{i:03d}.png", _photo(10 + i))
    for i in range(2):  # a folder of region masks (united) for logical, one PNG for structural
        _save(root / "test/logical_anomalies" / f"{i:03d}.png", _photo(20 + i, True))
        half = _mask(20 + i)
        half[:, SIDE // 2 :] = 0
        _save(root / "ground_truth/logical_anomalies" / f"{i:03d}" / "000.png", half)
        _save(
            root / "ground_truth/logical_anomalies" / f"{i:03d}" / "001.png", _mask(20 + i) - half
        )
        _save(root / "test/structural_anomalies" / f"{i:03d}.png", _photo(30 + i, True))
        _save(root / "ground_truth/structural_anomalies" / f"{i:03d}.png", _mask(30 + i))
    return root


def _xyz(path: Path, seed: int) -> None:
    """An organised point cloud: Z around 500 mm, zero (unseen) in one corner, as MVTec stores."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    z = 500 + np.random.default_rng(seed).random((SIDE, SIDE), dtype=np.float32)
    cloud = np.stack([xx, yy, z], axis=2)
    cloud[:4, :4] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, cloud, photometric="rgb")


def _mvtec3d(root: Path) -> Path:
    for split, n, first in (("train", 3, 0), ("validation", 2, 5), ("test", 2, 10)):
        for i in range(n):
            _save(root / split / "good/rgb" / f"{i:03d}.png", _photo(first + i))
            _xyz(root / split / "good/xyz" / f"{i:03d}.tiff", first + i)
    for i in range(2):
        _save(root / "test/hole/rgb" / f"{i:03d}.png", _photo(20 + i, True))
        _xyz(root / "test/hole/xyz" / f"{i:03d}.tiff", 20 + i)
        _save(root / "test/hole/gt" / f"{i:03d}.png", _mask(20 + i))
    return root


def _visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    obj = root / "candle/Data"
    for i in range(8):
        split = "train" if i < 6 else "test"
        _save(obj / "Images/Normal" / f"{i:04d}.JPG", _photo(i))
        rows.append(f"candle,{split},normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(2):
        _save(obj / "Images/Anomaly" / f"{i:03d}.JPG", _photo(20 + i, True))
        _save(obj / "Masks/Anomaly" / f"{i:03d}.png", _mask(20 + i, value=i + 1))
        rows.append(
            f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,"
            f"candle/Data/Masks/Anomaly/{i:03d}.png"
        )
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root / "candle"


def _btad(root: Path) -> Path:
    for i in range(6):
        _save(root / "train/ok" / f"{i:04d}.bmp", _photo(i))
    for i in range(2):
        _save(root / "test/ok" / f"{i:04d}.bmp", _photo(10 + i))
        _save(root / "test/ko" / f"{i:04d}.bmp", _photo(20 + i, True))
        _save(root / "ground_truth/ko" / f"{i:04d}.png", _mask(20 + i))
    return root


def _kolektor(root: Path) -> Path:
    for i in range(7):  # the last training image is a defect: left out
        defect = i == 6
        _save(root / "train" / f"{10000 + i}.png", _photo(i, defect))
        _save(root / "train" / f"{10000 + i}_GT.png", _mask(i) if defect else _mask(i, 0))
    for i in range(4):
        defect = i >= 2
        _save(root / "test" / f"{20000 + i}.png", _photo(20 + i, defect))
        _save(root / "test" / f"{20000 + i}_GT.png", _mask(20 + i, 255 if defect else 0))
    return root


def _mtd(root: Path) -> Path:
    for i in range(10):
        _save(root / "MT_Free/Imgs" / f"free{i}.jpg", _photo(i, gray=True))
        _save(root / "MT_Free/Imgs" / f"free{i}.png", _mask(i, 0))
    for name in ("Crack", "Fray"):
        for i in range(2):
            _save(root / f"MT_{name}/Imgs" / f"{name}{i}.jpg", _photo(20 + i, True, gray=True))
            _save(root / f"MT_{name}/Imgs" / f"{name}{i}.png", _mask(20 + i))
    return root


def _cuvis(root: Path) -> Path:
    rng = np.random.default_rng(0)
    splits, i = set(), 0
    while splits != {"train", "val", "test"}:  # names until the hash gives every split
        name = f"tray_ok_ok_{i}"
        bucket = zlib.crc32(f"{name}.tif".encode()) % 100
        splits.add("train" if bucket < 70 else "val" if bucket < 85 else "test")
        write_cube(root / "ok" / f"{name}.tif", Cube(rng.random((SIDE, SIDE, 4), np.float32)))
        i += 1
    for k in range(2):
        cube = rng.random((SIDE, SIDE, 4), np.float32)
        cube[_mask(k) > 0] += 3
        write_cube(root / "leaf" / f"tray_leaf_{k}.tif", Cube(cube))
        _save(root / "leaf" / f"tray_leaf_{k}_0_RGB_mask.png", (_mask(k) > 0).astype(np.uint8) * 4)
    (root / "annotations.json").write_text(json.dumps({"4": "leaf"}))
    return root


def _folder(root: Path) -> Path:
    for i in range(8):
        _save(root / "good" / f"g{i}.png", _photo(i))
    for i in range(2):
        _save(root / "scratch" / f"s{i}.png", _photo(20 + i, True))
        _save(root / "masks/scratch" / f"s{i}.png", _mask(20 + i))
    return root


def _specad(root: Path) -> Path:
    return make_dataset(root, size=SIDE, counts=(4, 2, 2), defects=1)


MAKERS: dict[str, Callable[[Path], Path]] = {
    "specad": _specad,
    "mvtec": _mvtec,
    "mvtec-loco": _loco,
    "mvtec-3d": _mvtec3d,
    "visa": _visa,
    "btad": _btad,
    "kolektor": _kolektor,
    "mtd": _mtd,
    "cuvis-example": _cuvis,
    "folder": _folder,
}


def test_every_layout_has_a_generated_tree() -> None:
    assert set(MAKERS) == set(DATASET_LAYOUTS)


@pytest.mark.parametrize("layout", list(MAKERS))
def test_layout_is_recognised_and_read_in_place(tmp_path: Path, layout: str) -> None:
    root = MAKERS[layout](tmp_path / "data")
    ds = load_dataset(root)
    assert ds.layout == layout
    assert all(ds.split(s) for s in ("train", "val", "test"))
    report = check_dataset(root)
    assert report.ok, report.problems
    assert len(report.channels) == 1
    bad = [s for s in ds.samples if s.anomalous]
    for s in bad:  # every defect image's mask holds its class, and only there
        cube = s.read()
        mask = read_mask(s, cube.shape[:2])
        ids = set(np.unique(mask).tolist())
        assert ids == {0, next(k for k, n in ds.classes.items() if n == s.label)}, (s.path, ids)
    if layout in ("mvtec", "btad", "folder", "visa"):  # photos: stored 0-255 values, R, G, B
        cube = ds.split("train")[0].read()
        assert cube.bands == ["R", "G", "B"] and cube.data.min() >= 90 and cube.data.max() < 120


def test_loco_mask_folders_are_united(tmp_path: Path) -> None:
    ds = load_dataset(_loco(tmp_path / "loco"))
    s = next(s for s in ds.samples if s.label == "logical_anomalies")
    assert s.mask is not None and s.mask.is_dir()
    assert (read_mask(s, (SIDE, SIDE)) > 0).sum() == 36  # both halves of the square


def test_mvtec3d_cube_is_rgb_plus_filled_depth(tmp_path: Path) -> None:
    ds = load_dataset(_mvtec3d(tmp_path / "3d"))
    cube = ds.split("train")[0].read()
    assert cube.bands == ["R", "G", "B", "Z"] and cube.rgb == (0, 1, 2)
    z = cube.data[:, :, 3]
    assert (z[:4, :4] == z.max()).all()  # unseen points take the largest seen depth
    assert z.min() >= 500


def test_kolektor_all_zero_masks_are_normal(tmp_path: Path) -> None:
    ds = load_dataset(_kolektor(tmp_path / "k"))
    assert len(ds.split("train")) + len(ds.split("val")) == 6  # the training defect left out
    assert sorted(s.path.name for s in ds.samples if s.anomalous) == ["20002.png", "20003.png"]


def test_visa_root_with_several_objects_names_them(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa").parent
    table = root / "split_csv/1cls.csv"
    table.write_text(table.read_text() + "pcb1,train,normal,pcb1/Data/Images/Normal/0.JPG,\n")
    with pytest.raises(Exception, match=r"names 2 objects \(candle, pcb1\).*visa/candle"):
        load_dataset(root)


def _in_place(tmp_path: Path, layout: str, model: str) -> None:
    root = MAKERS[layout](tmp_path / "data")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    run_specad("fit", model, str(root), "--out", str(tmp_path / "m"), check=True)
    done = run_specad("evaluate", str(tmp_path / "m"), str(root), "--json", check=True)
    metrics = json.loads(done.stdout)
    assert 0 <= metrics["image_auroc"] <= 1
    test = load_dataset(root).split("test")
    if layout == "mvtec-3d":  # an image with its point cloud: one cube only a dataset makes
        det = Detector.load(tmp_path / "m")
        assert all(np.isfinite(det.predict(s.read()).score) for s in test)
    else:
        files = [str(s.path) for s in test]
        run_specad("predict", str(tmp_path / "m"), *files, "--out", str(tmp_path / "p"), check=True)
        assert len((tmp_path / "p/scores.csv").read_text().splitlines()) == len(files) + 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("layout", list(MAKERS))
def test_fit_evaluate_predict_in_place(tmp_path: Path, layout: str) -> None:
    _in_place(tmp_path, layout, "rx")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["mvtec", "mvtec-3d", "mtd"])
def test_knn_in_place(tmp_path: Path, layout: str) -> None:
    _in_place(tmp_path, layout, "knn")


def break_tree(root: Path) -> list[str]:
    """Four problems in a generated tree: an unreadable image, one with another channel count,
    a defect image's mask missing and one of the wrong size; the file names they name."""
    ds = discover_dataset(root)
    normal = [s for s in ds.samples if not s.anomalous and s.split == "train"]
    bad = [s for s in ds.samples if s.anomalous and s.mask is not None]
    normal[0].path.write_bytes(b"not an image")
    other = normal[1].path
    if other.suffix == ".tif":
        write_cube(other, Cube(np.zeros((SIDE, SIDE, 2), np.float32)))
    else:  # grey among colour, colour among grey
        gray = normal[1].read().channels != 1
        _save(other, _photo(1, gray=gray))
    gone = bad[0].mask_files()[0]
    if bad[0].mask.is_dir():
        for p in bad[0].mask_files():
            p.unlink()
        bad[0].mask.rmdir()
        gone = bad[0].mask
    else:
        gone.unlink()
    small = bad[1].mask_files()[0]
    _save(small, np.full((SIDE // 2, SIDE // 2), 1, np.uint8))
    return [normal[0].path.name, other.name, gone.name, small.name]


@pytest.mark.parametrize("layout", list(MAKERS))
def test_a_broken_tree_lists_every_problem_before_any_work(tmp_path: Path, layout: str) -> None:
    root = MAKERS[layout](tmp_path / "data")
    names = break_tree(root)
    with pytest.raises(DatasetProblems) as caught:
        load_dataset(root)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    for name in names:  # each problem names its file
        assert sum(name in p for p in problems) >= 1, (name, problems)
    done = run_specad("dataset", "check", str(root))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("problem:")]
    assert len(lines) == 4, done.stderr
    assert f"layout: {layout} (" in done.stdout
    model = str(tmp_path / "m")
    for command in (
        ["evaluate", "rx", str(root), "--json"],
        ["fit", "knn", str(root), "-o", model],
    ):
        failed = run_specad(*command)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
        first, *rest = failed.stderr.splitlines()
        assert first.startswith("error: ") and "4 problems in the dataset" in first
        assert len(rest) == 4 and all(line.startswith("problem: ") for line in rest), rest
        for name in names:
            assert any(name in line for line in rest), (name, rest)
        assert not (tmp_path / "m").exists()
