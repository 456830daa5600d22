"""The ``specad`` command: a thin shell over the Python API.

Every command turns a :class:`~specad.errors.SpecadError` into one line on stderr and exit code 2,
so users never see a traceback for bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from specad.errors import SpecadError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Anomaly detection for multispectral and hyperspectral cubes with any number of channels.",
)
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(dataset_app, name="dataset")

out = Console()
err = Console(stderr=True)

Force = Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")]


def fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    preset: Annotated[str, typer.Option(help="tray6, tray-rgb or tray-hsi.")] = "tray6",
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


@dataset_app.command("check")
def dataset_check(root: Annotated[Path, typer.Argument(help="Dataset folder.")]) -> None:
    """Validate a dataset and print a summary; exit 2 if any problem is found."""
    from specad.data import check_dataset

    report = check_dataset(root)
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
    out.print(f"sizes (HxW): {', '.join(f'{h}x{w}' for h, w in report.sizes) or '-'}")
    out.print(f"stored dtype: {', '.join(report.dtypes) or '-'}")
    out.print(f"value range: {report.value_range[0]:.4g} .. {report.value_range[1]:.4g}")
    out.print(f"classes: {', '.join(f'{i}={n}' for i, n in sorted(report.classes.items()))}")
    if report.problems:
        for problem in report.problems:
            err.print(f"problem: {problem}", markup=False, highlight=False, soft_wrap=True)
        fail(f"{report.root}: {len(report.problems)} problem(s) found")
    out.print("[green]no problems found[/green]")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training YAML config.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key.sub=value.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    force: Force = False,
) -> None:
    """Train EfficientAD on a dataset's normal cubes; prints the model path last."""
    from specad.config import load_config
    from specad.train import train

    sets = list(overrides or []) + ([f"train.device={device}"] if device else [])
    cfg = load_config(config, sets)
    run = out_dir or Path("runs") / config.stem
    path = train(cfg, run, resume=resume, force=force)
    out.print(str(path), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, mapping user errors to one line and exit code 2."""
    try:
        app()
    except SpecadError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
