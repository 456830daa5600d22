"""BTAD and KolektorSDD2, read where they lie.

- ``btad`` (one product folder, ``BTAD/01``): ``train/ok``, ``test/ok``, ``test/ko`` and binary
  masks ``ground_truth/ko/<stem>.png`` (or ``.bmp``). `VAL_FRACTION` of train/ok, by a stable
  hash, is validation; the defects are one class, ``ko``.
- ``kolektor`` (KolektorSDD2): ``train/`` and ``test/`` of ``NNNNN.png`` images, each with its
  mask ``NNNNN_GT.png`` beside; an all-zero mask marks a normal image. Training normals lose
  `VAL_FRACTION` to validation; the training split's defect images are left out (specad learns
  from normal images only), the test split's make one class, ``defect``.
"""

from __future__ import annotations

from pathlib import Path

from specad.data.dataset import Dataset, Sample
from specad.data.layouts.common import (
    Layout,
    Options,
    beside,
    defect_samples,
    files,
    split_normals,
    train_val,
)
from specad.errors import SpecadError
from specad.io.image import PHOTO_SUFFIXES
from specad.io.read import read_image

GT = "_GT"


def _load_btad(root: Path, opts: Options) -> Dataset:
    samples = train_val(files(root / "train" / "ok"), opts)
    samples += split_normals(files(root / "test" / "ok"), {"test": 1.0})
    bad, classes = defect_samples(
        {"ko": root / "test" / "ko"},
        lambda label, p: beside(root / "ground_truth" / label, p.stem, (".png", ".bmp")),
    )
    sources = {"train": "train/ok", "val": "train/ok", "test": "test"}
    return Dataset(root, samples + bad, classes, "btad", sources)


def _is_kolektor(root: Path) -> bool:
    return any(p.stem.endswith(GT) for p in files(root / "train", PHOTO_SUFFIXES))


def _load_kolektor(root: Path, opts: Options) -> Dataset:
    problems: list[str] = []
    found: dict[str, dict[bool, list[Path]]] = {}
    for split in ("train", "test"):
        found[split] = {False: [], True: []}
        for image in files(root / split, PHOTO_SUFFIXES):
            if image.stem.endswith(GT):
                continue
            mask = beside(image.parent, image.stem + GT)
            try:
                found[split][bool(read_image(mask).any())].append(image)
            except SpecadError as err:
                problems.append(f"{err} (the mask says whether {image.name} is normal)")
    samples = train_val(found["train"][False], opts)
    samples += split_normals(found["test"][False], {"test": 1.0})
    samples += [
        Sample(p, "test", "defect", beside(p.parent, p.stem + GT), mask_rule="half", class_id=1)
        for p in found["test"][True]
    ]
    sources = {"train": "train", "val": "train", "test": "test"}
    classes = {0: "background", 1: "defect"}
    return Dataset(root, samples, classes, "kolektor", sources, problems)


BTAD_LAYOUTS = (
    Layout(
        "btad",
        lambda root: (root / "train" / "ok").is_dir(),
        _load_btad,
        "BTAD (one product): train/ok, test/ok, test/ko, ground_truth/ko/*.png",
    ),
    Layout(
        "kolektor",
        _is_kolektor,
        _load_kolektor,
        "KolektorSDD2: train/ and test/ of NNNNN.png with NNNNN_GT.png masks",
    ),
)
