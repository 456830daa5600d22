"""How far can any post-processing of knn's MTD maps lift pooled pixel AUROC? Oracle bounds.

Issue 12 asks for pixel AUROC >= 0.90 on MTD; seven sweeps of knn settings stopped at 0.81-0.83.
This script fits knn with the best measured setting (`real.KNN_MTD_TUNED`), scores the test split
and then rescores its maps with help from the ground truth that no detector has, so each row is
an upper bound for a family of fixes:

- a defect class scored perfectly (its defect pixels set above every map value): what that
  class costs;
- the image label known (a large constant added to every defect image's map): the bound for
  anything that moves whole images, such as adding the image score to the map;
- the true regions known (each pixel scored by the mean of its region: the mask, or the rest of
  its image, plus its own value at a weight): the bound for region or segment aggregation.

Usage (the dataset as written by ``specad dataset import ../shared/data/mtd --out data/mtd``)::

    nice -n 10 .venv/bin/python benchmarks/accuracy/mtd_ceiling.py data/mtd
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from real import KNN_MTD_TUNED as KNN_PARAMS

from specad.data import load_dataset
from specad.errors import SpecadError
from specad.fit import fit_on_dataset
from specad.inference import SplitResults, run_split
from specad.metrics import pixel_auroc
from specad.runtime import cpu_model, cpu_speed_flags

Rescore = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
"""(map, mask, class) -> new map: one oracle's rescoring of one test image."""


def region_mean(m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each pixel replaced by the mean of its true region (the defect, or the rest)."""
    out = np.full_like(m, m[~mask].mean() if (~mask).any() else 0.0)
    if mask.any():
        out[mask] = m[mask].mean()
    return out


def oracles(top: float, classes: list[str]) -> dict[str, Rescore]:
    rows: dict[str, Rescore] = {"none (knn as fitted)": lambda m, k, c: m}
    for name in classes:
        rows[f"{name} defect pixels perfect"] = lambda m, k, c, name=name: (
            np.where(k, top, m) if c == name else m
        )
    rows["every class but uneven perfect"] = lambda m, k, c: (
        np.where(k, top, m) if c not in ("good", "uneven") else m
    )
    rows["image label known"] = lambda m, k, c: m + (top if c != "good" else 0.0)
    for w in (1.0, 4.0, 100.0):
        rows[f"true regions known, region mean x {w:g} added"] = lambda m, k, c, w=w: (
            m + w * region_mean(m, k)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="MTD in specad's layout (specad dataset import)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    try:
        ds = load_dataset(args.dataset)
        det = fit_on_dataset("knn", ds, **KNN_PARAMS)
        test: SplitResults = run_split(det, ds.require("test"))
    except SpecadError as err:
        sys.exit(f"error: {err}")
    print(f"knn {KNN_PARAMS}: fit and test {time.perf_counter() - start:.0f} s")
    masks = [k > 0 for k in test.masks]
    top = 1.0 + max(float(m.max()) for m in test.maps)
    defect_pixels = sum(int(k.sum()) for k in masks)
    if defect_pixels == 0:
        sys.exit(f"error: {args.dataset}: the test split has no defect pixels to bound")
    classes = sorted(set(test.class_names) - {"good"})
    for name in classes:
        share = sum(int(k.sum()) for k, c in zip(masks, test.class_names, strict=True) if c == name)
        print(f"{name}: {share / defect_pixels:.1%} of defect pixels")
    print("| oracle | pooled pixel AUROC |\n|---|---|")
    for label, rescore in oracles(top, classes).items():
        maps = [
            rescore(m, k, c) for m, k, c in zip(test.maps, masks, test.class_names, strict=True)
        ]
        print(f"| {label} | {pixel_auroc(maps, masks):.4f} |")
    flags = " ".join(cpu_speed_flags())
    print(f"{cpu_model()} ({flags}), {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
