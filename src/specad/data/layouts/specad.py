"""specad's own layout and the original cuvis.ai EfficientAD example's, both of cubes.

* ``specad``: ``train/good``, ``val/good``, ``test/good``, ``test/<defect>``, masks in
  ``ground_truth/<defect>/<stem>.png`` (pixel value = class id) and ``classes.json``.
* ``cuvis-example``: one folder per defect, ``_ok_ok_`` in the file name for normal cubes,
  masks ``<stem>_0_RGB_mask.png`` beside the cube and ids in ``annotations.json``. It has no
  splits, so normal cubes are split 70/15/15 by a stable hash (CRC-32) of their names, the split
  this layout has always had.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from specad.data.dataset import GOOD, Dataset, Sample
from specad.data.layouts.common import Layout, Options, files, subfolders
from specad.errors import SpecadError
from specad.io import CUBE_SUFFIXES

OK_MARK = "_ok_ok_"


def _is_specad(root: Path) -> bool:
    return (root / "train").is_dir() or (root / "test").is_dir()


def _load_specad(root: Path, opts: Options) -> Dataset:
    listed = (root / "classes.json").is_file()
    classes = _read_ids(root / "classes.json", lambda raw: raw)
    ids = frozenset(classes) if listed else None
    samples = [
        Sample(p, split, GOOD, axes=opts.axes)
        for split in ("train", "val")
        for p in files(root / split / GOOD)
    ]
    for folder in subfolders(root / "test"):
        label = folder.name
        for p in files(folder):
            mask = root / "ground_truth" / label / f"{p.stem}.png" if label != GOOD else None
            samples.append(Sample(p, "test", label, mask, ids, opts.axes))
    ds = Dataset(root, samples, classes, "specad")
    if listed:
        names = set(classes.values())
        ds.problems += [
            f"{root / 'test' / label}: defect class '{label}' is not named in "
            f"{root / 'classes.json'}"
            for label in ds.defect_names
            if label not in names
        ]
    return ds


def _load_cuvis_example(root: Path, opts: Options) -> Dataset:
    annotations = root / "annotations.json"
    classes = _read_ids(annotations, _categories)
    ids = frozenset(classes) if annotations.is_file() else None
    samples = []
    for folder in subfolders(root):
        for p in files(folder, CUBE_SUFFIXES):
            if OK_MARK in p.name:
                samples.append(Sample(p, _crc_split(p.name), GOOD, axes=opts.axes))
            else:
                mask = p.with_name(f"{p.stem}_0_RGB_mask.png")
                samples.append(Sample(p, "test", folder.name, mask, ids, opts.axes))
    if not samples:
        raise SpecadError(
            "no images found in a layout specad knows (`specad dataset check --help` lists "
            "them): expected e.g. train/ val/ test/ folders, or good/ and one folder per defect",
            root,
        )
    sources = {split: f"*/*{OK_MARK}*" for split in ("train", "val")} | {"test": "*/"}
    return Dataset(root, samples, classes, "cuvis-example", sources)


def _crc_split(name: str) -> str:
    bucket = zlib.crc32(name.encode()) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


def _categories(raw: object) -> object:
    """COCO-style ``{"categories": [{"id", "name"}]}`` as a plain {id: name} map."""
    if isinstance(raw, dict) and "categories" in raw:
        return {c["id"]: c["name"] for c in raw["categories"]}
    return raw


def _read_ids(path: Path, plain: object) -> dict[int, str]:
    """Class ids (id -> name) from a JSON file, background 0 added; only background without it."""
    if not path.is_file():
        return {0: "background"}
    try:
        raw = plain(json.loads(path.read_text()))  # type: ignore[operator]
        classes = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise SpecadError(f"not a JSON object of id -> class name ({err})", path) from err
    classes.setdefault(0, "background")
    return classes


SPECAD_LAYOUTS = (
    Layout(
        "specad",
        _is_specad,
        _load_specad,
        "specad: train/good, val/good, test/<defect>, ground_truth/<defect>/<stem>.png, "
        "classes.json",
    ),
)
FALLBACK = Layout(
    "cuvis-example",
    lambda root: True,
    _load_cuvis_example,
    "the cuvis.ai example: one folder per defect, _ok_ok_ in normal names, "
    "<stem>_0_RGB_mask.png masks, annotations.json",
)
