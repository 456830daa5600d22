"""What the layouts share: listing image files, the stable hash split of normal images where a
layout has no split of its own, class ids of defect folders, and how a layout is registered."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from specad.data.dataset import GOOD, Dataset, Sample
from specad.io import CUBE_SUFFIXES
from specad.io.image import PHOTO_SUFFIXES

READABLE = CUBE_SUFFIXES + PHOTO_SUFFIXES
"""Files a dataset's samples may be: cubes and plain photos alike."""
VAL_FRACTION = 0.1
"""Share of the training normals held out for validation where a layout has no validation
split (MVTec AD, BTAD, VisA, KolektorSDD2)."""


@dataclass(frozen=True)
class Options:
    """What the user may set about reading a layout: the stored axis order of plain arrays and
    the validation share of layouts without a validation split."""

    axes: str | None = None
    val_fraction: float = VAL_FRACTION


class Layout(NamedTuple):
    """One layout: its name, how it is recognised from the folders, and how it is read."""

    name: str
    matches: Callable[[Path], bool]
    load: Callable[[Path, Options], Dataset]
    summary: str
    """One line for ``--help`` and messages: what its folders look like."""


def files(folder: Path, suffixes: Iterable[str] = READABLE) -> list[Path]:
    """The sample files directly in ``folder``, sorted; hidden files skipped."""
    if not folder.is_dir():
        return []
    wanted = tuple(suffixes)
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in wanted and p.is_file() and not p.name.startswith(".")
    )


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def hash_order(paths: Iterable[Path]) -> list[Path]:
    """A stable order that does not depend on the file system or on how files were numbered."""
    return sorted(paths, key=lambda p: hashlib.sha256(os.fsencode(p.name)).hexdigest())


def split_normals(
    paths: list[Path], fractions: dict[str, float], axes: str | None = None
) -> list[Sample]:
    """Normal samples: the hash-ordered ``paths`` cut into consecutive splits of ``fractions``,
    each split in name order (as a copy in specad's layout lists it: a fit that depends on the
    order, knn's coreset, gives the same model in place and on the copy)."""
    ordered, start, total, samples = hash_order(paths), 0, 0.0, []
    for split, fraction in fractions.items():
        total += fraction
        end = round(total * len(ordered))
        samples += [Sample(p, split, GOOD, axes=axes) for p in sorted(ordered[start:end])]
        start = end
    return samples


def train_val(paths: list[Path], opts: Options) -> list[Sample]:
    """Training normals with ``val_fraction`` of them held out for validation."""
    return split_normals(paths, {"train": 1 - opts.val_fraction, "val": opts.val_fraction})


def class_ids(defects: Iterable[str]) -> dict[str, int]:
    """Ids 1, 2, ... of the defect names in sorted order (0 is the background)."""
    return {name: k for k, name in enumerate(sorted(set(defects)), start=1)}


def classes_of(ids: dict[str, int]) -> dict[int, str]:
    return {0: "background"} | {k: name for name, k in ids.items()}


def beside(folder: Path, stem: str, suffixes: Iterable[str] = PHOTO_SUFFIXES) -> Path:
    """The file ``stem`` with one of ``suffixes`` in ``folder`` (the first given when none is
    there: the name a missing file is reported by)."""
    wanted = tuple(suffixes)
    for suffix in wanted:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return folder / f"{stem}{wanted[0]}"


def defect_samples(
    image_folders: dict[str, Path],
    mask_of: Callable[[str, Path], Path | None],
    axes: str | None = None,
) -> tuple[list[Sample], dict[int, str]]:
    """Anomalous test samples of each ``label: folder``, binary masks by ``mask_of(label,
    image)``, and the classes their labels make."""
    ids = class_ids(image_folders)
    samples = [
        Sample(p, "test", label, mask_of(label, p), None, axes, "half", ids[label])
        for label, folder in sorted(image_folders.items())
        for p in files(folder)
    ]
    return samples, classes_of(ids)
