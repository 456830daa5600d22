"""EfficientAD's training loop: one seeded loop, with checkpoints and resume when it runs for
`specad train` (`Run`), shared by `EfficientADDetector.fit` and `specad train`
(`specad.models.efficientad.run`).

Everything random (batch order, augmentation, penalty images, dropout) draws from one
``torch.Generator`` whose state is checkpointed, so ``--resume`` ends with the same weights as an
uninterrupted run. Under ``torchrun`` each process trains on a shard of every batch
(:mod:`specad.models.efficientad.ddp`) and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from specad.data import GOOD, Inputs, resize
from specad.errors import SpecadError
from specad.models.efficientad import ddp
from specad.models.efficientad.checkpoint import load_state, save_state
from specad.models.efficientad.config import Training
from specad.models.efficientad.network import EfficientAD
from specad.models.efficientad.penalty import PenaltySet
from specad.runtime import available_memory, cpu_has_amx, pick_device

CHECKPOINT = "checkpoints/last.pt"


def train_step(
    model: EfficientAD,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    x_aug: torch.Tensor,
    penalty: torch.Tensor | None,
    teacher_x: torch.Tensor | None = None,
    bf16: bool = False,
    dropout: Sequence[torch.Generator] | None = None,
    ranks: ddp.Ranks | None = None,
) -> dict[str, torch.Tensor]:
    """One optimisation step on the paper's losses; shared with the benchmarks. With ``ranks``
    of several processes, ``x`` is this rank's shard of the global batch."""
    many = ranks is not None and ranks.world > 1
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        if many:
            losses = model.loss(x, x_aug, penalty, teacher_x, dropout, hard=ranks.hard_loss)
        else:
            losses = model.loss(x, x_aug, penalty, teacher_x, dropout)
    opt.zero_grad(set_to_none=True)
    losses["total"].backward()
    if many:
        ranks.average_gradients([p for group in opt.param_groups for p in group["params"]])
    opt.step()
    return losses


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Convolutions run faster on this layout (docs/runtimes.md)."""
    return x.contiguous(memory_format=torch.channels_last)


def use_bf16(setting: str, device: torch.device) -> bool:
    """bf16 autocast for ``auto``: on GPUs that support it and on CPUs with AMX. Without AMX the
    CPU's bf16 convolutions measured slower than fp32
    (benchmarks/speed/results-intel-avx512-vnni.md)."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_amx()


CACHE_LIMIT_BYTES = 4 << 30
STEP_BYTES_PER_PIXEL = {"small": 6 << 10, "medium": 12 << 10}
"""Memory a training step takes per image and input pixel, by student size: the activations
the backward pass keeps and their gradients (an estimate rounded up from a CPU run; input
channels add their own few bytes, `check_step_memory`)."""


def check_step_memory(
    student: str, image_size: tuple[int, int], batch: int, channels: int, ranks: ddp.Ranks
) -> None:
    """Refuse, in one line, a batch of ``channels``-channel images whose training step (student
    size ``student``) would need more memory than ``ranks.device`` has available: it would
    otherwise fail deep in the first step, or push the machine into swap. Cheap, so that
    `specad train` can ask before it loads the dataset."""
    pixels = image_size[0] * image_size[1]
    inputs = 3 * channels * 4  # float32 batch, its augmented copy and the penalty images
    need = batch // ranks.world * pixels * (STEP_BYTES_PER_PIXEL[student] + inputs)
    free = available_memory(ranks.device)
    if need > free:
        raise SpecadError(
            f"train.batch_size {batch} at {image_size[0]} px needs about {need / 2**30:.1f} GiB "
            f"a step, more than the {free / 2**30:.1f} GiB available on {ranks.device}: lower "
            "train.batch_size or data.image_size"
        )


def _cache_teacher(how: Training, n_images: int, model: EfficientAD) -> bool:
    """Cache teacher outputs when images are not geometrically augmented and they fit."""
    if not how.train.cache_teacher or how.flips or how.rot90:
        return False
    h, w = model.grid
    return n_images * model.teacher_channels * h * w * 4 <= CACHE_LIMIT_BYTES


