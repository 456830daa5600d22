"""anomalib 2.7's EfficientAd on a dataset in specad's layout; runs in ``benchmarks/.venv-anomalib``
(or any Python with anomalib), called by ``real.py --detectors anomalib``.

It uses anomalib's own model and its own fitting steps (``EfficientAd.teacher_channel_mean_std``,
the model's losses, Adam with anomalib's learning rate, weight decay and step decay at 95 %,
``map_norm_quantiles``), driven by a plain loop instead of a Lightning ``Engine`` so that it
reads specad's split directly: train/good to train, val/good for the map quantiles (the paper's
validation images; anomalib's default would take them from the test split), test for scoring.
The teacher is a random PDN (anomalib's pretrained one is a download), the penalty images are
the natural photos given in ``--natural`` (an ImageFolder, as anomalib expects), and each image is
resized to 256 x 256 as anomalib's pre-processor does. Only numpy, torch and anomalib are
imported: scores and maps (at 256 x 256) go to ``--out`` as ``.npz`` for ``real.py`` to score
with specad's metrics, like every other row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.models import EfficientAd

SIZE = 256


def read(files: list[Path], device: torch.device) -> torch.Tensor:
    """specad ``.npz`` cubes (0-255 values, 1 or 3 channels) as [B, 3, 256, 256] in [0, 1]."""
    out = []
    for f in files:
        cube = np.load(f)["cube"].astype(np.float32) / 255.0  # (H, W, C)
        x = torch.from_numpy(cube).permute(2, 0, 1)[None]
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        out.append(F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True))
    return torch.cat(out).to(device)


def batches(x: torch.Tensor, size: int = 16) -> list[SimpleNamespace]:
    """What anomalib's loops read of a batch: ``.image`` and ``.gt_label`` (all normal here)."""
    return [SimpleNamespace(image=b, gt_label=torch.zeros(len(b))) for b in x.split(size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--natural", type=Path, required=True, help="ImageFolder of penalty images")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    split = {
        s: sorted((args.dataset / s).glob("*/*.npz")) for s in ("train", "val", "test")
    }  # real.py matches files by name, so the order here does not matter
    start = time.perf_counter()
    module = EfficientAd(imagenet_dir=args.natural, model_size="small", padding=False)
    module = module.to(device)
    model = module.model
    train = read(split["train"], device)
    with torch.no_grad():
        model.mean_std.update(module.teacher_channel_mean_std(batches(train)))
    module.prepare_imagenette_data((SIZE, SIZE))
    params = [*model.student.parameters(), *model.ae.parameters()]
    opt = torch.optim.Adam(params, lr=module.lr, weight_decay=module.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(0.95 * args.steps), gamma=0.1)
    model.train()
    order = torch.randperm(len(train))
    for step in range(args.steps):
        if step and step % len(train) == 0:
            order = torch.randperm(len(train))  # a new epoch, as a shuffling DataLoader does
        x = train[order[step % len(train)]][None]
        try:
            penalty = next(module.imagenet_iterator)[0].to(device)
        except StopIteration:
            module.imagenet_iterator = iter(module.imagenet_loader)
            penalty = next(module.imagenet_iterator)[0].to(device)
        loss = sum(model(batch=x, batch_imagenet=penalty))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.quantiles.update(module.map_norm_quantiles(batches(read(split["val"], device))))
    fit_s = time.perf_counter() - start
    result: dict[str, np.ndarray] = {}
    rate = 0.0
    for name in ("val", "test"):
        files = split[name]
        start = time.perf_counter()
        scores, maps = [], []
        with torch.inference_mode():
            for chunk in range(0, len(files), 16):
                out = model(read(files[chunk : chunk + 16], device))
                scores.append(out.pred_score.flatten().cpu())
                maps.append(out.anomaly_map[:, 0].half().cpu())
        rate = len(files) / (time.perf_counter() - start)
        result[f"{name}_files"] = np.array([str(f.relative_to(args.dataset)) for f in files])
        result[f"{name}_scores"] = torch.cat(scores).numpy()
        result[f"{name}_maps"] = torch.cat(maps).numpy()
    info = {"fit_s": fit_s, "images_per_s": rate, "device": str(device), "steps": args.steps}
    np.savez_compressed(args.out, info=json.dumps(info), **result)


if __name__ == "__main__":
    main()
