"""Writers: TIFF (compressed), ``.npy``, ``.npz`` and ENVI, each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specad.errors import SpecadError
from specad.io.cube import Cube
from specad.io.files import atomic_file


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (no pickle) whose bytes depend only on its content.

    safetensors writes its header's maps in an order that changes from process to process, so
    the header is written again with sorted keys: a resumed training must end in a file that is
    byte-identical to an uninterrupted one. The data offsets are relative to the end of the
    header, so only its length prefix changes.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors keeps it
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(raw[8 + size :])


def write_cube(path: str | Path, cube: Cube, dtype: str = "float32") -> None:
    """Write ``cube`` atomically: TIFF (compressed), ``.npy``, ``.npz`` or ENVI ``.hdr``.

    ``dtype`` is the stored sample type (``uint8``, ``uint16``, ``float32``; ENVI: float32
    only): a photo's 8-bit values take a quarter of float32's bytes. The values must fit it
    exactly, since a writer that rounded would change the data. ``.npy`` keeps pixels only; the
    other formats keep band names, wavelengths and the RGB bands.
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
    if dtype not in STORED_DTYPES or (suffix == ".hdr" and dtype != "float32"):
        raise SpecadError(f"cannot store {dtype} in '{suffix}'", path)
    data = cube.data
    if dtype != "float32":
        data = cube.data.astype(dtype)
        if not np.array_equal(data, cube.data):
            raise SpecadError(f"the cube's values do not fit {dtype} exactly", path)
    writers[suffix](path, cube, data)


STORED_DTYPES = ("uint8", "uint16", "float32")
"""Sample types `write_cube` stores."""


def _write_tiff(path: Path, cube: Cube, data: np.ndarray) -> None:
    import tifffile

    single = cube.channels == 1  # TIFF has no one-sample contig layout: store a plain image
    with atomic_file(path) as tmp:
        tifffile.imwrite(
            tmp,
            data[:, :, 0] if single else data,
            photometric="minisblack",
            planarconfig=None if single else "contig",
            compression="zlib",
            metadata={"axes": "YX" if single else "YXS", "spectral": cube.meta()},
        )


def _write_npy(path: Path, cube: Cube, data: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, data)


def _write_npz(path: Path, cube: Cube, data: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, cube=data, meta=np.array(json.dumps(cube.meta())))


def _write_envi(path: Path, cube: Cube, data: np.ndarray) -> None:
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
        np.ascontiguousarray(data.transpose(2, 0, 1), dtype="<f4").tofile(tmp)
        with atomic_file(path) as htmp:
            htmp.write_text("\n".join(lines) + "\n")
