"""Per-pixel spectral maps: how unusual a pixel's spectrum is within its own image.

Pretrained patch features see N bands only through a stem that mixes them, so a material that
differs from its surroundings only in SWIR (water, alcohol, foil) can look normal to them. These
maps score every pixel's own spectrum instead. Both are taken relative to the image's median
spectrum, because a tray under another lamp or with another batch of sawdust is normal as a
whole: on ``tray6-hard`` a global model of the spectrum (RX) fell well behind
(benchmarks/accuracy/tray6_results.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from specad.bounds import shown
from specad.errors import SpecadError
from specad.models.base import Units, check_shape, nest, unnest
from specad.models.rx import RX

SAMPLE_VALUES = 10_000_000
"""Training values sampled per map (pixels x bands, at most `MAX_PIXELS` pixels): a
covariance of C bands is well estimated from 200 x C pixels and more, and the sample's
float64 working copies stay near 100 MB whatever the band count."""
MAX_PIXELS = 200_000
FLOOR = 1e-3
"""Smallest value taken to the log, as a share of the channel's mean absolute training value."""
MEDIAN_PIXELS = 16_384
"""Pixels of a regular grid that an image's median spectrum is taken over, where it has more:
the median of n samples has a standard error of about 1.25 / sqrt(n) standard deviations (under
1 % here), while selecting it among every pixel of a 224-band cube was a large share of its
spectral maps' cost (benchmarks/speed/bands_results.md)."""


