"""MATLAB v5 and v7.3 (HDF5) files: the cube variable and its wavelengths, read in a forked
child process after the sizes the file declares are checked."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from specad.errors import SpecadError
from specad.io.cube import Stored, check_declared, pick_variable


def read_mat_arrays(path: Path, variable: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """The cube variable of a MATLAB v5 or v7.3 file (``variable``, else the largest 3-D
    numeric array) and the arrays read: it and any wavelength vector, in MATLAB's axis order.

    Only those are read, after their declared sizes are checked (`check_declared`); text, cell
    and struct variables are refused by name. v7.3 files are HDF5, where h5py sees MATLAB's
    column-major arrays transposed; they are transposed back so that an H x W x B cube (or an
    H x W truth map) reads the same from both. Both parsers are native code that fuzzing
    crashed (segfaults) on corrupt files, so they run in a forked child process: a crash there
    is one line about the file, not a dead program.
    """
    return _isolated(functools.partial(_parse_mat, variable=variable), path)  # type: ignore[no-any-return]


WAVELENGTH_KEYS = ("wavelength", "wavelengths", "wl", "lambda")
"""MATLAB variables taken as the bands' wavelengths where their length is the band count."""
_MATLAB_NUMERIC = {"double": "f", "single": "f", "logical": "b"} | {
    f"{sign}int{bits}": sign or "i" for sign in ("", "u") for bits in (8, 16, 32, 64)
}
"""MATLAB classes that are numeric arrays, and their NumPy kind."""


def _parse_mat(path: Path, variable: str | None) -> tuple[str, dict[str, np.ndarray]]:
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            name, names = _mat_choice(_h5_listing(f), variable)
            return name, {k: np.asarray(f[k][()]).T for k in names}
    import scipy.io

    name, names = _mat_choice(_v5_listing(path), variable)
    arrays = scipy.io.loadmat(path, variable_names=names)
    return name, {k: arrays[k] for k in names}


def _mat_choice(listing: dict[str, Stored], variable: str | None) -> tuple[str, list[str]]:
    """The cube variable and those to read (it and any wavelength vector), sizes checked."""
    name = pick_variable(listing, variable, None)
    names = [name] + [k for k in WAVELENGTH_KEYS if k in listing and listing[k].numeric]
    for k in names:
        check_declared(listing[k].shape, None, f"variable '{k}'")
    return name, names


def _v5_listing(path: Path) -> dict[str, Stored]:
    import scipy.io

    return {
        name: Stored(tuple(shape), _MATLAB_NUMERIC.get(cls, "O"), _matlab_what(cls))
        for name, shape, cls in scipy.io.whosmat(path)
    }


def _h5_listing(f: Any) -> dict[str, Stored]:
    """A v7.3 file's variables; ``#refs#`` and ``#subsystem#`` are MATLAB's own storage."""
    import h5py

    listing = {}
    for name, obj in f.items():
        if name.startswith("#"):
            continue
        cls = obj.attrs.get("MATLAB_class")
        cls = cls.decode(errors="replace") if isinstance(cls, bytes) else cls
        if not isinstance(obj, h5py.Dataset):
            listing[name] = Stored((), "O", _matlab_what(cls or "struct"))
        elif cls is None or cls in _MATLAB_NUMERIC:  # plain HDF5 arrays go by their type
            listing[name] = Stored(obj.shape[::-1], obj.dtype.kind, f"of type {obj.dtype}")
        else:
            listing[name] = Stored(obj.shape[::-1], "O", _matlab_what(cls))
    return listing


def _matlab_what(cls: str) -> str:
    return "MATLAB text (char)" if cls == "char" else f"a MATLAB {cls}"


READ_TIMEOUT_S = 300.0


def _isolated(parse: Callable[[Path], Any], path: Path) -> Any:
    """``parse(path)`` in a forked child (where ``fork`` exists); its crash or hang is an error,
    and a `SpecadError` it raises (without a path) is one about ``path``."""
    if not hasattr(os, "fork"):
        try:
            return parse(path)
        except SpecadError as err:
            raise SpecadError(str(err), path) from err
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
        status, value = receive.recv()
    except EOFError:
        child.join()
        raise SpecadError(
            f"cannot read: the file's parser crashed (exit {child.exitcode}); corrupt file?", path
        ) from None
    finally:
        receive.close()
    child.join()
    if status == "refused":
        raise SpecadError(value, path)
    if status == "failed":
        raise SpecadError(f"cannot read cube ({value})", path)
    return value


def _child(send: Any, parse: Callable[[Path], Any], path: Path) -> None:
    try:
        result = ("ok", parse(path))
    except SpecadError as err:
        result = ("refused", str(err))
    except Exception as err:  # noqa: BLE001 - reported by the parent as one line
        result = ("failed", f"{type(err).__name__}: {err}")
    send.send(result)
    send.close()
