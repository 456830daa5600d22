"""Readers: TIFF, NumPy, ENVI, MATLAB v5/v7.3 and Cubert ``.cu3s`` to one (H, W, C) ``Cube``.

Each format is read as its writer stored it (see :func:`read_cube`); only arrays with no
convention are guessed, with a :class:`LayoutGuess` warning.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from specad.errors import SpecadError
from specad.io.cube import CUBE_SUFFIXES, LAYOUTS, Cube


def read_cube(path: str | Path, variable: str | None = None, layout: str | None = None) -> Cube:
    """Read a cube from TIFF, NumPy, ENVI, MATLAB or Cubert ``.cu3s``.

    ``variable`` names the array inside a ``.mat``/``.npz`` file; by default the largest 3-D
    numeric array is taken. ``layout`` (one of :data:`LAYOUTS`) is the stored axis order of a
    plain array; without it MATLAB files are H x W x B (MATLAB's convention), TIFF follows the
    axes its writer recorded, and only arrays with no convention (NumPy files, TIFFs written
    from a bare array) are guessed from their shape, with a :class:`LayoutGuess` warning.
    ENVI and ``.cu3s`` describe their own layout and ignore it. Values are checked for NaN/Inf.
    """
    path = Path(path)
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
    }
    if suffix not in readers:
        raise SpecadError(
            f"unknown cube format '{suffix or path.name}' (expected one of "
            f"{', '.join(CUBE_SUFFIXES)})",
            path,
        )
    if layout is not None and layout not in LAYOUTS:
        raise SpecadError(f"unknown layout '{layout}' (use one of {', '.join(LAYOUTS)})")
    if not path.is_file():
        raise SpecadError("no such file", path)
    try:
        if suffix in (".npz", ".mat"):
            cube = readers[suffix](path, variable, layout)
        elif suffix in (".hdr", ".cu3s"):
            cube = readers[suffix](path)
        else:
            cube = readers[suffix](path, layout)
    except SpecadError:
        raise
    except Exception as err:  # noqa: BLE001 - any library failure means an unreadable file
        raise SpecadError(f"cannot read cube ({type(err).__name__}: {err})", path) from err
    if 0 in cube.shape:
        raise SpecadError(f"the cube is empty ({'x'.join(map(str, cube.shape))})", path)
    if not np.isfinite(cube.data).all():
        bad = int((~np.isfinite(cube.data)).sum())
        raise SpecadError(f"{bad} NaN/Inf values in the cube", path)
    return cube


class LayoutGuess(UserWarning):
    """A cube's axis order was guessed from its shape; ``layout=`` (``--layout``) sets it."""


def _apply_layout(data: np.ndarray, layout: str | None, path: Path) -> np.ndarray:
    """(H, W, C) float32 from a stored array; ``layout=None`` guesses from the shape.

    The guess takes an axis smaller than both others as the band axis (cubes have fewer bands
    than pixels per side in practice), preferring the last, and says so once per process.
    """
    if data.dtype.kind not in "fiub":
        raise SpecadError(f"unsupported data type {data.dtype}", path)
    if data.ndim == 2:
        return data[:, :, None].astype(np.float32)
    if data.ndim != 3:
        raise SpecadError(f"expected a 3-D cube, got shape {data.shape}", path)
    if layout is None:
        layout = "chw" if data.shape[0] < min(data.shape[1:]) else "hwc"
        warnings.warn(
            LayoutGuess(
                f"cube layout guessed as '{layout}' from the array shape (the smallest axis is "
                "taken as bands); pass --layout (or layout=) to set it"
            ),
            stacklevel=3,
        )
    return data.transpose([layout.index(axis) for axis in "hwc"]).astype(np.float32)


def _meta_kwargs(meta: dict | None) -> dict:
    if not meta:
        return {}
    rgb = meta.get("rgb")
    return {
        "bands": list(meta.get("bands") or []),
        "wavelengths": meta.get("wavelengths"),
        "rgb": tuple(rgb) if rgb else None,
    }


def _read_tiff(path: Path, layout: str | None) -> Cube:
    """Pages are bands unless the writer recorded the axes (``S``/``C`` = samples/channels).

    A bare array written by ``tifffile.imwrite(path, cube)`` records only its shape, so its
    layout is the array's own: taken from ``layout`` or guessed, never pages-as-bands.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        stacked = len(tif.series) > 1 and all(s.shape == series.shape for s in tif.series)
        if stacked:
            data = np.stack([s.asarray() for s in tif.series])  # one 2-D image per band
            axes = "Q" + axes
        meta = tif.shaped_metadata[0] if tif.shaped_metadata else None
    spectral = _meta_kwargs((meta or {}).get("spectral"))
    if data.ndim == 2 or layout is not None:
        return Cube(_apply_layout(data, layout, path), **spectral)
    if data.ndim != 3:
        raise SpecadError(f"TIFF has {data.ndim} dimensions ({axes}); expected 2 or 3", path)
    bare = meta is not None and "axes" not in meta and not stacked and "S" not in axes
    if bare:  # tifffile.imwrite(path, array): pages of the array's first axis, shape recorded
        return Cube(_apply_layout(data, None, path), **spectral)
    band_axis = axes.find("S") if "S" in axes else axes.find("C") if "C" in axes else 0
    return Cube(np.moveaxis(data, band_axis, -1).astype(np.float32), **spectral)


def _read_npy(path: Path, layout: str | None) -> Cube:
    data = np.load(path, allow_pickle=False)
    return Cube(_apply_layout(data, layout, path))


def _read_npz(path: Path, variable: str | None, layout: str | None) -> Cube:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    data = _pick_variable(arrays, variable, path)
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else None
    if meta is not None and layout is None:
        layout = "hwc"  # written by write_cube
    return Cube(_apply_layout(data, layout, path), **_meta_kwargs(meta))


def read_mat_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every numeric array of a MATLAB v5 or v7.3 file, in MATLAB's own axis order.

    v7.3 files are HDF5, where h5py sees MATLAB's column-major arrays transposed; they are
    transposed back so that an H x W x B cube (or an H x W truth map) reads the same from both.
    Both parsers are native code that fuzzing crashed (segfaults) on corrupt files, so they run
    in a forked child process: a crash there is one line about the file, not a dead program.
    """
    return _isolated(_parse_mat, path)


def _parse_mat(path: Path) -> dict[str, np.ndarray]:
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            return {
                k: np.asarray(f[k][()]).T
                for k in f
                if isinstance(f[k], h5py.Dataset) and f[k].dtype.kind in "fiub"
            }
    return {
        k: v
        for k, v in scipy.io.loadmat(path).items()
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"
    }


READ_TIMEOUT_S = 300.0


def _isolated(parse: Callable[[Path], Any], path: Path) -> Any:
    """``parse(path)`` in a forked child (where ``fork`` exists); its crash or hang is an error."""
    if not hasattr(os, "fork"):
        return parse(path)
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, parse, path), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(READ_TIMEOUT_S):
            child.kill()
            raise SpecadError(f"reading took over {READ_TIMEOUT_S:g} s (corrupt file?)", path)
        ok, value = receive.recv()
    except EOFError:
        child.join()
        raise SpecadError(
            f"cannot read: the file's parser crashed (exit {child.exitcode}); corrupt file?", path
        ) from None
    finally:
        receive.close()
    child.join()
    if not ok:
        raise SpecadError(f"cannot read cube ({value})", path)
    return value


