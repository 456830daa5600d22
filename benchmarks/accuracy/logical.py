"""Logical anomalies: a part missing, swapped or doubled, where every local patch is normal.

EfficientAD's autoencoder exists for these (`specad.synth.logical`). This probe asks, at test
size and on the CPU, whether that holds for specad's EfficientAD and whether ``knn`` misses
what the autoencoder finds.

Images (`two_part_tray`): a red disk in the left part and a blue one in the right part of a
grey tray (``--radius`` and ``--gap`` as shares of the side). Anomalies, 10 each: the colours
``swap``ped, ``both_red``, the blue disk ``missing``. 40 train, 10 val and 10 test normal
images. knn with its defaults (images standardised); EfficientAD with the random PDN teacher
(``--teacher``), no penalty, ``--steps`` steps: its combined map and the student-teacher and
autoencoder maps alone. Image AUROC of each anomaly type against the normal test images;
results are appended to ``--results`` with the command, CPU and time.

    python benchmarks/accuracy/logical.py --size 256 --gap 0.76 --steps 300
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from specad.models.efficientad.config import ModelConfig, PenaltyConfig, TrainConfig, Training
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.knn import KNN
from specad.runtime import cpu_model, cpu_speed_flags
from specad.synth.logical import KINDS, two_part_tray

HERE = Path(__file__).resolve().parent


def per_kind(scores: np.ndarray) -> dict[str, float]:
    """Image AUROC of each anomaly type (10 images each, after the 10 normal ones)."""
    normal, labels = scores[:10], [0] * 10 + [1] * 10
    return {
        k: float(roc_auc_score(labels, np.r_[normal, scores[10 + 10 * i : 20 + 10 * i]]))
        for i, k in enumerate(KINDS)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--gap", type=float, default=0.76, help="centre distance / side")
    parser.add_argument("--radius", type=float, default=0.05, help="disk radius / side")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--teacher", default="pdn-random")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=HERE / "logical_results.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # 10 validation images cannot set a 1 % false-alarm rate
    rng = np.random.default_rng(0)
    shape = (args.size, args.gap, args.radius, rng)
    images = [two_part_tray("normal", *shape) for _ in range(60)]
    anomalies = [two_part_tray(k, *shape) for k in KINDS for _ in range(10)]
    train, val = torch.stack(images[:40]), torch.stack(images[40:50])
    test = torch.stack(images[50:] + anomalies)
    rows = {}
    start = time.perf_counter()
    knn = KNN().fit((train - 0.5) / 0.3, (val - 0.5) / 0.3)
    rows["knn (defaults)"] = (per_kind(knn.scores((test - 0.5) / 0.3)), time.perf_counter() - start)
    start = time.perf_counter()
    training = Training(
        train=TrainConfig(steps=args.steps, device="cpu", export=[]),
        penalty=PenaltyConfig(enabled=False),
    )
    ead = EfficientADDetector(model=ModelConfig(teacher=args.teacher), training=training)
    ead.fit(train, val)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        st, ae = ead.network_.maps(test)
    rows["EfficientAD, combined map"] = (per_kind(ead.scores(test)), seconds)
    rows["EfficientAD, student-teacher map"] = (per_kind(st.amax((1, 2, 3)).numpy()), seconds)
    rows["EfficientAD, autoencoder map"] = (per_kind(ae.amax((1, 2, 3)).numpy()), seconds)
    lines = [
        f"## {args.size} px, disks of radius {args.radius:g} and {args.gap:g} of the side apart, "
        f"EfficientAD {args.steps} steps ({args.teacher})",
        "",
        f"`python {shlex.join(sys.argv)}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{cpu_model()} ({' '.join(cpu_speed_flags())}), {args.threads} thread(s).",
        "",
        "| detector | " + " | ".join(KINDS) + " | fit s |",
        "|---|" + "---:|" * (len(KINDS) + 1),
    ]
    for name, (aurocs, secs) in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{aurocs[k]:.3f}" for k in KINDS))
        lines[-1] += f" | {secs:.0f} |"
    text = "\n".join(lines) + "\n"
    print(text)
    with args.results.open("a") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
