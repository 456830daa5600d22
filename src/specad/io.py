"""Cubes in and out: one ``Cube`` type, and readers/writers for the formats spectral cameras export.

Every reader returns an (H, W, C) float32 array. Raw counts are *not* silently rescaled: turning
counts into reflectance is an explicit step (:func:`to_reflectance`), because the right reference
(white tile, dark frame, a fixed scale) depends on the rig.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specad.errors import SpecadError
from specad.spectral import RGB_PRIMARIES_NM, VISIBLE_NM

CUBE_SUFFIXES = (".tif", ".tiff", ".npy", ".npz", ".hdr", ".mat", ".cu3s")
LAYOUTS = ("hwc", "chw", "whc", "cwh", "hcw", "wch")
"""Axis orders of a stored 3-D array: ``chw`` is band-first, ``whc`` MATLAB-style transposed."""


@dataclass
class Cube:
    """A spectral image: (H, W, C) float32 data plus what is known about its bands."""

    data: np.ndarray
    bands: list[str] = field(default_factory=list)
    wavelengths: list[float] | None = None
    rgb: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim != 3:
            raise ValueError(f"a cube must be (H, W, C), got shape {data.shape}")
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        channels = self.data.shape[2]
        if not self.bands:
            self.bands = (
                [f"{w:g}nm" for w in self.wavelengths]
                if self.wavelengths
                else [f"band{i}" for i in range(channels)]
            )
        if len(self.bands) != channels:
            raise ValueError(f"{len(self.bands)} band names for {channels} channels")
        if self.wavelengths is not None:
            self.wavelengths = [float(w) for w in self.wavelengths]
            if len(self.wavelengths) != channels:
                raise ValueError(f"{len(self.wavelengths)} wavelengths for {channels} channels")
        if self.rgb is None:
            self.rgb = default_rgb(self.wavelengths, channels)
        else:
            self.rgb = tuple(int(i) for i in self.rgb)  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return self.data.shape[2]

    def select(self, indices: list[int]) -> Cube:
        """A new cube with only the given channels (RGB preview kept where it survives)."""
        rgb = None
        if self.rgb is not None and all(i in indices for i in self.rgb):
            rgb = tuple(indices.index(i) for i in self.rgb)
        return Cube(
            self.data[:, :, indices],
            [self.bands[i] for i in indices],
            [self.wavelengths[i] for i in indices] if self.wavelengths else None,
            rgb,  # type: ignore[arg-type]
        )

    def meta(self) -> dict:
        """JSON-serialisable band description, stored beside the pixels by every writer."""
        return {"bands": self.bands, "wavelengths": self.wavelengths, "rgb": self.rgb}


def default_rgb(wavelengths: list[float] | None, channels: int) -> tuple[int, int, int] | None:
    """Bands closest to red, green and blue when wavelengths cover the visible; else the first 3."""
    if wavelengths is not None and min(wavelengths) < VISIBLE_NM[1]:
        w = np.asarray(wavelengths)
        return tuple(int(np.argmin(np.abs(w - p))) for p in RGB_PRIMARIES_NM)  # type: ignore[return-value]
    if channels >= 3:
        return (0, 1, 2)
    return None


# --------------------------------------------------------------------------- atomic writing


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks: the one digest for weights and provenance."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tmp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    return Path(name)


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder, or say in one line why it cannot be (a file, no permission)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as err:
        raise SpecadError(
            f"cannot write here ({err.strerror or err}: {err.filename or path.parent})", path
        ) from err


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    _make_parent(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def refuse_nonempty(out: Path, force: bool) -> None:
    """Refuse to write into a folder that already holds something, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise SpecadError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SpecadError("output folder exists and is not empty (use --force to replace)", out)


