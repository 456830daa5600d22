"""Band facts, in one place: the visible range, where SWIR starts, the wavelength each RGB
channel stands for, and how N channels map onto RGB.

ImageNet weights and statistics only know R, G and B, so every N-channel adaptation (a
teacher's first convolution, its input normalisation, the penalty images, a cube's preview
bands) goes through :func:`rgb_sources`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from specad.errors import SpecadError

VISIBLE_NM = (400.0, 700.0)
SWIR_MIN_NM = 900.0
RGB_PRIMARIES_NM = (650.0, 550.0, 450.0)  # the wavelength R, G and B stand for
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # R, G, B
IMAGENET_STD = (0.229, 0.224, 0.225)

Mapping = Literal["repeat", "wavelength"]


def is_visible(nm: float) -> bool:
    return VISIBLE_NM[0] <= nm <= VISIBLE_NM[1]


def nearest_primary(nm: float) -> int:
    """0, 1 or 2: the RGB channel whose primary wavelength is nearest ``nm``."""
    return min(range(3), key=lambda i: abs(RGB_PRIMARIES_NM[i] - nm))


def rgb_sources(
    n_channels: int, mapping: Mapping = "repeat", wavelengths: Sequence[float] | None = None
) -> list[tuple[int, ...]]:
    """For each of N input channels, the RGB channels (0=R, 1=G, 2=B) it stands in for.

    "repeat": channel j copies RGB channel j mod 3; for N < 3 channel j stands for every RGB
    channel i with i mod N == j. "wavelength": a visible band (400-700 nm) stands for the nearest
    primary (B 450, G 550, R 650 nm), any other band for all three.
    """
    if mapping == "repeat":
        if n_channels >= 3:
            return [(j % 3,) for j in range(n_channels)]
        return [tuple(i for i in range(3) if i % n_channels == j) for j in range(n_channels)]
    if mapping != "wavelength":
        raise SpecadError(f"unknown channel mapping {mapping!r}; use 'repeat' or 'wavelength'")
    if wavelengths is None or len(wavelengths) != n_channels:
        got = "none" if wavelengths is None else len(wavelengths)
        raise SpecadError(
            f"the 'wavelength' mapping needs {n_channels} band wavelengths, got {got}"
        )
    return [(nearest_primary(nm),) if is_visible(nm) else (0, 1, 2) for nm in wavelengths]


def rgb_copies(
    n_channels: int, mapping: Mapping = "repeat", wavelengths: Sequence[float] | None = None
) -> list[int]:
    """For each of N channels, the one RGB channel it copies from an RGB image, or -1 for grey
    (the mean of R, G and B) where :func:`rgb_sources` says it stands for several."""
    return [
        src[0] if len(src) == 1 else -1 for src in rgb_sources(n_channels, mapping, wavelengths)
    ]
