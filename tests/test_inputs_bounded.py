"""Issue 38, cube readers and saved models: every cube's declared size is checked against
`specad.bounds` before anything is allocated, whatever the format; decompression bombs, MATLAB
text and missing files are one line; a knn ``model.json`` must match its fitted state."""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
import torch
from conftest import checksums, make_dataset, one_line_failure, run_specad
from fuzz_models import peak_rss_mb, reset_peak_rss

from specad.data import load_dataset, read_mask
from specad.errors import SpecadError
from specad.inference import Detector
from specad.io import Cube, read_cube, write_cube
from specad.io.cube import check_declared
from specad.io.read import read_image

TOO_MANY = "specad.bounds.MAX_CUBE_ELEMENTS"
"""Every refusal of a declared size names the bound."""
SECONDS = 30
"""Each repro: one line within this."""


def _npz(path: Path, shape: tuple[int, ...], nbytes: int | None = None, compress: bool = True):
    """An ``.npz`` whose member ``cube`` declares ``shape`` (float32) and holds ``nbytes`` zero
    bytes after its header (default: what the shape needs), written in chunks, never held."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    nbytes = int(np.prod(shape)) * 4 if nbytes is None else nbytes
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    chunk = bytes(1 << 22)
    with zipfile.ZipFile(path, "w", method) as z, z.open("cube.npy", "w", force_zip64=True) as f:
        f.write(header.getvalue())
        for start in range(0, nbytes, len(chunk)):
            f.write(chunk[: min(len(chunk), nbytes - start)])
    return path


def _png(path: Path, width: int, height: int, color_type: int) -> Path:
    """A PNG that declares its size and holds no pixels: PIL decides from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


# 1 ------------------------------------------------------------------ declared sizes


def test_the_bound_reads_a_large_airborne_cube_and_refuses_more() -> None:
    check_declared((1024, 1024, 224), None)  # 0.9 GB as float32: still read
    with pytest.raises(SpecadError, match=TOO_MANY):
        check_declared((4096, 4096, 17), None)


def test_a_small_npz_of_zeros_is_refused_before_it_inflates(tmp_path: Path) -> None:
    """The repro: 373 KB of deflated zeros that declare 4000 x 4000 x 6 took scene to 3.9 GB."""
    bomb = _npz(tmp_path / "zeros.npz", (4000, 4000, 6))
    assert bomb.stat().st_size < 1 << 20
    before = checksums(tmp_path)
    reset_peak_rss()
    with pytest.raises(SpecadError, match=r"zeros\.npz: variable 'cube' inflates .* over 100x"):
        read_cube(bomb)
    assert peak_rss_mb() < 64  # nothing inflated
    start = time.monotonic()
    done = run_specad("scene", str(bomb), "--out", str(tmp_path / "out"), timeout=SECONDS)
    assert time.monotonic() - start < SECONDS
    one_line_failure(done, "zeros.npz", "decompression bomb")
    assert checksums(tmp_path) == before


def test_an_npz_member_that_declares_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    """A header is a few bytes, whatever shape it claims: the zip entry must hold that shape."""
    lying = _npz(tmp_path / "lying.npz", (20000, 20000, 10), nbytes=1000, compress=False)
    reset_peak_rss()
    with pytest.raises(SpecadError, match=r"lying\.npz: .*declares .* its zip entry"):
        read_cube(lying)
    padded = _npz(tmp_path / "padded.npz", (4, 5, 3), nbytes=4 * 5 * 3 * 4 + 8)
    with pytest.raises(SpecadError, match=r"padded\.npz: .*declares .* its zip entry"):
        read_cube(padded)
    huge = _npz(tmp_path / "huge.npz", (1, 20000, 20000), nbytes=0, compress=False)
    with pytest.raises(SpecadError, match=r"huge\.npz: .*declares"):
        read_cube(huge)
    assert peak_rss_mb() < 64


def _npy(path: Path) -> Path:
    header = io.BytesIO()
    shape = (20000, 20000, 4)
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    path.write_bytes(header.getvalue() + bytes(64))
    return path


