"""Nothing of the user's is lost (issue 38): no output replaces an input, every input gets its
own output, every writer holds its output alone, and a full disk is one line that leaves
nothing behind. Data-loss tests compare the SHA-256 of every input before and after."""

from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import checksums, make_dataset, one_line_failure, run_specad
from PIL import Image

import specad.data.importing
from specad.cli.models import fit_cmd
from specad.data import load_dataset
from specad.errors import SpecadError
from specad.export import export_onnx
from specad.fit import fit_on_dataset, train
from specad.inference import Detector
from specad.io import Cube, atomic_dir, read_cube, reserve_output, write_cube
from specad.models.efficientad.config import load_config
from specad.predict import output_names, predict_files
from specad.report import ReportConfig, load_report_config, write_report
from specad.report.config import named_models

BAD = os.fsdecode(b"bad\xff.tif")
"""A file name that is not UTF-8, as Python holds it."""


def _image(path: Path, shape: tuple[int, ...], value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _mvtec(root: Path) -> Path:
    """A tiny MVTec-style source: ten normal images, one defect with its mask."""
    for i in range(10):
        _image(root / "train" / "good" / f"{i:03d}.png", (16, 16, 3), 90 + i)
    _image(root / "test" / "good" / "000.png", (16, 16, 3))
    _image(root / "test" / "broken" / "000.png", (16, 16, 3))
    _image(root / "ground_truth" / "broken" / "000_mask.png", (16, 16), 255)
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("inputs")
    ds = make_dataset(base / "ds", size=32)
    model = base / "model"
    fit_on_dataset("rx", load_dataset(ds)).save(model)
    return {"ds": ds, "model": model, "src": _mvtec(base / "src")}


# 1 ------------------------------------------------------------------ inputs are sacred

OVERLAPS = {
    "predict onto the dataset": ("predict {model} {ds}/test --out {ds} --force", "contains"),
    "predict onto the model": ("predict {model} {ds}/test/good --out {model} --force", "is"),
    "predict inside its input": ("predict {model} {ds}/test --out {ds}/test/maps", "lies inside"),
    "report onto the dataset": ("report --model {model} --dataset {ds} --out {ds} --force", "is"),
    "report onto the model": ("report --model {model} --dataset {ds} --out {model} --force", "is"),
    "import onto the source": ("dataset import {src} --out {src} --force", "is"),
    "import inside the source": ("dataset import {src} --out {src}/train/x --force", "lies inside"),
    "fit onto the dataset": ("fit rx {ds} --out {ds}/train --force", "lies inside"),
}
FULL_RUN_ONLY = {"predict onto the model", "report onto the model", "import inside the source"}
"""Cases of a kind the quick run (``-m "not slow"``) already checks: each costs a process."""


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(case, id=name, marks=[pytest.mark.slow] if name in FULL_RUN_ONLY else [])
        for name, case in OVERLAPS.items()
    ],
)
def test_force_never_replaces_an_input(inputs: dict[str, Path], command) -> None:
    args, what = command
    before = checksums(*inputs.values())
    done = run_specad(*args.format(**inputs).split(), timeout=120)
    one_line_failure(done, f"the output {what}", "choose another --out")
    assert checksums(*inputs.values()) == before


