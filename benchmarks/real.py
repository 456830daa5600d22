"""Real data: MTD (Magnetic Tile Defects) imported into specad's layout, every detector scored.

For each detector: fit (or train) on train/good, threshold on val/good, then image and pixel
AUROC, AUPRO@0.3 and per-class AUROC on the test split, with fit seconds and test images/s (reading
cubes included). ``anomalib`` is anomalib 2.7's EfficientAd with the same steps, split and penalty
images (`anomalib_real.py`, run by ``--anomalib-python``), scored by the same code. Results
accumulate in ``real_results.json`` (a detector run again replaces its row) and are written as
``real_results.md`` with the machine. Usage::

    nice -n 10 .venv/bin/python benchmarks/real.py --detectors knn,rx
    nice -n 10 .venv/bin/python benchmarks/real.py --detectors efficientad,anomalib --steps 1000

The imported dataset is kept under ``--work`` (default ``benchmarks/out/real``, git-ignored),
never in the repository; MTD itself is read from ``../shared/data/mtd``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch

from specad.config import load_config
from specad.data import Dataset, Sample, load_dataset, read_mask, resize
from specad.evaluate import SplitResults, evaluate_split, fit_on_dataset, run_split
from specad.importing import import_dataset
from specad.infer import Detector
from specad.penalty import natural_images
from specad.train import train

HERE = Path(__file__).resolve().parent
MTD = HERE.parents[1] / "shared" / "data" / "mtd"
ANOMALIB_PYTHON = HERE / ".venv-anomalib" / "bin" / "python"
RESULTS = HERE / "real_results.json"
KNN_PARAMS: dict[str, Any] = {
    "image_size": 192,
    "max_patches": 200_000,
    "coreset_size": 8192,
    "sigma": 16.0,
}
"""The best knn setting measured on MTD (README, "Real data"): image 0.946, pixel 0.814."""


def efficientad(ds: Dataset, work: Path, steps: int, teacher: str = "pdn-random") -> Detector:
    """The CPU preset (natural-image penalty) with ``teacher`` for ``steps`` steps."""
    sets = [f"data.root={ds.root}", f"train.steps={steps}", "train.val_every=0"]
    sets.append(f"model.teacher={teacher}")
    cfg = load_config(HERE.parent / "examples" / "cpu.yaml", sets)
    return Detector.load(train(cfg, work / f"efficientad-{teacher}", force=True, progress=False))


def fitters(work: Path, steps: int) -> dict[str, Callable[[Dataset], Detector]]:
    return {
        "knn": lambda ds: fit_on_dataset("knn", ds, **KNN_PARAMS),
        "rx": lambda ds: fit_on_dataset("rx", ds),
        "efficientad": lambda ds: efficientad(ds, work, steps),
        "efficientad-lite0": lambda ds: efficientad(ds, work, steps, "efficientnet-lite0"),
    }


Runs = tuple[SplitResults, SplitResults, float, float, str]
"""val results, test results, fit seconds, test images/s, runtime: what a row is made of."""


def run_specad(fit: Callable[[Dataset], Detector], ds: Dataset) -> Runs:
    start = time.perf_counter()
    det = fit(ds)
    fit_s = time.perf_counter() - start
    val = run_split(det, ds.require("val"))
    test_samples = ds.require("test")
    start = time.perf_counter()
    test = run_split(det, test_samples)
    rate = len(test_samples) / (time.perf_counter() - start)
    return val, test, fit_s, rate, det.runtime


def natural_folder(work: Path) -> Path:
    """specad's default penalty photos (scikit-image's) as the ImageFolder anomalib reads."""
    folder = work / "natural"
    (folder / "natural").mkdir(parents=True, exist_ok=True)
    for image in natural_images():
        link = folder / "natural" / image.name
        if not link.exists():
            link.symlink_to(image)
    return folder


def _anomalib_split(samples: list[Sample], out: Any, name: str, root: Path) -> SplitResults:
    """anomalib's 256 x 256 maps resized back to each cube's size, as specad's predict does."""
    index = {f: i for i, f in enumerate(out[f"{name}_files"])}
    order = [index[str(s.path.relative_to(root))] for s in samples]
    maps, masks = [], []
    for s, i in zip(samples, order, strict=True):
        shape = s.read().shape[:2]
        m = torch.from_numpy(out[f"{name}_maps"][i].astype(np.float32))[None, None]
        maps.append(resize(m, shape)[0, 0].numpy())
        masks.append(read_mask(s, shape))
    return SplitResults(list(samples), out[f"{name}_scores"][order].astype(np.float64), maps, masks)


