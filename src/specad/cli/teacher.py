"""``specad teacher``: adapting, distilling and describing teacher networks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from specad.bounds import MAX_BATCH_SIZE, MAX_CHANNELS, MAX_IMAGE_SIZE
from specad.cli.app import (
    Device,
    app,
    fail,
    finite,
    out,
)
from specad.errors import SpecadError

teacher_app = typer.Typer(no_args_is_help=True, help="Teacher networks: adapt, distill, info.")
app.add_typer(teacher_app, name="teacher")


def _wavelengths(text: str) -> list[float]:
    """``--wavelengths`` as finite numbers of nanometres, or one line saying which is not."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise SpecadError(f"--wavelengths: {item.strip()[:20]!r} is not a wavelength in nm")
        values.append(value)
    return values


@teacher_app.command("adapt")
def teacher_adapt(
    source: Annotated[Path, typer.Argument(help="RGB teacher (.pth or .safetensors).")],
    channels: Annotated[
        int, typer.Option(min=1, max=MAX_CHANNELS, help="Number of input channels N.")
    ],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors.")],
    mapping: Annotated[str, typer.Option(help="repeat or wavelength.")] = "repeat",
    wavelengths: Annotated[
        str | None, typer.Option(help="Comma-separated band wavelengths (nm).")
    ] = None,
) -> None:
    """Widen an RGB teacher's first convolution to N channels (duplicate-and-scale)."""
    from specad.models.efficientad.teachers import adapt_teacher_file

    wl = _wavelengths(wavelengths) if wavelengths else None
    if out_file.exists():
        fail(f"{out_file}: exists; choose another name")
    out.print(str(adapt_teacher_file(source, out_file, channels, mapping, wl)))


@teacher_app.command("distill")
def teacher_distill(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PDN teacher .safetensors.")],
    images: Annotated[
        list[Path] | None,
        typer.Option(help="Folder of photos, added to scikit-image's and scikit-learn's."),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, help="Total steps (the paper: 60,000 at batch 16).")
    ] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH_SIZE, help="Crops per step.")] = 8,
    image_size: Annotated[
        int, typer.Option(min=16, max=MAX_IMAGE_SIZE, help="Crop size in pixels.")
    ] = 128,
    lr: Annotated[
        float,
        typer.Option(min=0, callback=finite("--lr"), help="Initial learning rate (cosine to 0)."),
    ] = 1e-3,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's checkpoint.")] = False,
    device: Device = "auto",
) -> None:
    """Distil the EfficientNet-Lite0 teacher's features into an RGB PDN teacher (small).

    The file loads with model.teacher=pdn-file (adapted to N channels like any RGB teacher) and
    records how it was made (specad teacher info FILE). Slow on a CPU: a GPU is the place for it.
    """
    import sys

    from specad.models.efficientad.distill import distill_lite0_teacher
    from specad.runtime import pick_device

    if out_file.exists() and not resume:
        fail(f"{out_file}: exists; use --resume to continue it or choose another name")
    losses = distill_lite0_teacher(
        out_file,
        images or [],
        steps=steps,
        batch_size=batch_size,
        image_size=image_size,
        lr=lr,
        resume=resume,
        device=pick_device(device),
        command=" ".join(["specad", *sys.argv[1:]]),
    )
    if losses:
        out.print(f"last loss {losses[-1]:.4f} after {len(losses)} steps")
    out.print(str(out_file), markup=False, highlight=False, soft_wrap=True)


@teacher_app.command("info")
def teacher_info_cmd(
    teacher_file: Annotated[
        Path | None, typer.Argument(help="A distilled teacher file (default: every source).")
    ] = None,
) -> None:
    """Each teacher source with its provenance (package, data, schedule, sha256, licence)."""
    from specad.models.efficientad.teachers import distilled_info, teacher_info

    for row in teacher_info() if teacher_file is None else [distilled_info(teacher_file)]:
        out.print(f"[bold]{row['name']}[/bold]")
        for key, value in row.items():
            if key != "name" and value is not None:
                out.print(f"  {key}: {value}", markup=False, highlight=False, soft_wrap=True)
