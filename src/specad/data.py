"""Datasets on disk: the folder layout, ground-truth masks, channel selection and validation.

Two layouts are read:

* specad's own: ``train/good``, ``val/good``, ``test/good``, ``test/<defect>``, masks in
  ``ground_truth/<defect>/<stem>.png`` (pixel value = class id) and ``classes.json``.
* the original cuvis.ai EfficientAD example: one folder per defect, ``_ok_ok_`` in the file name
  for normal cubes, masks ``<stem>_0_RGB_mask.png`` beside the cube and ids in
  ``annotations.json``. It has no splits, so normal cubes are split 70/15/15 by a stable hash of
  their names.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from specad.bounds import MAX_CHANNELS, FiniteFloat, ImageSize, Index, check_image_size
from specad.errors import SpecadError
from specad.io import CUBE_SUFFIXES, IMAGE_SUFFIXES, Cube, read_cube
from specad.io.read import read_image
from specad.spectral import SWIR_MIN_NM

SPLITS = ("train", "val", "test")
GOOD = "good"
OK_MARK = "_ok_ok_"


@dataclass(frozen=True)
class Sample:
    """One cube of a dataset and where its mask lives (None for normal cubes).

    ``class_ids`` are the ids its mask may hold (None: any, when the dataset lists no classes);
    ``layout`` is the cubes' stored axis order when the dataset sets one (see ``read_cube``).
    """

    path: Path
    split: str
    label: str
    mask: Path | None = None
    class_ids: frozenset[int] | None = None
    layout: str | None = None

    @property
    def anomalous(self) -> bool:
        return self.label != GOOD

    def read(self) -> Cube:
        return read_cube(self.path, layout=self.layout)


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    classes: dict[int, str] = field(default_factory=lambda: {0: "background"})
    layout: str = "specad"

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def require(self, name: str) -> list[Sample]:
        """The samples of a split that training or evaluation cannot do without."""
        samples = self.split(name)
        if not samples:
            where = self.root / name / GOOD if name != "test" else self.root / name
            raise SpecadError(f"the '{name}' split is empty or missing{_photos_hint(where)}", where)
        return samples

    @property
    def defect_names(self) -> list[str]:
        return sorted({s.label for s in self.samples if s.anomalous})


def _photos_hint(folder: Path) -> str:
    """Why a split of plain photographs reads as empty, and the command that converts it."""
    if not folder.is_dir():
        return ""
    photos = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not photos:
        return ""
    root = folder.parent.parent if folder.name == GOOD else folder.parent
    return (
        f": it holds {len(photos)} plain image(s) ({photos[0].suffix}), not cubes; "
        f"convert the folder with `specad dataset import {root} --out DIR`"
    )


def _cube_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in CUBE_SUFFIXES and not p.name.startswith(".")
    )


def load_dataset(root: str | Path, layout: str | None = None) -> Dataset:
    """Discover a dataset's samples; the layout is recognised from the folders present.

    A defect folder that ``classes.json`` does not name is an error here, for every command.
    """
    ds, problems = discover_dataset(root, layout)
    if problems:
        raise SpecadError(problems[0])
    return ds


def discover_dataset(root: str | Path, layout: str | None = None) -> tuple[Dataset, list[str]]:
    """The dataset and its structural problems, for callers that list them all (``check``)."""
    root = Path(root)
    if not root.is_dir():
        raise SpecadError("dataset folder not found", root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        ds = _load_specad(root, layout)
    else:
        ds = _load_cuvis_example(root, layout)
    problems = []
    if ds.layout == "specad" and (root / "classes.json").is_file():
        names = set(ds.classes.values())
        for label in ds.defect_names:
            if label not in names:
                problems.append(
                    f"{root / 'test' / label}: defect class '{label}' is not named in "
                    f"{root / 'classes.json'}"
                )
    return ds, problems


def _load_specad(root: Path, layout: str | None) -> Dataset:
    classes = _read_classes(root / "classes.json")
    ids = frozenset(classes) if (root / "classes.json").is_file() else None
    samples = [
        Sample(p, split, GOOD, layout=layout)
        for split in ("train", "val")
        for p in _cube_files(root / split / GOOD)
    ]
    test = root / "test"
    for folder in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
        label = folder.name
        for p in _cube_files(folder):
            mask = root / "ground_truth" / label / f"{p.stem}.png" if label != GOOD else None
            samples.append(Sample(p, "test", label, mask, ids, layout))
    return Dataset(root, samples, classes, "specad")


def _read_classes(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {0: "background"}
    try:
        raw = json.loads(path.read_text())
        classes = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError, RecursionError) as err:
        raise SpecadError(f"not a JSON object of id -> class name ({err})", path) from err
    classes.setdefault(0, "background")
    return classes


def _load_cuvis_example(root: Path, layout: str | None) -> Dataset:
    annotations = root / "annotations.json"
    classes = _read_annotations(annotations)
    ids = frozenset(classes) if annotations.is_file() else None
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for p in _cube_files(folder):
            if OK_MARK in p.name:
                samples.append(Sample(p, _hash_split(p.name), GOOD, layout=layout))
            else:
                mask = p.with_name(f"{p.stem}_0_RGB_mask.png")
                samples.append(Sample(p, "test", folder.name, mask, ids, layout))
    if not samples:
        raise SpecadError(
            "no cubes found: expected train/ val/ test/ folders, or one folder per defect", root
        )
    return Dataset(root, samples, classes, "cuvis-example")


def _hash_split(name: str) -> str:
    bucket = zlib.crc32(name.encode()) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


def _read_annotations(path: Path) -> dict[int, str]:
    """Class ids from ``annotations.json``: a plain {id: name} map or COCO-style categories."""
    if not path.is_file():
        return {0: "background"}
    try:
        raw = json.loads(path.read_text())
        if isinstance(raw, dict) and "categories" in raw:
            classes = {int(c["id"]): str(c["name"]) for c in raw["categories"]}
        else:
            classes = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise SpecadError(f"cannot read class ids ({err})", path) from err
    classes.setdefault(0, "background")
    return classes


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) class-id mask of a sample (zeros for normal cubes), checked against its cube."""
    if sample.mask is None:
        return np.zeros(shape, dtype=np.int64)
    if not sample.mask.is_file():
        raise SpecadError("ground-truth mask missing", sample.mask)
    mask = read_image(sample.mask)  # its declared size checked before it is decoded
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.dtype.kind not in "uib":
        raise SpecadError(f"not a class-id mask (shape {mask.shape}, {mask.dtype})", sample.mask)
    if mask.shape != tuple(shape):
        raise SpecadError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} but its cube is {shape[0]}x{shape[1]}",
            sample.mask,
        )
    mask = mask.astype(np.int64)
    if sample.class_ids is not None:
        unknown = sorted(set(np.unique(mask).tolist()) - sample.class_ids)
        if unknown:
            raise SpecadError(
                f"mask ids {unknown} are not in the dataset's class list (classes.json)",
                sample.mask,
            )
    return mask


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


# --------------------------------------------------------------------------- validation


# --------------------------------------------------------------------------- model input

INPUT_MEAN, INPUT_STD = 0.45, 0.225  # what Preprocess standardises every channel to


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class Preprocess:
    """How a cube becomes model input; saved with every model so inference repeats it exactly.

    Channels are selected, the image is resized to ``image_size`` and each channel is
    standardised to ImageNet-like pixel statistics (mean 0.45, std 0.225), so that pretrained
    teachers see the contrast range they were trained on whatever the camera's levels.
    Validated when made (`specad.config` states the bounds), so a ``model.json`` that would
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
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std * INPUT_STD + INPUT_MEAN

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