def _centred(x: Tensor) -> Tensor:
    """[B, C, H, W] minus each image's per-channel median (over `MEDIAN_PIXELS` of them)."""
    step = max(1, math.isqrt(x.shape[-2] * x.shape[-1] // MEDIAN_PIXELS))
    grid = x[..., ::step, ::step].flatten(2)  # [B, C, n]
    return x - grid.median(dim=-1).values[..., None, None]


def _in_units(x: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """[B, C, H, W] float32 ``x * scale + offset`` per channel: model input in cube units."""
    shift, gain = offset.float().view(1, -1, 1, 1), scale.float().view(1, -1, 1, 1)
    return torch.addcmul(shift, x.float(), gain)


@dataclass
class PixelSpectra:
    """Two Mahalanobis maps of each pixel's spectrum against its image's median spectrum.

    - ``level``: ``x - median(x)`` on the (standardised) input: brightness and colour against
      the rest of this image.
    - ``shape``: ``log(v) - mean_bands(log v)`` of the values ``v`` in the cube's own units
      (``units``), minus its image median: the spectrum's shape, blind to any gain that scales
      all bands alike (a dimmer lamp, a shadow), on C - 1 bands (the last one follows from the
      others). None for one channel, which has no shape.

    Each is ``sqrt((y - mu)^T S^-1 (y - mu))`` with ``mu``, ``S`` fitted on training pixels
    transformed the same way (`RX`, Ledoit-Wolf shrinkage), on as many principal axes as
    `specad.models.rx.flat_tail` keeps: the rest are scored by their mean variance, which keeps
    each distance within a bounded factor of the full one while its cost grows with the axes
    kept, not with the square of the band count. The transforms run in float32 (their inputs
    are float32 already); the distances in float64. Shapes: [B, C, H, W] -> [B, 1, H, W] per
    map.
    """

    scale: Tensor  # [C]: cube units = input * scale + offset
    offset: Tensor  # [C]
    floor: Tensor  # [C]: smallest cube value taken to the log
    level: RX
    shape: RX | None

    @classmethod
    def fit(
        cls,
        images: Tensor | Sequence[Tensor],
        units: Units | None,
        seed: int,
        magnitude: Tensor | None = None,
    ) -> Self:
        """Fit both maps on normal images [B, C, H, W] or [C, H, W] each, taken one at a time
        (``units`` None: already cube units): the log floor from ``magnitude`` (`magnitude`
        summed over ``images``; a pass of its own where None), then a random sample of each
        image's transformed pixels, at most `SAMPLE_VALUES` values in all. Like `maps`, the
        statistics live on the CPU."""
        c = images[0].shape[0]
        if magnitude is None:
            magnitude = sum(cls.magnitude(x[None], units) for x in images)
        scale, offset = ([1.0] * c, [0.0] * c) if units is None else units
        spectra = cls(
            torch.tensor(scale, dtype=torch.float64),
            torch.tensor(offset, dtype=torch.float64),
            torch.zeros(c, dtype=torch.float64),
            cls._model(c, seed),
            cls._model(c, seed) if c > 1 else None,
        )
        spectra.floor = FLOOR * magnitude / len(images) + torch.finfo(torch.float32).tiny
        return spectra._sampled(images, seed, RX.fit_cubes)

    def update(self, images: Tensor | Sequence[Tensor], seed: int) -> Self:
        """Pool normal images into both maps' statistics (`RX.update_cubes`). The transforms
        (the units, the log floor) stay the fitted ones, so that the pooled statistics are of
        pixels transformed alike."""
        return self._sampled(images, seed, RX.update_cubes)

    def _sampled(
        self,
        images: Tensor | Sequence[Tensor],
        seed: int,
        step: Callable[[RX, Iterator[np.ndarray], int], RX],
    ) -> Self:
        """``step`` (`RX.fit_cubes` or `RX.update_cubes`) run on a random sample of each
        image's transformed pixels, at most `SAMPLE_VALUES` values in all, as standing for
        every pixel of the images (the weight pooling gives them)."""
        gen = torch.Generator().manual_seed(seed)
        per_image = math.ceil(self.level.max_pixels / len(images))
        level, shape, pixels = [], [], 0
        for x in images:
            x = x[None].cpu()
            pixels += x.shape[2] * x.shape[3]
            # pixels picked before the transpose to (n, C): the whole image is never transposed
            pick = torch.randperm(x.shape[2] * x.shape[3], generator=gen)[:per_image]
            level.append(self._level(x).flatten(2)[0][:, pick].T.numpy())
            if self.shape is not None:
                shape.append(self._shape(x).flatten(2)[0][:, pick].T.numpy())
        step(self.level, (p[:, None] for p in level), pixels)  # (n, 1, C) "cubes"
        if self.shape is not None:
            step(self.shape, (p[:, None] for p in shape), pixels)
        return self

    @staticmethod
    def _model(channels: int, seed: int) -> RX:
        """One map's model, for images of ``channels`` bands: fitted on a sample of at most
        `SAMPLE_VALUES` values, on as many principal axes as `specad.models.rx.flat_tail`
        keeps (a saved one is made the same way: its whitening is derived again at load)."""
        sample = max(2, min(MAX_PIXELS, SAMPLE_VALUES // channels))
        return RX(max_pixels=sample, components="auto", seed=seed)

    @staticmethod
    def magnitude(x: Tensor, units: Units | None) -> Tensor:
        """[C]: each image's mean absolute value per channel in cube units, summed over the
        images of ``x`` [B, C, H, W]; `fit` sets the log floor from it."""
        c = x.shape[1]
        scale, offset = ([1.0] * c, [0.0] * c) if units is None else units
        cube = _in_units(x.cpu(), torch.tensor(scale), torch.tensor(offset))
        return cube.abs_().mean(dim=(2, 3)).sum(0)

    def _units(self, x: Tensor) -> Tensor:
        return _in_units(x, self.scale, self.offset)

    @staticmethod
    def _level(x: Tensor) -> Tensor:
        return _centred(x.float())

    def _shape(self, x: Tensor) -> Tensor:
        """[B, C - 1, H, W]: the last band is minus the sum of the others once the band mean is
        taken off, so it is dropped; its covariance would have a null direction."""
        logs = self._units(x).clamp_(min=self.floor.float().view(1, -1, 1, 1)).log_()
        return _centred(logs[:, :-1] - logs.mean(dim=1, keepdim=True))

    @property
    def names(self) -> tuple[str, ...]:
        """The maps' names, in the order `maps` returns them."""
        return ("level",) if self.shape is None else ("level", "shape")

    def maps(self, x: Tensor) -> list[Tensor]:
        """Distance maps [B, 1, H, W] of input [B, C, H, W]: level, then shape if any."""
        x = x.cpu()
        out = [self.level.score_maps(self._level(x))]
        if self.shape is not None:
            out.append(self.shape.score_maps(self._shape(x)))
        return [m.sqrt() for m in out]  # RX gives squared distances

    # ------------------------------------------------------------------ files

    def tensors(self) -> dict[str, Tensor]:
        fitted = {"scale": self.scale, "offset": self.offset, "floor": self.floor}
        for name, rx in (("level", self.level), ("shape", self.shape)):
            if rx is not None:
                fitted |= nest(name, rx._tensors())
        return fitted

    def scalars(self) -> dict[str, Any]:
        return {
            name: None if rx is None else rx._scalars()
            for name, rx in (("level", self.level), ("shape", self.shape))
        }

    @classmethod
    def restore(cls, tensors: dict[str, Tensor], scalars: dict[str, Any], seed: int) -> Self:
        """The maps `tensors` and `scalars` describe (names without the caller's prefix)."""

        if not isinstance(scalars, dict):
            raise SpecadError(f"knn spectral map values are not a mapping{shown(scalars)}")

        def rx(name: str) -> RX | None:
            if scalars.get(name) is None:
                return None
            if not isinstance(scalars[name], dict):
                raise SpecadError(f"knn spectral {name} values are not a mapping")
            fitted = cls._model(max(1, len(tensors["scale"])), seed)
            fitted._restore(unnest(name, tensors), scalars[name])
            return fitted

        level = rx("level")
        if level is None:
            raise SpecadError("knn spectral maps are missing their level model")
        shape = rx("shape")
        c = level.fitted_input.channels
        if shape is not None and shape.fitted_input.channels != c - 1:
            raise SpecadError(
                f"knn spectral shape model has {shape.fitted_input.channels} channels, "
                f"not {c - 1} (one less than its level model's {c})"
            )
        for name in ("scale", "offset", "floor"):
            check_shape("knn", f"spectra.{name}", tensors[name], c)
        return cls(tensors["scale"], tensors["offset"], tensors["floor"], level, shape)
