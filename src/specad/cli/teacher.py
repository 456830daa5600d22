"""``specad teacher``: adapting, distilling and describing teacher networks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specad.cli.app import (
    Device,
    app,
    fail,
    out,
)

teacher_app = typer.Typer(no_args_is_help=True, help="Teacher networks: adapt, distill, info.")
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("adapt")
def teacher_adapt(
    source: Annotated[Path, typer.Argument(help="RGB teacher (.pth or .safetensors).")],
    channels: Annotated[int, typer.Option(help="Number of input channels N.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors.")],
    mapping: Annotated[str, typer.Option(help="repeat or wavelength.")] = "repeat",
    wavelengths: Annotated[
        str | None, typer.Option(help="Comma-separated band wavelengths (nm).")
    ] = None,
) -> None:
    """Widen an RGB teacher's first convolution to N channels (duplicate-and-scale)."""
    from specad.models.teachers import adapt_teacher_file

    wl = [float(w) for w in wavelengths.split(",")] if wavelengths else None
    if out_file.exists():
        fail(f"{out_file}: exists; choose another name")
    out.print(str(adapt_teacher_file(source, out_file, channels, mapping, wl)))


@teacher_app.command("distill")
def teacher_distill(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PDN teacher .safetensors.")],
    channels: Annotated[int, typer.Option(help="Number of input channels N.")],
    extractor: Annotated[
        str, typer.Option(help="efficientnet-lite0, or module:function(in_channels) -> nn.Module.")
    ] = "efficientnet-lite0",
    images: Annotated[
        Path | None, typer.Option(help="Folder of natural images (default: scikit-image's).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Total steps (the paper: 60,000 at batch 16).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 8,
    image_size: Annotated[int, typer.Option(help="Crop size in pixels.")] = 256,
    size: Annotated[str, typer.Option(help="PDN size: small or medium.")] = "small",
    resume: Annotated[bool, typer.Option(help="Continue from OUT's checkpoint.")] = False,
    device: Device = "auto",
) -> None:
    """Distil a feature extractor into a PDN teacher (slow on a CPU; a GPU is the place for it)."""
    import torch

    from specad.models.efficientad import PDN
    from specad.models.teachers import EfficientNetLite0Teacher, distill
    from specad.penalty import PenaltySet
    from specad.runtime import pick_device

    if out_file.exists() and not resume:
        fail(f"{out_file}: exists; use --resume to continue it or choose another name")
    dev = pick_device(device)
    if extractor == "efficientnet-lite0":
        net = EfficientNetLite0Teacher(channels)
    else:
        net = _import_callable(extractor)(channels)
    net = net.to(dev)
    x = PenaltySet(channels, image_size, folder=images).images()
    with torch.no_grad():
        out_channels = net(x[:1].to(dev)).shape[1]
    pdn = PDN(channels, out_channels=out_channels, size=size).to(dev)
    losses = distill(pdn, net, x, steps, out_file, batch_size=batch_size, resume=resume)
    if losses:
        out.print(f"last loss {losses[-1]:.4f} after {len(losses)} steps")
    out.print(str(out_file), markup=False, highlight=False, soft_wrap=True)


def _import_callable(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        fail(f"cannot import extractor '{spec}' ({e}); expected module:function")


@teacher_app.command("info")
def teacher_info_cmd() -> None:
    """Each teacher source with its provenance (package, version, sha256, licence)."""
    from specad.models.teachers import teacher_info

    for row in teacher_info():
        out.print(f"[bold]{row['name']}[/bold]")
        for key, value in row.items():
            if key != "name" and value is not None:
                out.print(f"  {key}: {value}", markup=False, highlight=False, soft_wrap=True)
