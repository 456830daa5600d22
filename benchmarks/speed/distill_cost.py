"""What distilling EfficientAD's PDN teacher costs on this machine, and what the paper's
schedule would take (issue 29).

The paper pretrains the PDN on ImageNet for 60,000 steps at batch 16 and 256 px, regressing a
pretrained backbone's features. Here: one step of `specad teacher distill` as it runs (a padded
small PDN, Adam, the EfficientNet-Lite0 teacher's 152 outputs) and its targets' extraction (that
teacher on the input upsampled twice) are timed at each size, median of ``--repeats``, and the
schedule is extrapolated. Prints the CPU (or GPU) and the numbers.

    .venv/bin/python benchmarks/speed/distill_cost.py [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from specad.models.backbones import EfficientNetLite0Teacher
from specad.models.efficientad.network import PDN
from specad.runtime import cpu_model, pick_device

PAPER_STEPS, PAPER_BATCH, PAPER_SIZE = 60_000, 16, 256


def seconds(fn, repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(pick_device(args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"{name}, {args.threads} threads, torch {torch.__version__}, batch {args.batch}")
    extractor = EfficientNetLite0Teacher(3).to(device)
    pdn = PDN(3, out_channels=extractor.out_channels, padding=True).to(device)
    optimizer = torch.optim.Adam(pdn.parameters(), lr=1e-4, weight_decay=1e-5)
    for size in (128, PAPER_SIZE):
        x = torch.rand(args.batch, 3, size, size, device=device)

        def step(x: torch.Tensor = x) -> None:
            loss = pdn(x).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def targets(x: torch.Tensor = x) -> None:
            with torch.no_grad():
                extractor(F.interpolate(x, scale_factor=2, mode="bilinear"))

        per_image = seconds(step, args.repeats, device) + seconds(targets, args.repeats, device)
        per_image /= args.batch
        print(f"{size} px: {per_image * 1e3:.1f} ms per image (PDN step + targets)")
        if size == PAPER_SIZE:
            total = per_image * PAPER_STEPS * PAPER_BATCH
            print(
                f"paper schedule ({PAPER_STEPS:,} steps x {PAPER_BATCH} at {size} px): "
                f"{total / 3600:.0f} hours here"
            )


if __name__ == "__main__":
    main()
