"""Real data: MTD (Magnetic Tile Defects) imported into specad's layout, every detector scored.

For each detector: fit (or train) on train/good, threshold on val/good, then image and pixel
AUROC, AUPRO@0.3 and per-class AUROC on the test split, with fit seconds and test images/s (reading
cubes included). Results accumulate in ``real_results.json`` (a detector run again replaces its
row) and are written as ``real_results.md`` with the CPU. Usage::

    nice -n 10 .venv/bin/python benchmarks/real.py --detectors knn,rx
    nice -n 10 .venv/bin/python benchmarks/real.py --detectors efficientad --steps 200

The imported dataset is kept under ``--work`` (default ``benchmarks/out/real``, git-ignored),
never in the repository; MTD itself is read from ``../shared/data/mtd``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

from specad.config import load_config
from specad.data import Dataset, load_dataset
from specad.evaluate import evaluate_split, fit_on_dataset, run_split
from specad.importing import import_dataset
from specad.infer import Detector
from specad.train import train

HERE = Path(__file__).resolve().parent
MTD = HERE.parents[1] / "shared" / "data" / "mtd"
RESULTS = HERE / "real_results.json"
REPORT = HERE / "real_results.md"
KNN_PARAMS: dict[str, Any] = {
    "image_size": 192,
    "max_patches": 200_000,
    "coreset_size": 8192,
    "sigma": 16.0,
}
"""The best knn setting measured on MTD (README, "Real data"): image 0.946, pixel 0.814."""


def efficientad(ds: Dataset, work: Path, steps: int) -> Detector:
    """The CPU preset (random PDN teacher, natural-image penalty) for ``steps`` steps."""
    sets = [f"data.root={ds.root}", f"train.steps={steps}", "train.val_every=0"]
    cfg = load_config(HERE.parent / "examples" / "cpu.yaml", sets)
    return Detector.load(train(cfg, work / "efficientad", force=True, progress=False))


def fitters(work: Path, steps: int) -> dict[str, Callable[[Dataset], Detector]]:
    return {
        "knn": lambda ds: fit_on_dataset("knn", ds, **KNN_PARAMS),
        "rx": lambda ds: fit_on_dataset("rx", ds),
        "efficientad": lambda ds: efficientad(ds, work, steps),
    }


def measure(name: str, fit: Callable[[Dataset], Detector], ds: Dataset) -> dict[str, Any]:
    start = time.perf_counter()
    det = fit(ds)
    fit_s = time.perf_counter() - start
    val = run_split(det, ds.require("val"))
    test_samples = ds.require("test")
    start = time.perf_counter()
    test = run_split(det, test_samples)
    rate = len(test_samples) / (time.perf_counter() - start)
    m = evaluate_split(test, val)
    per_class = {k: [v["image_auroc"], v["pixel_auroc"]] for k, v in m["per_class"].items()}
    row = {
        "detector": name,
        "runtime": det.runtime,
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "aupro": m["aupro_0.3"],
        "fit_s": fit_s,
        "images_per_s": rate,
        "per_class": per_class,
        "load_average": os.getloadavg()[0],
        "peak_rss_mb": harness.peak_rss_mb(),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def write_report(rows: dict[str, dict[str, Any]], steps: int) -> None:
    mach = harness.machine()
    classes = sorted({c for r in rows.values() for c in r["per_class"]})
    ead = f" (EfficientAD: `examples/cpu.yaml`, {steps} steps)" if "efficientad" in rows else ""
    lines = [
        "# Real data: Magnetic Tile Defects (MTD)",
        "",
        "MTD (Huang et al., The Visual Computer 2020): 1,344 real grayscale photographs (one "
        "channel, 1,225 different sizes), imported with `specad dataset import ../shared/data/mtd "
        "--out DIR`: normal tiles split 70/10/20 % by a hash of the file name (666 train, 96 val, "
        "190 test/good), 392 defect images in five classes. Every image is resized to 256 x 256.",
        "",
        f"CPU: {mach['cpu']}, {mach['cpu_count']} CPUs, torch {mach['torch']} with "
        f"{mach['threads']} threads. The machine was shared with other jobs and this ran under "
        "`nice -n 10` (the load average when each row finished is given): seconds are upper "
        "bounds, images/s lower bounds.",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/real.py`{ead}.",
        "",
        "| detector | runtime | image AUROC | pixel AUROC | AUPRO@0.3 | fit s | test img/s "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['detector']} | {r['runtime']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f}"
            f" | {r['aupro']:.4f} | {r['fit_s']:.0f} | {r['images_per_s']:.1f} "
            f"| {r['load_average']:.1f} |"
        )
    lines += ["", "Per class, image AUROC / pixel AUROC:", ""]
    lines += ["| class | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for c in classes:
        cells = [rows[d]["per_class"].get(c, [None, None]) for d in rows]
        lines.append(f"| {c} | " + " | ".join(f"{a:.3f} / {p:.3f}" for a, p in cells) + " |")
    REPORT.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="knn,rx,efficientad")
    parser.add_argument("--steps", type=int, default=200, help="EfficientAD training steps")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "real")
    parser.add_argument("--mtd", type=Path, default=MTD)
    args = parser.parse_args()
    harness.set_threads()
    root = args.work / "mtd"
    if not root.is_dir():
        import_dataset(args.mtd, root)
    ds = load_dataset(root)
    table = fitters(args.work, args.steps)
    for name in args.detectors.split(","):
        row = measure(name, table[name], ds)
        rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}  # read late: runs
        rows[name] = row  # of other detectors may have finished meanwhile
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        write_report(rows, args.steps)
    print(f"wrote {REPORT}", file=sys.stderr)


if __name__ == "__main__":
    main()
