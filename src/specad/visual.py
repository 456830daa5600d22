"""Pictures of cubes and maps for people: false-colour composites and heat-map overlays."""

from __future__ import annotations

import numpy as np


def false_colour(data: np.ndarray, bands: tuple[int, ...] | list[int]) -> np.ndarray:
    """(H, W, 3) uint8 from three bands, each stretched between its 1st and 99th percentile,
    so that dim reflectance still shows its contrast."""
    rgb = data[:, :, list(bands)].astype(np.float32)
    lo, hi = np.percentile(rgb, [1, 99], axis=(0, 1))
    rgb = (rgb - lo) / np.maximum(hi - lo, 1e-12)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def heat(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W, 4) float RGBA of a map on a fixed scale [0, vmax], so images compare."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(anomaly_map / max(vmax, 1e-9), 0, 1))


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W, 3) uint8: the heat map blended over the image where the map exceeds half the
    threshold, so normal regions stay readable."""
    colour = heat(anomaly_map, 2 * threshold)[:, :, :3] * 255
    alpha = np.clip(anomaly_map / max(threshold, 1e-9) - 0.5, 0, 1)[:, :, None] * 0.7
    return (rgb * (1 - alpha) + colour * alpha).astype(np.uint8)
