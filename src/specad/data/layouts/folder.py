"""A plain folder of photos or cubes, the layout to sort one's own images into:

    DATASET/
      good/                 normal images
      <defect>/             anomalous images, one folder per defect class
      masks/<defect>/<stem>.png   binary masks (optional; a defect is at least half the
                                  mask's maximum)

Normal images are split 70/15/15 into train, val and test by a stable hash of their names.
A defect folder with a ``masks/<defect>`` folder needs a mask for each of its images; one
without has image labels only (no pixel metrics for it).
"""

from __future__ import annotations

from pathlib import Path

from specad.data.dataset import GOOD, Dataset
from specad.data.layouts.common import (
    Layout,
    Options,
    beside,
    defect_samples,
    files,
    split_normals,
    subfolders,
)

MASKS = "masks"
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _mask(root: Path, label: str, image: Path) -> Path | None:
    folder = root / MASKS / label
    return beside(folder, image.stem) if folder.is_dir() else None


def _load(root: Path, opts: Options) -> Dataset:
    samples = split_normals(files(root / GOOD), FRACTIONS, opts.axes)
    folders = {p.name: p for p in subfolders(root) if p.name not in (GOOD, MASKS)}
    bad, classes = defect_samples(folders, lambda label, p: _mask(root, label, p), opts.axes)
    sources = {split: GOOD for split in FRACTIONS} | {"test": "<defect>"}
    return Dataset(root, samples + bad, classes, "folder", sources)


FOLDER_LAYOUTS = (
    Layout(
        "folder",
        lambda root: (root / GOOD).is_dir(),
        _load,
        "a plain folder: good/, one folder per defect, optional masks/<defect>/<stem>.png",
    ),
)