@contextmanager
def reserve_output(out: str | Path) -> Iterator[Path]:
    """Hold the name ``out`` for this process alone while it writes there.

    An advisory lock on ``.NAME.lock`` beside it, which the kernel drops when the process dies
    (even by ``kill -9``), so a second writer fails at once with one line. Holding it also
    proves that any ``.NAME.*.part`` / ``.NAME.*.old`` left beside ``out`` belongs to an earlier,
    killed run: those are removed.
    """
    out = Path(out)
    lock = out.parent / f".{out.name}.lock"
    _make_parent(lock)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise SpecadError("another specad command is writing this output now", out) from err
    try:
        for pattern in (".part", ".old"):
            for stale in out.parent.glob(f".{glob.escape(out.name)}.*{pattern}"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        yield out
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``out`` at the end.

    A failure leaves the old folder (if any) untouched and no partial output behind. Without
    ``force`` the final rename never replaces content: if something appeared at ``out`` while
    the command ran, it is kept and the command fails. With ``force`` an existing ``out`` is
    replaced.
    """
    out = Path(out)
    with reserve_output(out):
        refuse_nonempty(out, force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared report from other users
        try:
            yield tmp
            _publish(tmp, out, force)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path, force: bool) -> None:
    if force and (out.exists() or out.is_symlink()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)  # succeeds onto nothing or an empty folder, never over content
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise SpecadError(
                "appeared while this command ran and was kept; nothing was written "
                "(use --force to replace it)",
                out,
            ) from err
        raise


# --------------------------------------------------------------------------- reading


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


# --------------------------------------------------------------------------- writing


def write_cube(path: str | Path, cube: Cube) -> None:
    """Write ``cube`` atomically: TIFF (float32, compressed), ``.npy``, ``.npz`` or ENVI ``.hdr``.

    ``.npy`` keeps pixels only; the other formats keep band names, wavelengths and the RGB bands.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    writers = {
        ".tif": _write_tiff,
        ".tiff": _write_tiff,
        ".npy": _write_npy,
        ".npz": _write_npz,
        ".hdr": _write_envi,
    }
    if suffix not in writers:
        raise SpecadError(f"cannot write format '{suffix}' (use .tif, .npy, .npz or .hdr)", path)
    writers[suffix](path, cube)


def _write_tiff(path: Path, cube: Cube) -> None:
    import tifffile

    with atomic_file(path) as tmp:
        tifffile.imwrite(
            tmp,
            cube.data,
            photometric="minisblack",
            planarconfig="contig",
            compression="zlib",
            metadata={"axes": "YXS", "spectral": cube.meta()},
        )


def _write_npy(path: Path, cube: Cube) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, cube.data)


def _write_npz(path: Path, cube: Cube) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, cube=cube.data, meta=np.array(json.dumps(cube.meta())))


def _write_envi(path: Path, cube: Cube) -> None:
    h, w, c = cube.shape
    lines = [
        "ENVI",
        f"samples = {w}",
        f"lines = {h}",
        f"bands = {c}",
        "header offset = 0",
        "file type = ENVI Standard",
        "data type = 4",
        "interleave = bsq",
        "byte order = 0",
        "band names = {" + ", ".join(cube.bands) + "}",
    ]
    if cube.wavelengths:
        lines += [
            "wavelength units = nm",
            "wavelength = {" + ", ".join(f"{x:g}" for x in cube.wavelengths) + "}",
        ]
    if cube.rgb:
        lines.append("default bands = {" + ", ".join(str(i + 1) for i in cube.rgb) + "}")
    with atomic_file(path.with_suffix(".img")) as tmp:
        np.ascontiguousarray(cube.data.transpose(2, 0, 1), dtype="<f4").tofile(tmp)
        with atomic_file(path) as htmp:
            htmp.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- reflectance


def to_reflectance(
    cube: Cube,
    *,
    white: np.ndarray | float | None = None,
    dark: np.ndarray | float | None = None,
    scale: float | None = None,
) -> Cube:
    """Convert raw counts to reflectance, explicitly.

    Either ``(raw - dark) / (white - dark)`` with white/dark reference frames or per-band levels
    (broadcast against (H, W, C)), or ``raw * scale``: e.g. a camera storing reflectance x 10000
    against a 95 % white tile uses ``scale = 0.95 / 10000``.
    """
    if (white is None) == (scale is None):
        raise ValueError("give exactly one of white= (with optional dark=) or scale=")
    raw = cube.data.astype(np.float64)
    if scale is not None:
        out = raw * scale
    else:
        d = 0.0 if dark is None else np.asarray(dark, dtype=np.float64)
        span = np.asarray(white, dtype=np.float64) - d
        out = (raw - d) / np.where(np.abs(span) < 1e-12, np.nan, span)
        if not np.isfinite(out).all():
            raise ValueError("white reference equals dark reference in some pixels or bands")
    return Cube(out.astype(np.float32), cube.bands, cube.wavelengths, cube.rgb)
