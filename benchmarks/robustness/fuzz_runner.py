"""Runs ``specad`` command lines the way the command runs, thousands an hour, and judges them
(issue 38; the cases come from ``fuzz_cli.py``).

A process start per case would make thousands of cases take hours, so worker processes import
the CLI once and run one case at a time in-process through ``specad.cli.main``, the command's
own entry point: in the case's own folder, with stdout and stderr captured at the file-descriptor
level (Dask's worker processes and C libraries included), ending with the exit code ``main``
ends with. ``tests/test_fuzz.py`` checks that a worker and ``python -m specad`` agree. The parent
bounds each case in time and memory (the worker's whole process tree), replaces a worker it had
to kill, and judges each case by what issue 38 promises: exit 0 or 2, no traceback, one
``error:`` line (or click's usage error) with exit 2, inputs unchanged, one map per input, strict
JSON, finite synthetic cubes.

Only the standard library at the top: a worker imports this module, and what it imports counts
in the command's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFUSE_S = 30.0
"""Longest a refusal may take (issue 38); a success may run until the runner's timeout."""


@dataclass(frozen=True)
class Case:
    """One command line. ``{tmp}`` is the case's own folder and ``{in}`` the folder holding
    ``files``, cube files written there first (the suffix says the format); ``expect`` is how
    many maps a successful predict must write (0: not checked)."""

    argv: tuple[str, ...]
    files: tuple[str, ...] = ()
    expect: int = 0

    def shown(self) -> str:
        """The command line, quoted, and the files, with non-UTF-8 bytes escaped: printable
        anywhere."""
        text = " ".join(shlex.quote(a) for a in ("specad", *self.argv))
        if self.files:
            text += f"  # {{in}} holds {list(self.files)}"
        return text.encode("utf-8", "backslashreplace").decode()


def status_mb(key: str, pid: int | str = "self") -> float | None:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # kB
    return None


def clear_peak() -> None:
    """Reset this process's resident high-water mark (Linux ``clear_refs`` 5)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def serve() -> None:
    """A worker: one JSON request per line on stdin (argv and folder), one JSON answer per line
    on stdout. The command itself reads an empty stdin."""
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    from specad.cli import main

    for line in requests:
        request = json.loads(line)
        answers.write(json.dumps(_run_here(main, request["argv"], request["cwd"])) + "\n")
        answers.flush()


def _run_here(main: Callable[[], None], argv: list[str], cwd: str) -> dict[str, Any]:
    """``specad ARGV`` in this process, as ``python -m specad`` would run it in ``cwd``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        home = os.getcwd()
        os.chdir(cwd)
        sys.argv = ["specad", *argv]
        clear_peak()
        start = time.perf_counter()
        try:
            main()
            code = 0
        except SystemExit as stop:  # as the interpreter ends on it
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - what the interpreter prints, exit 1
            traceback.print_exc()
            code = 1
        seconds = time.perf_counter() - start
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(home)
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        text = [_tail(f) for f in (out, err)]
    return {
        "code": code,
        "stdout": text[0],
        "stderr": text[1],
        "seconds": seconds,
        "peak_mb": status_mb("VmHWM") or 0.0,
        "rss_mb": status_mb("VmRSS") or 0.0,
    }


def _tail(f: Any, limit: int = 200_000) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - limit))
    return f.read().decode("utf-8", "replace")


@dataclass
class Outcome:
    """How one case ended: exit code, output, seconds, peak resident MB of the command's process
    and of its process tree, and the bound it ``broke`` (time or memory; the exit code is None
    when it was killed for it, or when the worker died)."""

    code: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    peak_mb: float = 0.0
    tree_mb: float = 0.0
    broke: str | None = None


@dataclass
class _Worker:
    proc: subprocess.Popen
    key: Any = None
    started: float = 0.0
    peak_mb: float = 0.0
    tree_mb: float = 0.0
    buffer: bytes = b""

    def tree(self) -> list[int]:
        """This worker and every process it started, from ``/proc/PID/task/*/children``."""
        pids, i = [self.proc.pid], 0
        while i < len(pids):
            for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    pids += [int(p) for p in task.read_text().split()]
            i += 1
        return pids

    def sample(self) -> None:
        sizes = [status_mb("VmRSS", pid) or 0.0 for pid in self.tree()]
        self.peak_mb = max(self.peak_mb, sizes[0])
        self.tree_mb = max(self.tree_mb, sum(sizes))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: Dask's processes too
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()  # type: ignore[union-attr]


