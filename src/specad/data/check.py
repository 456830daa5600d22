"""``specad dataset check``: the structure checked from headers (`specad.data.validate`), then
every cube and mask read once, listing every problem instead of stopping at the first as the
commands that use the data do."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specad.data.dataset import read_mask
from specad.data.layouts import discover_dataset
from specad.data.validate import check_structure
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


def check_dataset(
    root: str | Path, axes: str | None = None, *, layout: str = "auto", pixels: bool = True
) -> CheckReport:
    """Every problem of a dataset: its structure from headers, then (``pixels``) each cube and
    mask read once (values, class ids); samples whose headers failed are not read again."""
    ds = discover_dataset(root, axes, layout=layout)
    structure = check_structure(ds)
    problems = structure.problems
    counts: Counter[tuple[str, str]] = Counter((s.split, s.label) for s in ds.samples)
    channels: Counter[int] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    dtypes: Counter[str] = Counter()
    for header in structure.headers.values():
        if header is not None:
            channels[header.channels] += 1
            sizes[header.height, header.width] += 1
            dtypes[header.dtype] += 1
    lo, hi = np.inf, -np.inf
    wavelengths: list[float] | None = None
    bands: list[str] = []
    for s in ds.samples if pixels else []:
        if s.path in structure.bad:
            continue
        try:
            cube = s.read()
            if structure.headers.get(s.path) is None:  # a format without a cheap header
                channels[cube.channels] += 1
                sizes[cube.shape[:2]] += 1
                dtypes["float32"] += 1
            lo, hi = min(lo, float(cube.data.min())), max(hi, float(cube.data.max()))
            if not bands:
                bands, wavelengths = cube.bands, cube.wavelengths
            read_mask(s, cube.shape[:2])
        except SpecadError as err:
            problems.append(str(err))
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
