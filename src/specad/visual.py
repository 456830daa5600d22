"""Pictures of cubes and maps for people: false-colour composites and heat-map overlays."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from specad.io import Cube


def display_bands(rgb: Sequence[int] | None, channels: int) -> list[int]:
    """The three bands to show of a ``channels``-band cube: ``rgb`` where the cube has them all.

    A file's RGB mapping (an ENVI header's ``default bands``) can name bands the cube lacks;
    then the first three bands are shown (one band in grey when there are fewer), with a
    ``note:`` line, rather than the picture failing.
    """
    if rgb is not None and len(rgb) == 3 and all(0 <= int(i) < channels for i in rgb):
        return [int(i) for i in rgb]
    shown = [0, 1, 2] if channels >= 3 else [0, 0, 0]
    if rgb is not None:
        view = "bands 1-3" if channels >= 3 else "band 1 in grey"
        warnings.warn(
            f"RGB bands {[int(i) + 1 for i in rgb][:8]} (counted from 1) are not all among "
            f"the cube's {channels} bands; showing {view}",
            stacklevel=2,
        )
    return shown


def false_colour(data: np.ndarray, bands: Sequence[int] | None) -> np.ndarray:
    """(H, W, 3) uint8 from three bands (`display_bands`), each stretched between its 1st and
    99th percentile, so that dim reflectance still shows its contrast."""
    rgb = data[:, :, display_bands(bands, data.shape[2])].astype(np.float32)
    # percentiles of at most about a million pixels: exact below that, and a gigapixel cube's
    # sorted copies (several GB) are not needed for a display stretch
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6)))
    lo, hi = np.percentile(rgb[::step, ::step], [1, 99], axis=(0, 1))
    rgb -= lo.astype(np.float32)
    rgb /= np.maximum(hi - lo, 1e-12).astype(np.float32)
    np.clip(rgb, 0, 1, out=rgb)
    rgb *= 255
    return rgb.astype(np.uint8)


def heat(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W, 4) float RGBA of a map on a fixed scale [0, vmax], so images compare."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(anomaly_map / max(vmax, 1e-9), 0, 1))


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W, 3) uint8: the heat map blended over the image where the map exceeds half the
    threshold, so normal regions stay readable. Blended 256 rows at a time: the float64 RGBA of
    a whole 24-megapixel map alone would take 768 MB."""
    out = np.empty(rgb.shape, np.uint8)
    for top in range(0, rgb.shape[0], 256):
        rows = slice(top, top + 256)
        colour = heat(anomaly_map[rows], 2 * threshold)[:, :, :3] * 255
        alpha = np.clip(anomaly_map[rows] / max(threshold, 1e-9) - 0.5, 0, 1)[:, :, None] * 0.7
        out[rows] = (rgb[rows] * (1 - alpha) + colour * alpha).astype(np.uint8)
    return out


def cube_overlay(cube: Cube, anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W, 3) uint8: the overlay every output shows (`specad predict`, `specad watch`,
    `specad serve`): the cube's false colour (its RGB bands; the first band without them) under
    its map (`overlay`)."""
    return overlay(false_colour(cube.data, cube.rgb or (0, 0, 0)), anomaly_map, threshold)
