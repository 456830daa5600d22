"""``specad dataset import``: a copy of a dataset in specad's layout (README "Dataset layout"),
for when a copy is wanted; every command reads the recognised layouts where they lie
(`specad.data.layouts`).

Images keep their stored sample type and values: an 8-bit photo stays 8-bit (a quarter of
float32's bytes), a 16-bit one 16-bit, both as TIFF; cubes, and MVTec 3D-AD's R, G, B plus
depth, are float32. Masks become class-id PNGs (`read_mask`). The source is checked whole
first (`load_dataset`, and names that would meet in the copy), every problem listed; then the
images are converted by one thread per usable core (decoding and compressing release the
GIL), with a progress bar, into a folder that is published only when complete.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from specad.data.dataset import Dataset, Sample, read_mask
from specad.data.layouts import DATASET_LAYOUTS, VAL_FRACTION, load_dataset
from specad.data.validate import DatasetProblems
from specad.io import atomic_dir, cube_header, refuse_overlap, write_cube
from specad.threads import usable_cores

LAYOUT_CHOICES = ("auto", *DATASET_LAYOUTS)
"""What `--layout` takes (`import_dataset`, `specad dataset check`): a layout of
`DATASET_LAYOUTS`, or ``auto``: recognised from the folders."""
_KEPT_DTYPES = ("uint8", "uint16")


def import_dataset(
    source: str | Path,
    out: str | Path,
    layout: str = "auto",
    *,
    val_fraction: float = VAL_FRACTION,
    force: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write ``source`` (any layout `load_dataset` reads) to ``out`` in specad's layout with
    ``workers`` threads (default: the usable cores); returns ``out``.

    ``val_fraction`` applies to layouts without a validation split. The output folder is built
    under a temporary name and renamed at the end, so a failure leaves nothing behind.
    """
    source, out = Path(source), Path(out)
    refuse_overlap(out, [source])
    ds = load_dataset(source, layout=layout, val_fraction=val_fraction)
    problems = _copy_problems(ds)
    if problems:
        raise DatasetProblems(ds.root, problems)
    with atomic_dir(out, force) as tmp:
        pool = ThreadPoolExecutor(workers or usable_cores())
        try:
            with tqdm(total=len(ds.samples), disable=not progress, unit="image") as bar:
                for _ in pool.map(lambda s: _write_item(tmp, s), ds.samples):
                    bar.update()
        finally:  # on a failure, the images not yet started are not converted
            pool.shutdown(cancel_futures=True)
        classes = {str(k): name for k, name in sorted(ds.classes.items())}
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    return out


def _target(sample: Sample) -> str:
    return f"{sample.split}/{sample.label}/{sample.path.stem}"


def _copy_problems(ds: Dataset) -> list[str]:
    """What would stop the copy being a dataset: two images that would become one cube
    (``000.png`` and ``000.jpg``, or names that differ only in case), and defect images
    without masks, which specad's layout requires."""
    problems, targets = [], {}
    for s in ds.samples:
        key = _target(s).casefold()
        if key in targets:
            problems.append(
                f"{s.path}: {targets[key].name} and {s.path.name} would both become "
                f"{_target(s)}.tif; rename one of them"
            )
        targets.setdefault(key, s.path)
        if s.anomalous and s.mask is None:
            problems.append(
                f"{s.path}: no mask for this defect image; specad's layout needs one for each"
            )
    return problems


def _write_item(out: Path, sample: Sample) -> None:
    """One sample's cube (in its stored sample type) and class-id mask."""
    cube = sample.read()
    header = cube_header(sample.path, sample.axes) if sample.depth is None else None
    dtype = header.dtype if header is not None and header.dtype in _KEPT_DTYPES else "float32"
    target = out / f"{_target(sample)}.tif"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_cube(target, cube, dtype)
    if sample.mask is None:
        return
    ids = read_mask(sample, cube.shape[:2])
    mask = out / "ground_truth" / sample.label / f"{sample.path.stem}.png"
    mask.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8 if ids.max() < 256 else np.uint16)).save(mask)
