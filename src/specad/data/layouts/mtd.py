"""Magnetic Tile Defects (MTD), read where it lies: ``MT_<Class>/Imgs/NAME.jpg`` with its mask
``NAME.png`` beside (anti-aliased edges: a defect is at least half the mask's maximum);
``MT_Free`` holds the normal tiles. Normal tiles are ordered by a stable hash of their names and
split 70 % train, 10 % val, 20 % test (the split of the data's own README); every other folder is
a test defect class, named by its lower-case ``<Class>``."""

from __future__ import annotations

from pathlib import Path

from specad.data.dataset import Dataset
from specad.data.layouts.common import Layout, Options, defect_samples, files, split_normals
from specad.errors import SpecadError

FREE = "MT_Free"


def _jpgs(folder: Path) -> list[Path]:
    return files(folder, (".jpg",))


def _load(root: Path, opts: Options) -> Dataset:
    free = root / FREE / "Imgs"
    if not free.is_dir():
        raise SpecadError(f"MTD layout without {FREE}/Imgs (the normal tiles)", root)
    samples = split_normals(_jpgs(free), {"train": 0.7, "val": 0.1, "test": 0.2})
    folders = {
        p.parent.name.removeprefix("MT_").lower(): p
        for p in sorted(root.glob("MT_*/Imgs"))
        if p.is_dir() and p.parent.name != FREE
    }
    bad, classes = defect_samples(folders, lambda label, p: p.with_suffix(".png"))
    bad = [s for s in bad if s.path.suffix.lower() == ".jpg"]  # the .png beside are masks
    sources = {split: f"{FREE}/Imgs" for split in ("train", "val")} | {"test": "MT_*/Imgs"}
    return Dataset(root, samples + bad, classes, "mtd", sources)


MTD_LAYOUTS = (
    Layout(
        "mtd",
        lambda root: any(p.is_dir() for p in root.glob("MT_*/Imgs")),
        _load,
        "MTD: MT_Free/Imgs/*.jpg normal, MT_<Class>/Imgs/NAME.jpg + NAME.png masks",
    ),
)