def _tiff(path: Path) -> Path:
    tifffile.imwrite(path, np.zeros((16, 16), np.float32), metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(20000)
        tif.pages[0].tags["ImageLength"].overwrite(20000)
    return path


def _envi(path: Path) -> Path:
    write_cube(path, Cube(np.zeros((4, 5, 3), np.float32)))
    header = path.read_text()
    for key, value in (("lines", 20000), ("samples", 20000), ("bands", 3)):
        header = "\n".join(
            f"{key} = {value}" if ln.split("=")[0].strip() == key else ln
            for ln in header.splitlines()
        )
    path.write_text(header + "\n")
    return path


def _mat_v5(path: Path) -> Path:
    """A v5 file whose cube's dimensions subelement is patched to a huge size."""
    scipy.io.savemat(path, {"cube": np.zeros((2, 3, 4))}, do_compression=False)
    dims = struct.pack("<3i", 2, 3, 4)
    data = path.read_bytes()
    assert data.count(dims) == 1
    path.write_bytes(data.replace(dims, struct.pack("<3i", 20000, 20000, 4)))
    return path


def _mat_v73(path: Path) -> Path:
    with h5py.File(path, "w", userblock_size=512) as f:  # space declared, never written
        f.create_dataset("cube", shape=(4, 20000, 20000), dtype="f4")
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("c.npy", _npy),
        ("c.tif", _tiff),
        ("c.hdr", _envi),
        ("c.mat", _mat_v5),
        ("v73.mat", _mat_v73),
    ],
)
def test_every_format_is_refused_by_its_header(tmp_path: Path, name: str, make) -> None:
    """Each file is a few KB whose header declares 1.6 billion values."""
    path = make(tmp_path / name)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 1 << 20
    reset_peak_rss()
    with pytest.raises(SpecadError, match=TOO_MANY) as err:
        read_cube(path)
    assert name in str(err.value)
    assert peak_rss_mb() < 64


def test_envi_data_of_the_wrong_size_is_refused_before_it_is_read(tmp_path: Path) -> None:
    write_cube(tmp_path / "c.hdr", Cube(np.zeros((4, 5, 3), np.float32)))
    (tmp_path / "c.img").write_bytes(bytes(10))
    with pytest.raises(SpecadError, match=r"c\.img: ENVI data holds 10 bytes, header says 4x5x3"):
        read_cube(tmp_path / "c.hdr")


def test_cubes_within_the_bound_still_read_in_every_format(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((6, 7, 3), dtype=np.float32)
    for name in ("c.npy", "c.npz", "c.tif", "c.hdr"):
        write_cube(tmp_path / name, Cube(data))
        np.testing.assert_array_equal(read_cube(tmp_path / name, axes="hwc").data, data)
    scipy.io.savemat(tmp_path / "c.mat", {"cube": data, "wl": np.arange(3.0)})
    cube = read_cube(tmp_path / "c.mat")
    np.testing.assert_array_equal(cube.data, data)
    assert cube.wavelengths == [0.0, 1.0, 2.0]


# 2 ------------------------------------------------------------------ decompression bombs


def test_a_png_decompression_bomb_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """The repro: a 20000 x 20000 PNG; PIL's DecompressionBombError becomes one line."""
    ds = make_dataset(tmp_path / "ds", size=32, counts=(2, 1, 1), defects=1)
    sample = next(s for s in load_dataset(ds).samples if s.mask is not None)
    _png(sample.mask, 20000, 20000, 0)
    with pytest.raises(SpecadError, match=r"square000\.png: image over PIL's decompression-bomb"):
        read_mask(sample, (32, 32))


def test_an_image_under_pils_limit_but_over_the_bound_is_refused_without_a_warning(
    tmp_path: Path,
) -> None:
    bomb = _png(tmp_path / "rgb.png", 10000, 10000, 2)  # PIL only warns at this size
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SpecadError) as err:
        warnings.simplefilter("always")
        read_image(bomb)
    assert "rgb.png: the image declares 10000 x 10000 x 3" in str(err.value)
    assert TOO_MANY in str(err.value)
    assert not caught


# 3 ------------------------------------------------------------------ MATLAB text


