"""``OUT/verdicts.jsonl``: the verdicts of `specad watch`, and its journal at once.

Each cube's line is written with one ``write`` and fsynced before the cube counts as done, and a
line counts only once its newline is on disk. A restart reads the file back: the cubes it names
(by file name, size and modification time) are done; a torn last line, left by a kill in the
middle of a write, is cut off, and its cube is scored again. So a cube is recorded exactly once
whatever moment a ``kill -9`` hits: before its line it is not done, after its line it is, and
there is no second record (such as a separate ``done`` entry) that a crash could leave out of
step with the verdict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from specad.errors import SpecadError

VERDICTS = "verdicts.jsonl"


class Key(NamedTuple):
    """Which cube a line is about: a camera that writes a file of the same name again writes a
    new cube, with another size or modification time."""

    file: str
    size: int
    mtime_ns: int


class Journal:
    """The verdicts file of an output folder, opened for appending after reading what is done."""

    def __init__(self, out: Path) -> None:
        self.path = out / VERDICTS
        self.done: set[Key] = set()
        self.maps: set[str] = set()  # map names taken, so that no cube overwrites another's
        self.lines = 0
        self._fd: int | None = None

    def open(self) -> Journal:
        """Read the lines already written (cutting a torn last one) and open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        if created:  # the file's name must survive a crash too
            _fsync_dir(self.path.parent)
        with open(self._fd, "rb", closefd=False) as f:
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # a torn last line: its cube was not done
            os.ftruncate(self._fd, len(whole))
            os.fsync(self._fd)
        for number, line in enumerate(whole.splitlines(), 1):
            self._remember(line, number)
        return self

    def _remember(self, line: bytes, number: int) -> None:
        try:
            record = json.loads(line)
            key = Key(record["file"], int(record["size"]), int(record["mtime_ns"]))
        except (ValueError, TypeError, KeyError) as err:
            raise SpecadError(
                f"line {number} is not a verdict of specad watch ({err}); move the file away "
                "to start a new journal",
                self.path,
            ) from err
        self.done.add(key)
        if isinstance(record.get("map"), str):
            self.maps.add(Path(record["map"]).stem)
        self.lines += 1

    def append(self, key: Key, fields: dict[str, object]) -> None:
        """Write one cube's line and fsync it: from here on the cube is done."""
        if self._fd is None:
            raise RuntimeError("the journal is not open")
        record = {"file": key.file, "size": key.size, "mtime_ns": key.mtime_ns} | fields
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        data = line.encode("utf-8", "surrogateescape")
        while data:  # one write in practice; a short write is finished, never interleaved
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)
        self.done.add(key)
        self.lines += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
