"""How a cube becomes model input: channel selection, resizing, per-channel standardisation
(`Preprocess`, saved with every model), and a split loaded into memory as input (`load_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from specad.bounds import MAX_CHANNELS, FiniteFloat, ImageSize, Index, check_image_size
from specad.data.dataset import Sample, read_mask
from specad.errors import SpecadError
from specad.io import Cube
from specad.spectral import SWIR_MIN_NM

# --------------------------------------------------------------------------- channel selection


def select_channels(
    cube: Cube, spec: str | list[int | float | str], path: Path | None = None
) -> list[int]:
    """Channel indices for a selection: ``all``, ``rgb``, ``swir``, or a list of indices,
    wavelengths in nm (nearest band within 10 nm), or band names."""
    if isinstance(spec, str):
        key = spec.lower()
        if key == "all":
            return list(range(cube.channels))
        if key == "rgb":
            if cube.rgb is None:
                raise SpecadError("cube has no RGB bands to select", path)
            return list(cube.rgb)
        if key == "swir":
            if cube.wavelengths is None:
                raise SpecadError("selecting 'swir' needs wavelengths, and the cube has none", path)
            idx = [i for i, w in enumerate(cube.wavelengths) if w >= SWIR_MIN_NM]
            if not idx:
                raise SpecadError(f"no band at or above {SWIR_MIN_NM:g} nm", path)
            return idx
        raise SpecadError(f"unknown channel selection '{spec}' (all, rgb, swir or a list)", path)
    return [_one_channel(cube, item, path) for item in spec]


def _one_channel(cube: Cube, item: int | float | str, path: Path | None) -> int:
    if isinstance(item, str):
        if item in cube.bands:
            return cube.bands.index(item)
        raise SpecadError(f"unknown band name '{item}' (bands: {', '.join(cube.bands)})", path)
    if isinstance(item, int) and not isinstance(item, bool) and item < cube.channels:
        if item < 0:
            raise SpecadError(f"band index {item} is negative", path)
        return item
    if cube.wavelengths is None:
        raise SpecadError(f"band {item} is out of range and the cube has no wavelengths", path)
    w = np.asarray(cube.wavelengths)
    nearest = int(np.argmin(np.abs(w - float(item))))
    if abs(w[nearest] - float(item)) > 10:
        raise SpecadError(f"no band within 10 nm of {item} nm", path)
    return nearest


# --------------------------------------------------------------------------- model input

INPUT_MEAN, INPUT_STD = 0.45, 0.225  # what Preprocess standardises every channel to


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class Preprocess:
    """How a cube becomes model input; saved with every model so inference repeats it exactly.

    Channels are selected, the image is resized to ``image_size`` and each channel is
    standardised to ImageNet-like pixel statistics (mean 0.45, std 0.225), so that pretrained
    teachers see the contrast range they were trained on whatever the camera's levels.
    Validated when made (`specad.bounds` states them), so a ``model.json`` that would
    index missing channels, divide by zero or allocate without bound never loads.
    """

    source_channels: Annotated[int, Field(strict=True, ge=1, le=MAX_CHANNELS)]
    channels: Annotated[list[Index], Field(min_length=1)]
    image_size: Annotated[ImageSize, AfterValidator(check_image_size)]
    mean: list[FiniteFloat] | None = None
    std: list[Annotated[FiniteFloat, Field(gt=0)]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Preprocess:
        if max(self.channels) >= self.source_channels:
            raise ValueError(
                f"channels {self.channels[:8]} are not indices of a "
                f"{self.source_channels}-channel cube"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.channels):
                raise ValueError(
                    f"{name} has {len(values)} values for {len(self.channels)} channels"
                )
        return self

    def check(self, cube: Cube, path: Path | None = None) -> None:
        """Refuse a cube whose channel count is not the model's."""
        if cube.channels != self.source_channels:
            raise SpecadError(
                f"the model expects cubes with {self.source_channels} channels, "
                f"this one has {cube.channels}",
                path,
            )

    def select(self, cube: Cube, path: Path | None = None) -> np.ndarray:
        """The cube's selected channels, (H, W, C'), after checking its channel count."""
        self.check(cube, path)
        if list(self.channels) == list(range(cube.channels)):  # all of them: no copy
            return cube.data
        return cube.data[:, :, self.channels]

    def cube_tensor(self, cube: Cube, path: Path | None = None) -> torch.Tensor:
        """[C, S, S] float32 input for one cube (native size when ``image_size`` is 0)."""
        x = torch.from_numpy(np.ascontiguousarray(self.select(cube, path).transpose(2, 0, 1)))
        if self.image_size:
            x = resize(x[None], (self.image_size, self.image_size))[0]
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        # (x - mean) / std * INPUT_STD + INPUT_MEAN as one pass: x * gain + shift
        gain = INPUT_STD / torch.tensor(self.std, dtype=torch.float64)
        shift = INPUT_MEAN - torch.tensor(self.mean, dtype=torch.float64) * gain
        view = {"dtype": x.dtype, "device": x.device}
        return torch.addcmul(shift.to(**view).view(-1, 1, 1), x, gain.to(**view).view(-1, 1, 1))

    def units(self) -> tuple[list[float], list[float]] | None:
        """Per-channel ``(scale, offset)`` with ``selected cube = input * scale + offset`` (the
        inverse of `normalise`); None before `fit`, when the input is the cube itself."""
        if self.mean is None or self.std is None:
            return None
        scale = [s / INPUT_STD for s in self.std]
        return scale, [m - INPUT_MEAN * k for m, k in zip(self.mean, scale, strict=True)]

    def fit(self, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Per-channel mean/std of training input (before normalisation): a batch [B, C, S, S]
        or images [C, S, S] one at a time, so that a dataset need not be held in memory.
        Summed in float64 and merged image by image (Chan et al.'s update), so the result
        does not drift with the number of images."""
        n, mean, m2 = 0, torch.zeros(()), torch.zeros(())
        for x in images:  # [C, S, S] each
            x = x.detach().double().flatten(1)
            k, mean_x = x.shape[1], x.mean(1)
            m2_x = (x - mean_x[:, None]).square().sum(1)
            delta, n = mean_x - mean, n + k
            mean, m2 = mean + delta * k / n, m2 + m2_x + delta.square() * (n - k) * k / n
        if n < 2:
            raise SpecadError("the channel statistics need at least two training pixels")
        self.mean = mean.tolist()
        self.std = (m2 / (n - 1)).sqrt().clamp_min(1e-6).tolist()


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, H, W]; antialiased when shrinking so small defects average in."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return torch.nn.functional.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=shrink
    )


@dataclass
class Inputs:
    """A split loaded as model input, with what is needed to score it."""

    x: torch.Tensor
    labels: list[str]
    masks: list[np.ndarray]


def load_inputs(pre: Preprocess, samples: Sequence[Sample], with_masks: bool = False) -> Inputs:
    """``samples`` preprocessed and stacked in memory [N, C, S, S], with their labels (and
    masks): for training, and for the few images that calibrate an export."""
    xs, labels, masks = [], [], []
    for s in samples:
        cube = s.read()
        xs.append(pre.cube_tensor(cube, s.path))
        labels.append(s.label)
        if with_masks:
            masks.append(read_mask(s, cube.shape[:2]))
    return Inputs(torch.stack(xs), labels, masks)
