"""The shared HAD scenes as inspection datasets: tiles without targets are normal, tiles with
targets anomalous; then ``specad evaluate knn`` and ``rx`` on each, image and pixel AUROC.

Each 100 x 100 scene is cut into non-overlapping 20 x 20 tiles (25 per scene). Tiles with no
target pixel are shuffled (seeded) into train (60 %), val (20 %) and test/good (the rest);
tiles with one or more target pixels go to test/target with their masks. A scene has its own
band count, so each is a dataset of its own. Usage::

    .venv/bin/python benchmarks/accuracy/had_tiles.py [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat

from specad.io import Cube, write_cube

HAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "had"
TILE = 20


def build(scene: Path, root: Path, seed: int = 0) -> Path:
    """``root`` in specad's layout from one HAD scene (see the module docstring)."""
    mat = loadmat(scene)
    data, truth = mat["data"].astype(np.float32), mat["map"] > 0
    data /= np.abs(data).max()  # a common scale; knn standardises per band anyway
    normal, anomalous = [], []
    for top in range(0, data.shape[0] - TILE + 1, TILE):
        for left in range(0, data.shape[1] - TILE + 1, TILE):
            cut = (slice(top, top + TILE), slice(left, left + TILE))
            (anomalous if truth[cut].any() else normal).append(cut)
    order = np.random.default_rng(seed).permutation(len(normal))
    n_train, n_val = round(0.6 * len(normal)), round(0.2 * len(normal))
    splits = {"train": order[:n_train], "val": order[n_train : n_train + n_val]}
    splits["test"] = order[n_train + n_val :]
    for split, picks in splits.items():
        for i in picks:
            write_cube(root / split / "good" / f"t{i:02d}.tif", Cube(data[normal[i]]))
    (root / "ground_truth" / "target").mkdir(parents=True)
    for i, cut in enumerate(anomalous):
        write_cube(root / "test" / "target" / f"a{i:02d}.tif", Cube(data[cut]))
        mask = truth[cut].astype(np.uint8)
        Image.fromarray(mask).save(root / "ground_truth" / "target" / f"a{i:02d}.png")
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "target"}))
    return root


def evaluate(detector: str, root: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "specad", "evaluate", detector, str(root), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(done.stderr)
    metrics = json.loads(done.stdout)
    return {k: round(metrics[k], 4) for k in ("image_auroc", "pixel_auroc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the datasets here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="specad-had-") as tmp:
        out = args.out or Path(tmp)
        for scene in sorted(HAD.glob("*.mat")):
            root = build(scene, out / scene.stem)
            row = {"scene": scene.stem, "bands": loadmat(scene)["data"].shape[2]}
            row |= {name: evaluate(name, root) for name in ("knn", "rx")}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
