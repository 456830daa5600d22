"""`specad dataset import`: a copy of any recognised layout in specad's, atomically, with the
images' stored sample types kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import one_line_failure, run_specad
from PIL import Image

from specad.data import load_dataset, read_mask
from specad.data.importing import import_dataset
from specad.errors import SpecadError


def _image(path: Path, shape: tuple[int, ...], value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def _mtd(root: Path) -> Path:
    """Ten normal tiles and two defect classes, masks beside the images with soft edges."""
    for i in range(10):
        _image(root / "MT_Free" / "Imgs" / f"free{i}.jpg", (30 + i, 40))
        _image(root / "MT_Free" / "Imgs" / f"free{i}.png", (30 + i, 40), 0)
    for name in ("Crack", "Fray"):
        _image(root / f"MT_{name}" / "Imgs" / "a.jpg", (20, 25))
        mask = np.zeros((20, 25), np.uint8)
        mask[5:10, 5:10], mask[4, 5:10] = 255, 60  # an anti-aliased edge row
        Image.fromarray(mask).save(root / f"MT_{name}" / "Imgs" / "a.png")
    return root


def test_mtd_import_splits_normals_and_keeps_masks(tmp_path: Path) -> None:
    out = import_dataset(_mtd(tmp_path / "mtd"), tmp_path / "out")
    ds = load_dataset(out)
    counts = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 1, "test": 4}
    assert json.loads((out / "classes.json").read_text()) == {
        "0": "background",
        "1": "crack",
        "2": "fray",
    }
    fray = next(s for s in ds.samples if s.label == "fray")
    cube = fray.read()
    assert cube.shape == (20, 25, 1) and cube.data.max() == 100  # values kept, not rescaled
    mask = read_mask(fray, cube.shape[:2])
    assert mask.sum() == 25 * 2 and set(np.unique(mask)) == {0, 2}  # soft edge row is background
    again = import_dataset(_mtd(tmp_path / "mtd"), tmp_path / "again")
    assert sorted(p.name for p in (again / "train" / "good").iterdir()) == sorted(
        p.name for p in (out / "train" / "good").iterdir()
    )


def test_mvtec_import_takes_val_from_train(tmp_path: Path) -> None:
    src = tmp_path / "bottle"
    for i in range(10):
        _image(src / "train" / "good" / f"{i:03d}.png", (16, 16, 3))
    _image(src / "test" / "good" / "000.png", (16, 16, 3))
    _image(src / "test" / "broken" / "000.png", (16, 16, 3))
    _image(src / "ground_truth" / "broken" / "000_mask.png", (16, 16), 255)
    out = import_dataset(src, tmp_path / "out", val_fraction=0.2)
    ds = load_dataset(out)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    assert ds.samples[0].read().bands == ["R", "G", "B"]
    with tifffile.TiffFile(ds.samples[0].path) as tif:  # 8-bit photos stay 8-bit
        assert tif.series[0].dtype == np.uint8
    one = import_dataset(src, tmp_path / "one", val_fraction=0.2, workers=1)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (one / f).read_bytes() for f in files)  # threads: same


def test_import_keeps_16_bit_grey_and_lists_every_problem(tmp_path: Path) -> None:
    src = tmp_path / "parts"
    for i in range(10):
        path = src / "good" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 1000 * i, np.uint16)).save(path)
    _image(src / "dent" / "a.png", (8, 8))
    _image(src / "dent" / "b.png", (8, 8))
    _image(src / "masks" / "dent" / "a.png", (4, 4), 255)
    with pytest.raises(SpecadError) as caught:
        import_dataset(src, tmp_path / "bad")
    assert "2 problems" in str(caught.value)
    assert "a.png: mask is 4x4" in str(caught.value) and "b.png: mask missing" in str(caught.value)
    _image(src / "masks" / "dent" / "a.png", (8, 8), 255)
    _image(src / "masks" / "dent" / "b.png", (8, 8), 255)
    ds = load_dataset(import_dataset(src, tmp_path / "out"))
    grey = next(s for s in ds.samples if s.path.stem == "9")
    with tifffile.TiffFile(grey.path) as tif:
        assert tif.series[0].dtype == np.uint16 and tif.series[0].shape == (8, 8)
    assert grey.read().data.max() == 9000


def test_import_errors_leave_nothing_behind(tmp_path: Path) -> None:
    src = _mtd(tmp_path / "mtd")
    (src / "MT_Fray" / "Imgs" / "a.png").unlink()
    with pytest.raises(SpecadError, match="a.png: mask missing"):
        import_dataset(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpecadError, match="no images found in a layout specad knows"):
        import_dataset(src / "MT_Free", tmp_path / "o2")
    done = run_specad("dataset", "import", str(src / "MT_Free"), "--out", str(tmp_path / "o3"))
    one_line_failure(done, "no images found in a layout specad knows")


def test_cli_import(tmp_path: Path) -> None:
    src = _mtd(tmp_path / "mtd")
    done = run_specad("dataset", "import", str(src), "--out", str(tmp_path / "out"), check=True)
    assert "12 images" in done.stdout
    run_specad("dataset", "check", str(tmp_path / "out"), check=True)