def run_anomalib(ds: Dataset, work: Path, steps: int, python: Path) -> Runs:
    if shutil.which(str(python)) is None:
        sys.exit(
            f"{python}: no Python with anomalib (benchmarks/run.sh makes one; or pass "
            "--anomalib-python)"
        )
    out_file = work / "anomalib.npz"
    cmd = [str(python), str(HERE / "anomalib_real.py"), "--dataset", str(ds.root)]
    cmd += ["--natural", str(natural_folder(work)), "--steps", str(steps), "--out", str(out_file)]
    subprocess.run(cmd, check=True)
    with np.load(out_file) as out:
        info = json.loads(str(out["info"]))
        val = _anomalib_split(ds.require("val"), out, "val", ds.root)
        test = _anomalib_split(ds.require("test"), out, "test", ds.root)
    return val, test, info["fit_s"], info["images_per_s"], f"torch {info['device']}"


def make_row(name: str, runs: Runs) -> dict[str, Any]:
    val, test, fit_s, rate, runtime = runs
    m = evaluate_split(test, val)
    per_class = {k: [v["image_auroc"], v["pixel_auroc"]] for k, v in m["per_class"].items()}
    row = {
        "detector": name,
        "runtime": runtime,
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "aupro": m["aupro_0.3"],
        "fit_s": fit_s,
        "images_per_s": rate,
        "per_class": per_class,
        "load_average": os.getloadavg()[0],
        "peak_rss_mb": harness.peak_rss_mb(),
        "machine": machine_line(),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def machine_line() -> str:
    """The CPU, and the GPU when one ran the row."""
    mach = harness.machine()
    line = f"{mach['cpu']}, {mach['cpu_count']} CPUs, torch {mach['torch']}"
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name(0)}"
    return line


def write_report(rows: dict[str, dict[str, Any]], steps: int, results: Path) -> None:
    classes = sorted({c for r in rows.values() for c in r["per_class"]})
    trained = {"efficientad", "efficientad-lite0", "anomalib"} & set(rows)
    steps_note = f" {steps} training steps for {' and '.join(sorted(trained))}." if trained else ""
    lines = [
        "# Real data: Magnetic Tile Defects (MTD)",
        "",
        "MTD (Huang et al., The Visual Computer 2020): 1,344 real grayscale photographs (one "
        "channel, 1,225 different sizes), imported with `specad dataset import ../shared/data/mtd "
        "--out DIR`: normal tiles split 70/10/20 % by a hash of the file name (666 train, 96 val, "
        "190 test/good), 392 defect images in five classes. Every image is resized to 256 x 256 "
        "(knn: 192); maps are resized back and scored at each image's own size.",
        "",
        "Each row names the machine it ran on; on a shared CPU the load average when the row "
        "finished is given (seconds are then upper bounds, images/s lower bounds).",
        f"Command: `.venv/bin/python benchmarks/real.py --detectors ...`.{steps_note}",
        "",
        "| detector | runtime | image AUROC | pixel AUROC | AUPRO@0.3 | fit s | test img/s "
        "| load avg | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['detector']} | {r['runtime']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f}"
            f" | {r['aupro']:.4f} | {r['fit_s']:.0f} | {r['images_per_s']:.1f} "
            f"| {r['load_average']:.1f} | {r.get('machine', 'AMD EPYC, 2 CPUs')} |"
        )
    lines += ["", "Per class, image AUROC / pixel AUROC:", ""]
    lines += ["| class | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for c in classes:
        cells = [rows[d]["per_class"].get(c, [None, None]) for d in rows]
        lines.append(f"| {c} | " + " | ".join(f"{a:.3f} / {p:.3f}" for a, p in cells) + " |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="knn,rx,efficientad,efficientad-lite0,anomalib")
    parser.add_argument("--steps", type=int, default=1000, help="EfficientAD training steps")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "real")
    parser.add_argument("--mtd", type=Path, default=MTD)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the .json; .md beside")
    parser.add_argument("--anomalib-python", type=Path, default=ANOMALIB_PYTHON)
    args = parser.parse_args()
    harness.set_threads()
    root = args.work / "mtd"
    if not root.is_dir():
        import_dataset(args.mtd, root)
    ds = load_dataset(root)
    table = fitters(args.work, args.steps)
    for name in args.detectors.split(","):
        if name == "anomalib":
            runs = run_anomalib(ds, args.work, args.steps, args.anomalib_python)
        else:
            runs = run_specad(table[name], ds)
        row = make_row(name, runs)
        rows = json.loads(args.results.read_text()) if args.results.is_file() else {}
        rows[name] = row  # read late: runs of other detectors may have finished meanwhile
        args.results.write_text(json.dumps(rows, indent=2) + "\n")
        write_report(rows, args.steps, args.results)
    print(f"wrote {args.results.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