def ae_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's autoencoder augmentation, per image, generalised to N channels.

    Each image gets one of brightness, contrast or saturation with a factor in [0.8, 1.2]; all
    three blend the image with a target: zero, the image mean, or the per-pixel channel mean
    (N-channel "grey"). Unlike torchvision nothing is clipped to [0, 1], since reflectance may
    exceed 1 and clipping would create saturation the model never sees at test time.
    """
    b = x.shape[0]
    choice = torch.randint(3, (b, 1, 1, 1), generator=generator).to(x.device)
    factor = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)).to(x.device, x.dtype)
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    pixel_mean = x.mean(dim=1, keepdim=True)
    target = (choice == 1) * image_mean + (choice == 2) * pixel_mean
    return factor * x + (1 - factor) * target


def _augment_geometry(x: torch.Tensor, how: Training, gen: torch.Generator) -> torch.Tensor:
    if how.flips and torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    if how.rot90:
        x = torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), dims=(-2, -1))
    return x


@dataclass
class Run:
    """What `specad train` adds to fitting a network: a run folder (checkpoints, metrics log),
    resume, an early stop, progress, a monitor set, and the processes of a data-parallel run."""

    out: Path
    ranks: ddp.Ranks
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True
    monitor: Inputs | None = None


def fit_network(
    model: EfficientAD,
    how: Training,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    run: Run | None = None,
    wavelengths: list[float] | None = None,
) -> int | None:
    """Train ``model`` on normal images, then fit its map quantiles on ``val_x``; returns the
    steps trained, or None when ``run.stop_after`` ended it early (checkpoint written)."""
    opts = how.train
    ranks = run.ranks if run is not None else ddp.Ranks(device=pick_device(opts.device))
    device = ranks.device
    check_step_memory(
        model.student.size, model.image_size, opts.batch_size, train_x.shape[1], ranks
    )
    model.to(device, memory_format=torch.channels_last)
    ckpt_path = run.out / CHECKPOINT if run is not None else None
    penalty = _penalty(how, train_x.shape[1:], wavelengths) if how.penalty.enabled else None
    params = list(model.student.parameters()) + list(model.autoencoder.parameters())
    opt = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    decay_step = max(1, int(opts.lr_decay_at * opts.steps))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[decay_step], gamma=0.1)
    gen = torch.Generator().manual_seed(opts.seed)
    step = 0
    cache = _cache_teacher(how, len(train_x), model)
    if run is not None and run.resume:
        step = _load_checkpoint(ckpt_path, model, opt, sched, gen)
        teacher_x = _teacher_outputs(model, train_x, device) if cache else None
    else:
        teacher_x = ddp.fit_teacher_stats(model, train_x, ranks, keep=cache)
        if run is not None and ranks.main:
            (run.out / "metrics.jsonl").write_text("")
    ranks.broadcast(model)
    bf16 = use_bf16(opts.bf16, device)

    stop_after = run.stop_after if run is not None else None
    end = opts.steps if stop_after is None else min(opts.steps, stop_after)
    monitor = run.monitor if run is not None else None
    log = (run.out / "metrics.jsonl").open("a") if run is not None and ranks.main else None
    progress = run is not None and run.progress and ranks.main
    bar = tqdm(total=opts.steps, initial=step, disable=not progress, unit="step")
    model.train()
    model.teacher.eval()
    t0 = time.perf_counter()
    while step < end:
        idx = torch.randint(len(train_x), (opts.batch_size,), generator=gen)
        x = _augment_geometry(train_x[idx], how, gen)
        x_aug = ae_augment(x, gen)
        p = penalty.sample(opts.batch_size, gen) if penalty is not None else None
        seeds = torch.randint(2**62, (opts.batch_size,), generator=gen)
        mine = ranks.shard(opts.batch_size)  # this process's rows of the global batch
        idx, x, x_aug, seeds = idx[mine], x[mine], x_aug[mine], seeds[mine]
        x, x_aug = _channels_last(x.to(device)), _channels_last(x_aug.to(device))
        p = None if p is None else _channels_last(p[mine].to(device))
        cached = None if teacher_x is None else teacher_x[idx.to(teacher_x.device)]
        dropout = ddp.dropout_generators(seeds, device)
        losses = train_step(model, opt, x, x_aug, p, cached, bf16, dropout, ranks)
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total'].item():.4f}")
        if step % opts.log_every == 0 or step == end:
            row = {k: round(v, 6) for k, v in ranks.mean(losses).items()}
            row |= {"step": step, "lr": opt.param_groups[0]["lr"]}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if monitor is not None and (step % opts.val_every == 0 or step == end):
                row |= _monitor(model, val_x, monitor, device)
                model.train()
                model.teacher.eval()
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
        due = step % opts.checkpoint_every == 0 or step == end
        if ckpt_path is not None and ranks.main and due:
            _save_checkpoint(ckpt_path, model, opt, sched, gen, step)
    bar.close()
    if log is not None:
        log.close()
    if step < opts.steps:
        return None
    model.eval()
    model.fit_quantiles(_batches(val_x, 8, device))
    return step


def _penalty(how: Training, shape: torch.Size, wavelengths: list[float] | None) -> PenaltySet:
    """Penalty images shaped as the training images' [N, S, S] (``shape``)."""
    return PenaltySet(
        shape[0],
        shape[-1],
        folder=how.penalty.folder,
        wavelengths=wavelengths,
        mapping=how.penalty.mapping,
    )


@torch.no_grad()
def _teacher_outputs(model: EfficientAD, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([model.teacher_features(b) for b in _batches(x, 8, device)])


def _batches(x: torch.Tensor, size: int, device: torch.device):
    for i in range(0, len(x), size):
        yield x[i : i + size].to(device)


def _monitor(model: EfficientAD, val_x: torch.Tensor, mon: Inputs, device: torch.device) -> dict:
    from sklearn.metrics import roc_auc_score

    model.eval()
    model.fit_quantiles(_batches(val_x[:8], 8, device))
    with torch.inference_mode():
        maps = torch.cat([model.anomaly_map(b).float().cpu() for b in _batches(mon.x, 8, device)])
    labels = np.array([lab != GOOD for lab in mon.labels])
    scores = maps.amax(dim=(1, 2, 3)).numpy()
    row = (
        {"val_image_auroc": round(float(roc_auc_score(labels, scores)), 4)}
        if 0 < labels.sum() < len(labels)
        else {}
    )
    pix = np.concatenate(
        [
            resize(m[None], k.shape)[0, 0].numpy().ravel()
            for m, k in zip(maps, mon.masks, strict=True)
        ]
    )
    truth = np.concatenate([(k > 0).ravel() for k in mon.masks])
    if 0 < truth.sum() < truth.size:
        row["val_pixel_auroc"] = round(float(roc_auc_score(truth, pix)), 4)
    return row


def _save_checkpoint(path, model, opt, sched, gen, step: int) -> None:
    save_state(
        path,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        generator=gen.get_state(),
        torch_rng=torch.get_rng_state(),
        step=step,
    )


def _load_checkpoint(path, model, opt, sched, gen) -> int:
    state = load_state(path, "model", "optimizer", "scheduler", "generator", "torch_rng", "step")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise SpecadError(
            f"corrupt or incompatible checkpoint ({str(err).splitlines()[0]})", path
        ) from err
    return int(state["step"])
