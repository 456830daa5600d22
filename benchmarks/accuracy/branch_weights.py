"""EfficientAD's two maps in other shares: image and pixel AUROC of a trained run for each
``model.ae_weight`` (the student-autoencoder map's share; the student-teacher map has the rest).

The combined map is linear in the weight up to the final max (padding and bilinear resizing are
linear), so two scoring passes over val and test, at weights 0 and 1, give every other weight.
Usage::

    nice -n 10 .venv/bin/python benchmarks/accuracy/branch_weights.py RUN DATASET \
        --weights 0,0.25,0.5,1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from specad.data import load_dataset
from specad.evaluate import evaluate_split
from specad.inference import Detector, SplitResults, run_split
from specad.runtime import cpu_model


def mixed(zero: SplitResults, one: SplitResults, weight: float) -> SplitResults:
    """The split as a network with ``ae_weight = weight`` scores it (score: the map's max)."""
    maps = [(1 - weight) * a + weight * b for a, b in zip(zero.maps, one.maps, strict=True)]
    scores = np.array([m.max() for m in maps], dtype=np.float64)
    return SplitResults(zero.samples, scores, maps, zero.masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ds = load_dataset(args.dataset)
    det = Detector.load(args.run, runtime="torch")
    splits = {}
    for weight in (0.0, 1.0):
        det.model.network_.ae_weight = weight
        splits[weight] = [run_split(det, ds.require(s)) for s in ("val", "test")]
        test = splits[weight][1]
        if not np.allclose(test.scores, [m.max() for m in test.maps], rtol=1e-5):
            sys.exit("the image score is not the map's maximum here; this script assumes it")
    print(f"{args.run} on {args.dataset} ({cpu_model()})")
    print("| ae_weight | image AUROC | pixel AUROC | AUPRO@0.3 |\n|---|---|---|---|")
    for weight in (float(w) for w in args.weights.split(",")):
        val, test = (mixed(a, b, weight) for a, b in zip(*splits.values(), strict=True))
        m = evaluate_split(test, val)
        print(
            f"| {weight:g} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} "
            f"| {m['aupro_0.3']:.4f} |",
            flush=True,
        )
        print(
            json.dumps(
                {
                    "ae_weight": weight,
                    **{k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro_0.3")},
                }
            ),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