def test_train_refuses_an_output_in_its_data(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", size=32)
    before = checksums(root)
    cfg = load_config(None, ["model.teacher=pdn-random"], data={"root": str(root)})
    with pytest.raises(SpecadError, match="the output contains the input"):
        train(cfg, tmp_path, force=True, progress=False)
    assert checksums(root) == before


# 2 ------------------------------------------------------------------ one output per input


def test_every_input_gets_its_own_map_and_its_name_verbatim(tmp_path: Path, inputs) -> None:
    cube = read_cube(next((inputs["ds"] / "test" / "square").iterdir()))
    names = ["x.tif", "x.tif.npy", "x.npy", "X.tif", BAD, "y/x.tif"]
    files = []
    for k, name in enumerate(names):  # each cube its own content, so each map differs
        files.append(tmp_path / "in" / name)
        write_cube(files[-1], Cube(np.roll(cube.data, 5 * k, axis=0), cube.bands))
    run = predict_files(Detector.load(inputs["model"]), files, tmp_path / "out")
    out = tmp_path / "out"
    rows = [ln.split(",") for ln in (out / "scores.csv").read_text("utf-8").splitlines()[1:]]
    assert run.scored == len(names) and len(rows) == len(names)
    assert [r[0] for r in rows] == [str(tmp_path / "in" / n) for n in names[:4]] + [
        str(tmp_path / "in" / "bad\\xff.tif"),
        str(tmp_path / "in" / "y" / "x.tif"),
    ]
    maps = [out / r[1] for r in rows]
    assert len({m.as_posix().casefold() for m in maps}) == len(names)
    assert len(list((out / "overlays").rglob("*.png"))) == len(names)
    det = Detector.load(inputs["model"])
    for f, m in zip(files, maps, strict=True):  # every row shows its own cube's map
        assert np.allclose(tifffile.imread(m), det.predict(read_cube(f)).anomaly_map)


def test_no_map_takes_the_name_of_an_input_folder() -> None:
    # x.npy's map would be maps/x.tif, the folder of the other input's map
    assert output_names([Path("/d/x.npy"), Path("/d/x.tif/y.npy")]) == [
        Path("x-2"),
        Path("x.tif/y"),
    ]


def test_import_refuses_two_sources_for_one_cube(tmp_path: Path) -> None:
    src = _mvtec(tmp_path / "src")
    _image(src / "test" / "good" / "000.jpg", (16, 16, 3), 7)
    before = checksums(src)
    done = run_specad("dataset", "import", str(src), "--out", str(tmp_path / "out"), timeout=120)
    one_line_failure(done, "000.jpg and 000.png would both become", "rename one")
    assert not (tmp_path / "out").exists() and checksums(src) == before


def test_import_refuses_names_that_differ_only_in_case(tmp_path: Path) -> None:
    src = _mvtec(tmp_path / "src")
    _image(src / "test" / "good" / "A.png", (16, 16, 3))
    _image(src / "test" / "good" / "a.png", (16, 16, 3))
    with pytest.raises(SpecadError, match="A.png and a.png would both become"):
        specad.data.importing.import_dataset(src, tmp_path / "out")


@pytest.mark.parametrize(
    "flags",
    [["--model", "a=m1", "--model", "a=m2"], ["--model", "x/knn", "--model", "y/knn"]],
    ids=["same name", "same last part"],
)
def test_report_refuses_two_models_with_one_name(tmp_path: Path, inputs, flags) -> None:
    done = run_specad(
        "report", *flags, "--dataset", str(inputs["ds"]), "--out", str(tmp_path / "r")
    )
    one_line_failure(done, "are both named", "--model NAME=PATH")
    assert not (tmp_path / "r").exists()


def test_report_model_names_differ_beyond_case(inputs) -> None:
    assert named_models(["a=rx", "b=knn"]) == {"a": "rx", "b": "knn"}
    with pytest.raises(SpecadError, match="'knn' and 'KNN' differ only in case"):
        load_report_config(None, models={"knn": "knn", "KNN": "rx"}, datasets=["d"], out="r")


def test_report_with_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", size=32, counts=(6, 4, 2), defects=1)
    good = sorted((root / "test" / "good").iterdir())[0]
    good.rename(good.with_name(BAD))
    cfg = ReportConfig(models={"rx": "rx"}, datasets=[root], out=tmp_path / "r", max_images=99)
    index = write_report(cfg)
    assert "bad\\xff.tif" in index.read_text("utf-8")


# 3 ------------------------------------------------------------------ one writer per output


def test_fit_holds_its_output(tmp_path: Path, inputs) -> None:
    out = tmp_path / "m"
    with reserve_output(out):
        done = run_specad("fit", "rx", str(inputs["ds"]), "--out", str(out))
    one_line_failure(done, "another specad command is writing this output")
    assert not out.exists()
    fit_cmd("rx", inputs["ds"], out)
    before = checksums(out)
    with pytest.raises(SpecadError, match="not empty"):  # a second fit loses nothing
        fit_cmd("rx", inputs["ds"], out)
    assert checksums(out) == before


def test_train_stopped_before_its_first_checkpoint_can_be_rerun(tmp_path, monkeypatch) -> None:
    root = make_dataset(tmp_path / "ds", size=32, counts=(4, 2, 2), defects=1)
    cfg = load_config(
        None,
        ["data.image_size=64", "model.teacher=pdn-random", "train.steps=2", "train.export=[]"],
        data={"root": str(root)},
    )
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("specad.models.efficientad.run.fit_network", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["config.yaml"]
    with monkeypatch.context() as m:  # and a full disk on the next try names the run
        m.setattr("specad.models.efficientad.run.fit_network", _enospc)
        with pytest.raises(SpecadError, match=f"^{out}: cannot write \\(No space left"):
            train(cfg, out, progress=False)
    with pytest.warns(UserWarning, match="before its first checkpoint"):
        assert train(cfg, out, resume=True, stop_after=1, progress=False).is_file()
    (out / "config.yaml").write_text("data: {root: elsewhere}\n")  # the user's own file
    (out / "checkpoints" / "last.pt").unlink()
    with pytest.raises(SpecadError, match="not empty"):
        train(cfg, out, progress=False)


# 4 ------------------------------------------------------------------ the user's umask


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_follow_the_umask(tmp_path: Path, inputs, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_cube(tmp_path / "c.npz", read_cube(next((inputs["ds"] / "train/good").iterdir())))
        Detector.load(inputs["model"]).save(tmp_path / "m")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    for path in (tmp_path / "c.npz", tmp_path / "m/model.safetensors", tmp_path / "m/model.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask


# 5 ------------------------------------------------------------------ a full disk


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_fit_leaves_no_output(tmp_path: Path, inputs, monkeypatch) -> None:
    monkeypatch.setattr("specad.models.base.BaseDetector.save", _enospc)
    with pytest.raises(SpecadError) as err:
        fit_cmd("rx", inputs["ds"], tmp_path / "m")
    assert (
        str(err.value) == f"{tmp_path}/m/model.safetensors: cannot write (No space left on device)"
    )
    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", _enospc)  # model.json, after the weights
    with pytest.raises(SpecadError) as err:
        fit_cmd("rx", inputs["ds"], tmp_path / "m")
    assert str(err.value) == f"{tmp_path}/m/model.json: cannot write (No space left on device)"
    assert os.listdir(tmp_path) == []


def test_full_disk_during_export_is_not_a_model_problem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.onnx, "export", _enospc)
    with pytest.raises(SpecadError) as err:
        export_onnx(torch.nn.Conv2d(1, 1, 1), 1, 16, tmp_path / "model.onnx", "0")
    assert str(err.value) == f"{tmp_path}/model.onnx: cannot write (No space left on device)"
    assert os.listdir(tmp_path) == []


# 6 ------------------------------------------------------------------ --out .


def test_force_onto_the_working_folder_leaves_nothing_beside_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.txt").write_text("old")
    monkeypatch.chdir(tmp_path / "o")
    with atomic_dir(".", force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(tmp_path) == ["o"] and os.listdir(tmp_path / "o") == ["new.txt"]


# 7, 8 ------------------------------------------------------------------ import checks first


def test_import_checks_every_mask_before_converting(tmp_path: Path, monkeypatch) -> None:
    src = _mvtec(tmp_path / "src")
    (src / "ground_truth" / "broken" / "000_mask.png").unlink()

    def converted(*args, **kwargs):
        raise AssertionError("converted an image before checking the source")

    monkeypatch.setattr(specad.data.importing, "_write_item", converted)
    with pytest.raises(SpecadError, match="000_mask.png: mask missing for the defect image"):
        specad.data.importing.import_dataset(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _png_header(path: Path, width: int, height: int, colour: int = 0) -> Path:
    """A PNG that declares ``width`` x ``height`` in a few bytes: header, one empty row, end."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.mark.parametrize(("side", "colour"), [(20000, 0), (12000, 2)], ids=["bomb", "bounds"])
def test_huge_image_is_one_line_naming_it(tmp_path: Path, side: int, colour: int) -> None:
    src = _mvtec(tmp_path / "src")
    huge = _png_header(src / "train" / "good" / "huge.png", side, side, colour)
    done = run_specad("dataset", "import", str(src), "--out", str(tmp_path / "out"), timeout=60)
    line = one_line_failure(done, str(huge))
    assert "pixels" in line or "values" in line
    assert not (tmp_path / "out").exists()
