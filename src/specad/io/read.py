"""Readers: TIFF, NumPy, ENVI, MATLAB v5/v7.3, Cubert ``.cu3s`` and plain photos (PNG, JPEG,
BMP, WebP) to one (H, W, C) ``Cube``, and their headers alone (`cube_header`).

Each format is read as its writer stored it (see :func:`read_cube`); only arrays with no
convention are guessed, with an :class:`AxesGuess` warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from specad.bounds import EXPANSION_FLOOR, MAX_EXPANSION
from specad.errors import SpecadError
from specad.io.cube import AXIS_ORDERS, CUBE_SUFFIXES, Cube, Stored, check_declared, pick_variable
from specad.io.image import (
    PHOTO_SUFFIXES,
    Header,
    image_header,
    open_image,
    read_image,
    read_image_cube,
)
from specad.io.mapped import nonfinite_count
from specad.io.matlab import WAVELENGTH_KEYS, read_mat_arrays

__all__ = ["AxesGuess", "Header", "cube_header", "open_image", "read_cube", "read_image"]


def read_cube(path: str | Path, variable: str | None = None, axes: str | None = None) -> Cube:
    """Read a cube from TIFF, NumPy, ENVI, MATLAB, Cubert ``.cu3s`` or a plain photo.

    ``variable`` names the array inside a ``.mat``/``.npz`` file; by default the largest 3-D
    numeric array is taken. ``axes`` (one of :data:`AXIS_ORDERS`) is the stored axis order of a
    plain array; without it MATLAB files are H x W x B (MATLAB's convention), TIFF follows the
    axes its writer recorded, and only arrays with no convention (NumPy files, TIFFs written
    from a bare array) are guessed from their shape, with an :class:`AxesGuess` warning.
    ENVI and ``.cu3s`` describe their own axis order and ignore it. Values are checked for NaN/Inf.
    The size a file declares is checked against `specad.bounds.MAX_CUBE_ELEMENTS` before any of
    it is read (`check_declared`).
    """
    path = Path(path)
    if not path.exists():  # before the suffix: a mistyped name is not a format problem
        raise SpecadError("no such file", path)
    suffix = path.suffix.lower()
    if suffix == ".img":
        path, suffix = path.with_suffix(".hdr"), ".hdr"
    readers = {
        ".tif": _read_tiff,
        ".tiff": _read_tiff,
        ".npy": _read_npy,
        ".npz": _read_npz,
        ".hdr": _read_envi,
        ".mat": _read_mat,
        ".cu3s": _read_cu3s,
    } | dict.fromkeys(PHOTO_SUFFIXES, read_image_cube)
    if suffix not in readers:
        raise SpecadError(
            f"unknown cube format '{suffix or path.name}' (expected one of "
            f"{', '.join(CUBE_SUFFIXES + PHOTO_SUFFIXES)})",
            path,
        )
    if axes is not None and axes not in AXIS_ORDERS:
        raise SpecadError(f"unknown axis order '{axes}' (use one of {', '.join(AXIS_ORDERS)})")
    if not path.is_file():
        raise SpecadError("no such file", path)
    try:
        if suffix in (".npz", ".mat"):
            cube = readers[suffix](path, variable, axes)
        elif suffix in (".hdr", ".cu3s", *PHOTO_SUFFIXES):
            cube = readers[suffix](path)
        else:
            cube = readers[suffix](path, axes)
    except SpecadError:
        raise
    except Exception as err:  # noqa: BLE001 - any library failure means an unreadable file
        raise SpecadError(f"cannot read cube ({type(err).__name__}: {err})", path) from err
    if 0 in cube.shape:
        raise SpecadError(f"the cube is empty ({'x'.join(map(str, cube.shape))})", path)
    bad = nonfinite_count(cube.data)  # a mapped cube a band of rows at a time
    if bad:
        raise SpecadError(f"{bad} NaN/Inf values in the cube", path)
    return cube


class AxesGuess(UserWarning):
    """A cube's axis order was guessed from its shape; ``axes=`` (``--axes``) sets it."""


def _apply_axes(data: np.ndarray, axes: str | None, path: Path) -> np.ndarray:
    """(H, W, C) float32 from a stored array; ``axes=None`` guesses from the shape.

    The guess takes an axis smaller than both others as the band axis (cubes have fewer bands
    than pixels per side in practice), preferring the last, and says so once per process.
    The result is one C-ordered copy, so that `Cube` need not copy it again, or the stored
    array itself where it is float32 in that order already: a memory-mapped ``.npy`` then stays
    mapped, and a cube larger than memory is read a tile at a time (``predict --tiled``).
    """
    if data.dtype.kind not in "fiub":
        raise SpecadError(f"unsupported data type {data.dtype}", path)
    if data.ndim == 2:
        return data[:, :, None].astype(np.float32)
    if data.ndim != 3:
        raise SpecadError(f"expected a 3-D cube, got shape {data.shape}", path)
    if axes is None:
        axes = _guessed_axes(data.shape)
        warnings.warn(
            AxesGuess(
                f"cube axis order guessed as '{axes}' from the array shape (the smallest axis is "
                "taken as bands); pass --axes (or axes=) to set it"
            ),
            stacklevel=3,
        )
    order = [axes.index(axis) for axis in "hwc"]
    return data.transpose(order).astype(np.float32, order="C", copy=False)


def _guessed_axes(shape: tuple[int, ...]) -> str:
    """Band axis first when it is smaller than both others, else last (see `_apply_axes`)."""
    return "chw" if shape[0] < min(shape[1:]) else "hwc"


def _meta_kwargs(meta: dict | None) -> dict:
    if not meta:
        return {}
    rgb = meta.get("rgb")
    return {
        "bands": list(meta.get("bands") or []),
        "wavelengths": meta.get("wavelengths"),
        "rgb": tuple(rgb) if rgb else None,
    }


def _read_tiff(path: Path, axes: str | None) -> Cube:
    """Pages are bands unless the writer recorded the axes (``S``/``C`` = samples/channels).

    A bare array written by ``tifffile.imwrite(path, cube)`` records only its shape, so its
    axis order is the array's own: taken from ``axes`` or guessed, never pages-as-bands.
    """
    with _tiff(path, axes) as (tif, shape, order):
        if len(shape) > len(tif.series[0].shape):  # one 2-D image per band
            data = np.stack([s.asarray() for s in tif.series])
        else:
            data = tif.series[0].asarray()
        meta = tif.shaped_metadata[0] if tif.shaped_metadata else None
    spectral = _meta_kwargs((meta or {}).get("spectral"))
    return Cube(_apply_axes(data, order if data.ndim == 3 else None, path), **spectral)


@contextmanager
def _tiff(path: Path, axes: str | None) -> Iterator[tuple[Any, tuple[int, ...], str | None]]:
    """An open TIFF, its cube's stored shape (one page per band when ``shape[0]`` counts its
    series) and axis order (None: guessed, for a bare array or a 2-D image), nothing decoded
    yet; its size checked."""
    import tifffile

    with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        stored = series.axes
        stacked = len(tif.series) > 1 and all(s.shape == series.shape for s in tif.series)
        shape = (len(tif.series),) * stacked + tuple(series.shape)
        check_declared(shape, path)
        if stacked:
            stored = "Q" + stored
        meta = tif.shaped_metadata[0] if tif.shaped_metadata else None
        if len(shape) not in (2, 3):
            raise SpecadError(f"TIFF has {len(shape)} dimensions ({stored}); expected 2 or 3", path)
        bare = meta is not None and "axes" not in meta and not stacked and "S" not in stored
        order = axes
        if axes is None and len(shape) == 3 and not bare:
            band = stored.find("S") if "S" in stored else stored.find("C") if "C" in stored else 0
            order = "hw"[:band] + "c" + "hw"[band:]
        yield tif, shape, order


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Library logger ``name`` silenced: its notes on a corrupt file would be lines beside the
    one error that the file gives."""
    logger = logging.getLogger(name)
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


MAPPED_BYTES = 256 * 2**20
"""An ``.npy`` at least this large stays memory-mapped (read where it is used, so that
``predict --tiled`` holds only the tiles it scores); smaller ones are read whole at once."""


def _read_npy(path: Path, axes: str | None) -> Cube:
    with path.open("rb") as f:
        shape, _, _ = _npy_header(f)
    check_declared(shape, path)
    data = np.load(path, mmap_mode="r", allow_pickle=False)
    if data.nbytes < MAPPED_BYTES:  # read now: a file rewritten later cannot fault a mapping
        data = np.array(data)
    return Cube(_apply_axes(data, axes, path))


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, type and header length of the ``.npy`` stream ``f``, nothing read beyond them."""
    version = np.lib.format.read_magic(f)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0  # 3.0 differs in field-name encoding only
    )
    shape, _, dtype = read(f)
    return tuple(shape), dtype, f.tell()


