"""How long a broken dataset takes to be refused: a generated MVTec AD tree of ``--images``
photos (tests/test_layouts.py covers every layout's refusal on small trees), broken in four
places (an unreadable image, another channel count, a missing mask, a mask of the wrong size).
Timed: `load_dataset` in this process, ``specad dataset check ROOT`` and ``specad
evaluate rx ROOT`` end to end (start-up included), which must fail with every problem before
any work. The bound (issue 41): under 5 s. Prints a table; numbers are recorded in the
report of the change that measured them, with the CPU.

    .venv/bin/python benchmarks/speed/layout_check.py [--images 3000 --side 512]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from specad.data import DatasetProblems, load_dataset

ROOT = Path(__file__).resolve().parents[2]

BOUND_S = 5.0


def large_mvtec(out: Path, images: int, side: int) -> Path:
    """An MVTec AD tree of ``images`` generated photos (``side`` px), a tenth of them defects
    with masks; written here, so breaking it touches nothing else."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (side, side, 3), dtype=np.uint8)
    for i in range(images):
        defect = i % 10 == 0
        folder = "test/crack" if defect else "train/good" if i % 10 < 8 else "test/good"
        img = base.copy()
        img[i % side, :] = i % 256  # every image different
        path = out / folder / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, compress_level=1)
        if defect:
            mask = out / "ground_truth/crack" / f"{i:05d}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((side, side), 255, np.uint8)).save(mask)
    return out


def break_tree(root: Path) -> None:
    """The four problems: a file that is no image, a grey image among colour ones, a defect
    image's mask gone and one of another size."""
    train = sorted((root / "train/good").iterdir())
    train[0].write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(train[1])
    masks = sorted((root / "ground_truth/crack").iterdir())
    masks[0].unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks[1])


def cli_seconds(*args: str) -> float:
    """Seconds for ``specad ARGS`` to fail, as it must, with exit 2."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(ROOT / ".venv/bin/specad"), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 2:
        raise SystemExit(f"specad {' '.join(args)}: expected exit 2, got {done.returncode}")
    return time.perf_counter() - start


def timed(root: Path) -> tuple[int, float, float, float]:
    """Problems found; seconds in process, for ``specad dataset check`` and for ``specad
    evaluate rx`` (whose start-up imports torch before the check)."""
    start = time.perf_counter()
    try:
        load_dataset(root)
        problems = 0
    except DatasetProblems as err:
        problems = len(err.problems)
    in_process = time.perf_counter() - start
    check = cli_seconds("dataset", "check", str(root))
    return problems, in_process, check, cli_seconds("evaluate", "rx", str(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="images in the large tree")
    parser.add_argument("--side", type=int, default=512, help="their side in pixels")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/layout_check")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    root = large_mvtec(args.out, args.images, args.side)
    break_tree(root)
    problems, *seconds = timed(root)
    print(f"{args.images} images of {args.side} px, {problems} problems found")
    names = ("load_dataset", "specad dataset check", "specad evaluate rx")
    for what, t in zip(names, seconds, strict=True):
        print(f"{what}: {t:.2f} s ({'under' if t < BOUND_S else 'OVER'} {BOUND_S:g} s)")


if __name__ == "__main__":
    main()
