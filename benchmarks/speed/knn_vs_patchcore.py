"""specad's knn next to anomalib's PatchCore on one dataset, on the CPU this runs on (issue 28).

knn: ``specad fit knn`` and ``specad export --int8 --data`` run as child processes (fit time and
peak RSS are theirs, as ``/usr/bin/time`` would see them), then each runtime's model-only speed
at batch 1 and 8 on the preloaded, preprocessed test images after 2 warm-up batches, as
``anomalib_real.py`` measures PatchCore's, and image AUROC on the test split. ``auto`` is the
runtime ``specad export`` measured fastest among those whose maps and image ranking match fp32.

PatchCore: ``accuracy/anomalib_real.py --model patchcore`` in the anomalib Python that
``benchmarks/anomalib_venv.sh`` makes (or its ``.npz`` given with ``--patchcore``): the same
images at 256 px, the same EfficientNet-Lite0 weights, tapped at the stride-8 and stride-16
stages (knn also taps block 12) with a 1 % coreset (knn: 2,048 patches). Results are appended
to ``--results`` with the command, the CPU and the load average.

    python benchmarks/speed/knn_vs_patchcore.py benchmarks/out/real/mvtec_transistor --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from specad.data import load_dataset
from specad.inference import Detector, run_split
from specad.runtime import cpu_model, cpu_speed_flags

HERE = Path(__file__).resolve().parent
ANOMALIB_PYTHON = HERE.parent / ".venv-anomalib" / "bin" / "python"  # anomalib_venv.sh makes it
ANOMALIB_REAL = HERE.parent / "accuracy" / "anomalib_real.py"
SPECAD = [sys.executable, "-m", "specad"]


def child(cmd: list[str], threads: int) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and its own peak RSS in MB (``wait4``'s, as
    ``/usr/bin/time`` reports it)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return seconds, usage.ru_maxrss / 1024


def images_per_s(det: Detector, x: torch.Tensor, batch: int, warmup: int = 2) -> float:
    """Model-only throughput on preloaded images, after ``warmup`` batches."""
    for _ in range(warmup):
        det.maps(x[:batch])
    start = time.perf_counter()
    for chunk in x.split(batch):
        det.maps(chunk)
    return len(x) / (time.perf_counter() - start)


def knn_rows(dataset: Path, run: Path, threads: int) -> tuple[dict, list[dict]]:
    fit_s, fit_mb = child([*SPECAD, "fit", "knn", str(dataset), "--out", str(run)], threads)
    export_s, _ = child([*SPECAD, "export", str(run), "--int8", "--data", str(dataset)], threads)
    evaluate_s, evaluate_mb = child([*SPECAD, "evaluate", str(run), str(dataset)], threads)
    record = json.loads((run / "runtime.json").read_text())
    test = load_dataset(dataset).require("test")
    labels = [s.anomalous for s in test]
    det = Detector.load(run, device="cpu", runtime="torch")
    x = torch.stack([det.meta.preprocess.cube_tensor(s.read(), s.path) for s in test])
    rows = []
    for runtime in ("torch", *record["runtimes"].keys() - {"torch"}, "auto"):
        det = Detector.load(run, device="cpu", runtime=runtime)
        scores = run_split(det, test).scores
        rows.append(
            {
                "detector": "knn",
                "runtime": runtime if runtime != "auto" else f"auto ({det.runtime})",
                "images_per_s_b1": images_per_s(det, x, 1),
                "images_per_s_b8": images_per_s(det, x, 8),
                "image_auroc": float(roc_auc_score(labels, scores)),
                "agreement": record["runtimes"].get(det.runtime, {}).get("agreement"),
            }
        )
    fit = {
        "fit_s": fit_s,
        "peak_rss_mb": fit_mb,
        "export_s": export_s,
        "evaluate_s": evaluate_s,
        "test_images": len(test),
        "evaluate_images_per_s": len(test) / evaluate_s,
        "evaluate_peak_rss_mb": evaluate_mb,
        "choice": record,
    }
    return fit, rows


def patchcore_row(dataset: Path, npz: Path | None, python: Path, threads: int) -> dict:
    if npz is None:
        npz = Path(tempfile.mkdtemp()) / "patchcore.npz"
        cmd = [str(python), "-W", "ignore", str(ANOMALIB_REAL), "--model"]
        cmd += ["patchcore", "--dataset", str(dataset), "--out", str(npz)]
        cmd += ["--threads", str(threads), "--coreset-ratio", "0.01"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    out = np.load(npz)
    info = json.loads(str(out["info"]))
    labels = [not f.startswith("test/good/") for f in out["test_files"]]
    return {
        "detector": "anomalib Patchcore",
        "runtime": "torch",
        "images_per_s_b1": info["images_per_s_b1"],
        "images_per_s_b8": info["images_per_s_b8"],
        "image_auroc": float(roc_auc_score(labels, out["test_scores"])),
        "fit_s": info["fit_s"],
        "peak_rss_mb": info["peak_rss_mb"],
        "cpu": info["cpu"],
        "npz": str(npz),
    }


def markdown(dataset: Path, fit: dict, rows: list[dict], patchcore: dict, threads: int) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    fp32 = rows[0]["image_auroc"]
    lines = [
        f"## {dataset.name} on {cpu_model()} ({' '.join(cpu_speed_flags())}), {threads} threads",
        "",
        f"`python {shlex.join(sys.argv)}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"load average at the end {load}.",
        "",
        "| detector | runtime | img/s b1 | img/s b8 | image AUROC | fit s | fit peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| knn | {r['runtime']} | {r['images_per_s_b1']:.2f} | {r['images_per_s_b8']:.2f} "
            f"| {r['image_auroc']:.4f} ({r['image_auroc'] - fp32:+.4f}) "
            f"| {fit['fit_s']:.1f} | {fit['peak_rss_mb']:.0f} |"
        )
    p = patchcore
    lines.append(
        f"| {p['detector']} ({p['cpu']}) | torch | {p['images_per_s_b1']:.2f} "
        f"| {p['images_per_s_b8']:.2f} | {p['image_auroc']:.4f} | {p['fit_s']:.1f} "
        f"| {p['peak_rss_mb']:.0f} |"
    )
    auto = rows[-1]
    lines += [
        "",
        f"knn auto / PatchCore: {auto['images_per_s_b1'] / p['images_per_s_b1']:.2f}x at batch 1, "
        f"{auto['images_per_s_b8'] / p['images_per_s_b8']:.2f}x at batch 8; auto's image AUROC "
        f"{auto['image_auroc'] - fp32:+.4f} from knn's fp32 torch maps. Speeds: model only, "
        "preloaded 256 px test images, 2 warm-up batches. Fit: `specad fit knn` (reading, "
        "resizing, features, coreset, calibration, saving) as a child process.",
        "",
        "`specad evaluate` end to end (start-up, reading, val and test scoring with the runtime "
        f"`export` chose, metrics) on the {fit['test_images']} test images: "
        f"{fit['evaluate_s']:.1f} s, **{fit['evaluate_images_per_s']:.1f} test images/s**, "
        f"peak RSS {fit['evaluate_peak_rss_mb']:.0f} MB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--patchcore", type=Path, help="anomalib_real.py's .npz (else run it)")
    parser.add_argument("--anomalib-python", type=Path, default=ANOMALIB_PYTHON)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", type=Path, help="folder for the knn model (default: a temp one)")
    parser.add_argument("--results", type=Path, default=HERE / "knn_speed_results.md")
    args = parser.parse_args()
    if args.patchcore is None and shutil.which(str(args.anomalib_python)) is None:
        parser.error(f"{args.anomalib_python}: no Python with anomalib (anomalib_venv.sh makes it)")
    torch.set_num_threads(args.threads)
    run = (args.work or Path(tempfile.mkdtemp())) / "knn"
    fit, rows = knn_rows(args.dataset, run, args.threads)
    patchcore = patchcore_row(args.dataset, args.patchcore, args.anomalib_python, args.threads)
    text = markdown(args.dataset, fit, rows, patchcore, args.threads)
    print(text)
    print(json.dumps({"fit": fit, "knn": rows, "patchcore": patchcore}, indent=1))
    with args.results.open("a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
