"""The ``specad`` app, its shared options, and the entry point that keeps errors to one line.

Every command turns a :class:`~specad.errors.SpecadError` into one line on stderr and exit code 2,
so users never see a traceback for bad input.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand

from specad.errors import SpecadError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Anomaly detection for multispectral and hyperspectral cubes with any number of channels.",
)
dataset_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(dataset_app, name="dataset")


@app.callback()
def _threads(
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Compute threads (default: the cores this process may use that other programs "
            "leave idle; OMP_NUM_THREADS, where set).",
        ),
    ] = None,
) -> None:
    """Anomaly detection for multispectral and hyperspectral cubes with any number of channels."""
    from specad.threads import set_threads

    set_threads(threads)


out = Console()
err = Console(stderr=True)


def _name_lists() -> dict[str, str]:
    """What each ``{placeholder}`` in a help text stands for, read from the registries."""
    from specad.data.importing import LAYOUT_CHOICES
    from specad.io import AXIS_ORDERS
    from specad.models.registry import fit_on_dataset_names
    from specad.models.scene import SCENE_DETECTORS

    return {
        "{fit_on_dataset}": ", ".join(fit_on_dataset_names()),
        "{scene_detectors}": ", ".join(SCENE_DETECTORS),
        "{axis_orders}": ", ".join(AXIS_ORDERS),
        "{layouts}": ", ".join(LAYOUT_CHOICES),
    }


class NamesInHelp(TyperCommand):
    """A command whose help texts list detectors (and axis orders) from the registries, filled
    in only when help is shown: the registries import torch, too slow for every command, and a
    list written by hand goes stale when a detector is added."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        names = _name_lists()
        holders = [self, *self.params]
        templates = [getattr(h, "help", None) for h in holders]
        for holder, text in zip(holders, templates, strict=True):
            for placeholder, value in names.items():
                text = text and text.replace(placeholder, value)
            holder.help = text  # type: ignore[union-attr]
        try:
            super().format_help(ctx, formatter)
        finally:  # the templates again: the registries may change within one process (tests)
            for holder, text in zip(holders, templates, strict=True):
                holder.help = text  # type: ignore[union-attr]


Force = Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")]


def fmt_number(value: float | None) -> str:
    """A metric as the tables show it: four decimals, or '-' where it is undefined."""
    return "-" if value is None else f"{value:.4f}"


def fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def given(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A typer callback running ``check`` on an option's value, when one is given, as the command
    line is parsed: a bad value is refused (one line) before any work starts."""
    return lambda value: None if value is None else check(value)


def finite(option: str) -> Callable[[Any], Any]:
    """A typer callback refusing NaN and infinities for a float ``option`` (click lets them
    through its number type and its ranges)."""

    def check(value: float) -> float:
        if not math.isfinite(value):
            raise SpecadError(f"{option} must be a finite number, got {value}")
        return value

    return given(check)


def _device(name: str) -> str:
    """``name`` if it names a device this machine has (`specad.runtime.pick_device`)."""
    from specad.runtime import pick_device

    pick_device(name)
    return name


def _scheduler(address: str) -> str:
    """``address`` where a Dask scheduler answers (`specad.distributed.probe_scheduler`)."""
    from specad.distributed import probe_scheduler, scheduler_address

    address = scheduler_address(address)
    probe_scheduler(address)
    return address


def _workers(count: int) -> int:
    from specad.distributed import check_workers

    return check_workers(count)


Device = Annotated[
    str,
    typer.Option(help="auto (CUDA, then CPU), cpu, cuda, cuda:1 ...", callback=given(_device)),
]
Variable = Annotated[
    str | None, typer.Option(help="Array to read from .mat/.npz files (default: largest 3-D).")
]
Axes = Annotated[
    str | None,
    typer.Option(
        help="Stored axis order of plain arrays: {axis_orders} (default: the format's "
        "convention; guessed, with a note, for .npy/.npz and bare TIFF arrays)."
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
    typer.Option(
        help="Score on this Dask scheduler (tcp://HOST:8786); needs the dask extra.",
        callback=given(_scheduler),
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        help="Score on a local Dask cluster of N processes (at most one per core); needs the "
        "dask extra.",
        callback=given(_workers),
    ),
]


def _note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Library warnings (e.g. a guessed cube layout) as one ``note:`` line, not a traceback."""
    err.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)


_ClickError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""Click's base error (from the click typer uses: recent typers carry their own copy)."""


def main() -> None:
    """Entry point: run the app, mapping user errors to one line and exit code 2.

    An ``OSError`` that escapes (disk full, permissions) is the environment, not a bug: it is
    one line naming the file as well. A command line click refuses (an unknown option, a value
    of the wrong type) is one line too, and so is Ctrl-C: ``interrupted``, exit code 130.
    """
    import warnings

    warnings.showwarning = _note
    try:
        code = app(standalone_mode=False)
    except SpecadError as e:
        summary, *problems = e.lines
        _fail_line(summary, 2, problems)
    except _ClickError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is the answer
            sys.exit(2)
        context = getattr(e, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        _fail_line(f"{e.format_message()}{hint}", e.exit_code)
    except typer.Abort:
        _fail_line("aborted", 1)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _fail_line(f"{where}{e.strerror or e}", 2)
    except KeyboardInterrupt:  # before typer's handling starts, or after it ends
        code = 130
    if code == 130:  # typer's exit code for KeyboardInterrupt; no command uses it otherwise
        err.print("interrupted", markup=False, highlight=False)
    sys.exit(code or 0)


def _fail_line(message: str, code: int, problems: Sequence[str] = ()) -> None:
    """``error: MESSAGE`` on one line, then each of ``problems`` on a line of its own."""
    for line in [f"error: {message}", *problems]:
        err.print(" ".join(line.split()), markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
