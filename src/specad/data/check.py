"""``specad dataset check``: read every cube and mask of a dataset once and list every problem,
instead of stopping at the first as the commands that use the data do."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specad.data.dataset import GOOD, discover_dataset, read_mask
from specad.errors import SpecadError


@dataclass
class CheckReport:
    """What ``specad dataset check`` prints: per split/class counts, cube properties, problems."""

    root: Path
    counts: dict[tuple[str, str], int]
    channels: list[int]
    sizes: dict[tuple[int, int], int]
    dtypes: list[str]
    value_range: tuple[float, float]
    wavelengths: list[float] | None
    bands: list[str]
    classes: dict[int, str]
    layout: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def size_summary(self, most: int = 5) -> str:
        """``HxW`` of every size, or the commonest few and the range when there are many."""
        if len(self.sizes) <= most:
            return ", ".join(f"{h}x{w}" for h, w in sorted(self.sizes)) or "-"
        common = sorted(self.sizes.items(), key=lambda kv: -kv[1])[:most]
        hs = [h for h, _ in self.sizes]
        ws = [w for _, w in self.sizes]
        return (
            f"{len(self.sizes)} different sizes, heights {min(hs)}..{max(hs)}, widths "
            f"{min(ws)}..{max(ws)}; commonest "
            + ", ".join(f"{h}x{w} ({n})" for (h, w), n in common)
        )


def check_dataset(root: str | Path, axes: str | None = None) -> CheckReport:
    """Read every cube and mask once and list every problem, instead of stopping at the first."""
    ds, problems = discover_dataset(root, axes)
    counts: Counter[tuple[str, str]] = Counter((s.split, s.label) for s in ds.samples)
    for split in ("train", "val"):
        if not ds.split(split):
            problems.append(f"{ds.root / split / GOOD}: the '{split}' split is empty or missing")
    if not ds.split("test"):
        problems.append(f"{ds.root / 'test'}: the 'test' split is empty or missing")
    channels: Counter[int] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    dtypes: Counter[str] = Counter()
    lo, hi = np.inf, -np.inf
    wavelengths: list[float] | None = None
    bands: list[str] = []
    for s in ds.samples:
        try:
            cube = s.read()
        except SpecadError as err:
            problems.append(str(err))
            continue
        channels[cube.channels] += 1
        sizes[cube.shape[:2]] += 1
        dtypes[_stored_dtype(s.path)] += 1
        lo, hi = min(lo, float(cube.data.min())), max(hi, float(cube.data.max()))
        if not bands:
            bands, wavelengths = cube.bands, cube.wavelengths
        if s.anomalous:
            try:
                read_mask(s, cube.shape[:2])
            except SpecadError as err:
                problems.append(str(err))
    if len(channels) > 1:
        detail = ", ".join(f"{n} cubes with {c}" for c, n in sorted(channels.items()))
        problems.append(f"{ds.root}: channel counts differ within the dataset ({detail})")
    return CheckReport(
        ds.root,
        dict(counts),
        sorted(channels),
        dict(sizes),
        sorted(dtypes),
        (lo, hi) if np.isfinite(lo) else (float("nan"), float("nan")),
        wavelengths,
        bands,
        ds.classes,
        ds.layout,
        problems,
    )


def _stored_dtype(path: Path) -> str:
    """The on-disk sample type, which ``read_cube`` hides by converting to float32."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return str(tif.series[0].dtype)
        if suffix == ".npy":
            return str(np.load(path, mmap_mode="r").dtype)
    except Exception:  # noqa: BLE001 - already reported by read_cube
        return "?"
    return "float32"
