"""The normal envelope: what normal pixels look like, band by band, saved with every model.

Users judge a finding by its spectrum, so every fit keeps, per band of the model's channels, the
median and the 1st and 99th percentiles of the training pixels (`Envelope`, in ``model.json``,
beside the bands and wavelengths it describes). Percentiles come from a bounded, seeded random
sample of pixels, so the envelope is a few KB and the same for the same data.

A pixel's deviation from it is a robust z-score (`robust_z`): ``(x - median) / spread`` with
``spread = (p99 - p1) / (2 * 2.3263)``, the standard deviation a normal distribution with those
percentiles has (its 1st and 99th percentiles lie 2.3263 sigma either side of the median), but
unmoved by the outliers a plain standard deviation would chase.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from specad.bounds import FiniteFloat
from specad.errors import SpecadError

SAMPLE_PIXELS = 65_536
"""Pixels the percentiles are taken from: each percentile within about 0.1 % of the pixels..."""
SAMPLE_VALUES = 4_194_304
"""...and at most this many values (pixels x bands): at 224 bands 18,724 pixels, whose float64
sample holds 34 MB beside the fit, and each percentile within about 0.4 % of the pixels."""
SEED = 0
Z_PER_SPREAD = 2 * 2.3263
"""The 1st to 99th percentile range of a normal distribution, in standard deviations."""
SPREAD_FLOOR = 1e-3
"""A band constant in training gets this fraction of its median (plus a tiny constant) as its
spread, so that a deviation there is large but finite."""


def _rounded(values: np.ndarray) -> list[float]:
    """Six significant digits: far finer than any sensor's noise, and a few KB in JSON."""
    return [float(f"{v:.6g}") for v in values]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Envelope:
    """Per band: the median and the 1st and 99th percentiles of normal training pixels, in the
    cube's units, from ``pixels`` sampled pixels. Validated when made or read: equal lengths,
    finite values, ``p1 <= median <= p99``."""

    median: list[FiniteFloat]
    p1: list[FiniteFloat]
    p99: list[FiniteFloat]
    pixels: Annotated[int, Field(strict=True, ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> Envelope:
        n = len(self.median)
        if n == 0 or len(self.p1) != n or len(self.p99) != n:
            raise ValueError(
                f"median, p1 and p99 need one value per band (got {n}, "
                f"{len(self.p1)}, {len(self.p99)})"
            )
        lo, mid, hi = (np.asarray(v) for v in (self.p1, self.median, self.p99))
        bad = np.flatnonzero((lo > mid) | (mid > hi))
        if bad.size:
            raise ValueError(f"band {int(bad[0])}: p1 <= median <= p99 does not hold")
        return self

    @property
    def spread(self) -> np.ndarray:
        """Per band, what one unit of `robust_z` is in the cube's units."""
        spread = (np.asarray(self.p99) - np.asarray(self.p1)) / Z_PER_SPREAD
        floor = SPREAD_FLOOR * np.abs(np.asarray(self.median)) + 1e-12
        return np.maximum(spread, floor)


def robust_z(values: np.ndarray, envelope: Envelope) -> np.ndarray:
    """How far ``values`` (..., C) lie from the normal median, in robust standard deviations."""
    return (np.asarray(values, np.float64) - np.asarray(envelope.median)) / envelope.spread


class EnvelopeSample:
    """The envelope's pixels, drawn from each of ``count`` cubes as a pass that reads them anyway
    goes by (a fit's first pass over its training cubes): no pass of its own. ``channels``
    selects the model's bands from the cubes (None: all)."""

    def __init__(
        self,
        count: int,
        channels: Sequence[int] | None = None,
        pixels: int = SAMPLE_PIXELS,
        seed: int = SEED,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.count, self.pixels = max(count, 1), pixels
        self.channels = None if channels is None else list(channels)
        self.taken: list[np.ndarray] = []

    def add(self, cube: np.ndarray) -> None:
        """Draw from one (H, W, C) array: its share of the pixels (seeded), at most
        `SAMPLE_VALUES` values in all."""
        flat = np.asarray(cube).reshape(-1, np.shape(cube)[-1])
        bands = flat.shape[1] if self.channels is None else len(self.channels)
        per = max(1, min(self.pixels, SAMPLE_VALUES // max(bands, 1)) // self.count)
        pick = np.sort(self.rng.choice(len(flat), min(per, len(flat)), replace=False))
        drawn = flat[pick] if self.channels is None else flat[pick][:, self.channels]
        self.taken.append(drawn.astype(np.float64))

    def envelope(self) -> Envelope:
        """The percentiles of the pixels drawn, those that are not finite left out."""
        sample = np.concatenate(self.taken) if self.taken else np.empty((0, 0))
        sample = sample[np.isfinite(sample).all(axis=1)]
        if not len(sample):
            raise SpecadError("no finite training pixels to take the normal envelope from")
        p1, median, p99 = np.percentile(sample, [1, 50, 99], axis=0)
        # rounding to 6 digits cannot reorder them: they are each rounded the same way
        return Envelope(_rounded(median), _rounded(p1), _rounded(p99), len(sample))


def pixel_envelope(cubes: Iterable[np.ndarray], count: int) -> Envelope:
    """The envelope of ``count`` (H, W, C) arrays (`EnvelopeSample`)."""
    sample = EnvelopeSample(count)
    for cube in cubes:
        sample.add(cube)
    return sample.envelope()


def tensor_envelope(images: torch.Tensor) -> Envelope:
    """The envelope of [N, C, H, W] images in the cube's units (a training run's input before
    standardisation)."""
    return pixel_envelope((x.permute(1, 2, 0).numpy() for x in images.cpu()), len(images))
