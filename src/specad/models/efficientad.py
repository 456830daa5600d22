"""EfficientAD (Batzner et al. 2023, arXiv 2303.14535) for inputs with any number of channels N.

Follows anomalib's torch model (layer names, losses, map normalisation), so anomalib's teacher
weights load unchanged once their first conv is widened (see ``teachers.py``). Departures from
anomalib are noted where they happen: exact quantiles instead of random subsampling, an
autoencoder whose upsampling ladder follows the teacher grid, and a teacher of any architecture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specad.errors import SpecadError

ModelSize = Literal["small", "medium"]
Mapping = Literal["repeat", "wavelength"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # R, G, B
IMAGENET_STD = (0.229, 0.224, 0.225)
PRIMARY_NM = (650.0, 550.0, 450.0)  # the wavelength each RGB channel stands for
VISIBLE_NM = (400.0, 700.0)


def _nearest_primary(nm: float) -> int:
    return min(range(3), key=lambda i: abs(PRIMARY_NM[i] - nm))


def rgb_sources(
    n_channels: int, mapping: Mapping = "repeat", wavelengths: Sequence[float] | None = None
) -> list[tuple[int, ...]]:
    """For each of N input channels, the RGB channels (0=R, 1=G, 2=B) it stands in for.

    ImageNet weights and statistics only know RGB, so every N-channel adaptation (first-conv
    weights, input normalisation) goes through this one correspondence.
    "repeat": channel j copies RGB channel j mod 3; for N < 3 channel j stands for every RGB
    channel i with i mod N == j. "wavelength": a visible band (400-700 nm) stands for the nearest
    primary (B 450, G 550, R 650 nm), any other band for all three.
    """
    if mapping == "repeat":
        if n_channels >= 3:
            return [(j % 3,) for j in range(n_channels)]
        return [tuple(i for i in range(3) if i % n_channels == j) for j in range(n_channels)]
    if mapping != "wavelength":
        raise SpecadError(f"unknown channel mapping {mapping!r}; use 'repeat' or 'wavelength'")
    if wavelengths is None or len(wavelengths) != n_channels:
        got = "none" if wavelengths is None else len(wavelengths)
        raise SpecadError(
            f"the 'wavelength' mapping needs {n_channels} band wavelengths, got {got}"
        )
    lo, hi = VISIBLE_NM
    return [(_nearest_primary(nm),) if lo <= nm <= hi else (0, 1, 2) for nm in wavelengths]


class ImageNetNorm(nn.Module):
    """ImageNet mean/std normalisation; each channel uses the mean statistics of its RGB sources.

    The buffers are not persistent so the wrapping network keeps anomalib's state-dict keys.
    """

    def __init__(self, sources: Sequence[Sequence[int]]) -> None:
        super().__init__()
        mean = [sum(IMAGENET_MEAN[i] for i in src) / len(src) for src in sources]
        std = [sum(IMAGENET_STD[i] for i in src) / len(src) for src in sources]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


# (width, kernel, padding when padding=True) per conv; width None is the network's output width.
_PDN_CONVS: dict[str, list[tuple[int | None, int, int]]] = {
    "small": [(128, 4, 3), (256, 4, 3), (256, 3, 1), (None, 4, 0)],
    "medium": [(256, 4, 3), (512, 4, 3), (512, 1, 0), (512, 3, 1), (None, 4, 0), (None, 1, 0)],
}


class PDN(nn.Module):
    """Patch description network (anomalib's PDN_S / PDN_M) with N input channels.

    Attribute names match anomalib (conv1..convK, avgpool1..2), so its teacher files load strictly.
    Without padding the output grid is smaller than stride 4 by a border (4 cells at 256 px).
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
        if size not in _PDN_CONVS:
            raise SpecadError(f"unknown PDN size {size!r}; use 'small' or 'medium'")
        self.norm = ImageNetNorm(rgb_sources(in_channels, mapping, wavelengths))
        self.avgpool1 = nn.AvgPool2d(2, stride=2, padding=int(padding))
        self.avgpool2 = nn.AvgPool2d(2, stride=2, padding=int(padding))
        self.layers: list[nn.Module] = []  # the forward order; modules are registered by setattr
        width_in = in_channels
        for i, (width, kernel, pad) in enumerate(_PDN_CONVS[size], start=1):
            width = width or out_channels
            conv = nn.Conv2d(width_in, width, kernel, padding=pad if padding else 0)
            setattr(self, f"conv{i}", conv)
            self.layers.append(conv)
            if i < len(_PDN_CONVS[size]):
                self.layers.append(nn.ReLU())
            if i <= 2:
                self.layers.append(getattr(self, f"avgpool{i}"))
            width_in = width

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before the last convolution."""
        x = self.norm(x)
        for layer in self.layers[:-1]:
            x = layer(x)
        return x

    def head(self, x: Tensor, channels: slice = slice(None)) -> Tensor:
        """The last convolution, for only the output ``channels`` asked for: training needs one
        half of the student's output per image, and computing only that halves its cost."""
        conv = self.layers[-1]
        return F.conv2d(x, conv.weight[channels], conv.bias[channels], padding=conv.padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


class AutoEncoder(nn.Module):
    """anomalib's EfficientAD autoencoder (enconv1..6, deconv1..8) with N input channels.

    anomalib sizes the decoder's bilinear upsampling ladder from the image size; here it is derived
    from the output grid instead (doubling up to twice the grid, e.g. 4..128 for a 64 grid, as
    anomalib's ladder at 256 px), so any teacher grid works. Every k4/pad2 deconv adds one pixel,
    hence the "- 1" sizes.
    """

    def __init__(
        self, in_channels: int, out_channels: int = 384, out_size: tuple[int, int] = (64, 64)
    ) -> None:
        super().__init__()
        self.norm = ImageNetNorm(rgb_sources(in_channels))
        widths = [(in_channels, 32), (32, 32), (32, 64), (64, 64), (64, 64)]
        self.encoder = nn.ModuleDict(
            {f"enconv{i}": nn.Conv2d(a, b, 4, 2, 1) for i, (a, b) in enumerate(widths, start=1)}
        )
        self.encoder["enconv6"] = nn.Conv2d(64, 64, 8, 1, 0)
        self.decoder = nn.ModuleDict(
            {f"deconv{i}": nn.Conv2d(64, 64, 4, 1, 2) for i in range(1, 7)}
        )
        self.decoder["deconv7"] = nn.Conv2d(64, 64, 3, 1, 1)
        self.decoder["deconv8"] = nn.Conv2d(64, out_channels, 3, 1, 1)
        self.out_size = tuple(out_size)
        self.ladder = [
            tuple(max(math.ceil(2 * g / 2**k) - 1, 1) for g in self.out_size)
            for k in range(5, -1, -1)
        ]

    def forward(self, x: Tensor) -> Tensor:
        encoder = list(self.encoder.values())
        x = self.norm(x)
        for conv in encoder[:-1]:
            x = F.relu(conv(x))
        if min(x.shape[-2:]) < 8:  # inputs under 256 px: give the 8x8 bottleneck kernel room
            x = F.interpolate(x, size=tuple(max(s, 8) for s in x.shape[-2:]), mode="bilinear")
        x = encoder[-1](x)
        decoder = list(self.decoder.values())
        for size, conv in zip(self.ladder, decoder[:6], strict=True):
            x = F.interpolate(x, size=size, mode="bilinear")
            x = F.dropout(F.relu(conv(x)), p=0.2, training=self.training)
        x = F.interpolate(x, size=self.out_size, mode="bilinear")
        return decoder[7](F.relu(decoder[6](x)))


def quantile(values: Tensor, q: float) -> Tensor:
    """``torch.quantile(values.flatten(), q)`` (linear interpolation), exact at any size.

    ``torch.quantile`` refuses more than 2**24 elements; anomalib subsamples randomly, which makes
    the result depend on the RNG. Two ``kthvalue`` selections are exact, O(n) and deterministic.
    """
    flat = values.detach().flatten()
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    below = flat.kthvalue(lo + 1).values
    above = flat.kthvalue(min(lo + 2, flat.numel())).values
    return below + (pos - lo) * (above - below)


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


def ae_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
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


def _probe_grid(teacher: nn.Module, in_channels: int, size: tuple[int, int]) -> torch.Size:
    """Shape [C, h, w] of the teacher's output for one image, from a dummy forward."""
    param = next(teacher.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (None, None)
    with torch.no_grad():
        return teacher(torch.zeros(1, in_channels, *size, device=device, dtype=dtype)).shape[1:]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class EfficientAD(nn.Module):
    """Teacher, student and autoencoder of EfficientAD, on the teacher's feature grid.

    The teacher is any frozen module mapping [B, N, H, W] to [B, C, h, w]; its channels C and grid
    (h, w) are measured by a dummy forward. A second forward at +64 px measures its stride, from
    which the border lost to unpadded convolutions is derived (4 cells for an unpadded PDN, as
    anomalib's pad_maps; 0 for "same"-padded networks); anomaly maps are padded back by it.
    Until fitted, teacher_mean/std and the quantiles are the identity (0/1 and 0/0.1).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int | tuple[int, int],
        teacher: nn.Module,
        size: ModelSize = "small",
        padding: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size)
        self.teacher = teacher.eval().requires_grad_(False)
        channels, *grid = _probe_grid(teacher, in_channels, self.image_size)
        _, *grid_far = _probe_grid(teacher, in_channels, tuple(s + 64 for s in self.image_size))
        self.teacher_channels = channels
        self.grid = (grid[0], grid[1])
        self.map_border = tuple(
            max(0, round((size * (far - g) / 64 - g) / 2))
            for size, g, far in zip(self.image_size, grid, grid_far, strict=True)
        )
        self.student = PDN(in_channels, 2 * channels, size, padding)
        self.autoencoder = AutoEncoder(in_channels, channels, self.grid)
        self.register_buffer("teacher_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, channels, 1, 1))
        self.register_buffer("q_st_a", torch.tensor(0.0))
        self.register_buffer("q_st_b", torch.tensor(0.1))
        self.register_buffer("q_ae_a", torch.tensor(0.0))
        self.register_buffer("q_ae_b", torch.tensor(0.1))

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
        map_st, map_ae = self.maps(x)
        map_st = 0.1 * (map_st - self.q_st_a) / (self.q_st_b - self.q_st_a)
        map_ae = 0.1 * (map_ae - self.q_ae_a) / (self.q_ae_b - self.q_ae_a)
        bh, bw = self.map_border
        combined = F.pad(0.5 * map_st + 0.5 * map_ae, (bw, bw, bh, bh))
        return F.interpolate(combined, size=x.shape[-2:], mode="bilinear")

    forward = anomaly_map

    def loss(
        self,
        x: Tensor,
        x_aug: Tensor,
        penalty: Tensor | None = None,
        teacher_x: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The paper's training losses; "total" is what to backpropagate.

        hard: student-teacher distance over its elements at or above the 0.999 quantile (exact,
        see `quantile`); penalty: mean squared student output on out-of-distribution images
        (ImageNet in the paper), if given; ae: autoencoder vs teacher on x_aug; stae: student's
        second half vs autoencoder on x_aug. Each term needs only one half of the student's
        output, so each image computes only that half. ``teacher_x`` is the normalised teacher
        output on x when the caller has it cached. Losses are computed in float32, so that
        bf16 autocast only touches the convolutions.
        """
        c, b = self.teacher_channels, x.shape[0]
        if teacher_x is None:
            teacher_x = self.teacher_features(x)
        teacher, teacher_aug = teacher_x.float(), self.teacher_features(x_aug).float()
        inputs = [x, x_aug] if penalty is None else [x, x_aug, penalty]
        trunks = self.student.trunk(torch.cat(inputs)).split(b)  # one pass: ~5% faster
        student = self._on_grid(self.student.head(trunks[0], slice(None, c))).float()
        student_aug = self._on_grid(self.student.head(trunks[1], slice(c, None))).float()
        distance = (teacher - student).pow(2)
        ae = self.autoencoder(x_aug).float()
        losses = {
            "hard": distance[distance >= quantile(distance, 0.999)].mean(),
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
        if keep:
            features = list(features)
        mean, std = channel_stats(features)
        self.teacher_mean.copy_(mean)
        self.teacher_std.copy_(std)
        if not keep:
            return None
        return torch.cat([(f - self.teacher_mean) / self.teacher_std for f in features])

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
            values = torch.cat([pair[index] for pair in pairs])
            getattr(self, f"q_{name}_a").copy_(quantile(values, 0.9))
            getattr(self, f"q_{name}_b").copy_(quantile(values, 0.995))
