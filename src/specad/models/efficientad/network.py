"""EfficientAD (Batzner et al. 2023, arXiv 2303.14535) for inputs with any number of channels N.

Follows anomalib's torch model (layer names, losses, map normalisation), so anomalib's teacher
weights load unchanged once their first conv is widened (`specad.models.backbones`). Departures
from anomalib are noted where they happen: exact quantiles instead of random subsampling, an
autoencoder whose upsampling ladder follows the teacher grid, and a teacher of any architecture.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specad.errors import SpecadError
from specad.models.backbones import ImageNetNorm
from specad.models.maps import normal_quantiles, normalise, quantile
from specad.spectral import Mapping, rgb_sources

ModelSize = Literal["small", "medium"]

DROPOUT = 0.2  # the autoencoder's decoder
HARD_QUANTILE = 0.999  # hard-feature mining in the student-teacher loss


class PDN(nn.Module):
    """Patch description network (anomalib's PDN_S / PDN_M) with N input channels.

    Attribute names match anomalib (conv1..convK, avgpool1..2), so its teacher files load strictly.
    Shapes below are for the small PDN at 256 px without padding; its output grid is 56 = 256/4
    less a border of 4 cells lost to the unpadded convolutions (padding=True keeps 64).
    The medium PDN is wider and has two more convolutions (conv3 1x1, conv6 1x1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 384,
        size: ModelSize = "small",
        padding: bool = False,
        mapping: Mapping = "repeat",
        wavelengths: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if size not in ("small", "medium"):
            raise SpecadError(f"unknown PDN size {size!r}; use 'small' or 'medium'")
        self.size = size
        p = int(padding)  # 1: "same"-like padding as in the paper's padded variant
        self.norm = ImageNetNorm(rgb_sources(in_channels, mapping, wavelengths))
        self.avgpool1 = nn.AvgPool2d(2, stride=2, padding=p)
        self.avgpool2 = nn.AvgPool2d(2, stride=2, padding=p)
        if size == "small":
            self.conv1 = nn.Conv2d(in_channels, 128, 4, padding=3 * p)
            self.conv2 = nn.Conv2d(128, 256, 4, padding=3 * p)
            self.conv3 = nn.Conv2d(256, 256, 3, padding=p)
            self.conv4 = nn.Conv2d(256, out_channels, 4)
        else:
            self.conv1 = nn.Conv2d(in_channels, 256, 4, padding=3 * p)
            self.conv2 = nn.Conv2d(256, 512, 4, padding=3 * p)
            self.conv3 = nn.Conv2d(512, 512, 1)
            self.conv4 = nn.Conv2d(512, 512, 3, padding=p)
            self.conv5 = nn.Conv2d(512, out_channels, 4)
            self.conv6 = nn.Conv2d(out_channels, out_channels, 1)

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before the last convolution."""
        x = self.norm(x)  # [B, N, 256, 256]
        x = self.avgpool1(F.relu(self.conv1(x)))  # [B, 128, 126, 126]
        x = self.avgpool2(F.relu(self.conv2(x)))  # [B, 256, 61, 61]
        x = F.relu(self.conv3(x))  # [B, 256, 59, 59]
        if self.size == "medium":
            x = F.relu(self.conv4(x))
            x = F.relu(self.conv5(x))
        return x

    @property
    def last(self) -> nn.Conv2d:
        return self.conv4 if self.size == "small" else self.conv6

    def head(self, x: Tensor, channels: slice = slice(None)) -> Tensor:
        """The last convolution, for only the output ``channels`` asked for: training needs one
        half of the student's output per image, and computing only that halves its cost."""
        conv = self.last
        return F.conv2d(x, conv.weight[channels], conv.bias[channels], padding=conv.padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))  # [B, 384, 56, 56]


class AutoEncoder(nn.Module):
    """anomalib's EfficientAD autoencoder (enconv1..6, deconv1..8) with N input channels.

    anomalib sizes the decoder's bilinear upsampling ladder from the image size; here it is derived
    from the output grid instead (doubling up to twice the grid, e.g. 4..128 for a 64 grid, as
    anomalib's ladder at 256 px), so any teacher grid works. Every k4/pad2 deconv adds one pixel,
    hence the "- 1" sizes. Shapes below are for 256 px and a 64 grid.
    """

    def __init__(
        self, in_channels: int, out_channels: int = 384, out_size: tuple[int, int] = (64, 64)
    ) -> None:
        super().__init__()
        self.norm = ImageNetNorm(rgb_sources(in_channels))
        self.encoder = nn.ModuleDict(
            {
                "enconv1": nn.Conv2d(in_channels, 32, 4, 2, 1),
                "enconv2": nn.Conv2d(32, 32, 4, 2, 1),
                "enconv3": nn.Conv2d(32, 64, 4, 2, 1),
                "enconv4": nn.Conv2d(64, 64, 4, 2, 1),
                "enconv5": nn.Conv2d(64, 64, 4, 2, 1),
                "enconv6": nn.Conv2d(64, 64, 8, 1, 0),
            }
        )
        self.decoder = nn.ModuleDict(
            {f"deconv{i}": nn.Conv2d(64, 64, 4, 1, 2) for i in range(1, 7)}
            | {
                "deconv7": nn.Conv2d(64, 64, 3, 1, 1),
                "deconv8": nn.Conv2d(64, out_channels, 3, 1, 1),
            }
        )
        self.out_size = tuple(out_size)
        self.ladder = [  # (3, 3), (7, 7), (15, 15), (31, 31), (63, 63), (127, 127)
            tuple(max(math.ceil(2 * g / 2**k) - 1, 1) for g in self.out_size)
            for k in range(5, -1, -1)
        ]

    def forward(self, x: Tensor, dropout: Sequence[torch.Generator] | None = None) -> Tensor:
        """``dropout``: one generator per image for its dropout masks (training), so that an
        image's masks do not depend on which batch, or which process, it is computed in."""
        enc, dec = self.encoder, self.decoder
        x = self.norm(x)  # [B, N, 256, 256]
        x = F.relu(enc["enconv1"](x))  # [B, 32, 128, 128]
        x = F.relu(enc["enconv2"](x))  # [B, 32, 64, 64]
        x = F.relu(enc["enconv3"](x))  # [B, 64, 32, 32]
        x = F.relu(enc["enconv4"](x))  # [B, 64, 16, 16]
        x = F.relu(enc["enconv5"](x))  # [B, 64, 8, 8]
        if min(x.shape[-2:]) < 8:  # inputs under 256 px: give the 8x8 bottleneck kernel room
            x = F.interpolate(x, size=tuple(max(s, 8) for s in x.shape[-2:]), mode="bilinear")
        x = enc["enconv6"](x)  # [B, 64, 1, 1]: the bottleneck
        for i, size in enumerate(self.ladder, start=1):  # up to [B, 64, 128, 128]
            x = F.interpolate(x, size=size, mode="bilinear")  # [B, 64, 3, 3] ... [127, 127]
            x = F.relu(dec[f"deconv{i}"](x))  # k4/pad2: one pixel more, [4, 4] ... [128, 128]
            x = self._dropout(x, dropout)
        x = F.interpolate(x, size=self.out_size, mode="bilinear")  # [B, 64, 64, 64]
        x = F.relu(dec["deconv7"](x))  # [B, 64, 64, 64]
        return dec["deconv8"](x)  # [B, 384, 64, 64]

    def _dropout(self, x: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
        if not self.training or generators is None:
            return F.dropout(x, p=DROPOUT, training=self.training)
        keep = torch.stack(
            [
                torch.empty(x.shape[1:], device=x.device).bernoulli_(1 - DROPOUT, generator=g)
                for g in generators
            ]
        )
        return x * (keep / (1 - DROPOUT)).to(x.dtype)


def hard_loss(distance: Tensor) -> Tensor:
    """The paper's hard-feature loss: the mean of the elements at or above the 0.999 quantile."""
    return distance[distance >= quantile(distance, HARD_QUANTILE)].mean()


def channel_stats(features: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std [1, C, 1, 1] of feature maps [B, C, h, w] over all positions.

    Each batch is reduced on its device in float32 and the partial results are merged in float64
    (Chan et al.), which is stable for millions of positions and needs a single pass.
    """
    count, mean, m2 = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for feats in features:
        y = feats.float()
        n = y.numel() // y.shape[1]
        batch_mean = y.mean(dim=(0, 2, 3))
        batch_m2 = (y - batch_mean.view(1, -1, 1, 1)).pow(2).sum(dim=(0, 2, 3))
        batch_mean, batch_m2 = batch_mean.cpu().double(), batch_m2.cpu().double()
        delta = batch_mean - mean
        mean = mean + delta * n / (count + n)
        m2 = m2 + batch_m2 + delta.pow(2) * count * n / (count + n)
        count += n
    if count == 0:
        raise SpecadError("no images to compute feature statistics from")
    std = (m2 / count).sqrt().clamp_min(1e-6)
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def normalised_stack(features: list[Tensor], mean: Tensor, std: Tensor) -> Tensor:
    """``cat((f - mean) / std for f in features)`` on ``mean``'s device, emptying ``features``.

    The training cache of teacher features can be gigabytes on a real dataset; a plain ``cat``
    holds the raw list and the result at once, twice that.
    """
    rows = sum(len(f) for f in features)
    dtype = torch.promote_types(features[0].dtype, mean.dtype)
    out = torch.empty((rows, *features[0].shape[1:]), dtype=dtype, device=mean.device)
    start = 0
    while features:
        f = features.pop(0)  # freed once copied
        out[start : start + len(f)] = (f.to(out.device) - mean) / std
        start += len(f)
    return out


def _probe_grid(teacher: nn.Module, in_channels: int, size: tuple[int, int]) -> torch.Size:
    """Shape [C, h, w] of the teacher's output for one image, from a forward on the ``meta``
    device: shapes only, no memory (a real forward at a large size takes gigabytes before any
    check could refuse it)."""
    param = next(teacher.parameters(), None)
    dtype = param.dtype if param is not None else None
    with torch.no_grad():
        shadow = copy.deepcopy(teacher).to("meta")
        return shadow(torch.zeros(1, in_channels, *size, device="meta", dtype=dtype)).shape[1:]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class EfficientAD(nn.Module):
    """Teacher, student and autoencoder of EfficientAD, on the teacher's feature grid.

    The teacher is any frozen module mapping [B, N, H, W] to [B, C, h, w]; its channels C and grid
    (h, w) are measured by a dummy forward. A second forward at +64 px measures its stride, from
    which the border lost to unpadded convolutions is derived (4 cells for an unpadded PDN, as
    anomalib's pad_maps; 0 for "same"-padded networks); anomaly maps are padded back by it.
    Until fitted, teacher_mean/std and the map quantiles are the identity (0/1 and 0/0.1).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int | tuple[int, int],
        teacher: nn.Module,
        size: ModelSize = "small",
        padding: bool = False,
        ae_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size)
        self.ae_weight = ae_weight  # the paper's 0.5: both maps count equally
        self.teacher = teacher.eval().requires_grad_(False)
        channels, *grid = _probe_grid(teacher, in_channels, self.image_size)
        _, *grid_far = _probe_grid(teacher, in_channels, tuple(s + 64 for s in self.image_size))
        self.teacher_channels = channels
        self.grid = (grid[0], grid[1])
        # The border each side, in grid cells, that unpadded convolutions cost. 64 more pixels
        # give far - g more cells, so one cell is 64 / (far - g) px and a full grid would have
        # size * (far - g) / 64 cells. Unpadded PDN at 256 px: g = 56, far (at 320 px) = 72,
        # 4 px per cell, 64 cells for 56: a border of (64 - 56) / 2 = 4 cells.
        self.map_border = tuple(
            max(0, round((size * (far - g) / 64 - g) / 2))
            for size, g, far in zip(self.image_size, grid, grid_far, strict=True)
        )
        self.student = PDN(in_channels, 2 * channels, size, padding)
        self.autoencoder = AutoEncoder(in_channels, channels, self.grid)
        self.register_buffer("teacher_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, channels, 1, 1))
        # 0.9 and 0.995 quantiles of each raw map on val/good: p90 maps to 0, p995 to 0.1
        self.register_buffer("st_p90", torch.tensor(0.0))
        self.register_buffer("st_p995", torch.tensor(0.1))
        self.register_buffer("ae_p90", torch.tensor(0.0))
        self.register_buffer("ae_p995", torch.tensor(0.1))

    def train(self, mode: bool = True) -> EfficientAD:
        """Switch student/autoencoder mode; the frozen teacher stays in eval (e.g. BatchNorm)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> Tensor:
        return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def _on_grid(self, features: Tensor) -> Tensor:
        """Student features on the teacher grid (a non-PDN teacher may have a coarser one)."""
        if features.shape[-2:] == self.grid:
            return features
        return F.adaptive_avg_pool2d(features, self.grid)

    def maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw student-teacher and student-autoencoder maps [B, 1, h, w] on the teacher grid."""
        c = self.teacher_channels
        student = self._on_grid(self.student(x))
        map_st = (self.teacher_features(x) - student[:, :c]).pow(2).mean(dim=1, keepdim=True)
        map_ae = (self.autoencoder(x) - student[:, c:]).pow(2).mean(dim=1, keepdim=True)
        return map_st, map_ae

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Combined, quantile-normalised anomaly map [B, 1, H, W] at the input size."""
        map_st, map_ae = self.maps(x)  # [B, 1, 56, 56] each
        map_st = normalise(map_st, self.st_p90, self.st_p995)
        map_ae = normalise(map_ae, self.ae_p90, self.ae_p995)
        bh, bw = self.map_border
        combined = (1 - self.ae_weight) * map_st + self.ae_weight * map_ae
        combined = F.pad(combined, (bw, bw, bh, bh))
        return F.interpolate(combined, size=x.shape[-2:], mode="bilinear")

    forward = anomaly_map

    def loss(
        self,
        x: Tensor,
        x_aug: Tensor,
        penalty: Tensor | None = None,
        teacher_x: Tensor | None = None,
        dropout: Sequence[torch.Generator] | None = None,
        hard: Callable[[Tensor], Tensor] = hard_loss,
    ) -> dict[str, Tensor]:
        """The paper's training losses; "total" is what to backpropagate.

        hard: student-teacher distance over its elements at or above the 0.999 quantile (exact,
        see `quantile`); penalty: mean squared student output on out-of-distribution images
        (ImageNet in the paper), if given; ae: autoencoder vs teacher on x_aug; stae: student's
        second half vs autoencoder on x_aug. Each term needs only one half of the student's
        output, so each image computes only that half. ``teacher_x`` is the normalised teacher
        output on x when the caller has it cached. Losses are computed in float32, so that
        bf16 autocast only touches the convolutions. ``dropout`` (one generator per image) and
        ``hard`` let data-parallel training (`specad.models.efficientad.ddp`) reproduce a
        one-process step.
        """
        c, b = self.teacher_channels, x.shape[0]
        if teacher_x is None:
            teacher_x = self.teacher_features(x)
        teacher, teacher_aug = teacher_x.float(), self.teacher_features(x_aug).float()
        inputs = [x, x_aug] if penalty is None else [x, x_aug, penalty]
        trunks = self.student.trunk(torch.cat(inputs)).split(b)  # one pass: faster than three
        student = self._on_grid(self.student.head(trunks[0], slice(None, c))).float()
        student_aug = self._on_grid(self.student.head(trunks[1], slice(c, None))).float()
        distance = (teacher - student).pow(2)
        ae = self.autoencoder(x_aug, dropout).float()
        losses = {
            "hard": hard(distance),
            "ae": (teacher_aug - ae).pow(2).mean(),
            "stae": (ae - student_aug).pow(2).mean(),
        }
        if penalty is not None:
            losses["penalty"] = self.student.head(trunks[2], slice(None, c)).float().pow(2).mean()
        losses["total"] = torch.stack(list(losses.values())).sum()
        return losses

    @torch.no_grad()
    def fit_teacher_stats(self, batches: Iterable[Tensor], keep: bool = False) -> Tensor | None:
        """Channel mean/std of the teacher's features over the training images.

        With ``keep`` the features are also returned, normalised: training caches them, since
        the frozen teacher gives the same output on an un-augmented image at every step.
        """
        device = self.teacher_mean.device
        features = (self.teacher(x.to(device)) for x in batches)
        return self.adopt_teacher_stats(list(features) if keep else features, keep)

    @torch.no_grad()
    def adopt_teacher_stats(self, features: Iterable[Tensor], keep: bool) -> Tensor | None:
        """``fit_teacher_stats`` from teacher outputs computed elsewhere (by DDP ranks).

        With ``keep``, ``features`` must be a list: it is emptied as it is normalised, so the
        cache never exists twice.
        """
        mean, std = channel_stats(features)
        self.teacher_mean.copy_(mean)
        self.teacher_std.copy_(std)
        if not keep:
            return None
        if not isinstance(features, list):
            raise TypeError("keep=True needs the teacher outputs as a list")
        return normalised_stack(features, self.teacher_mean, self.teacher_std)

    @torch.no_grad()
    def fit_quantiles(self, batches: Iterable[Tensor]) -> None:
        """Fit the 0.9 / 0.995 quantiles of both raw maps over validation (good) images.

        As in the paper's code the quantiles are taken over all grid cells of the raw maps
        (anomalib takes them on the padded, upsampled maps), without any size limit.
        """
        was_training = self.training
        self.eval()
        try:
            pairs = [self.maps(x.to(self.teacher_mean.device)) for x in batches]
        finally:
            self.train(was_training)
        if not pairs:
            raise SpecadError("no validation images to fit the map quantiles on")
        for name, index in (("st", 0), ("ae", 1)):
            low, high = normal_quantiles(pair[index] for pair in pairs)
            getattr(self, f"{name}_p90").fill_(low)
            getattr(self, f"{name}_p995").fill_(high)
