"""The dataset layouts specad reads where they lie, no conversion needed, and the one way in:
`load_dataset` recognises the layout from the folders present, finds the samples and checks
the structure from file headers before anything is read (`specad.data.validate`).

Each layout family is one module here, each layout a `Layout` in its ``<FAMILY>_LAYOUTS``; the
first whose folders match, in `DATASET_LAYOUTS` order, reads the dataset (the cuvis.ai example's
layout, which has no marker folder, last).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specad.data.dataset import SPLITS, Dataset
from specad.data.layouts import btad, folder, mtd, mvtec, specad, visa
from specad.data.layouts.common import VAL_FRACTION, Layout, Options
from specad.data.validate import raise_problems
from specad.errors import SpecadError

DATASET_LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        *mvtec.MVTEC_LAYOUTS[:2],  # 3D-AD and LOCO: marked by rgb/ and validation/ folders
        *btad.BTAD_LAYOUTS,
        mvtec.MVTEC_LAYOUTS[2],  # MVTec AD: train/good without val/, before specad's own
        *specad.SPECAD_LAYOUTS,
        *visa.VISA_LAYOUTS,
        *mtd.MTD_LAYOUTS,
        *folder.FOLDER_LAYOUTS,
        specad.FALLBACK,
    )
}
"""Every layout by name, in the order they are tried."""

__all__ = ["DATASET_LAYOUTS", "VAL_FRACTION", "Layout", "discover_dataset", "load_dataset"]


def load_dataset(
    root: str | Path,
    axes: str | None = None,
    *,
    layout: str = "auto",
    val_fraction: float = VAL_FRACTION,
    splits: Sequence[str] = SPLITS,
) -> Dataset:
    """The dataset at ``root``, its structure checked: every problem found is raised at once
    (`DatasetProblems`, one line each) before any pixel is read. ``splits`` are those the
    caller needs (an empty one is a problem); by default all three.

    ``layout`` is one of `DATASET_LAYOUTS` or ``auto`` (recognised from the folders); ``axes`` is
    the stored axis order of plain arrays (None: each format's convention); ``val_fraction`` is
    the share of training normals held out where a layout has no validation split.
    """
    ds = discover_dataset(root, axes, layout=layout, val_fraction=val_fraction)
    return raise_problems(ds, splits)


def discover_dataset(
    root: str | Path,
    axes: str | None = None,
    *,
    layout: str = "auto",
    val_fraction: float = VAL_FRACTION,
) -> Dataset:
    """The dataset's samples, unchecked (its discovery's problems in ``problems``)."""
    root = Path(root)
    if not root.is_dir():
        raise SpecadError("dataset folder not found", root)
    if not 0 < val_fraction < 1:
        raise SpecadError(f"val fraction must be in (0, 1), got {val_fraction}")
    if layout == "auto":
        chosen = next(lay for lay in DATASET_LAYOUTS.values() if lay.matches(root))
    elif layout in DATASET_LAYOUTS:
        chosen = DATASET_LAYOUTS[layout]
    else:
        raise SpecadError(
            f"unknown layout '{layout}'; use one of auto, {', '.join(DATASET_LAYOUTS)}"
        )
    return chosen.load(root, Options(axes, val_fraction))
