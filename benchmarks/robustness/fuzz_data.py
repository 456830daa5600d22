"""The tiny dataset and the file checksums that the fuzzer, the kill trials and the tests build on.

It lives with the fuzzer, not in ``tests/``, so that benchmarks import nothing from the tests;
``tests/conftest.py`` puts this folder on ``sys.path`` and imports it from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from specad.io import Cube, write_cube


def checksums(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (or of each root that is a file), by path: compared
    before and after a failing command to prove nothing of the user's changed."""
    sums = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            sums[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return sums


BANDS = ["R", "G", "B", "SWIR1050", "SWIR1200", "SWIR1450"]
WAVELENGTHS = [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0]


def make_dataset(
    root: Path, size: int = 64, channels: int = 6, counts=(6, 4, 3), defects=2, seed: int = 0
) -> Path:
    """Smooth random 'sawdust' cubes; defects are bright squares in the SWIR bands only."""
    rng = np.random.default_rng(seed)
    bands, wl = BANDS[:channels], WAVELENGTHS[:channels]

    def cube() -> np.ndarray:
        base = 0.4 + 0.05 * rng.standard_normal((size, size, channels))
        return base.astype(np.float32)

    for split, n in zip(("train", "val", "test"), counts, strict=True):
        for i in range(n):
            write_cube(root / split / "good" / f"{split}{i:03d}.tif", Cube(cube(), bands, wl))
    names = {1: "square", 2: "stripe"}
    for cid in range(1, defects + 1):
        name = names[cid]
        for i in range(2):
            data, mask = cube(), np.zeros((size, size), np.uint8)
            y, x = rng.integers(4, size - 16, 2)
            sl = (slice(y, y + 10), slice(x, x + (10 if cid == 1 else 3)))
            data[sl][..., 3:] += 0.5
            mask[sl] = cid
            write_cube(root / "test" / name / f"{name}{i:03d}.tif", Cube(data, bands, wl))
            (root / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "ground_truth" / name / f"{name}{i:03d}.png")
    classes = {"0": "background"} | {str(c): names[c] for c in range(1, defects + 1)}
    (root / "classes.json").write_text(json.dumps(classes))
    return root
