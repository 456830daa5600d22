"""The ``specad`` app, its shared options, and the entry point that keeps errors to one line.

Every command turns a :class:`~specad.errors.SpecadError` into one line on stderr and exit code 2,
so users never see a traceback for bad input.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

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


def fmt_number(value: float | None) -> str:
    """A metric as the tables show it: four decimals, or '-' where it is undefined."""
    return "-" if value is None else f"{value:.4f}"


def fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


Device = Annotated[str, typer.Option(help="auto (CUDA, then CPU), cpu, cuda, cuda:1 ...")]
Variable = Annotated[
    str | None, typer.Option(help="Array to read from .mat/.npz files (default: largest 3-D).")
]
Layout = Annotated[
    str | None,
    typer.Option(
        help="Stored axis order of plain arrays: hwc, chw, whc, cwh, hcw or wch (default: the "
        "format's convention; guessed, with a note, for .npy/.npz and bare TIFF arrays)."
    ),
]
Runtime = Annotated[
    str,
    typer.Option(
        help="auto (fastest exact one available), torch, bf16, onnx, or int8 (fastest on CPUs; "
        "approximate maps)."
    ),
]

Scheduler = Annotated[
    str | None,
    typer.Option(help="Score on this Dask scheduler (tcp://HOST:8786); needs the dask extra."),
]
Workers = Annotated[
    int | None,
    typer.Option(min=1, help="Score on a local Dask cluster of N processes; needs the dask extra."),
]


def _note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Library warnings (e.g. a guessed cube layout) as one ``note:`` line, not a traceback."""
    err.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, mapping user errors to one line and exit code 2.

    An ``OSError`` that escapes (disk full, permissions) is the environment, not a bug: it is
    one line naming the file as well.
    """
    import warnings

    warnings.showwarning = _note
    try:
        app()
    except SpecadError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"error: {where}{e.strerror or e}", markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
