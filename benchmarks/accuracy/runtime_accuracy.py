"""Image and pixel AUROC of one trained model under every runtime, against torch fp32.

Every fast path has to keep both AUROCs within 0.005 of fp32. This exports the model's ONNX files
(fp32 and int8, calibrated as ``specad train`` calibrates) into a copy of the run folder, then
scores the test split with each runtime and prints the differences and the scoring speed.

    .venv/bin/python benchmarks/accuracy/runtime_accuracy.py RUN_FOLDER DATASET [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from specad.data import load_dataset, load_inputs
from specad.evaluate import evaluate_detector
from specad.export import calibration_images, export_detector
from specad.inference import Detector
from specad.models.modelfile import META_FILE, MODEL_FILE

RUNTIMES = ("torch", "bf16", "onnx", "int8")
TOLERANCE = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder with model.safetensors")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    ds = load_dataset(args.dataset)
    folder = Path(tempfile.mkdtemp(prefix="specad-runtimes-"))
    for name in (MODEL_FILE, META_FILE):
        shutil.copy(args.run / name, folder / name)
    det = Detector.load(folder, device="cpu", runtime="torch")
    images = load_inputs(det.meta.preprocess, calibration_images(ds.require("train"))).x
    diffs = export_detector(det, folder, images, int8=True)
    print("largest map difference from torch fp32 on the calibration images:", diffs)

    rows = []
    for runtime in RUNTIMES:
        start = time.perf_counter()
        metrics = evaluate_detector(Detector.load(folder, device="cpu", runtime=runtime), ds)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "runtime": runtime,
                "image_auroc": metrics["image_auroc"],
                "pixel_auroc": metrics["pixel_auroc"],
                "seconds": seconds,
            }
        )
    ref = rows[0]
    print("| runtime | image AUROC | Δ | pixel AUROC | Δ | within 0.005 | val+test scoring s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        di, dp = r["image_auroc"] - ref["image_auroc"], r["pixel_auroc"] - ref["pixel_auroc"]
        ok = "yes" if max(abs(di), abs(dp)) <= TOLERANCE else "NO"
        print(
            f"| {r['runtime']} | {r['image_auroc']:.4f} | {di:+.4f} | {r['pixel_auroc']:.4f} | "
            f"{dp:+.4f} | {ok} | {r['seconds']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"map_diffs": diffs, "rows": rows}, indent=1) + "\n")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
