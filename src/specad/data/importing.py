"""Convert foreign dataset layouts into specad's (README "Dataset layout"), written atomically.

Image files become compressed float32 ``.npz`` cubes with their stored values (0-255 for 8-bit
images; nothing is rescaled, as everywhere in specad), one channel for grayscale and R, G, B for
colour images. (``.npz``, not TIFF: `write_cube` cannot write one-channel TIFFs yet.)
Masks become class-id PNGs: a source pixel is a defect where its mask value is at least half the
mask's maximum, so anti-aliased mask edges (MTD's have grey values along the defect borders)
go to the nearer side.

- ``mtd``: Magnetic Tile Defects: ``MT_<Class>/Imgs/NAME.jpg`` with ``NAME.png`` masks beside;
  ``MT_Free`` holds the normal tiles. Normal tiles are ordered by the SHA-256 of their file name
  and split 70 % train, 10 % val, 20 % test (the split of the data's own README); every defect
  folder goes to test, one class each.
- ``mvtec``: MVTec AD-style ``train/good``, ``test/<defect>``, ``ground_truth/<defect>/
  <stem>_mask.png``. It has no validation split, so a fraction of train/good (by the same hash
  order) becomes val/good.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from specad.data.dataset import GOOD
from specad.errors import SpecadError
from specad.io import IMAGE_SUFFIXES, Cube, atomic_dir, refuse_overlap, write_cube
from specad.io.read import open_image, read_image

IMPORT_LAYOUTS = ("auto", "mtd", "mvtec")
"""Foreign dataset layouts `import_dataset` converts (``auto``: recognised from the folders)."""
_GRAY = ("L", "I;16", "I", "F", "1")
"""Image modes read as one channel; the others become R, G, B."""


@dataclass(frozen=True)
class Item:
    """One source image and where it goes: split, label ("good" or a defect) and its mask."""

    image: Path
    split: str
    label: str
    mask: Path | None = None


def import_dataset(
    source: str | Path,
    out: str | Path,
    layout: str = "auto",
    *,
    val_fraction: float = 0.1,
    force: bool = False,
) -> Path:
    """Write ``source`` (a foreign layout) to ``out`` in specad's layout; returns ``out``.

    ``val_fraction`` applies to layouts without a validation split (mvtec). The output folder is
    built under a temporary name and renamed at the end, so a failure leaves nothing behind.
    """
    source, out = Path(source), Path(out)
    refuse_overlap(out, [source])
    if not source.is_dir():
        raise SpecadError("dataset folder not found", source)
    if layout not in IMPORT_LAYOUTS:
        raise SpecadError(f"unknown layout '{layout}'; use one of {', '.join(IMPORT_LAYOUTS)}")
    if not 0 < val_fraction < 1:
        raise SpecadError(f"val fraction must be in (0, 1), got {val_fraction}")
    if layout == "auto":
        layout = detect_layout(source)
    readers: dict[str, Callable[[Path], list[Item]]] = {
        "mtd": _mtd_items,
        "mvtec": lambda root: _mvtec_items(root, val_fraction),
    }
    items = readers[layout](source)
    if not any(i.split == "train" for i in items) or not any(i.split == "val" for i in items):
        raise SpecadError(f"no normal images found for train and val ({layout} layout)", source)
    _check_items(items)
    defects = sorted({i.label for i in items if i.mask is not None})
    ids = {name: k for k, name in enumerate(defects, start=1)}
    with atomic_dir(out, force) as tmp:
        for item in items:
            _write_item(tmp, item, ids.get(item.label, 0))
        classes = {"0": "background"} | {str(k): name for name, k in ids.items()}
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    return out


def detect_layout(root: Path) -> str:
    """``mtd`` for ``MT_*/Imgs`` folders, ``mvtec`` for ``train/good`` plus ``test``."""
    if any(p.is_dir() for p in root.glob("MT_*/Imgs")):
        return "mtd"
    if (root / "train" / "good").is_dir() and (root / "test").is_dir():
        return "mvtec"
    raise SpecadError(
        "unknown dataset layout: expected MT_*/Imgs (mtd) or train/good (mvtec)", root
    )


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _hash_order(paths: list[Path]) -> list[Path]:
    """A stable order that does not depend on the file system or on how files were numbered."""
    return sorted(paths, key=lambda p: hashlib.sha256(os.fsencode(p.name)).hexdigest())


def _split_normals(paths: list[Path], fractions: dict[str, float]) -> Iterator[Item]:
    """Cut the hash-ordered ``paths`` into consecutive splits of the given fractions."""
    ordered, start, total = _hash_order(paths), 0, 0.0
    for split, fraction in fractions.items():
        total += fraction
        end = round(total * len(ordered))
        yield from (Item(p, split, GOOD) for p in ordered[start:end])
        start = end


def _mtd_items(root: Path) -> list[Item]:
    free = root / "MT_Free" / "Imgs"
    if not free.is_dir():
        raise SpecadError("MTD layout without MT_Free/Imgs (the normal tiles)", root)
    items = list(_split_normals(_jpgs(free), {"train": 0.7, "val": 0.1, "test": 0.2}))
    for folder in sorted(p for p in root.glob("MT_*/Imgs") if p.parent.name != "MT_Free"):
        label = folder.parent.name.removeprefix("MT_").lower()
        items += [Item(p, "test", label, p.with_suffix(".png")) for p in _jpgs(folder)]
    return items


def _jpgs(folder: Path) -> list[Path]:
    """MTD keeps masks (``.png``) beside the images (``.jpg``)."""
    return [p for p in _images(folder) if p.suffix.lower() == ".jpg"]


def _mvtec_items(root: Path, val_fraction: float) -> list[Item]:
    normals = _images(root / "train" / "good")
    items = list(_split_normals(normals, {"train": 1 - val_fraction, "val": val_fraction}))
    for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        label = folder.name
        for p in _images(folder):
            mask = None if label == "good" else root / "ground_truth" / label / f"{p.stem}_mask.png"
            items.append(Item(p, "test", label, mask))
    return items


def _check_items(items: list[Item]) -> None:
    """The whole source checked before anything is converted, each problem one line naming its
    file: two images that would become one cube (``000.png`` and ``000.jpg``, or names that
    differ only in case), a defect image without its mask, an image too large to read, and a
    mask of another size than its image."""
    targets: dict[tuple[str, str, str], Path] = {}
    for item in items:
        key = (item.split, item.label, item.image.stem.casefold())
        if key in targets:
            raise SpecadError(
                f"{targets[key].name} and {item.image.name} would both become "
                f"{item.split}/{item.label}/{item.image.stem}.npz; rename one of them",
                item.image,
            )
        targets[key] = item.image
        if item.mask is not None and not item.mask.is_file():
            raise SpecadError(f"mask missing for the defect image {item.image.name}", item.mask)
    for item in items:
        h, w, _ = _image_shape(item.image)
        if item.mask is None:
            continue
        mh, mw, _ = _image_shape(item.mask)
        if (mh, mw) != (h, w):
            raise SpecadError(f"mask is {mh}x{mw}, its image {h}x{w}", item.mask)


def _channels(im: Image.Image) -> int:
    return 1 if im.mode in _GRAY else 3


def _image_shape(path: Path) -> tuple[int, int, int]:
    with open_image(path) as im:
        return im.height, im.width, _channels(im)


def _stored(im: Image.Image) -> Image.Image:
    """One grey channel kept at its bit depth (a 1-bit image as 0/255), else RGB."""
    if im.mode in _GRAY:
        return im.convert("L") if im.mode == "1" else im
    return im.convert("RGB")


def _write_item(out: Path, item: Item, class_id: int) -> None:
    data = read_image(item.image, _stored).astype(np.float32)
    bands = ["gray"] if data.ndim == 2 else ["R", "G", "B"]
    folder = out / item.split / item.label
    write_cube(folder / f"{item.image.stem}.npz", Cube(data, bands))
    if item.mask is None:
        return
    mask = read_image(item.mask, _stored)
    mask = mask if mask.ndim == 2 else mask.max(axis=2)
    ids = np.where(mask >= max(1, mask.max()) / 2, class_id, 0).astype(np.uint8)
    target = out / "ground_truth" / item.label / f"{item.image.stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids).save(target)
