"""Plain images (PNG, JPEG, BMP, WebP): masks, truth maps, photos, and photos read as cubes
where they lie, one channel for grey and R, G, B for colour, with their stored values (0-255
for 8-bit, 0-65535 for 16-bit: nothing is rescaled, as everywhere in specad).

Their headers (`image_header`) give size, channels and stored type without decoding a pixel, so
that a whole dataset can be checked in seconds before any work.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from specad.errors import SpecadError
from specad.io.cube import CUBE_SUFFIXES, IMAGE_SUFFIXES, Cube, check_declared

if TYPE_CHECKING:
    from PIL.Image import Image

PHOTO_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in CUBE_SUFFIXES)
"""Image files that only PIL reads (TIFF photos go through the cube reader, which keeps their
stored bits as well)."""
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
"""PIL modes read as one channel (alpha dropped); every other mode becomes R, G, B."""
_MODE_DTYPES = {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I;16N": "uint16"}
_MODE_DTYPES |= {"I": "int32", "F": "float32"}


class Header(NamedTuple):
    """A cube file as its header declares it, before any pixel is read."""

    height: int
    width: int
    channels: int
    dtype: str
    """The stored sample type ('uint8', 'float32', ...)."""


@contextmanager
def open_image(path: Path) -> Iterator[Image]:
    """A plain image opened by PIL, pixels not yet decoded, its declared size checked first
    (`check_declared`); any failure is one line naming the file.

    PIL refuses images over twice its own pixel limit as decompression bombs
    (``DecompressionBombError``), which is said as such; below that it only warns, and
    `MAX_CUBE_ELEMENTS` decides, so the warning is not shown.
    """
    from PIL import Image as PIL

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PIL.DecompressionBombWarning)
        try:
            with PIL.open(path) as im:
                check_declared((im.height, im.width, len(im.getbands())), path, "the image")
                yield im
        except SpecadError:
            raise
        except PIL.DecompressionBombError as err:
            raise SpecadError(
                f"image over PIL's decompression-bomb limit of {2 * PIL.MAX_IMAGE_PIXELS:,} "
                f"pixels ({err})",
                path,
            ) from err
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
            raise SpecadError(f"cannot read image ({type(err).__name__}: {err})", path) from err


def read_image(path: Path, convert: Callable[[Image], Image] | None = None) -> np.ndarray:
    """The pixels of a plain image (`open_image`), as stored or after ``convert`` (e.g.
    ``lambda im: im.convert("RGB")``)."""
    with open_image(path) as im:
        im.load()
        return np.asarray(convert(im) if convert else im)


def as_stored(im: Image) -> Image:
    """One grey channel at its bit depth (a 1-bit image as 0/255, alpha dropped), else RGB."""
    if im.mode in GRAY_MODES:
        return im.convert("L") if im.mode in ("1", "LA") else im
    return im.convert("RGB")


def image_header(path: Path) -> Header:
    """Size, channels and stored type of a plain image, from its header alone."""
    with open_image(path) as im:
        gray = im.mode in GRAY_MODES
        return Header(im.height, im.width, 1 if gray else 3, _MODE_DTYPES.get(im.mode, "uint8"))


def read_image_cube(path: Path) -> Cube:
    """A photo as a cube: ``gray``, or ``R``, ``G``, ``B``, with the stored values."""
    data = read_image(path, as_stored)
    bands = ["gray"] if data.ndim == 2 else ["R", "G", "B"]
    return Cube(data.astype(np.float32), bands)
