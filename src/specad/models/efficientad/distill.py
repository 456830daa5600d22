"""Distilling EfficientAD's PDN teacher: the paper's teacher pretraining, on random crops of the
natural photos available offline.

The paper regresses a pretrained backbone's features with a PDN on ImageNet (60,000 steps at
batch 16, 256 px). Here the backbone is any frozen feature extractor (specad ships the
EfficientNet-Lite0 teacher's), the data are random augmented crops of a few dozen photos, and
the PDN is trained padded, as the reference implementation does, so that its output grid (S/4
at S px) is exactly the extractor's stride-8 grid on the input upsampled twice; the unpadded
student later uses the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from specad.errors import SpecadError
from specad.io.read import read_image
from specad.models.backbones import EfficientNetLite0Teacher
from specad.models.efficientad.checkpoint import load_state, save_state
from specad.models.efficientad.network import PDN, channel_stats
from specad.models.efficientad.penalty import image_files, natural_images
from specad.models.efficientad.teachers import save_teacher_file, teacher_metadata
from specad.runtime import cpu_model

if TYPE_CHECKING:
    from PIL import Image

GREY_PHOTOS = ("camera.png", "coins.png", "moon.png", "page.png", "text.png")
"""scikit-image's grey photos, which the penalty set leaves out but distillation can use."""

GREY_P = 0.3  # share of crops turned grey, as in the paper's penalty images
JITTER = 0.2  # brightness and contrast drawn from [1 - JITTER, 1 + JITTER]
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def offline_photos(folders: Sequence[Path] = ()) -> list[Path]:
    """The photos scikit-image and scikit-learn ship in their wheels, and those in ``folders``."""
    import skimage.data
    import sklearn.datasets

    grey = [Path(skimage.data.__file__).parent / name for name in GREY_PHOTOS]
    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    files = natural_images() + [p for p in grey if p.is_file()]
    files += sorted(sklearn_images.glob("*.jpg"))
    return files + [path for folder in folders for path in image_files(folder)]


class NaturalCrops:
    """Random augmented RGB crops of photos: the data a PDN teacher is distilled on.

    Each crop: a random photo, a square of random side (log-uniform from half the crop size to
    the photo's short side) at a random place, resized to ``size``, a random flip and quarter
    turn, grey with p=0.3, and brightness/contrast jitter. Every draw comes from the caller's
    generator, so a resumed run sees the same crops. Photos are kept at most ``max_side`` px.
    """

    def __init__(self, files: Sequence[Path], size: int, max_side: int = 640) -> None:
        if not files:
            raise SpecadError("no photos to distil on")
        self.size = size
        self.files = list(files)
        self.photos = [_read_rgb(path, max_side) for path in self.files]
        for path, photo in zip(self.files, self.photos, strict=True):
            if min(photo.shape[-2:]) < size:
                raise SpecadError(f"photos must be at least {size} px on their short side", path)

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        """A [B, 3, S, S] batch in [0, 1]."""
        return torch.cat([self._crop(generator) for _ in range(batch)])

    def _crop(self, g: torch.Generator) -> Tensor:
        u = torch.rand(8, generator=g).tolist()  # 7 used; 8 kept: the shipped teacher's stream
        photo = self.photos[int(u[0] * len(self.photos))]
        h, w = photo.shape[-2:]
        lo, hi = math.log(self.size / 2), math.log(min(h, w))
        side = round(math.exp(lo + u[1] * (hi - lo)))
        top, left = int(u[2] * (h - side + 1)), int(u[3] * (w - side + 1))
        x = photo[None, :, top : top + side, left : left + side]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        if u[4] < 0.5:
            x = x.flip(-1)
        x = torch.rot90(x, int(u[5] * 4), dims=(-2, -1))
        if u[6] < GREY_P:
            x = (x * LUMA).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        brightness, contrast = (1 + JITTER * (2 * v - 1) for v in torch.rand(2, generator=g))
        mean = x.mean()
        return ((x - mean) * contrast + mean * brightness).clamp(0, 1)


