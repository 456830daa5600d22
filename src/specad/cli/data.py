"""``specad synth`` and ``specad dataset``: making and checking datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from specad.cli.app import (
    Axes,
    Force,
    NamesInHelp,
    app,
    dataset_app,
    err,
    fail,
    out,
)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    preset: Annotated[
        str, typer.Option(help="tray6, tray-rgb, tray-hsi, tray6-hard or tray-rgb-hard.")
    ] = "tray6",
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    difficulty: Annotated[float | None, typer.Option(help="1 = default; higher is harder.")] = None,
    force: Force = False,
) -> None:
    """Write a synthetic tray dataset (sawdust, RGB + SWIR) in specad's layout."""
    from specad.synth import synthesize

    overrides = {k: v for k, v in {"size": size, "difficulty": difficulty}.items() if v is not None}
    path = synthesize(out_dir, preset=preset, seed=seed, force=force, **overrides)
    out.print(f"wrote {path}")


@dataset_app.command("import", cls=NamesInHelp)
def dataset_import(
    source: Annotated[Path, typer.Argument(help="Dataset folder in any layout specad reads.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    layout: Annotated[str, typer.Option(help="The source's layout: {layouts}.")] = "auto",
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Share of the training normals kept for val/good, where the layout "
            "has no validation split (mvtec, btad, visa, kolektor)."
        ),
    ] = 0.1,
    force: Force = False,
) -> None:
    """Copy a dataset into specad's layout: only when a copy is wanted, since every command
    reads the recognised layouts where they lie. Images keep their stored type (8-bit stays
    8-bit, as TIFF), masks become class ids; the source is checked whole before any image is
    written, and the copy appears only when complete."""
    from specad.data.importing import import_dataset

    path = import_dataset(
        source, out_dir, layout, val_fraction=val_fraction, force=force, progress=True
    )
    images = sum(1 for _ in path.glob("*/*/*.tif"))
    out.print(f"wrote {path} ({images} images)", soft_wrap=True)


@dataset_app.command("check", cls=NamesInHelp)
def dataset_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    axes: Axes = None,
    layout: Annotated[
        str, typer.Option(help="The layout: {layouts} (auto: from the folders).")
    ] = "auto",
) -> None:
    """Name the dataset's layout, check it whole (structure, then every cube and mask) and
    print a summary; exit 2 if any problem is found, each on its own line.

    Layouts read where they lie: {layouts}."""
    from specad.data import DATASET_LAYOUTS
    from specad.data.check import check_dataset

    report = check_dataset(root, axes, layout=layout)
    summary = DATASET_LAYOUTS[report.layout].summary
    out.print(f"layout: {report.layout} ({summary})", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"{report.root} ({report.layout} layout)")
    table.add_column("split")
    table.add_column("class")
    table.add_column("cubes", justify="right")
    for (split, label), n in sorted(report.counts.items()):
        table.add_row(split, label, str(n))
    out.print(table)
    out.print(f"channels: {', '.join(map(str, report.channels)) or '-'}")
    out.print(f"bands: {', '.join(report.bands) or '-'}")
    wl = ", ".join(f"{w:g}" for w in report.wavelengths) if report.wavelengths else "unknown"
    out.print(f"wavelengths (nm): {wl}")
    out.print(f"sizes (HxW): {report.size_summary()}")
    out.print(f"stored dtype: {', '.join(report.dtypes) or '-'}")
    out.print(f"value range: {report.value_range[0]:.4g} .. {report.value_range[1]:.4g}")
    out.print(f"classes: {', '.join(f'{i}={n}' for i, n in sorted(report.classes.items()))}")
    if report.problems:
        for problem in report.problems:
            err.print(f"problem: {problem}", markup=False, highlight=False, soft_wrap=True)
        fail(f"{report.root}: {len(report.problems)} problem(s) found")
    out.print("[green]no problems found[/green]")
