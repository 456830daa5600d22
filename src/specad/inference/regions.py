"""The regions a map flags, and the bands that make each one anomalous: ``specad predict
--explain`` (``regions.jsonl``) and the report's per-image pages, computed one way for both.

A region is a connected set of pixels (8-neighbours) of the native-resolution map at or above
the threshold (`specad.metrics.is_anomalous`, the one comparison). Its spectrum is the mean of
its pixels in the model's channels; its deviation per band is that spectrum's robust z-score
against the model's normal envelope (`specad.models.envelope.robust_z`), which equals the mean
robust z of its pixels, since the score is linear in the pixel value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from specad.metrics import is_anomalous
from specad.models.envelope import Envelope, robust_z

TOP_BANDS = 5
CONNECTIVITY = np.ones((3, 3), bool)
"""Diagonal neighbours join a region: a thin diagonal defect is one finding, not many."""


@dataclass(frozen=True)
class BandDeviation:
    """One band of a region's spectrum and how far it lies from normal."""

    index: int
    band: str
    nm: float | None
    z: float

    @property
    def label(self) -> str:
        """The band as people name it: its wavelength where known."""
        return f"{self.nm:g} nm" if self.nm is not None else self.band


@dataclass(frozen=True)
class Region:
    """One connected region above the threshold. ``bbox`` is (top, left, bottom, right) in
    pixels, bottom and right exclusive; ``bands`` the `TOP_BANDS` bands of largest absolute
    deviation, largest first (empty for a model without an envelope)."""

    area: int
    bbox: tuple[int, int, int, int]
    peak: float
    mean: float
    spectrum: list[float]
    bands: list[BandDeviation]

    def record(self) -> dict:
        """The region as a ``regions.jsonl`` row (without the file it is in)."""
        top, left, bottom, right = self.bbox
        return {
            "area": self.area,
            "bbox": {"top": top, "left": left, "bottom": bottom, "right": right},
            "peak_score": round(self.peak, 6),
            "mean_score": round(self.mean, 6),
            "top_bands": [
                {"band": b.band, "nm": b.nm, "index": b.index, "deviation": round(b.z, 3)}
                for b in self.bands
            ],
        }


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions of a boolean (H, W) mask: labels 1..n, 0 outside."""
    labels, n = ndimage.label(mask, structure=CONNECTIVITY)
    return labels, int(n)


def region_means(labels: np.ndarray, n: int, data: np.ndarray) -> np.ndarray:
    """(n, C) mean of each labelled region's pixels in the (H, W, C) ``data``."""
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    pixels = data.reshape(-1, data.shape[-1])
    sums = [
        np.bincount(flat, weights=pixels[:, c], minlength=n + 1)[1:] for c in range(data.shape[-1])
    ]
    return np.stack(sums, axis=1) / np.maximum(count, 1)[:, None]


def top_bands(
    z: np.ndarray, bands: Sequence[str], wavelengths: Sequence[float] | None, top: int = TOP_BANDS
) -> list[BandDeviation]:
    """The ``top`` bands of largest absolute deviation ``z`` (per band), largest first."""
    order = np.argsort(-np.abs(z), kind="stable")[:top]
    return [
        BandDeviation(
            int(i), bands[i], None if wavelengths is None else float(wavelengths[i]), float(z[i])
        )
        for i in order
    ]


def find_regions(
    anomaly_map: np.ndarray,
    threshold: float,
    data: np.ndarray,
    envelope: Envelope | None,
    bands: Sequence[str],
    wavelengths: Sequence[float] | None,
) -> list[Region]:
    """Every region of ``anomaly_map`` at or above ``threshold``, highest peak first, each with
    its mean spectrum in ``data`` ((H, W, C): the cube in the model's channels, at the map's
    size) and its most deviant bands."""
    labels, n = label_regions(is_anomalous(anomaly_map, threshold))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    peaks = ndimage.maximum(anomaly_map, labels, index)
    means = ndimage.mean(anomaly_map, labels, index)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    spectra = region_means(labels, n, data)
    z = robust_z(spectra, envelope) if envelope is not None else None
    regions = [
        Region(
            int(areas[k]),
            (box[0].start, box[1].start, box[0].stop, box[1].stop),
            float(peaks[k]),
            float(means[k]),
            [float(v) for v in spectra[k]],
            [] if z is None else top_bands(z[k], bands, wavelengths),
        )
        for k, box in enumerate(ndimage.find_objects(labels))
    ]
    return sorted(regions, key=lambda r: -r.peak)
