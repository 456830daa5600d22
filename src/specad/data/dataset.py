"""Datasets on disk: the folder layouts, their splits and ground-truth masks.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specad.errors import SpecadError
from specad.io import CUBE_SUFFIXES, IMAGE_SUFFIXES, Cube, read_cube
from specad.io.read import read_image

SPLITS = ("train", "val", "test")
GOOD = "good"
OK_MARK = "_ok_ok_"


@dataclass(frozen=True)
class Sample:
    """One cube of a dataset and where its mask lives (None for normal cubes).

    ``class_ids`` are the ids its mask may hold (None: any, when the dataset lists no classes);
    ``axes`` is the cubes' stored axis order when the dataset sets one (see ``read_cube``).
    """

    path: Path
    split: str
    label: str
    mask: Path | None = None
    class_ids: frozenset[int] | None = None
    axes: str | None = None

    @property
    def anomalous(self) -> bool:
        return self.label != GOOD

    def read(self) -> Cube:
        return read_cube(self.path, axes=self.axes)


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


def load_dataset(root: str | Path, axes: str | None = None) -> Dataset:
    """Discover a dataset's samples; the layout is recognised from the folders present, and
    ``axes`` is the stored axis order of its plain arrays (None: each format's convention).

    A defect folder that ``classes.json`` does not name is an error here, for every command.
    """
    ds, problems = discover_dataset(root, axes)
    if problems:
        raise SpecadError(problems[0])
    return ds


def discover_dataset(root: str | Path, axes: str | None = None) -> tuple[Dataset, list[str]]:
    """The dataset and its structural problems, for callers that list them all (``check``)."""
    root = Path(root)
    if not root.is_dir():
        raise SpecadError("dataset folder not found", root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        ds = _load_specad(root, axes)
    else:
        ds = _load_cuvis_example(root, axes)
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


def _load_specad(root: Path, axes: str | None) -> Dataset:
    classes = _read_classes(root / "classes.json")
    ids = frozenset(classes) if (root / "classes.json").is_file() else None
    samples = [
        Sample(p, split, GOOD, axes=axes)
        for split in ("train", "val")
        for p in _cube_files(root / split / GOOD)
    ]
    test = root / "test"
    for folder in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
        label = folder.name
        for p in _cube_files(folder):
            mask = root / "ground_truth" / label / f"{p.stem}.png" if label != GOOD else None
            samples.append(Sample(p, "test", label, mask, ids, axes))
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


def _load_cuvis_example(root: Path, axes: str | None) -> Dataset:
    annotations = root / "annotations.json"
    classes = _read_annotations(annotations)
    ids = frozenset(classes) if annotations.is_file() else None
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for p in _cube_files(folder):
            if OK_MARK in p.name:
                samples.append(Sample(p, _hash_split(p.name), GOOD, axes=axes))
            else:
                mask = p.with_name(f"{p.stem}_0_RGB_mask.png")
                samples.append(Sample(p, "test", folder.name, mask, ids, axes))
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
