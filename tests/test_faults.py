"""The bad-input and fault matrix: each numbered failure of issue 11, held by one test or more.

Most tests use an RX model fitted in a second (it goes through the same Detector, model files
and prediction path as EfficientAD); the CLI is run as a user runs it, in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
from conftest import make_dataset, one_line_failure, run_specad, slow_case
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

from specad.data import load_dataset, read_mask
from specad.data.check import check_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset
from specad.inference import Detector
from specad.io import Cube, atomic_dir, read_cube, reserve_output, write_cube
from specad.models.efficientad.config import load_config
from specad.predict import predict_files
from specad.scenes import scene_scores


@pytest.fixture(scope="module")
def rx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = make_dataset(tmp_path_factory.mktemp("d") / "ds", size=32)
    model = tmp_path_factory.mktemp("m") / "rx"
    fit_on_dataset("rx", load_dataset(root)).save(model)
    return root, model


# 1 ------------------------------------------------------------------ outputs never replace


def test_folder_created_during_the_run_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "x"
    with (
        pytest.raises(SpecadError, match="appeared while this command ran"),
        atomic_dir(out) as tmp,
    ):
        (tmp / "result.txt").write_text("new")
        out.mkdir()  # the user, meanwhile
        (out / "precious.txt").write_text("x")
    assert (out / "precious.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no .part, no lock left


def test_force_replaces_and_an_empty_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "x"
    out.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    (out / "b").write_text("old")
    with atomic_dir(out, force=True) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["a"] and (out / "a").read_text() == "2"


def test_second_writer_fails_at_once(tmp_path: Path, rx_model) -> None:
    root, model = rx_model
    out = tmp_path / "pout"
    with reserve_output(out):
        with pytest.raises(SpecadError, match="another specad command is writing"), atomic_dir(out):
            pass
        done = run_specad("predict", str(model), str(root / "test"), "--out", str(out))
    one_line_failure(done, "pout", "another specad command is writing")
    assert not out.exists()


def test_two_concurrent_writers_one_wins(tmp_path: Path) -> None:
    out, results = tmp_path / "x", []
    inside = threading.Event()
    release = threading.Event()

    def slow() -> None:
        with atomic_dir(out) as tmp:
            (tmp / "who").write_text("slow")
            inside.set()
            release.wait(10)
        results.append("slow")

    t = threading.Thread(target=slow)
    t.start()
    inside.wait(10)
    with pytest.raises(SpecadError), atomic_dir(out):
        pass
    release.set()
    t.join()
    assert results == ["slow"] and (out / "who").read_text() == "slow"


def test_stale_part_folders_of_killed_runs_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".x.k1ll3d.part"
    (stale / "maps").mkdir(parents=True)
    other = tmp_path / ".y.k1ll3d.part"  # another output's: not ours to touch
    other.mkdir()
    with atomic_dir(tmp_path / "x") as tmp:
        (tmp / "f").write_text("1")
    assert not stale.exists() and other.exists()


# 2 ------------------------------------------------------------------ one map per row


def test_same_file_names_in_two_folders_get_two_maps(tmp_path: Path, rx_model) -> None:
    root, model = rx_model
    det = Detector.load(model)
    a, b = tmp_path / "dirA", tmp_path / "dirB"
    cube = read_cube(next((root / "test" / "square").iterdir()))
    write_cube(a / "000.tif", cube)
    write_cube(b / "000.tif", Cube(cube.data[::-1].copy(), cube.bands, cube.wavelengths))
    run = predict_files(det, [a / "000.tif", b / "000.tif"], tmp_path / "o")
    rows = (tmp_path / "o" / "scores.csv").read_text().splitlines()[1:]
    maps = sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.tif"))
    assert run.scored == 2 and len(rows) == 2
    assert maps == ["maps/dirA/000.tif", "maps/dirB/000.tif"]
    assert len(list((tmp_path / "o" / "overlays").rglob("*.png"))) == 2
    first, second = (tifffile.imread(tmp_path / "o" / m) for m in maps)
    assert not np.array_equal(first, second)


# 3 ------------------------------------------------------------------ non-finite is never normal


def test_extreme_pixel_is_an_error_naming_the_cube(tmp_path: Path, rx_model) -> None:
    root, model = rx_model
    cube = read_cube(next((root / "test" / "good").iterdir()))
    cube.data[3, 4, 2] = 3e38
    path = tmp_path / "hot.tif"
    write_cube(path, cube)
    with pytest.raises(SpecadError, match="hot.tif: the anomaly map is not finite"):
        Detector.load(model).predict(read_cube(path), paths=[path])
    done = run_specad("predict", str(model), str(path), "--out", str(tmp_path / "o"))
    one_line_failure(done, "none of the 1 inputs could be scored", "hot.tif")
    assert "hot.tif: the anomaly map is not finite" in done.stderr
    assert not (tmp_path / "o").exists()  # nothing scored: nothing written


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m["preprocess"].update(std=[0.0] * 6, mean=[0.0] * 6), "std"),
        (lambda m: m["preprocess"].update(mean=[float("nan")] * 6, std=[1.0] * 6), "mean"),
        (lambda m: m["preprocess"].update(channels=[0, 99]), "channels"),
    ],
)
def test_model_files_with_bad_normalisation_are_refused(tmp_path, rx_model, edit, needle) -> None:
    _, model = rx_model
    bad = tmp_path / "bad"
    bad.mkdir()
    meta = json.loads((model / "model.json").read_text())
    edit(meta)
    (bad / "model.json").write_text(json.dumps(meta))
    (bad / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    with pytest.raises(SpecadError, match=f"model.json: .*{needle}"):
        Detector.load(bad)


def test_a_detector_file_with_a_nan_threshold_is_refused(tmp_path, rx_model) -> None:
    _, model = rx_model
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    with safe_open(str(bad / "model.safetensors"), framework="np") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    fitted = json.loads(header["fitted"])
    fitted["calibration"]["threshold"] = float("nan")
    header["fitted"] = json.dumps(fitted)
    save_file(tensors, str(bad / "model.safetensors"), metadata=header)
    with pytest.raises(SpecadError, match="model.safetensors: rx calibration threshold: Input sh"):
        Detector.load(bad)


# 4 ------------------------------------------------------------------ one line, never a traceback


def test_envi_with_zero_size_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "z.hdr").write_text("ENVI\nlines = 0\nsamples = 0\nbands = 3\ndata type = 4\n")
    (tmp_path / "z.img").write_bytes(b"")
    with pytest.raises(SpecadError, match="z.hdr: the cube is empty"):
        read_cube(tmp_path / "z.hdr")


@pytest.mark.parametrize("unwritable", ["below a file", slow_case("in /proc")])
def test_out_below_a_file_or_unwritable_is_one_line(
    tmp_path: Path, rx_model, unwritable: str
) -> None:
    root, model = rx_model
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "x" if unwritable == "below a file" else Path("/proc/specad-test/x")
    one_line_failure(
        run_specad("predict", str(model), str(root / "test"), "--out", str(out)), "cannot write"
    )
    one_line_failure(run_specad("synth", "--out", str(out), "--size", "32"), "cannot write")
    one_line_failure(
        run_specad("report", "--model", "rx", "--dataset", str(root), "--out", str(out)),
        "cannot write",
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"data": {"root": str(root), "image_size": 64}}))
    one_line_failure(run_specad("train", "-c", str(cfg), "--out", str(out / "r")), "cannot write")


def test_train_configs_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  root: [a, b]\n")
    with pytest.raises(SpecadError, match="data.root"):
        load_config(cfg)
    cfg.write_text(f"data:\n  root: {tmp_path}\n  image_size: 32\n")
    with pytest.raises(SpecadError, match="too small for this model \\(minimum 34 px\\)"):
        load_config(cfg)
    assert load_config(cfg, ["model.padding=true"]).data.image_size == 32


# 5 ------------------------------------------------------------------ one dataset validation


def test_unknown_mask_ids_fail_evaluate_like_check(tmp_path: Path, rx_model) -> None:
    root = make_dataset(tmp_path / "ds", size=32)
    mask = root / "ground_truth" / "square" / "square000.png"
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(mask)
    assert any("mask ids [9]" in p for p in check_dataset(root).problems)
    ds = load_dataset(root)
    sample = next(s for s in ds.samples if s.mask == mask)
    with pytest.raises(SpecadError, match="square000.png: mask ids \\[9\\]"):
        read_mask(sample, (32, 32))
    _, model = rx_model
    one_line_failure(run_specad("evaluate", str(model), str(root)), "square000.png", "mask ids [9]")


def test_defect_folder_missing_from_classes_json(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", size=32)
    (root / "test" / "square").rename(root / "test" / "blob")
    (root / "ground_truth" / "square").rename(root / "ground_truth" / "blob")
    with pytest.raises(SpecadError, match="defect class 'blob' is not named in"):
        load_dataset(root)
    assert any("'blob'" in p for p in check_dataset(root).problems)


# 6 ------------------------------------------------------------------ smaller ones


def test_many_sizes_are_summarised(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", size=32)
    for i in range(12):
        write_cube(root / "train" / "good" / f"s{i}.tif", Cube(np.ones((20 + i, 30, 6))))
    done = run_specad("dataset", "check", str(root))
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("sizes"))
    assert "13 different sizes" in line and len(line) < 200


def test_read_errors_do_not_suggest_missing_flags(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "flat.mat", {"a": np.zeros((4, 4))})
    with pytest.raises(SpecadError, match=r"no 3-D numeric array found \(variables: a\)"):
        read_cube(tmp_path / "flat.mat")


def test_scene_errors_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones((1, 1, 3), np.float32))
    with pytest.raises(SpecadError, match="one.npy: RX needs at least 2"):
        scene_scores(tmp_path / "one.npy")


# 7 ------------------------------------------------------------------ TIFF as tifffile writes it


def test_bare_tifffile_array_keeps_its_shape(tmp_path: Path) -> None:
    cube = np.random.default_rng(0).random((64, 64, 6)).astype(np.float32)
    tifffile.imwrite(tmp_path / "c.tif", cube)
    np.testing.assert_array_equal(read_cube(tmp_path / "c.tif").data, cube)
    np.testing.assert_array_equal(read_cube(tmp_path / "c.tif", axes="hwc").data, cube)
    tifffile.imwrite(tmp_path / "b.tif", cube.transpose(2, 0, 1))  # band-first, no axes
    with pytest.warns(UserWarning, match="guessed as 'chw'"):
        np.testing.assert_array_equal(read_cube(tmp_path / "b.tif").data, cube)


# 8, 9 -------------------------------------------------------------- MATLAB as its authors store it


def test_matlab_cube_smaller_in_pixels_than_bands_is_hwc(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((80, 100, 162))
    truth = np.zeros((80, 100), np.uint8)
    truth[10:14, 20:23] = 1
    data[10:14, 20:23] += 3.0
    scipy.io.savemat(tmp_path / "s.mat", {"data": data, "map": truth})
    assert read_cube(tmp_path / "s.mat").shape == (80, 100, 162)
    (run,), _ = scene_scores(tmp_path / "s.mat", "map")
    assert run.score_map.shape == (80, 100) and run.auroc is not None and run.auroc > 0.99


def test_matlab_v73_truth_variable(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((30, 40, 12))
    truth = np.zeros((30, 40), np.uint8)
    truth[5:8, 6:9] = 1
    data[5:8, 6:9] += 3.0
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["hsi"] = data.T  # MATLAB column-major, as h5py sees it
        f["hsi_gt"] = truth.T
    assert read_cube(path, variable="hsi").shape == (30, 40, 12)
    (run,), _ = scene_scores(path, "hsi_gt", variable="hsi")
    assert run.score_map.shape == (30, 40) and run.auroc is not None and run.auroc > 0.99
    with pytest.raises(SpecadError, match="truth mask is 40x30, the scene is 30x40"):
        with h5py.File(path, "a") as f:
            del f["hsi_gt"]
            f["hsi_gt"] = truth  # stored the wrong way round
        scene_scores(path, "hsi_gt", variable="hsi")
