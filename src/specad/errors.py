"""The one error type users see: a one-line message that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SpecadError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` on one line and exits with code 2."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        text = f"{self.path}: {message}" if self.path is not None else message
        super().__init__(" ".join(text.split()))

    @property
    def lines(self) -> list[str]:
        """What the command line prints, one line each: the message, or, for an error that
        holds several problems (a dataset's structure), a summary and one line per problem."""
        return [str(self)]
