"""The inbox `specad watch` scores: which files are cubes, and when a cube is complete.

A cube is complete when its writer renamed it into the inbox (a filesystem event says so), or
when its size and modification time have not changed for ``settle`` seconds, watched by this
process's own clock (a network share's clock may differ from ours). Files whose names start with
``.`` or ``~``, or that do not end in a cube suffix, are never read: writers that rename give
their partial files such names. Events come from watchdog; a scan of the folder finds what was
there before the start and what events missed, and alone drives ``--poll``.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specad.io import CUBE_SUFFIXES
from specad.io.files import escaped
from specad.line.journal import Key

RESCAN_SECONDS = 5.0
"""How often the folder is scanned while events arrive: what a lost event costs at most."""
POLL_SECONDS = 0.5
"""How often the folder is scanned with ``--poll`` (network shares, where no events come)."""


def is_candidate(name: str) -> bool:
    """A cube file a writer has finished naming: not hidden, not a temporary name."""
    return not name.startswith((".", "~")) and Path(name).suffix.lower() in CUBE_SUFFIXES


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # our clock when this size and mtime were first seen
    renamed: bool


class Inbox:
    """The files of one folder, and which of them are complete cubes, in arrival order."""

    def __init__(self, folder: Path, settle: float, clock: Callable[[], float] = time.monotonic):
        self.folder = folder
        self.settle = settle
        self.clock = clock
        self.events: queue.SimpleQueue[tuple[str, bool] | None] = queue.SimpleQueue()
        self._seen: dict[str, _Seen] = {}
        self._finished: dict[str, tuple[int, int]] = {}  # done cubes left here: size, mtime

    def note(self, name: str, renamed: bool) -> None:
        """A file appeared or changed (``renamed``: it was renamed into the folder)."""
        if not is_candidate(name):
            return
        try:
            st = os.stat(self.folder / name)
        except OSError:  # gone again
            self._seen.pop(name, None)
            return
        if self._finished.get(name) == (st.st_size, st.st_mtime_ns):
            return
        self._finished.pop(name, None)
        seen = self._seen.get(name)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[name] = _Seen(st.st_size, st.st_mtime_ns, self.clock(), renamed)
        elif renamed:
            seen.renamed = True

    def scan(self) -> None:
        """Look at every file in the folder: files the events did not announce join in, and
        files that are gone leave."""
        present = set()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if is_candidate(entry.name) and entry.is_file():
                    present.add(entry.name)
                    self.note(entry.name, renamed=False)
        for name in (set(self._seen) | set(self._finished)) - present:
            self.forget(name)

    def drain(self, timeout: float) -> bool:
        """Apply the events that arrive within ``timeout`` seconds (at least the first one);
        False when asked to stop (a None event)."""
        try:
            event = self.events.get(timeout=max(timeout, 0.0))
            while True:
                if event is None:
                    return False
                self.note(*event)
                event = self.events.get_nowait()
        except queue.Empty:
            return True

    def complete(self) -> list[tuple[Path, Key]]:
        """Complete cubes not yet finished, oldest first (by modification time, then name).
        Each is checked again now: a file that changed starts to settle anew."""
        now, ready = self.clock(), []
        for name in list(self._seen):
            self.note(name, renamed=False)  # a change since clears an earlier rename
            seen = self._seen.get(name)
            if seen is not None and (seen.renamed or now - seen.since >= self.settle):
                ready.append((seen.mtime_ns, name, Key(escaped(name), seen.size, seen.mtime_ns)))
        return [(self.folder / name, key) for _, name, key in sorted(ready)]

    def finish(self, name: str) -> None:
        """A cube is done and stays in the folder: ignored until it changes."""
        seen = self._seen.pop(name, None)
        if seen is not None:
            self._finished[name] = (seen.size, seen.mtime_ns)

    def forget(self, name: str) -> None:
        """A cube left the folder (or was taken away)."""
        self._seen.pop(name, None)
        self._finished.pop(name, None)

    def next_deadline(self) -> float | None:
        """Seconds until the next file that is still settling may be complete."""
        now = self.clock()
        waits = [s.since + self.settle - now for s in self._seen.values() if not s.renamed]
        return max(min(waits), 0.0) if waits else None

    def observe(self) -> Callable[[], None] | None:
        """Start watchdog's observer on the folder, its events queued for `drain`; the function
        that stops it, or None where the platform gives no events (then poll)."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        folder, events = os.path.abspath(self.folder), self.events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    return
                if event.event_type == "moved":
                    dest = os.fsdecode(event.dest_path)
                    if os.path.dirname(dest) == folder:
                        events.put((os.path.basename(dest), True))
                elif event.event_type in ("created", "modified", "closed"):
                    events.put((os.path.basename(os.fsdecode(event.src_path)), False))

        observer = Observer()
        try:
            observer.schedule(Handler(), folder, recursive=False)
            observer.start()
        except OSError:  # e.g. no inotify watches left: polling still works
            return None

        def stop() -> None:
            observer.stop()
            observer.join(timeout=5)

        return stop
