"""The one cube type: (H, W, C) float32 pixels plus what is known about the bands, the
explicit conversion of raw counts to reflectance, and what a cube file may declare before it is
read (`check_declared`, `Stored`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from specad.bounds import MAX_CUBE_ELEMENTS
from specad.errors import SpecadError
from specad.spectral import RGB_PRIMARIES_NM, VISIBLE_NM

CUBE_SUFFIXES = (".tif", ".tiff", ".npy", ".npz", ".hdr", ".mat", ".cu3s")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Plain images (photos, masks) that PIL reads: penalty images and imported datasets."""
AXIS_ORDERS = ("hwc", "chw", "whc", "cwh", "hcw", "wch")
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


def check_declared(shape: Sequence[int], path: Path | None, what: str = "the cube") -> None:
    """Refuse a size a file declares (a header's shape) beyond `MAX_CUBE_ELEMENTS`, before any
    of it is allocated: a header is a few bytes, whatever it claims."""
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise SpecadError(f"{what} declares a negative size {shape}", path)
    if math.prod(shape) > MAX_CUBE_ELEMENTS:
        raise SpecadError(
            f"{what} declares {' x '.join(map(str, shape))} = {math.prod(shape):,} values, more "
            f"than the {MAX_CUBE_ELEMENTS:,} specad reads (specad.bounds.MAX_CUBE_ELEMENTS); "
            "crop it or drop bands",
            path,
        )


class Stored(NamedTuple):
    """An array as its file declares it, before any of it is read."""

    shape: tuple[int, ...]
    kind: str
    """NumPy's dtype kind: 'f', 'i', 'u' and 'b' are numeric."""
    what: str = ""
    """What a non-numeric entry is, for messages ('MATLAB text (char)')."""

    @property
    def numeric(self) -> bool:
        return self.kind in ("f", "i", "u", "b")


def pick_variable(listing: dict[str, Stored], variable: str | None, path: Path | None) -> str:
    """The variable named, which must be a numeric array, or else the largest 3-D one."""
    names = ", ".join(sorted(k for k in listing if not k.startswith("__"))) or "none"
    if variable is not None:
        if variable not in listing:
            raise SpecadError(f"no variable '{variable}' (has: {names})", path)
        if not listing[variable].numeric:
            what = listing[variable].what
            raise SpecadError(f"variable '{variable}' is {what}, not a numeric cube", path)
        return variable
    candidates = [
        (math.prod(v.shape), k)
        for k, v in listing.items()
        if len(v.shape) == 3 and v.kind in ("f", "i", "u") and not k.startswith("__")
    ]
    if not candidates:
        raise SpecadError(f"no 3-D numeric array found (variables: {names})", path)
    return max(candidates)[1]
