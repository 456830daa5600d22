"""Logical anomalies at test size: a part missing, swapped or doubled, where every local patch
of an anomalous image also occurs in normal ones.

Such defects are what EfficientAD's autoencoder is for (Batzner et al. 2023, MVTec LOCO): it
reconstructs the teacher's features through a bottleneck that sees the whole image, while
patch statistics only know what parts look like (`benchmarks/accuracy/logical.py` measures both).
"""

from __future__ import annotations

import numpy as np
import torch

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)
DISK_COLOURS = {
    "normal": (RED, BLUE),
    "swap": (BLUE, RED),
    "both_red": (RED, RED),
    "missing": (RED,),
}
"""The disks' colours from left to right: normal images hold a red and a blue one."""
KINDS = ("swap", "both_red", "missing")


def two_part_tray(
    kind: str, size: int, gap: float, radius: float, rng: np.random.Generator
) -> torch.Tensor:
    """One [3, S, S] image in [0, 1]: a grey tray (noise 0.02) with the disks of ``kind``
    (`DISK_COLOURS`), of ``radius`` and with centres ``gap`` apart (shares of the side), each
    jittered by up to 3 % of the side."""
    yy, xx = np.mgrid[:size, :size] / size
    img = 0.5 + 0.02 * rng.standard_normal((3, size, size))
    for centre, colour in zip((0.5 - gap / 2, 0.5 + gap / 2), DISK_COLOURS[kind], strict=False):
        cy, cx = 0.5 + rng.uniform(-0.03, 0.03), centre + rng.uniform(-0.03, 0.03)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        img[:, disk] = np.asarray(colour)[:, None]
    return torch.tensor(img, dtype=torch.float32)
