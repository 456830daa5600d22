"""The ``specad`` command: a thin shell over the Python API, one module per group of commands.

Every command turns a :class:`~specad.errors.SpecadError` into one line on stderr and exit code 2,
so users never see a traceback for bad input.
"""

from specad.cli import data, line, models, scene, teacher, update  # noqa: F401 - registers the commands
from specad.cli.app import app, main

__all__ = ["app", "main"]
