"""`specad watch`: score every cube that arrives in an inbox exactly once, in arrival order.

Completeness is `specad.line.inbox`'s rule; exactly-once is `specad.line.journal`'s. Each cube's
map and overlay are written as `specad predict` writes them (`specad.inference.score_files`),
into a staging folder, fsynced and renamed into ``OUT/maps`` and ``OUT/overlays`` before the
cube's verdict line: a verdict never names a map that a crash lost. A cube that cannot be read
gets a line with its ``error`` instead, so it is not retried at every restart. With ``done`` each
cube then leaves the inbox; a crash between its line and the move only moves it at the restart.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from specad.errors import SpecadError
from specad.inference import Detector, score_files
from specad.io import refuse_overlap, reserve_output
from specad.line.inbox import POLL_SECONDS, RESCAN_SECONDS, Inbox
from specad.line.journal import Journal, Key
from specad.line.verdict import Verdict, drift_monitor, judge

STAGING = ".staging"
BATCH_BYTES = 256 * 2**20
"""File bytes of the cubes scored as one batch: a batch of large cubes is held whole while its
maps are computed, so large cubes go one at a time."""


@dataclass
class WatchRun:
    """What one run of the watcher did: cubes scored, cubes that could not be read (each has
    its ``error`` line), and whether the folder was polled."""

    scored: int = 0
    unreadable: int = 0
    polling: bool = False


class Watcher:
    """Scores an inbox into an output folder until `stop` is called (from any thread or a
    signal handler); the current batch of cubes is always finished first."""

    def __init__(
        self,
        detector: Detector,
        inbox: str | Path,
        out: str | Path,
        *,
        settle: float = 2.0,
        done: str | Path | None = None,
        poll: bool = False,
        batch: int = 8,
        on_verdict: Callable[[Verdict], None] | None = None,
        on_skip: Callable[[str], None] | None = None,
        on_drift: Callable[[str], None] | None = None,
    ) -> None:
        self.detector = detector
        self.drift = drift_monitor(detector)
        self.on_drift = on_drift  # told the one-line alert when the scores start to drift
        self.inbox = Inbox(Path(inbox), settle)
        self.out = Path(out)
        self.done = None if done is None else Path(done)
        self.poll = poll
        if batch < 1:
            raise SpecadError(f"--batch must be at least 1, got {batch}")
        self.batch = batch
        self.on_verdict = on_verdict
        self.on_skip = on_skip  # told, at once, each cube that could not be read (one line)
        self._stopping = threading.Event()
        self._check_folders()

    def _check_folders(self) -> None:
        folder = self.inbox.folder
        if not folder.is_dir():
            raise SpecadError("the inbox is not a folder", folder)
        if self.inbox.settle < 0:
            raise SpecadError(f"--settle must be at least 0 seconds, got {self.inbox.settle}")
        refuse_overlap(self.out, [folder])
        if self.done is not None:
            if os.path.realpath(self.done) == os.path.realpath(folder):
                raise SpecadError("--done must be another folder than the inbox", self.done)
            refuse_overlap(self.out, [self.done])
            self.done.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        """Finish the batch being scored, then return from `run`. Safe in a signal handler."""
        self._stopping.set()
        self.inbox.events.put(None)

    def run(self) -> WatchRun:
        """Watch until stopped. One watcher per output folder: a second is refused at once."""
        with reserve_output(self.out) as out:
            self.out = out
            journal = Journal(out).open()
            unobserve = None if self.poll else self.inbox.observe()
            result = WatchRun(polling=unobserve is None)
            try:
                self._loop(journal, result)
            finally:
                if unobserve is not None:
                    unobserve()
                journal.close()
                shutil.rmtree(out / STAGING, ignore_errors=True)
        return result

    def _loop(self, journal: Journal, result: WatchRun) -> None:
        rescan = POLL_SECONDS if result.polling else RESCAN_SECONDS
        self.inbox.scan()
        next_scan = time.monotonic() + rescan
        while not self._stopping.is_set():
            for chunk in self._batches(self.inbox.complete()):
                if self._stopping.is_set():
                    return
                todo = [(path, key) for path, key in chunk if key not in journal.done]
                if todo:
                    self._score(todo, journal, result)
                for path, _ in chunk:
                    self._leave(path)  # done before a crash and not yet moved, too
            now = time.monotonic()
            if now >= next_scan:
                self.inbox.scan()
                next_scan = now + rescan
                continue
            deadline = self.inbox.next_deadline()
            wait = next_scan - now if deadline is None else min(next_scan - now, deadline)
            if not self.inbox.drain(wait):
                return

    def _batches(self, ready: list[tuple[Path, Key]]) -> Iterator[list[tuple[Path, Key]]]:
        """Complete cubes in arrival order, up to ``batch`` at a time and `BATCH_BYTES` of files
        (at least one): cubes that arrive together are scored as one batch of maps."""
        chunk: list[tuple[Path, Key]] = []
        size = 0
        for path, key in ready:
            if chunk and (len(chunk) == self.batch or size + key.size > BATCH_BYTES):
                yield chunk
                chunk, size = [], 0
            chunk.append((path, key))
            size += key.size
        if chunk:
            yield chunk

    def _score(self, items: list[tuple[Path, Key]], journal: Journal, result: WatchRun) -> None:
        """Score complete cubes as one batch, then journal each in arrival order: a crash part
        way leaves the rest unjournaled, so a restart scores exactly those."""
        started = time.perf_counter()
        names = [self._map_name(Path(key.file).stem, journal) for _, key in items]
        paths = [path for path, _ in items]
        outcomes = score_files(self.detector, paths, self.out / STAGING, [Path(n) for n in names])
        for (path, key), name, outcome in zip(items, names, outcomes, strict=True):
            if isinstance(outcome, str):
                if not path.exists():  # taken away before it was read: not a cube to record
                    continue
                journal.append(key, {"error": outcome})
                result.unreadable += 1
                if self.on_skip is not None:
                    self.on_skip(outcome)
                continue
            files = {}
            for folder, suffix in (("maps", ".tif"), ("overlays", ".png")):
                files[folder[:-1]] = self._publish(Path(folder) / f"{name}{suffix}")
            verdict = judge(self.detector, key.file, outcome, started)
            alert = None if self.drift is None else self.drift.observe(verdict.score)
            drift = {} if self.drift is None else {"drifting": self.drift.drifting}
            journal.append(key, verdict.record() | files | drift | {"at": round(time.time(), 3)})
            self._record(verdict)
            result.scored += 1
            if alert is not None and self.on_drift is not None:
                self.on_drift(alert)

    def _leave(self, path: Path) -> None:
        """A done cube leaves the inbox with ``--done``; otherwise it is ignored from now on."""
        if self.done is None or not path.exists():
            self.inbox.finish(path.name)
        else:
            self._move_done(path)

    def _record(self, verdict: Verdict) -> None:
        """Every verdict passes here once, after its line is on disk: the hook for monitors."""
        if self.on_verdict is not None:
            self.on_verdict(verdict)

    def _map_name(self, stem: str, journal: Journal) -> str:
        """``stem``, or ``stem-2``... where an earlier cube of that name (a file written again,
        or another format) has a map already."""
        name, i = stem, 2
        while name in journal.maps:
            name, i = f"{stem}-{i}", i + 1
        journal.maps.add(name)
        return name

    def _publish(self, rel: Path) -> str:
        """Move a staged file into the output, durably; its path relative to the output."""
        staged, final = self.out / STAGING / rel, self.out / rel
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        final.parent.mkdir(exist_ok=True)
        os.replace(staged, final)
        return rel.as_posix()

    def _move_done(self, path: Path) -> None:
        """Move a scored cube to the done folder under a name nothing there has yet; where a
        crash left a finished copy there already, the inbox's one is removed."""
        assert self.done is not None
        st = path.stat()
        target, i = self.done / path.name, 2
        while target.exists():
            there = target.stat()
            if (there.st_size, there.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                break  # copied before a crash: only the inbox's copy is left to remove
            target, i = self.done / f"{path.stem}-{i}{path.suffix}", i + 1
        else:
            try:
                os.rename(path, target)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                part = target.with_name(f".{target.name}.part")  # another file system: copy
                shutil.copy2(path, part)
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(part, target)
        path.unlink(missing_ok=True)
        self.inbox.forget(path.name)