_META_BYTES = 1 << 20
"""Largest ``meta`` member of an ``.npz`` read: the band description `write_cube` stores there
is a few KB even at `specad.bounds.MAX_CHANNELS` bands."""


def _read_npz(path: Path, variable: str | None, axes: str | None) -> Cube:
    with zipfile.ZipFile(path) as z:
        listing = _npz_listing(z, path)
        name = pick_variable(listing, variable, path)
        check_declared(listing[name].shape, path, f"variable '{name}'")
        data = _npz_array(z, name)
        meta = None
        if "meta" in listing:
            if z.getinfo("meta.npy").file_size > _META_BYTES:
                raise SpecadError(
                    f"the 'meta' band description is over {_META_BYTES:,} bytes", path
                )
            meta = json.loads(str(_npz_array(z, "meta")))
    if meta is not None and axes is None:
        axes = "hwc"  # written by write_cube
    return Cube(_apply_axes(data, axes, path), **_meta_kwargs(meta))


def _npz_listing(z: zipfile.ZipFile, path: Path) -> dict[str, Stored]:
    """Every array of an ``.npz`` as its headers declare it, nothing inflated beyond them.

    A member's own ``.npy`` header must account for exactly the bytes its zip entry declares,
    and those may exceed the bytes stored at most `MAX_EXPANSION` times (beyond
    `EXPANSION_FLOOR`): a decompression bomb is refused before it is inflated, and reading stops
    at the declared size whatever the stream holds.
    """
    listing = {}
    for info in z.infolist():
        if not info.filename.endswith(".npy"):
            continue
        name = info.filename.removesuffix(".npy")
        with z.open(info) as f:
            shape, dtype, header = _npy_header(f)
        if dtype.hasobject:  # pickled: never loaded (allow_pickle=False), so never inflated
            listing[name] = Stored(shape, "O", "a pickled object array")
            continue
        size = header + math.prod(shape) * dtype.itemsize
        if size != info.file_size:
            raise SpecadError(
                f"variable '{name}' declares {shape} {dtype} ({size:,} bytes), its zip entry "
                f"{info.file_size:,} bytes (corrupt file?)",
                path,
            )
        if info.file_size > max(EXPANSION_FLOOR, MAX_EXPANSION * info.compress_size):
            raise SpecadError(
                f"variable '{name}' inflates {info.compress_size:,} stored bytes to "
                f"{info.file_size:,}, over {MAX_EXPANSION}x (specad.bounds.MAX_EXPANSION): "
                "a decompression bomb, or a cube of constants",
                path,
            )
        listing[name] = Stored(shape, dtype.kind, f"of type {dtype}")
    return listing