def _matlab_v73(path: Path) -> Path:
    """A v7.3 file as MATLAB writes it: a cube, text, a cell and a struct."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["cube"] = np.ones((3, 8, 9))  # h5py sees MATLAB's transpose: a 9 x 8 x 3 cube
        f["cube"].attrs["MATLAB_class"] = np.bytes_("double")
        text = np.frombuffer("a 3-D string".encode("utf-16-le"), np.uint16).reshape(2, 3, 2)
        f["name"] = text
        f["name"].attrs["MATLAB_class"] = np.bytes_("char")
        refs = f.create_group("#refs#")
        refs["a"] = np.zeros(2)
        cell = f.create_dataset("cell", (1, 1), dtype=h5py.ref_dtype)
        cell[0, 0] = refs["a"].ref
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        f.create_group("info").attrs["MATLAB_class"] = np.bytes_("struct")
    return path


@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("name", "MATLAB text (char)"),
        ("cell", "a MATLAB cell"),
        ("info", "a MATLAB struct"),
    ],
)
def test_matlab_text_cells_and_structs_are_not_cubes(
    tmp_path: Path, variable: str, what: str
) -> None:
    path = _matlab_v73(tmp_path / "s.mat")
    with pytest.raises(SpecadError) as err:
        read_cube(path, variable=variable)
    assert str(err.value).endswith(f"s.mat: variable '{variable}' is {what}, not a numeric cube")
    assert read_cube(path).shape == (9, 8, 3)  # the numeric cube, never the 3-D text


def test_matlab_v73_text_alone_is_no_cube_on_the_command_line(tmp_path: Path) -> None:
    """The repro: a v7.3 string variable was scored as a cube."""
    path = tmp_path / "text.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["s"] = np.frombuffer("hello world!".encode("utf-16-le"), np.uint16).reshape(2, 3, 2)
        f["s"].attrs["MATLAB_class"] = np.bytes_("char")
    with pytest.raises(SpecadError, match=r"no 3-D numeric array found \(variables: s\)"):
        read_cube(path)
    done = run_specad("scene", str(path), "--variable", "s", timeout=SECONDS)
    one_line_failure(done, "text.mat", "variable 's' is MATLAB text (char)")


def test_matlab_v5_text_is_refused_by_name(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "v5.mat", {"cube": np.ones((4, 5, 2)), "label": "tray"})
    with pytest.raises(SpecadError, match="variable 'label' is MATLAB text"):
        read_cube(tmp_path / "v5.mat", variable="label")


# 4 ------------------------------------------------------------------ missing files


def test_a_missing_file_says_it_does_not_exist(tmp_path: Path) -> None:
    for name in ("nonexistent", "nonexistent.tif", "cube.png"):
        with pytest.raises(SpecadError, match=rf"{name}: no such file"):
            read_cube(tmp_path / name)


# 5 ------------------------------------------------------------------ knn model.json vs state


@pytest.fixture(scope="module")
def knn_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two knn fits of 32 px cubes (resized to knn's 256), on two datasets."""
    root = tmp_path_factory.mktemp("knn")
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        ds = make_dataset(root / f"ds{name}", size=32, seed=seed)
        done = run_specad("fit", "knn", str(ds), "--out", str(root / name), timeout=120)
        assert done.returncode == 0, done.stderr
        models[name] = root / name
    models["data"] = root / "dsa"
    return models


def test_predict_of_a_missing_cube_says_it_does_not_exist(
    knn_models: dict[str, Path], tmp_path: Path
) -> None:
    """The repro: ``specad predict m /nonexistent`` said "unknown cube format"."""
    missing = tmp_path / "nonexistent"
    out = tmp_path / "p"
    done = run_specad("predict", str(knn_models["a"]), str(missing), "--out", str(out))
    line = one_line_failure(done, f"{missing}: no such file")
    assert "unknown cube format" not in line
    assert not out.exists()


def _copy(model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    return folder


def test_a_knn_model_json_edited_to_another_size_is_refused(
    knn_models: dict[str, Path], tmp_path: Path
) -> None:
    model = _copy(knn_models["a"], tmp_path)
    assert Detector.load(model).meta.preprocess.image_size == 256  # as fitted: loads
    doc = json.loads((model / "model.json").read_text())
    doc["preprocess"]["image_size"] = 128
    (model / "model.json").write_text(json.dumps(doc))
    before = checksums(model)
    test = knn_models["data"] / "test"
    done = run_specad("predict", str(model), str(test), "--out", str(tmp_path / "p"))
    one_line_failure(done, "model.json", "preprocess.image_size is 128", "256 px")
    assert checksums(model) == before
    assert not (tmp_path / "p").exists()


def test_a_knn_model_json_from_another_fit_is_refused(
    knn_models: dict[str, Path], tmp_path: Path
) -> None:
    model = _copy(knn_models["a"], tmp_path)
    shutil.copy(knn_models["b"] / "model.json", model / "model.json")
    with pytest.raises(SpecadError, match=r"m/model\.json: preprocess\.mean/std are not the"):
        Detector.load(model)


def test_knn_records_its_input_size_and_none_where_sizes_varied() -> None:
    """Cubes at their own sizes fit too, in batches of one size, and bind no size at load."""
    from specad.models.knn import KNN

    gen = torch.Generator().manual_seed(0)

    def image(side: int) -> torch.Tensor:
        return 0.4 + 0.05 * torch.randn(3, side, side, generator=gen)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two validation scores: the threshold warns
        same = KNN(coreset_size=16).fit([image(32) for _ in range(3)], [image(32), image(32)])
        varied = KNN(coreset_size=16).fit([image(32), image(40), image(40)], [image(48)] * 2)
    assert same.fitted_input.size == 32
    assert varied.fitted_input.size is None
    assert varied.score_maps(image(40)[None]).shape == (1, 1, 40, 40)
