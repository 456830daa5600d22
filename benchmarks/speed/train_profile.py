"""Where one EfficientAD training step spends its time on this CPU, by operator.

The step is `specad.models.efficientad.train_loop.train_step` as `specad train` runs it (random PDN
teacher, cached teacher outputs, the penalty image, batch 1, 256 px; channels_last unless
``--layout contiguous``), profiled with ``torch.profiler`` after warm-up steps. Prints the CPU,
the median step time, and the operators by self CPU time with their share of the step, so the
compute-bound part (convolutions and their backward) can be told from the rest.

    .venv/bin/python benchmarks/speed/train_profile.py [--channels 6] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import time

import harness
import torch
from torch.profiler import ProfilerActivity, profile

from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import ModelConfig
from specad.models.efficientad.train_loop import ae_augment, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--layout", choices=["channels_last", "contiguous"], default="channels_last"
    )
    args = parser.parse_args()
    harness.set_threads()
    print(json.dumps(harness.machine()), flush=True)
    model = build_efficientad(ModelConfig(teacher="pdn-random"), args.channels, harness.SIZE)
    model = model.to(memory_format=torch.channels_last).train()
    model.teacher.eval()
    x = harness.random_images(1, args.channels, seed=0).contiguous(
        memory_format=torch.channels_last
    )
    penalty = harness.random_images(1, args.channels, seed=1)
    penalty = penalty.contiguous(memory_format=torch.channels_last)
    teacher_x = model.teacher_features(x)
    params = [*model.student.parameters(), *model.autoencoder.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        train_step(model, opt, x, ae_augment(x, gen), penalty, teacher_x)

    for _ in range(2):  # warm-up: allocator and kernel selection
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    print(json.dumps({"median_step_s": round(seconds[len(seconds) // 2], 3)}), flush=True)
    for e in rows:
        share = e.self_cpu_time_total / total
        print(f"{e.key:45s} {e.self_cpu_time_total / 1e6:7.3f} s  {share:6.1%}  x{e.count}")
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key or "mkldnn" in e.key)
    print(json.dumps({"convolution_share": round(conv / total, 3)}))


if __name__ == "__main__":
    main()
