"""The penalty images of EfficientAD's loss: natural RGB photos made N-channel on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from specad.errors import SpecadError
from specad.io import IMAGE_SUFFIXES
from specad.io.read import read_image
from specad.spectral import rgb_copies

if TYPE_CHECKING:
    from PIL import Image

SKIMAGE_NATURAL = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "color.png",
)


def natural_images() -> list[Path]:
    """The default penalty photos: those of `SKIMAGE_NATURAL` that scikit-image ships."""
    import skimage.data

    base = Path(skimage.data.__file__).parent
    return [base / n for n in SKIMAGE_NATURAL if (base / n).is_file()]


def image_files(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Every image under ``folder``, sorted; a missing folder is a `SpecadError` naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecadError(f"{what} not found", folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class PenaltySet:
    """Natural RGB images turned into N-channel penalty images on the fly (EfficientAD's
    "ImageNet penalty"), so that no N-channel copy is ever stored.

    Transforms follow the paper: resize to twice the training size, grey with p=0.3, centre crop.
    Images come from ``folder`` (e.g. Imagenette) or, offline by default, from the natural photos
    that scikit-image ships inside its wheel.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        folder: str | Path | None = None,
        wavelengths: list[float] | None = None,
        mapping: str = "repeat",
        max_images: int = 1000,
    ) -> None:
        if mapping == "wavelength" and wavelengths is None:
            raise SpecadError("channel mapping 'wavelength' needs band wavelengths")
        self.index = rgb_copies(channels, mapping, wavelengths)  # type: ignore[arg-type]
        self.image_size = image_size
        self.files = self._files(folder)[:max_images]
        if not self.files:
            raise SpecadError("no images found for the penalty set", folder)
        self._cache: dict[int, np.ndarray] = {}

    @staticmethod
    def _files(folder: str | Path | None) -> list[Path]:
        return natural_images() if folder is None else image_files(folder, "penalty image folder")

    def __len__(self) -> int:
        return len(self.files)

    def _rgb(self, i: int) -> np.ndarray:
        """The i-th image as (3, 2S, 2S) float32 in [0, 1]: resized to 2x and centre-cropped."""
        if i not in self._cache:
            side = 2 * self.image_size

            def crop(im: Image.Image) -> Image.Image:
                im = im.convert("RGB")
                scale = side / min(im.size)
                im = im.resize(
                    (max(side, round(im.width * scale)), max(side, round(im.height * scale)))
                )
                left, top = (im.width - side) // 2, (im.height - side) // 2
                return im.crop((left, top, left + side, top + side))

            rgb = read_image(self.files[i], crop).astype(np.float32)
            self._cache[i] = rgb.transpose(2, 0, 1) / 255.0
        return self._cache[i]

    def images(self) -> torch.Tensor:
        """Every image once, [N, C, S, S], centre-cropped in colour (for teacher distillation)."""
        s, c = self.image_size, self.image_size // 2
        return torch.stack(
            [self._n_channel(self._rgb(i)[:, c : c + s, c : c + s]) for i in range(len(self))]
        )

    def _n_channel(self, rgb: np.ndarray) -> torch.Tensor:
        grey = rgb.mean(0, keepdims=True)
        return torch.from_numpy(
            np.concatenate([rgb[k : k + 1] if k >= 0 else grey for k in self.index])
        )

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """A [B, N, S, S] batch: random images, grey with p=0.3, centre-cropped to the size."""
        picks = torch.randint(len(self.files), (batch,), generator=generator).tolist()
        grey = (torch.rand(batch, generator=generator) < 0.3).tolist()
        s, c = self.image_size, self.image_size // 2
        out = []
        for i, g in zip(picks, grey, strict=True):
            rgb = self._rgb(i)[:, c : c + s, c : c + s]
            if g:
                rgb = np.repeat(
                    (rgb * np.array([[[0.299]], [[0.587]], [[0.114]]])).sum(0, keepdims=True), 3, 0
                )
            out.append(self._n_channel(rgb.astype(np.float32)))
        return torch.stack(out)