def _npz_array(z: zipfile.ZipFile, name: str) -> np.ndarray:
    """Member ``name`` of an ``.npz``, its size already checked (`_npz_listing`)."""
    with z.open(f"{name}.npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_mat(path: Path, variable: str | None, axes: str | None) -> Cube:
    name, arrays = read_mat_arrays(path, variable)
    data = _apply_axes(arrays[name], axes or "hwc", path)
    wavelengths = None
    for key in WAVELENGTH_KEYS:
        if key in arrays and arrays[key].size == data.shape[2]:
            wavelengths = [float(w) for w in np.ravel(arrays[key])]
    return Cube(data, wavelengths=wavelengths)


_ENVI_TYPES = {"1": "u1", "2": "i2", "3": "i4", "4": "f4", "5": "f8", "12": "u2", "13": "u4"}


def _read_envi(path: Path) -> Cube:
    header = _parse_envi_header(path)
    lines, samples, bands = (int(header[k]) for k in ("lines", "samples", "bands"))
    check_declared((lines, samples, bands), path)
    code = header.get("data type", "4")
    if code not in _ENVI_TYPES:
        raise SpecadError(f"unsupported ENVI data type {code}", path)
    order = ">" if header.get("byte order", "0") == "1" else "<"
    dtype = np.dtype(order + _ENVI_TYPES[code])
    interleave = header.get("interleave", "bsq").lower()
    shapes = {
        "bsq": (bands, lines, samples),
        "bil": (lines, bands, samples),
        "bip": (lines, samples, bands),
    }
    to_hwc = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}
    if interleave not in shapes:
        raise SpecadError(f"unknown ENVI interleave '{interleave}'", path)
    image = _envi_data_file(path)
    offset, count = int(header.get("header offset", 0)), lines * samples * bands
    if image.stat().st_size != offset + count * dtype.itemsize:
        raise SpecadError(
            f"ENVI data holds {image.stat().st_size:,} bytes, header says {lines}x{samples}x"
            f"{bands} {dtype.name} after {offset} bytes ({offset + count * dtype.itemsize:,})",
            image,
        )
    raw = np.fromfile(image, dtype=dtype, count=count, offset=offset)
    data = raw.reshape(shapes[interleave]).transpose(to_hwc[interleave])
    wavelengths = _envi_list(header.get("wavelength"))
    names = header.get("band names")
    rgb = _envi_list(header.get("default bands"))
    return Cube(
        data.astype(np.float32, order="C"),
        bands=[n.strip() for n in names.split(",")] if names else [],
        wavelengths=wavelengths if wavelengths and len(wavelengths) == bands else None,
        rgb=tuple(int(i) - 1 for i in rgb) if rgb and len(rgb) == 3 else None,  # type: ignore[arg-type]
    )


