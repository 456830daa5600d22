"""Cube I/O: round trips for every writable format, the readers' layouts, and bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
from conftest import shared_data

from specad.errors import SpecadError
from specad.io import Cube, atomic_dir, read_cube, to_reflectance, write_cube
from specad.io.mapped import nonfinite_count


@pytest.fixture
def cube() -> Cube:
    rng = np.random.default_rng(0)
    return Cube(
        rng.random((12, 17, 6), dtype=np.float32),
        ["R", "G", "B", "SWIR1050", "SWIR1200", "SWIR1450"],
        [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0],
        (0, 1, 2),
    )


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".npz", ".hdr"])
def test_round_trip_keeps_pixels_and_bands(tmp_path: Path, cube: Cube, suffix: str) -> None:
    write_cube(tmp_path / f"c{suffix}", cube)
    back = read_cube(tmp_path / f"c{suffix}")
    np.testing.assert_array_equal(back.data, cube.data)
    assert back.bands == cube.bands
    assert back.wavelengths == cube.wavelengths
    assert back.rgb == cube.rgb


def test_npy_round_trip_keeps_pixels(tmp_path: Path, cube: Cube) -> None:
    write_cube(tmp_path / "c.npy", cube)
    np.testing.assert_array_equal(read_cube(tmp_path / "c.npy").data, cube.data)


def test_envi_reads_through_the_img_file(tmp_path: Path, cube: Cube) -> None:
    write_cube(tmp_path / "c.hdr", cube)
    assert read_cube(tmp_path / "c.img").wavelengths == cube.wavelengths


def test_tiff_multipage_uint16_is_one_band_per_page(tmp_path: Path) -> None:
    raw = np.arange(4 * 8 * 9, dtype=np.uint16).reshape(4, 8, 9)
    with tifffile.TiffWriter(tmp_path / "p.tif") as tif:
        for page in raw:
            tif.write(page, photometric="minisblack", compression="lzw")
    back = read_cube(tmp_path / "p.tif")
    assert back.shape == (8, 9, 4)
    np.testing.assert_array_equal(back.data[:, :, 2], raw[2].astype(np.float32))


def test_tiff_rgb_uint8(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).integers(0, 255, (10, 11, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", raw, photometric="rgb")
    back = read_cube(tmp_path / "rgb.tif")
    assert back.shape == (10, 11, 3)
    np.testing.assert_array_equal(back.data, raw.astype(np.float32))


def test_mat_v5_band_first_needs_layout_and_named_variable(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((5, 20, 30))
    scipy.io.savemat(tmp_path / "b.mat", {"cube": data, "other": np.zeros((40, 40, 40))})
    assert read_cube(tmp_path / "b.mat", variable="cube").shape == (5, 20, 30)  # MATLAB: HxWxB
    assert read_cube(tmp_path / "b.mat", variable="cube", axes="chw").shape == (20, 30, 5)
    with pytest.raises(SpecadError, match="no variable 'nope'"):
        read_cube(tmp_path / "b.mat", variable="nope")


def test_mat_v73_via_h5py(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((20, 30, 7))
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["data"] = data.T  # MATLAB stores column-major: h5py sees the transpose
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    back = read_cube(path)
    assert back.shape == (20, 30, 7)
    np.testing.assert_allclose(back.data, data.astype(np.float32))


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("sandiego_plane.mat", (100, 100, 189)),
        ("abu-urban-2.mat", (100, 100, 198)),
        ("abu-beach-4.mat", (100, 100, 102)),
    ],
)
def test_real_had_scenes_read_with_right_shapes(name: str, shape: tuple[int, int, int]) -> None:
    cube = read_cube(shared_data("had") / name, variable="data")
    assert cube.shape == shape
    assert (
        read_cube(shared_data("had") / name).shape == shape
    )  # the cube variable is found automatically


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "x.xyz").write_bytes(b"x")
    with pytest.raises(SpecadError, match=r"x\.xyz: unknown cube format"):
        read_cube(tmp_path / "x.xyz")


def test_truncated_tiff(tmp_path: Path, cube: Cube) -> None:
    write_cube(tmp_path / "c.tif", cube)
    data = (tmp_path / "c.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(SpecadError, match=r"t\.tif: cannot read cube"):
        read_cube(tmp_path / "t.tif")


def test_nan_values_are_refused(tmp_path: Path, cube: Cube) -> None:
    cube.data[3, 4, 1] = np.nan
    write_cube(tmp_path / "n.npy", cube)
    with pytest.raises(SpecadError, match="1 NaN/Inf"):
        read_cube(tmp_path / "n.npy")


def test_missing_envi_data(tmp_path: Path, cube: Cube) -> None:
    write_cube(tmp_path / "c.hdr", cube)
    (tmp_path / "c.img").unlink()
    with pytest.raises(SpecadError, match="data file"):
        read_cube(tmp_path / "c.hdr")


def test_cu3s_without_sdk_says_how_to_export(tmp_path: Path) -> None:
    try:
        import cuvis  # noqa: F401

        pytest.skip("cuvis SDK installed: the absent-SDK message cannot be tested")
    except ImportError:
        pass
    (tmp_path / "m.cu3s").write_bytes(b"\0")
    with pytest.raises(SpecadError, match="cuvis SDK.*TIFF or ENVI"):
        read_cube(tmp_path / "m.cu3s")


def test_write_failure_leaves_nothing(tmp_path: Path, cube: Cube) -> None:
    bad = Cube(cube.data, cube.bands, cube.wavelengths)
    bad.data = np.zeros((2, 2), dtype=object)  # tifffile cannot write objects
    with pytest.raises(Exception):  # noqa: B017 - any failure, as long as nothing is left
        write_cube(tmp_path / "o.tif", bad)
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_nonempty_and_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(SpecadError, match="not empty"), atomic_dir(out):
        pass
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(RuntimeError), atomic_dir(out, force=True) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "mine.txt").read_text() == "keep"


def test_reflectance_by_references_and_scale(cube: Cube) -> None:
    raw = Cube(cube.data * 1000 + 100, cube.bands, cube.wavelengths)
    refl = to_reflectance(raw, white=1100.0, dark=100.0)
    np.testing.assert_allclose(refl.data, cube.data, atol=1e-5)
    scaled = to_reflectance(Cube(cube.data * 10000), scale=0.95 / 10000)
    np.testing.assert_allclose(scaled.data, cube.data * 0.95, rtol=1e-5)
    with pytest.raises(ValueError):
        to_reflectance(raw, white=100.0, dark=100.0)


def test_one_channel_tiff_round_trip(tmp_path: Path) -> None:
    grey = Cube(np.random.default_rng(4).random((9, 7, 1), dtype=np.float32), ["grey"])
    write_cube(tmp_path / "g.tif", grey)
    back = read_cube(tmp_path / "g.tif")
    np.testing.assert_array_equal(back.data, grey.data)
    assert back.bands == ["grey"]


def test_a_large_npy_stays_mapped_and_a_small_one_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large float32 ``.npy`` is scored where it lies (tiled predict holds only tiles); a small
    one is read at once, so a file rewritten afterwards cannot fault a live mapping."""
    import specad.io.read as reader

    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    np.save(tmp_path / "c.npy", data)
    small = read_cube(tmp_path / "c.npy", axes="hwc")
    assert small.data.flags.writeable and not isinstance(small.data.base, np.memmap)
    monkeypatch.setattr(reader, "MAPPED_BYTES", data.nbytes)
    large = read_cube(tmp_path / "c.npy", axes="hwc")
    assert isinstance(large.data.base, np.memmap) and not large.data.flags.writeable
    np.testing.assert_array_equal(large.data, small.data)


def test_a_cube_is_checked_for_nan_a_band_of_rows_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every NaN and Inf is counted, in any band of rows, also in a memory-mapped cube."""
    monkeypatch.setattr("specad.io.mapped.CHUNK_BYTES", 4096)  # 5 rows of 40 x 5 float32
    data = np.random.default_rng(0).random((300, 40, 5), dtype=np.float32)
    data[7, 3, 1], data[250, 0, 4], data[299, 39, 0] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "c.npy", data)
    assert nonfinite_count(np.load(tmp_path / "c.npy", mmap_mode="r")) == 3
    assert nonfinite_count(data) == 3 and nonfinite_count(np.nan_to_num(data)) == 0