@dataclass
class Runner:
    """Worker processes that run cases (``jobs`` at a time), each case bounded by ``timeout``
    seconds, ``max_mb`` of resident memory for the command's process, and that times the cores
    plus one for its process tree (local Dask workers are one process per core)."""

    root: Path
    jobs: int = 1
    timeout: float = 60.0
    max_mb: float = 1024.0
    _idle: list[_Worker] = field(default_factory=list)
    _started: list[_Worker] = field(default_factory=list)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._started:
            if worker.proc.poll() is None:
                worker.kill()
        self._idle.clear()

    def _start(self) -> _Worker:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import {__name__} as r; r.serve()"
        with (self.root / "workers.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.root,
                env=os.environ | {"TMPDIR": str(tmp)},
                start_new_session=True,
            )
        self._started.append(_Worker(proc))
        return self._started[-1]

    def run(self, requests: Iterable[tuple[Any, list[str], Path]]) -> Iterator[tuple[Any, Outcome]]:
        """``(key, argv, folder)`` in, ``(key, outcome)`` out as cases finish."""
        pending, busy = iter(requests), []
        while True:
            while len(busy) < self.jobs and (request := next(pending, None)) is not None:
                worker = self._idle.pop() if self._idle else self._start()
                worker.key, argv, cwd = request
                line = json.dumps({"argv": list(argv), "cwd": str(cwd)}) + "\n"
                worker.proc.stdin.write(line.encode())  # type: ignore[union-attr]
                worker.proc.stdin.flush()  # type: ignore[union-attr]
                worker.started, worker.peak_mb, worker.tree_mb = time.perf_counter(), 0.0, 0.0
                busy.append(worker)
            if not busy:
                return
            ready = select.select([w.proc.stdout for w in busy], [], [], 0.05)[0]
            for worker in list(busy):
                outcome = self._check(worker, worker.proc.stdout in ready)
                if outcome is not None:
                    busy.remove(worker)
                    yield worker.key, outcome

    def _check(self, worker: _Worker, readable: bool) -> Outcome | None:
        """The case's outcome if it ended (or had to be ended), else None."""
        worker.sample()
        elapsed = time.perf_counter() - worker.started
        if readable:
            data = os.read(worker.proc.stdout.fileno(), 1 << 20)  # type: ignore[union-attr]
            worker.buffer += data
            if b"\n" in worker.buffer:
                line, _, worker.buffer = worker.buffer.partition(b"\n")
                answer = json.loads(line)
                peak = max(answer.pop("peak_mb"), worker.peak_mb)
                rss = answer.pop("rss_mb")
                outcome = Outcome(**answer, peak_mb=peak, tree_mb=max(worker.tree_mb, peak))
                if peak > self.max_mb:
                    outcome.broke = f"memory: {peak:.0f} MB, over {self.max_mb:.0f} MB"
                # memory it kept, or processes it left (a cluster), could weigh on the next case
                if rss < 0.75 * self.max_mb and len(worker.tree()) == 1:
                    self._idle.append(worker)
                else:
                    worker.kill()
                return outcome
            if not data:
                worker.kill()
                return Outcome(None, broke=f"worker died (exit {worker.proc.returncode})")
            return None
        tree_max = self.max_mb * ((os.cpu_count() or 1) + 1)
        why = None
        if worker.peak_mb > self.max_mb or worker.tree_mb > tree_max:
            why = f"memory: {worker.peak_mb:.0f} MB, process tree {worker.tree_mb:.0f} MB"
        elif elapsed > self.timeout:
            why = f"timeout: still running after {self.timeout:.0f} s"
        if why is None:
            return None
        worker.kill()
        return Outcome(
            None, seconds=elapsed, peak_mb=worker.peak_mb, tree_mb=worker.tree_mb, broke=why
        )


