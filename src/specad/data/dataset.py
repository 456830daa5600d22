"""A dataset as specad sees it, whatever its layout on disk: samples (a cube or photo, its split
and label, where its mask lives and how to read it) and their masks.

The layouts that find the samples where they lie (specad's own, MVTec AD/LOCO/3D-AD, VisA, BTAD,
KolektorSDD2, MTD, the cuvis.ai example, plain folders) are `specad.data.layouts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specad.errors import SpecadError
from specad.io import Cube, read_cube
from specad.io.read import read_image

SPLITS = ("train", "val", "test")
GOOD = "good"
MASK_RULES = ("ids", "half", "nonzero")
"""How a mask's pixel values become class ids: ``ids``, stored as class ids (specad's layout);
``half``, a defect where the value is at least half the mask's maximum (binary 0/255 masks, and
anti-aliased edges go to the nearer side), given the sample's ``class_id``; ``nonzero``, a
defect wherever the value is not 0 (VisA numbers its defect regions 1, 2, ...)."""
DEPTH_BANDS = ["R", "G", "B", "Z"]


@dataclass(frozen=True)
class Sample:
    """One cube of a dataset and where its mask lives (None for normal cubes, and for anomalous
    ones of a layout without masks).

    ``mask`` is an image, or a folder of images whose union is the mask (MVTec LOCO);
    ``mask_rule`` (one of `MASK_RULES`) and ``class_id`` say how it becomes class ids.
    ``class_ids`` are the ids an ``ids`` mask may hold (None: any, when the dataset lists no
    classes); ``axes`` is the cubes' stored axis order when the dataset sets one (see
    ``read_cube``); ``depth`` is the organised point cloud (X, Y, Z TIFF) whose depth becomes a
    fourth band (MVTec 3D-AD).
    """

    path: Path
    split: str
    label: str
    mask: Path | None = None
    class_ids: frozenset[int] | None = None
    axes: str | None = None
    mask_rule: str = "ids"
    class_id: int = 0
    depth: Path | None = None

    @property
    def anomalous(self) -> bool:
        return self.label != GOOD

    def read(self) -> Cube:
        cube = read_cube(self.path, axes=self.axes)
        return cube if self.depth is None else with_depth(cube, self.depth)

    def mask_files(self) -> list[Path]:
        """The image files of the mask: itself, or those of its folder."""
        if self.mask is None:
            return []
        if self.mask.is_dir():
            return sorted(p for p in self.mask.iterdir() if p.suffix.lower() == ".png")
        return [self.mask]


@dataclass
class Dataset:
    """The samples of one dataset, its classes (id -> name), the layout it was recognised as,
    where that layout keeps each split (for messages) and the problems its discovery found."""

    root: Path
    samples: list[Sample]
    classes: dict[int, str] = field(default_factory=lambda: {0: "background"})
    layout: str = "specad"
    sources: dict[str, str] = field(
        default_factory=lambda: {"train": "train/good", "val": "val/good", "test": "test"}
    )
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def require(self, name: str) -> list[Sample]:
        """The samples of a split that training or evaluation cannot do without."""
        samples = self.split(name)
        if not samples:
            raise SpecadError(f"the '{name}' split is empty or missing", self.where(name))
        return samples

    def where(self, split: str) -> Path:
        """The folder (or file) this layout reads ``split`` from."""
        return self.root / self.sources.get(split, split)

    @property
    def defect_names(self) -> list[str]:
        return sorted({s.label for s in self.samples if s.anomalous})


def with_depth(cube: Cube, xyz: Path) -> Cube:
    """``cube`` (R, G, B) with the depth (Z) of its organised point cloud as a fourth band.

    Points the scanner did not see are stored as zeros (MVTec 3D-AD removed the background
    plane that way); they take the image's largest valid depth, so the background reads as one
    flat plane just behind the object rather than a cliff to 0 mm, the same in every image.
    """
    points = read_cube(xyz, axes="hwc")
    if points.channels != 3:
        raise SpecadError(f"expected X, Y, Z channels, found {points.channels}", xyz)
    if points.shape[:2] != cube.shape[:2]:
        raise SpecadError(
            f"point cloud is {points.shape[0]}x{points.shape[1]} but its image is "
            f"{cube.shape[0]}x{cube.shape[1]}",
            xyz,
        )
    z = points.data[:, :, 2]
    seen = z > 0
    z = np.where(seen, z, z[seen].max() if seen.any() else 0.0)
    return Cube(np.concatenate([cube.data, z[:, :, None]], axis=2), DEPTH_BANDS, rgb=(0, 1, 2))


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) class-id mask of a sample (zeros for normal cubes), checked against its cube."""
    if sample.mask is None:
        return np.zeros(shape, dtype=np.int64)
    if not sample.mask.exists():
        raise SpecadError("ground-truth mask missing", sample.mask)
    files = sample.mask_files()
    if not files:
        raise SpecadError("the mask folder holds no PNG images", sample.mask)
    ids = np.zeros(shape, dtype=np.int64)
    for path in files:
        mask = _mask_pixels(path, sample.mask_rule, shape)
        if sample.mask_rule == "ids":
            ids = np.maximum(ids, mask)
        else:
            cut = mask > 0 if sample.mask_rule == "nonzero" else mask >= max(1, mask.max()) / 2
            ids[cut] = sample.class_id
    if sample.mask_rule == "ids" and sample.class_ids is not None:
        unknown = sorted(set(np.unique(ids).tolist()) - sample.class_ids)
        if unknown:
            raise SpecadError(
                f"mask ids {unknown} are not in the dataset's class list (classes.json)",
                sample.mask,
            )
    return ids


def _mask_pixels(path: Path, rule: str, shape: tuple[int, int]) -> np.ndarray:
    """One mask image as (H, W) integers: its first channel for class ids, else the largest."""
    mask = read_image(path)  # its declared size checked before it is decoded
    if mask.ndim == 3:
        mask = mask[..., 0] if rule == "ids" else mask.max(axis=2)
    if mask.ndim != 2 or mask.dtype.kind not in "uib":
        raise SpecadError(f"not a class-id mask (shape {mask.shape}, {mask.dtype})", path)
    if mask.shape != tuple(shape):
        raise SpecadError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} but its cube is {shape[0]}x{shape[1]}",
            path,
        )
    return mask.astype(np.int64)