def _envi_list(value: str | None) -> list[float] | None:
    return [float(v) for v in value.split(",") if v.strip()] if value else None


def _parse_envi_header(path: Path) -> dict[str, str]:
    text = path.read_text(errors="replace")
    if not text.lstrip().startswith("ENVI"):
        raise SpecadError("not an ENVI header (first line must be 'ENVI')", path)
    header = {}
    for key, value in re.findall(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.M):
        header[key.strip().lower()] = value.strip().strip("{}").strip()
    for key in ("lines", "samples", "bands"):
        if key not in header:
            raise SpecadError(f"ENVI header lacks '{key}'", path)
    return header


def _envi_data_file(header: Path) -> Path:
    for suffix in (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ""):
        candidate = header.with_suffix(suffix)
        if candidate.is_file() and candidate != header:
            return candidate
    raise SpecadError("ENVI data file (.img) not found beside the header", header)


def _read_cu3s(path: Path, index: int = 0) -> Cube:
    """First measurement of a Cubert session file, as reflectance when the file carries references.

    The ``cuvis`` SDK needs Cubert's native library, which is not on PyPI, so it is imported here
    and only here.
    """
    try:
        if not os.environ.get("CUVIS"):  # the SDK calls sys.exit on import without it
            raise ImportError("CUVIS environment variable not set")
        import cuvis  # type: ignore[import-not-found]
    except (ImportError, OSError) as err:
        raise SpecadError(
            "reading .cu3s needs the Cubert cuvis SDK (`import cuvis`, installed with Cubert's "
            "native library); without it, export the measurement to TIFF or ENVI in CUBERT "
            "Suite/cuvis and read that file",
            path,
        ) from err
    session = cuvis.SessionFile(str(path))
    mesu = session.get_measurement(index)
    try:  # reflectance needs the white/dark references stored in the session
        context = cuvis.ProcessingContext(session)
        context.processing_mode = cuvis.ProcessingMode.Reflectance
        mesu = context.apply(mesu)
        scale = 1.0 / 10000.0  # cuvis stores reflectance as 0-10000
    except Exception:  # noqa: BLE001 - no references: keep the stored processing mode
        scale = 1.0
    cube = mesu.data["cube"]
    data = np.asarray(cube.array, dtype=np.float32) * scale
    wavelengths = [float(w) for w in cube.wavelength] if len(cube.wavelength) else None
    return Cube(data, wavelengths=wavelengths)


def cube_header(path: Path, axes: str | None = None) -> Header | None:
    """Height, width, channels and stored type of a cube file from its header alone, as
    `read_cube` would give them (a guessed axis order is guessed alike, without the note);
    None for formats without a cheap header (MATLAB, ``.cu3s``). Checked against
    `check_declared`; any failure is one line naming the file."""
    suffix = path.suffix.lower()
    try:
        if suffix in PHOTO_SUFFIXES:
            return image_header(path)
        if suffix in (".tif", ".tiff"):
            with _tiff(path, axes) as (tif, shape, order):
                return _header(shape, order, str(tif.series[0].dtype), path)
        if suffix == ".npy":
            with path.open("rb") as f:
                shape, dtype, _ = _npy_header(f)
            check_declared(shape, path)
            return _header(shape, axes, str(dtype), path)
        if suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                listing = _npz_listing(z, path)
                name = pick_variable(listing, None, path)
                with z.open(f"{name}.npy") as f:
                    shape, dtype, _ = _npy_header(f)
            check_declared(shape, path)
            written = "hwc" if "meta" in listing else None  # by write_cube
            return _header(shape, axes or written, str(dtype), path)
        if suffix in (".hdr", ".img"):
            envi = _parse_envi_header(path.with_suffix(".hdr"))
            lines, samples, bands = (int(envi[k]) for k in ("lines", "samples", "bands"))
            check_declared((lines, samples, bands), path)
            code = _ENVI_TYPES.get(envi.get("data type", "4"), "f4")
            return Header(lines, samples, bands, str(np.dtype(code)))
    except SpecadError:
        raise
    except Exception as err:  # noqa: BLE001 - any library failure means an unreadable file
        raise SpecadError(f"cannot read cube header ({type(err).__name__}: {err})", path) from err
    return None


def _header(shape: tuple[int, ...], axes: str | None, dtype: str, path: Path) -> Header:
    if len(shape) == 2:
        return Header(shape[0], shape[1], 1, dtype)
    if len(shape) != 3:
        raise SpecadError(f"expected a 3-D cube, got shape {shape}", path)
    order = axes or _guessed_axes(shape)
    h, w, c = (shape[order.index(axis)] for axis in "hwc")
    return Header(h, w, c, dtype)