@dataclass(frozen=True)
class Result:
    case: Case
    outcome: Outcome
    failure: str | None


def run_cases(
    root: Path, runner: Runner, cases: Iterable[Case], write_inputs: Callable[[Path, Case], None]
) -> Iterator[Result]:
    """Each case in its own folder under ``root`` (``write_inputs`` fills its ``in`` folder
    first), judged, then removed."""
    from fuzz_data import checksums

    base = Path(tempfile.mkdtemp(prefix="cases-", dir=root))

    def requests() -> Iterator[tuple[Any, list[str], Path]]:
        for i, case in enumerate(cases):
            tmp = base / str(i)
            (tmp / "in").mkdir(parents=True)
            write_inputs(tmp / "in", case)
            argv = [
                a.replace("{in}", str(tmp / "in")).replace("{tmp}", str(tmp)) for a in case.argv
            ]
            yield (case, tmp, checksums(tmp / "in")), argv, tmp

    try:
        for (case, tmp, before), outcome in runner.run(requests()):
            try:
                failure = judge(case, outcome, tmp, before)
            except Exception as err:  # noqa: BLE001 - an output it cannot read fails the case
                failure = f"its output could not be checked ({err!r:.200})"
            yield Result(case, outcome, failure)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def judge(case: Case, out: Outcome, tmp: Path, inputs: dict[str, str]) -> str | None:
    """What is wrong with this outcome, in one line; None if nothing."""
    if out.broke:
        return out.broke
    text = out.stderr + out.stdout
    if "Traceback" in text:  # the exception's line: the first unindented one of the last
        block = text[text.rindex("Traceback") :].splitlines()[1:]
        return f"traceback: {next((ln for ln in block if ln[:1] not in ' ^'), '?')}"
    if out.code not in (0, 2):
        return f"exit {out.code}"
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    usage = "Usage:" in out.stderr and "Error" in out.stderr
    if out.code == 2 and len(errors) != 1 and not usage:
        return f"exit 2 with {len(errors)} 'error:' lines"
    if out.code == 2 and out.seconds > REFUSE_S:
        return f"refused only after {out.seconds:.0f} s"
    from fuzz_data import checksums

    after = checksums(tmp / "in")
    if any(after.get(path) != digest for path, digest in inputs.items()):
        return "an input file changed or vanished"
    if "{in}" in case.argv and after != inputs:  # the folder itself is an input
        return "a file appeared in an input folder"
    if out.code != 0:
        return None
    if "--json" in case.argv and not _strict_json(out.stdout):
        return "--json printed something that is not strict JSON"
    for doc in tmp.rglob("*.json"):
        if tmp / "in" not in doc.parents and not _strict_json(doc.read_text(errors="replace")):
            return f"{doc.relative_to(tmp)} is not strict JSON"
    if case.expect:
        return _maps_problem(tmp / "out", case.expect)
    if case.argv[0] == "synth":
        return _synth_problem(tmp / "s")
    return None


def _strict_json(text: str) -> bool:
    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return True


def _maps_problem(out: Path, expect: int) -> str | None:
    """One row and one map per input; no two maps whose names differ only in case."""
    import csv

    with (out / "scores.csv").open(newline="", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    maps = [r["map"] for r in rows]
    on_disk = [p for p in (out / "maps").rglob("*") if p.is_file()]
    if len(rows) != expect or len(on_disk) != expect:
        return f"{expect} inputs gave {len(rows)} rows and {len(on_disk)} map files"
    if len({m.casefold() for m in maps}) != expect:
        return "two inputs share a map name (up to case)"
    if len({r["file"] for r in rows}) != expect:
        return "two rows name the same input"
    return None


def _synth_problem(out: Path) -> str | None:
    """The synthetic cubes hold finite values."""
    import numpy as np

    from specad.io import read_cube

    cube = next(iter(sorted((out / "train").rglob("*.tif"))), None)
    if cube is None:
        return "synth exited 0 without writing train cubes"
    if not np.isfinite(read_cube(cube).data).all():
        return f"{cube.name} holds NaN or inf"
    return None