def _child(send: Any, parse: Callable[[Path], Any], path: Path) -> None:
    try:
        result = (True, parse(path))
    except Exception as err:  # noqa: BLE001 - reported by the parent as one line
        result = (False, f"{type(err).__name__}: {err}")
    send.send(result)
    send.close()


def _read_mat(path: Path, variable: str | None, layout: str | None) -> Cube:
    arrays = read_mat_arrays(path)
    data = _apply_layout(_pick_variable(arrays, variable, path), layout or "hwc", path)
    wavelengths = None
    for key in ("wavelength", "wavelengths", "wl", "lambda"):
        if key in arrays and arrays[key].size == data.shape[2]:
            wavelengths = [float(w) for w in np.ravel(arrays[key])]
    return Cube(data, wavelengths=wavelengths)


def _pick_variable(arrays: dict[str, np.ndarray], variable: str | None, path: Path) -> np.ndarray:
    names = ", ".join(sorted(k for k in arrays if not k.startswith("__"))) or "none"
    if variable is not None:
        if variable not in arrays:
            raise SpecadError(f"no variable '{variable}' (has: {names})", path)
        return arrays[variable]
    candidates = [
        (v.size, k)
        for k, v in arrays.items()
        if v.ndim == 3 and v.dtype.kind in "fiu" and not k.startswith("__")
    ]
    if not candidates:
        raise SpecadError(f"no 3-D numeric array found (variables: {names})", path)
    return arrays[max(candidates)[1]]


def _read_envi(path: Path) -> Cube:
    header = _parse_envi_header(path)
    lines, samples, bands = (int(header[k]) for k in ("lines", "samples", "bands"))
    dtypes = {"1": "u1", "2": "i2", "3": "i4", "4": "f4", "5": "f8", "12": "u2", "13": "u4"}
    code = header.get("data type", "4")
    if code not in dtypes:
        raise SpecadError(f"unsupported ENVI data type {code}", path)
    order = ">" if header.get("byte order", "0") == "1" else "<"
    image = _envi_data_file(path)
    raw = np.fromfile(
        image, dtype=np.dtype(order + dtypes[code]), offset=int(header.get("header offset", 0))
    )
    if raw.size != lines * samples * bands:
        raise SpecadError(
            f"ENVI data holds {raw.size} values, header says {lines}x{samples}x{bands}", image
        )
    interleave = header.get("interleave", "bsq").lower()
    shapes = {
        "bsq": (bands, lines, samples),
        "bil": (lines, bands, samples),
        "bip": (lines, samples, bands),
    }
    to_hwc = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}
    if interleave not in shapes:
        raise SpecadError(f"unknown ENVI interleave '{interleave}'", path)
    data = raw.reshape(shapes[interleave]).transpose(to_hwc[interleave])
    wavelengths = _envi_list(header.get("wavelength"))
    names = header.get("band names")
    rgb = _envi_list(header.get("default bands"))
    return Cube(
        data.astype(np.float32),
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
