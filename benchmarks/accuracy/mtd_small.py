"""A copy of MTD with every image at most 256 pixels a side (JPEG quality 92, masks nearest), in
MTD's own layout: small enough (24 MB) to travel to a lent GPU machine with the wheels
`gpu_real.sh` needs (its transfer limit is 64 MiB). Every detector resizes to 256 x 256 or less
anyway; `real_results_h200.md` was measured on it. Usage::

    .venv/bin/python benchmarks/accuracy/mtd_small.py ../shared/data/mtd .devdata/mtd
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

SIDE = 256


def shrink(source: Path, out: Path) -> int:
    n = 0
    for image in sorted(source.glob("MT_*/Imgs/*.jpg")):
        target = out / image.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image) as im, Image.open(image.with_suffix(".png")) as mask:
            w, h = im.size
            scale = min(1.0, SIDE / max(w, h))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            im.convert("L").resize(size, Image.LANCZOS).save(target, "JPEG", quality=92)
            mask.resize(size, Image.NEAREST).save(target.with_suffix(".png"), optimize=True)
        n += 1
    return n


if __name__ == "__main__":
    print(shrink(Path(sys.argv[1]), Path(sys.argv[2])), "images written", file=sys.stderr)
