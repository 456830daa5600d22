"""Scaling out on this machine: cubes/s of ``predict`` on 1..N Dask workers, and training
steps/s for 1 and 2 torchrun (gloo) processes with the same global batch.

    python benchmarks/speed/scale.py [--cubes 32] [--size 256] [--steps 8] [--batch 4] \
        [--workers 1,2]

Cubes are random 6-channel 256x256 TIFFs; the model is EfficientAD-S (random PDN teacher)
after one training step: scoring costs the same for any weights. Startup (cluster, model load,
torchrun rendezvous) is excluded: scoring is timed after a warm-up pass, training from the
first logged step to the last. Prints a Markdown table with the CPU (lscpu) and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from specad.distributed import ModelSource, open_cluster
from specad.fit import train
from specad.inference import Detector
from specad.io import Cube, write_cube
from specad.models.efficientad.config import load_config
from specad.predict import expand_inputs, predict_files

BANDS = ["R", "G", "B", "SWIR1050", "SWIR1200", "SWIR1450"]
NM = [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0]


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{info.get('Model name', '?').strip()}, {os.cpu_count()} logical CPUs"


def make_data(root: Path, cubes: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4), ("test", cubes)):
        for i in range(n):
            data = (0.4 + 0.05 * rng.standard_normal((size, size, 6))).astype(np.float32)
            write_cube(root / split / "good" / f"{i:04d}.tif", Cube(data, BANDS, NM))


def config_file(root: Path, size: int, steps: int, batch: int) -> Path:
    path = root.parent / f"scale-{steps}.yaml"
    path.write_text(
        f"data: {{root: {root}, image_size: {size}}}\n"
        f"train: {{steps: {steps}, batch_size: {batch}, export: [], log_every: 1}}\n"
    )
    return path


def scoring_rate(model: Path, files: list[Path], work: Path, workers: int | None) -> float:
    """Cubes/s after a warm-up pass (model loaded on every worker, files in the page cache)."""
    det = Detector.load(model, runtime="torch")

    def timed(cluster) -> float:  # noqa: ANN001
        out = work / f"out-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        predict_files(det, files, out, cluster=cluster)
        return time.perf_counter() - start

    if workers is None:
        timed(None)
        return len(files) / timed(None)
    with open_cluster(None, workers, ModelSource.of(det, model)) as cluster:
        timed(cluster)
        return len(files) / timed(cluster)


def training_rate(config: Path, work: Path, processes: int) -> float:
    """Steps/s between the first and last logged step (excludes startup and the final fit)."""
    out = work / f"train-{processes}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(processes), "-m", "specad", "train", "-c", str(config)]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    subprocess.run([*cmd, "--out", str(out)], env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["seconds"] - rows[0]["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cubes", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="global batch; split over processes")
    ap.add_argument("--workers", default="1,2", help="Dask worker counts to measure")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{args.cubes} cubes {args.size}x{args.size}x6; train global batch {args.batch}\n")
    print("| run | rate | unit |\n|---|---|---|", flush=True)

    def row(name: str, rate: float, unit: str) -> None:  # as measured: a long run shows progress
        print(f"| {name} | {rate:.3g} | {unit} |", flush=True)

    with tempfile.TemporaryDirectory(prefix="specad-scale-") as tmp:
        work = Path(tmp)
        root = work / "ds"
        make_data(root, args.cubes, args.size)
        model = train(
            load_config(config_file(root, args.size, 1, 1)), work / "model", progress=False
        )
        files = expand_inputs([root / "test"])
        row("predict, one process (no Dask)", scoring_rate(model, files, work, None), "cubes/s")
        for n in (int(w) for w in args.workers.split(",")):
            row(f"predict, {n} Dask worker(s)", scoring_rate(model, files, work, n), "cubes/s")
        config = config_file(root, args.size, args.steps, args.batch)
        for n in (1, 2):
            row(f"train, {n} torchrun process(es)", training_rate(config, work, n), "steps/s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
