"""Dataset layouts, `specad dataset check` and its error cases, channel selection, penalty set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, one_line_failure, run_specad
from PIL import Image

from specad.data import (
    Preprocess,
    discover_dataset,
    load_dataset,
    read_mask,
    select_channels,
)
from specad.data.check import check_dataset
from specad.data.validate import DatasetProblems
from specad.errors import SpecadError
from specad.io import Cube, read_cube, write_cube
from specad.models.efficientad.penalty import PenaltySet


def test_layout_is_discovered(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6, 4, 3 + 4]
    assert ds.defect_names == ["square", "stripe"]
    assert ds.classes == {0: "background", 1: "square", 2: "stripe"}
    bad = [s for s in ds.split("test") if s.anomalous]
    assert all(
        s.mask == tiny_dataset / "ground_truth" / s.label / f"{s.path.stem}.png" for s in bad
    )
    assert read_mask(bad[0], (64, 64)).max() == 1


def test_check_passes_on_a_good_dataset(tiny_dataset: Path) -> None:
    report = check_dataset(tiny_dataset)
    assert report.ok, report.problems
    assert report.channels == [6]
    assert report.wavelengths == [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0]


def test_cuvis_example_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, name in [
        ("ok", "a_ok_ok_1"),
        ("ok", "a_ok_ok_2"),
        ("leaf", "b_leaf_3"),
    ]:
        write_cube(tmp_path / folder / f"{name}.tif", Cube(rng.random((8, 8, 6), dtype=np.float32)))
    Image.fromarray(np.full((8, 8), 4, np.uint8)).save(
        tmp_path / "leaf" / "b_leaf_3_0_RGB_mask.png"
    )
    (tmp_path / "annotations.json").write_text(
        json.dumps({"categories": [{"id": 4, "name": "leaf"}]})
    )
    ds = discover_dataset(tmp_path)  # too few cubes for every split: the layout alone
    assert ds.layout == "cuvis-example"
    assert ds.classes == {0: "background", 4: "leaf"}
    leaf = next(s for s in ds.samples if s.anomalous)
    assert leaf.label == "leaf" and leaf.split == "test"
    assert read_mask(leaf, (8, 8)).max() == 4
    assert {s.split for s in ds.samples if not s.anomalous} <= {"train", "val", "test"}


def test_check_reports_every_problem(tiny_dataset: Path) -> None:
    # channel counts differ, a mask of the wrong size, an unknown id, a NaN cube, a truncated file
    write_cube(tiny_dataset / "train/good/extra.tif", Cube(np.zeros((64, 64, 5), np.float32)))
    sq = tiny_dataset / "ground_truth/square"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(sq / "square000.png")
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(sq / "square001.png")
    np.save(tiny_dataset / "val/good/nan.npy", np.full((64, 64, 6), np.nan, np.float32))
    (tiny_dataset / "val/good/cut.tif").write_bytes(b"II*\0garbage")
    problems = "\n".join(check_dataset(tiny_dataset).problems)
    assert "channel counts differ" in problems
    assert "square000.png: mask is 10x10 but its cube is 64x64" in problems
    assert "square001.png: mask ids [9] are not in the dataset's class list" in problems
    assert "nan.npy: 24576 NaN/Inf values" in problems
    assert "cut.tif: cannot read cube" in problems


def test_check_reports_empty_split(tiny_dataset: Path) -> None:
    shutil.rmtree(tiny_dataset / "val")
    assert any("'val' split is empty" in p for p in check_dataset(tiny_dataset).problems)


def test_cli_check_exit_codes(tiny_dataset: Path) -> None:
    ok = run_specad("dataset", "check", str(tiny_dataset), check=True)
    assert "1050, 1200, 1450" in ok.stdout
    shutil.rmtree(tiny_dataset / "train")
    bad = run_specad("dataset", "check", str(tiny_dataset))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'train' split is empty" in bad.stderr


def test_cli_bad_cube_is_one_line(tmp_path: Path) -> None:
    missing = run_specad("dataset", "check", str(tmp_path / "nope"))
    one_line_failure(missing, "nope: dataset folder not found")
    assert missing.stderr.strip().count("\n") == 0


def test_select_channels() -> None:
    cube = read_cube_like()
    assert select_channels(cube, "all") == list(range(6))
    assert select_channels(cube, "rgb") == [0, 1, 2]
    assert select_channels(cube, "swir") == [3, 4, 5]
    assert select_channels(cube, [1450, 1050]) == [5, 3]
    assert select_channels(cube, ["SWIR1200", 0]) == [4, 0]
    with pytest.raises(SpecadError, match="unknown band name 'NIR'"):
        select_channels(cube, ["NIR"])
    with pytest.raises(SpecadError, match="no band within 10 nm of 900"):
        select_channels(cube, [900])


def read_cube_like() -> Cube:
    return Cube(
        np.zeros((4, 4, 6), np.float32),
        ["R", "G", "B", "SWIR1050", "SWIR1200", "SWIR1450"],
        [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0],
    )


def test_preprocess_checks_channels_and_normalises(tiny_dataset: Path) -> None:
    cube = read_cube(tiny_dataset / "train/good/train000.tif")
    pre = Preprocess(6, [0, 3], 32)
    x = pre.cube_tensor(cube)
    assert x.shape == (2, 32, 32)
    assert pre.units() is None  # before fit the input is the cube itself
    pre.fit(x[None])
    z = pre.normalise(x)
    assert torch.allclose(z.mean(dim=(1, 2)), torch.full((2,), 0.45), atol=1e-4)
    scale, offset = (torch.tensor(u).view(-1, 1, 1) for u in pre.units())
    torch.testing.assert_close(z * scale + offset, x)  # units undo the standardisation
    with pytest.raises(SpecadError, match="expects cubes with 6 channels, this one has 3"):
        pre.cube_tensor(Cube(np.zeros((8, 8, 3), np.float32)))


def test_penalty_set_maps_rgb_to_n_channels() -> None:
    gen = torch.Generator().manual_seed(0)
    wl = [630.0, 532.0, 465.0, 1050.0, 1200.0]
    batch = PenaltySet(5, 64, wavelengths=wl, mapping="wavelength").sample(3, gen)
    assert batch.shape == (3, 5, 64, 64)
    assert batch.min() >= 0.0 and batch.max() <= 1.0
    torch.testing.assert_close(batch[:, 3], batch[:, :3].mean(1))  # SWIR bands get the grey level
    rep = PenaltySet(4, 64).sample(2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(rep[:, 3], rep[:, 0])  # channel 3 repeats red
    with pytest.raises(SpecadError, match="needs band wavelengths"):
        PenaltySet(4, 64, mapping="wavelength")


def test_make_dataset_is_readable(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", channels=3, defects=1)
    assert check_dataset(root).channels == [3]


def test_photos_are_read_in_place_with_their_stored_values(tmp_path: Path) -> None:
    """8-bit colour and 16-bit grey photos are cubes: R, G, B or one channel, nothing rescaled."""
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey = np.full((8, 8), 40000, np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=100)
    colour = read_cube(tmp_path / "c.png")
    assert colour.bands == ["R", "G", "B"] and np.array_equal(colour.data, rgb)
    deep = read_cube(tmp_path / "g.png")
    assert deep.shape == (8, 8, 1) and deep.data.max() == 40000
    assert read_cube(tmp_path / "c.jpg").channels == 3


def test_load_lists_every_structural_problem(tiny_dataset: Path) -> None:
    """Before any pixel is read: a missing split, a missing mask, an unreadable header."""
    shutil.rmtree(tiny_dataset / "val")
    (tiny_dataset / "ground_truth/square/square000.png").unlink()
    (tiny_dataset / "train/good/train000.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(DatasetProblems) as caught:
        load_dataset(tiny_dataset)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert "'val' split is empty" in problems[0]
    assert any("train000.tif: cannot read cube header" in p for p in problems)
    assert any("square000.png: mask missing for the defect image" in p for p in problems)
    done = run_specad("evaluate", "rx", str(tiny_dataset))
    assert done.returncode == 2 and "3 problems in the dataset" in done.stderr