def _read_rgb(path: Path, max_side: int) -> Tensor:
    def shrink(im: Image.Image) -> Image.Image:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        return im

    rgb = read_image(path, shrink).astype(np.float32) / 255.0
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def distill(
    pdn: PDN,
    extractor: nn.Module,
    crops: NaturalCrops,
    steps: int,
    out_path: str | Path,
    *,
    lr: float = 1e-3,
    batch_size: int = 8,
    resume: bool = False,
    until: int | None = None,
    seed: int = 0,
    stat_batches: int = 8,
    checkpoint_every: int = 100,
    provenance: dict[str, object] | None = None,
) -> list[float]:
    """Train a padded ``pdn`` to regress ``extractor``'s stride-8 features of the crops
    upsampled twice: MSE to per-channel normalised targets (statistics from ``stat_batches``
    batches before training), Adam (weight decay 1e-5 as in the paper) with a cosine learning
    rate from ``lr`` to 0 over ``steps``, so that a short CPU schedule still ends converged.

    ``steps`` is the schedule's total; ``until`` stops earlier (as an interruption would), and
    ``resume=True`` continues the checkpoint at ``out_path`` (PDN
    safetensors whose metadata holds the step and ``provenance`` as JSON, plus
    ``<out_path>.state.pt``), bit-identically to an uninterrupted run. Returns the losses of the
    steps run by this call.
    """
    out_path = Path(out_path)
    state_path = out_path.with_name(out_path.name + ".state.pt")
    device = next(pdn.parameters()).device
    extractor.eval()
    optimizer = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)

    def batch() -> Tensor:
        return crops.sample(batch_size, generator).to(device)

    def targets(x: Tensor) -> Tensor:
        with torch.no_grad():
            return extractor(F.interpolate(x, scale_factor=2, mode="bilinear"))

    start = 0
    if resume and out_path.is_file() and state_path.is_file():
        state = load_state(
            state_path, "optimizer", "generator", "step", "mean", "std", "seconds", "steps"
        )
        if state["steps"] != steps:
            raise SpecadError(f"this checkpoint is of a {state['steps']}-step schedule", out_path)
        if teacher_metadata(out_path)[0] != state["step"]:
            raise SpecadError("weights and optimiser state are from different steps", out_path)
        pdn.load_state_dict(load_file(out_path, device=str(device)), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, mean, std = state["step"], state["mean"].to(device), state["std"].to(device)
        seconds = state["seconds"]
    else:
        seconds = 0.0
        mean, std = channel_stats(targets(batch()) for _ in range(stat_batches))
        mean, std = mean.to(device), std.to(device)

    def save(step: int) -> None:
        spent = seconds + time.perf_counter() - began
        save_state(
            state_path,
            optimizer=optimizer.state_dict(),
            generator=generator.get_state(),
            step=step,
            mean=mean,
            std=std,
            seconds=spent,
            steps=steps,
        )
        made = {**(provenance or {}), "steps": step, "train_seconds": round(spent)}
        made["loss_last_50"] = round(float(np.mean(losses[-50:])), 4)
        save_teacher_file(pdn.state_dict(), out_path, step, made)

    pdn.train()
    losses: list[float] = []
    began = time.perf_counter()
    for step in range(start, steps if until is None else min(until, steps)):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = batch()
        target = (targets(x) - mean) / std
        out = pdn(x)
        if out.shape[-2:] != target.shape[-2:]:
            raise SpecadError(
                f"PDN grid {tuple(out.shape[-2:])} is not the extractor's "
                f"{tuple(target.shape[-2:])}: distil a padded PDN from a stride-8 extractor"
            )
        loss = F.mse_loss(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % checkpoint_every == 0 or step + 1 in (steps, until):
            save(step + 1)
    return losses


def distill_lite0_teacher(
    out_path: Path,
    folders: Sequence[Path] = (),
    *,
    steps: int = 1000,
    batch_size: int = 8,
    image_size: int = 128,
    lr: float = 1e-3,
    resume: bool = False,
    device: torch.device | str = "cpu",
    command: str = "",
) -> list[float]:
    """`specad teacher distill`: an RGB small PDN distilled from the EfficientNet-Lite0 teacher
    on `offline_photos` (plus ``folders``), its file recording the photos, schedule and machine."""
    device = torch.device(device)
    files = offline_photos(folders)
    extractor = EfficientNetLite0Teacher(3).to(device)
    pdn = PDN(3, out_channels=extractor.out_channels, size="small", padding=True).to(device)
    made = {
        "extractor": "efficientnet-lite0 blocks 4+10 (specad's teacher), input upsampled 2x",
        "photos": sorted(p.name for p in files),
        "photo_sources": [
            f"scikit-image {version('scikit-image')} and scikit-learn {version('scikit-learn')} "
            "sample photos (their wheels)",
            *(str(folder) for folder in folders),
        ],
        "crop_px": image_size,
        "batch_size": batch_size,
        "lr": lr,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": command,
    }
    crops = NaturalCrops(files, image_size)
    return distill(
        pdn, extractor, crops, steps, out_path,
        lr=lr, batch_size=batch_size, resume=resume, provenance=made,
    )  # fmt: skip
