"""Tiled prediction at scale: ``specad predict --tiled`` on cubes up to 6000 x 4000 x 6.

The model is ``--model`` (a trained 6-channel run), or else an EfficientAD of the CPU preset
fitted for one step on random images (256 px, 6 channels), exported (fp32 and int8) and with its
runtime chosen by measurement, as ``specad train`` leaves a real one. Speed does not depend on
what a model learned, but which runtime passes the accuracy check does. Each cube is a float32
``.npy`` of normal texture; each run is a fresh ``specad predict --tiled`` process, timed from
start to the written map, with its peak RSS. Usage::

    .venv/bin/python benchmarks/speed/tiled.py [--sizes 1500x1000,3000x2000,6000x4000] [--model RUN]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import harness
import numpy as np
import torch

from specad.data import Preprocess
from specad.export import export_detector, measure_runtimes
from specad.inference import Detector
from specad.metrics import ThresholdWarning
from specad.models.efficientad.config import load_config
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.modelfile import ModelMeta

HERE = Path(__file__).resolve().parent
CHANNELS, SIZE = 6, 256


def make_model(folder: Path) -> Path:
    """A saved, exported EfficientAD with its runtime measured on this CPU."""
    cfg = load_config(
        HERE.parents[1] / "examples" / "cpu.yaml",
        ["data.root=.", "train.steps=1", "penalty.enabled=false", "model.teacher=pdn-random"],
    )
    gen = torch.Generator().manual_seed(0)
    images = 0.5 + 0.1 * torch.randn(16, CHANNELS, SIZE, SIZE, generator=gen)
    model = EfficientADDetector(model=cfg.model, training=cfg.training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)
        model.fit(images[:8], images[8:])
    pre = Preprocess(CHANNELS, list(range(CHANNELS)), SIZE, [0.0] * CHANNELS, [1.0] * CHANNELS)
    meta = ModelMeta("efficientad", pre, [f"b{i}" for i in range(CHANNELS)], None, None)
    det = Detector(model, meta, "cpu")
    path = det.save(folder / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)
        export_detector(det, path, images[:8], int8=True, validation=images[8:])
    record = measure_runtimes(det, path, images[8:])
    print(json.dumps({"runtimes": record["runtimes"], "choice": record["choice"]}), flush=True)
    return path


def make_cube(path: Path, height: int, width: int) -> None:
    rng = np.random.default_rng(1)
    cube = np.lib.format.open_memmap(path, "w+", np.float32, (height, width, CHANNELS))
    for top in range(0, height, 500):  # in slabs: the generator's temporaries stay small
        rows = min(500, height - top)
        cube[top : top + rows] = 0.5 + 0.1 * rng.standard_normal((rows, width, CHANNELS))
    cube.flush()


def run(model: Path, cube: Path, out: Path, runtime: str) -> dict:
    command = [sys.executable, "-m", "specad", "predict", str(model), str(cube)]
    command += ["--out", str(out), "--tiled", "--runtime", runtime]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(seconds, 1), "peak_rss_mb_so_far": round(peak_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1500x1000,3000x2000,6000x4000")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument(
        "--model", type=Path, help="a trained 6-channel run folder (default: an untrained one)"
    )
    args = parser.parse_args()
    harness.set_threads()
    print(json.dumps(harness.machine()), flush=True)
    with tempfile.TemporaryDirectory(prefix="specad-tiled-") as tmp:
        work = Path(tmp)
        model = args.model or make_model(work)
        for i, size in enumerate(args.sizes.split(",")):  # ascending: peak RSS is cumulative
            width, height = (int(v) for v in size.split("x"))
            cube = work / f"cube{i}.npy"
            make_cube(cube, height, width)
            row = run(model, cube, work / f"out{i}", args.runtime)
            row |= {"size": size, "megapixels": round(width * height / 1e6, 1)}
            row["seconds_per_megapixel"] = round(row["seconds"] / row["megapixels"], 2)
            print(json.dumps(row), flush=True)
            cube.unlink()


if __name__ == "__main__":
    main()
