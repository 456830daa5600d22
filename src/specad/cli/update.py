"""``specad update``: a saved model with confirmed-normal cubes added, written as a new model
(`specad.update`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specad.cli.app import Device, Force, app, out


@app.command()
def update(
    model: Annotated[Path, typer.Argument(help="The model folder (or its model file); kept.")],
    cubes: Annotated[list[Path], typer.Argument(help="Confirmed-normal cubes, or folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the new model.")],
    val: Annotated[
        Path | None,
        typer.Option(
            help="Normal cubes the threshold is set on, with the added ones: a dataset (its "
            "val/good) or a folder of cubes (default: the model's stored val scores)."
        ),
    ] = None,
    coreset_size: Annotated[
        int | None,
        typer.Option(min=1, help="knn: the bank's size (default: the model's coreset_size)."),
    ] = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Add cubes confirmed normal to a knn or RX model and set its threshold again."""
    from specad.update import update_model

    path = update_model(
        model, cubes, out_dir, coreset_size=coreset_size, val=val, device=device, force=force
    )
    out.print(str(path), markup=False, highlight=False, soft_wrap=True)
