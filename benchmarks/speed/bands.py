"""Cost against the band count: ``specad evaluate`` of knn and of RX at 6 to 224 bands, then one
1024 x 1024 x 224 cube through ``specad predict --tiled`` with knn.

Each dataset is synthetic (35 cubes of 256 x 256: 20 train, 5 val, 5 good and 5 anomalous
test): tray6's two cameras for 6 bands, else the hyperspectral camera of ``tray-hsi`` with N
bands spread over 400-1700 nm. Every run is a fresh ``python -m specad`` process, timed from
start to exit, with its own peak RSS (``os.wait4``). Usage::

    .venv/bin/python benchmarks/speed/bands.py [--bands 6,31,96,224] [--no-cube]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
import numpy as np

from specad.synth import synthesize
from specad.synth.presets import HSI_CAMERA

COUNTS = {"n_train": 20, "n_val": 5, "n_test_good": 5, "n_test_anomalous": 5}
CUBES = sum(COUNTS.values())
SIDE = 256


def make_dataset(folder: Path, bands: int) -> Path:
    """A 35-cube tray dataset with ``bands`` channels."""
    if bands == 6:
        return synthesize(folder, "tray6", seed=1, **COUNTS)
    nm = tuple(float(round(w, 1)) for w in np.linspace(400.0, 1700.0, bands))
    camera = dataclasses.replace(
        HSI_CAMERA,
        bands=tuple(f"{w:.1f}nm" for w in nm),
        centres_nm=nm,
        fwhm_nm=(max(1300.0 / bands, 5.0),) * bands,
        read_noise=tuple(0.006 if w < 1000 else 0.01 for w in nm),
    )
    return synthesize(folder, "tray-hsi", seed=1, cameras=(camera,), **COUNTS)


TIMEOUT = 900
"""Seconds after which a run is stopped and reported as such."""


def timed(*args: str) -> dict:
    """``python -m specad ARGS`` in its own process: wall seconds and its peak RSS."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "specad", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stop = threading.Timer(TIMEOUT, child.kill)
    stop.start()
    _, status, usage = os.wait4(child.pid, 0)
    stop.cancel()
    seconds = time.perf_counter() - start
    stdout, stderr = child.stdout.read(), child.stderr.read()
    if seconds >= TIMEOUT:
        return {"seconds": f"stopped after {TIMEOUT}", "peak_rss_gb": usage.ru_maxrss / 2**20}
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(stderr.decode())
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)} | (
        {"stdout": stdout.decode()} if stdout else {}
    )


def evaluate_row(root: Path, bands: int) -> dict:
    row: dict = {"bands": bands}
    for name in ("knn", "rx"):
        run = timed("evaluate", name, str(root), "--json")
        metrics = json.loads(run.pop("stdout"))
        run["images_per_s"] = round(CUBES / run["seconds"], 2)
        run["mpx_bands_per_s"] = round(CUBES * SIDE * SIDE * bands / 1e6 / run["seconds"], 1)
        run["image_auroc"] = metrics.get("image_auroc")
        row[name] = run
    row["knn_over_rx"] = round(row["knn"]["seconds"] / row["rx"]["seconds"], 2)
    return row


def cube_row(work: Path, root: Path) -> dict:
    """knn fitted on the 224-band set, then one 1024 x 1024 x 224 ``.npy`` predicted tiled."""
    model = work / "knn224"
    timed("fit", "knn", str(root), "--out", str(model))
    bands = 224
    cube = np.lib.format.open_memmap(work / "big.npy", "w+", np.float32, (1024, 1024, bands))
    rng = np.random.default_rng(1)
    for top in range(0, 1024, 128):  # in slabs: the generator's temporaries stay small
        cube[top : top + 128] = 0.3 + 0.02 * rng.standard_normal((128, 1024, bands))
    cube.flush()
    del cube
    run = timed("predict", str(model), str(work / "big.npy"), "--out", str(work / "big"), "--tiled")
    return {"cube": "1024x1024x224 float32 .npy", **run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", default="6,31,96,224")
    parser.add_argument("--no-cube", action="store_true", help="skip the 1024 x 1024 cube")
    args = parser.parse_args()
    print(json.dumps(harness.machine()), flush=True)
    with tempfile.TemporaryDirectory(prefix="specad-bands-") as tmp:
        work = Path(tmp)
        for bands in (int(b) for b in args.bands.split(",")):
            root = make_dataset(work / f"b{bands}", bands)
            print(json.dumps(evaluate_row(root, bands)), flush=True)
        if not args.no_cube:
            root = work / "b224" if (work / "b224").is_dir() else make_dataset(work / "b224", 224)
            print(json.dumps(cube_row(work, root)), flush=True)


if __name__ == "__main__":
    main()
