"""The MVTec family, read where it lies.

- ``mvtec`` (MVTec AD): ``train/good``, ``test/good``, ``test/<defect>``, binary masks
  ``ground_truth/<defect>/<stem>_mask.png``. No validation split: `VAL_FRACTION` of train/good,
  by a stable hash of the names, is validation.
- ``mvtec-loco`` (MVTec LOCO AD): as MVTec AD, with ``validation/good`` its validation split and
  each defect image's mask ``ground_truth/<defect>/<stem>/`` a folder of PNGs (one per defect
  region, united) or one ``<stem>.png``.
- ``mvtec-3d`` (MVTec 3D-AD): ``<split>/<defect>/rgb/<stem>.png`` with the organised point cloud
  ``xyz/<stem>.tiff`` and mask ``gt/<stem>.png`` beside; splits ``train``, ``validation``,
  ``test``. Each sample is one cube R, G, B, Z (depth; its zero-depth background filled:
  `specad.data.dataset.with_depth`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from specad.data.dataset import GOOD, Dataset, Sample
from specad.data.layouts.common import (
    Layout,
    Options,
    class_ids,
    classes_of,
    defect_samples,
    files,
    split_normals,
    subfolders,
    train_val,
)
from specad.io.image import PHOTO_SUFFIXES


def _is_ad(root: Path) -> bool:
    if not ((root / "train" / GOOD).is_dir() and (root / "test").is_dir()):
        return False
    if (root / "val").exists() or (root / "classes.json").exists():
        return False  # specad's own layout
    masks = next(root.glob("ground_truth/*/*_mask.*"), None)
    return masks is not None or bool(files(root / "train" / GOOD, PHOTO_SUFFIXES))


def _test_split(
    root: Path, mask_of: Callable[[str, Path], Path | None]
) -> tuple[list[Sample], dict[int, str]]:
    """test/good as normal test samples, every other test folder a defect class; in folder
    order, as specad's layout lists them."""
    folders = {p.name: p for p in subfolders(root / "test") if p.name != GOOD}
    bad, classes = defect_samples(folders, mask_of)
    good = split_normals(files(root / "test" / GOOD), {"test": 1.0})
    return sorted(good + bad, key=lambda s: (s.label, s.path.name)), classes


def _load_ad(root: Path, opts: Options) -> Dataset:
    test, classes = _test_split(
        root, lambda label, p: root / "ground_truth" / label / f"{p.stem}_mask.png"
    )
    samples = train_val(files(root / "train" / GOOD), opts) + test
    sources = {"train": "train/good", "val": "train/good", "test": "test"}
    return Dataset(root, samples, classes, "mvtec", sources)


def _loco_mask(root: Path, label: str, image: Path) -> Path:
    folder = root / "ground_truth" / label / image.stem
    one = folder.with_suffix(".png")
    return one if one.is_file() and not folder.is_dir() else folder


def _load_loco(root: Path, opts: Options) -> Dataset:
    test, classes = _test_split(root, lambda label, p: _loco_mask(root, label, p))
    samples = split_normals(files(root / "train" / GOOD), {"train": 1.0})
    samples += split_normals(files(root / "validation" / GOOD), {"val": 1.0})
    sources = {"train": "train/good", "val": "validation/good", "test": "test"}
    return Dataset(root, samples + test, classes, "mvtec-loco", sources)


_3D_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def _is_3d(root: Path) -> bool:
    return any((root / split / GOOD / "rgb").is_dir() for split in _3D_SPLITS)


def _load_3d(root: Path, opts: Options) -> Dataset:
    ids = class_ids(p.name for p in subfolders(root / "test") if p.name != GOOD)
    samples = []
    for folder, split in _3D_SPLITS.items():
        for label_folder in subfolders(root / folder):
            label = label_folder.name
            for rgb in files(label_folder / "rgb", PHOTO_SUFFIXES):
                depth = label_folder / "xyz" / f"{rgb.stem}.tiff"
                if label == GOOD:
                    samples.append(Sample(rgb, split, GOOD, depth=depth))
                    continue
                mask = label_folder / "gt" / f"{rgb.stem}.png"
                rule = {"mask_rule": "half", "class_id": ids.get(label, 0), "depth": depth}
                samples.append(Sample(rgb, split, label, mask, **rule))  # type: ignore[arg-type]
    sources = {"train": "train/good/rgb", "val": "validation/good/rgb", "test": "test"}
    return Dataset(root, samples, classes_of(ids), "mvtec-3d", sources)


MVTEC_LAYOUTS = (
    Layout(
        "mvtec-3d",
        _is_3d,
        _load_3d,
        "MVTec 3D-AD: <split>/<defect>/rgb/*.png + xyz/*.tiff (+ gt/*.png); R, G, B and depth",
    ),
    Layout(
        "mvtec-loco",
        lambda root: (root / "validation" / GOOD).is_dir() and (root / "test").is_dir(),
        _load_loco,
        "MVTec LOCO AD: train/good, validation/good, test/<defect>, "
        "ground_truth/<defect>/<stem>/*.png",
    ),
    Layout(
        "mvtec",
        _is_ad,
        _load_ad,
        "MVTec AD: train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png",
    ),
)
