"""Writing files and folders so that nothing is half-written and nothing of the user's is lost:
atomic files (with the user's umask), atomic output folders published with a no-replace rename,
one writer per output, outputs kept apart from inputs, write failures as one line naming the
output, file names shown whatever their bytes, and the one SHA-256 helper."""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from specad.errors import SpecadError


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks: the one digest for weights and provenance."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def escaped(text: str | Path) -> str:
    """``text`` printable and encodable whatever its bytes: a file name that is not UTF-8 (held
    by Python as surrogate escapes, which no UTF-8 writer accepts) shows its raw bytes as
    ``\\xNN``. For every name shown or recorded, so that it is kept verbatim."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _named(path: str | Path) -> Path:
    """``path`` absolute and without ``.``/``..`` parts (symbolic links are kept): the name an
    output is held and replaced under, with a real parent folder for its temporary siblings."""
    path = Path(os.path.abspath(path))
    if not path.name:
        raise SpecadError("cannot write over the root folder", path)
    return path


def _user_mode(mode: int) -> int:
    """``mode`` less the process's umask: what ``open`` and ``mkdir`` would have given, where
    ``mkstemp``/``mkdtemp`` give 0600/0700 whatever the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def write_errors(target: Path, tmp: Path) -> Iterator[None]:
    """An ``OSError`` while writing ``tmp`` (a full disk, a quota) as one line naming ``target``,
    the path the user knows, and its cause (``tmp`` may be ``target``, for a folder written in
    place). Errors about other files (an input that cannot be read) name their own file, and
    library errors without an errno are theirs to word: both pass through. A `SpecadError`
    that names a file in ``tmp`` names it under ``target``."""
    try:
        yield
    except SpecadError as err:
        if str(tmp) not in str(err):
            raise
        raise SpecadError(str(err).replace(str(tmp), str(target))) from err
    except OSError as err:
        name = None if err.filename is None else os.path.abspath(os.fsdecode(err.filename))
        ours = name is None or name == str(tmp) or name.startswith((f"{tmp}/", f"{tmp}."))
        if err.errno is None or not ours:  # ``tmp``, what is in it, or a sibling named after it
            raise
        raise SpecadError(f"cannot write ({err.strerror or err})", target) from err


def _tmp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    return Path(name)


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder, or say in one line why it cannot be (a file, no permission)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as err:
        raise SpecadError(
            f"cannot write here ({err.strerror or err}: {err.filename or path.parent})", path
        ) from err


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success, with the
    mode a plain ``open`` would give (the user's umask), so others can read what they may."""
    target = _named(path)
    _make_parent(target)
    tmp = _tmp_sibling(target)
    try:
        with write_errors(Path(path), tmp):
            yield tmp
            os.chmod(tmp, _user_mode(0o666))
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def refuse_overlap(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is, contains or lies inside any of a command's inputs (datasets,
    cubes, models), with ``--force`` or without it: replacing ``out`` must never delete what the
    command reads. Paths are compared after following symbolic links."""
    target = Path(os.path.realpath(out))
    for item in inputs:
        source = Path(os.path.realpath(item))
        if target == source:
            what = "is"
        elif target in source.parents:
            what = "contains"
        elif source in target.parents:
            what = "lies inside"
        else:
            continue
        raise SpecadError(f"the output {what} the input {item}; choose another --out", out)


def refuse_nonempty(out: Path, force: bool) -> None:
    """Refuse to write into a folder that already holds something, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise SpecadError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SpecadError("output folder exists and is not empty (use --force to replace)", out)


@contextmanager
def reserve_output(out: str | Path) -> Iterator[Path]:
    """Hold the name ``out`` for this process alone while it writes there.

    An advisory lock on ``.NAME.lock`` beside it, which the kernel drops when the process dies
    (even by ``kill -9``), so a second writer fails at once with one line. Holding it also
    proves that any ``.NAME.*.part`` / ``.NAME.*.old`` left beside ``out`` belongs to an earlier,
    killed run: those are removed. Yields ``out`` made absolute, so that ``.`` or ``..`` is
    held and replaced under its real name, beside it.
    """
    target = _named(out)
    lock = target.parent / f".{target.name}.lock"
    _make_parent(lock)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise SpecadError("another specad command is writing this output now", out) from err
    try:
        for pattern in (".part", ".old"):
            for stale in target.parent.glob(f".{glob.escape(target.name)}.*{pattern}"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        yield target
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``out`` at the end.

    A failure leaves the old folder (if any) untouched and no partial output behind. Without
    ``force`` the final rename never replaces content: if something appeared at ``out`` while
    the command ran, it is kept and the command fails. With ``force`` an existing ``out`` is
    replaced.
    """
    with reserve_output(out) as target:
        refuse_nonempty(Path(out), force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
        tmp.chmod(_user_mode(0o777))  # mkdtemp's 0700 would hide a shared report from others
        try:
            with write_errors(Path(out), tmp):
                yield tmp
                _publish(tmp, target, force, Path(out))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path, force: bool, shown: Path) -> None:
    if force and (out.exists() or out.is_symlink()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.rename(tmp, out)
        except OSError:
            os.replace(old / out.name, out)  # the previous output stays where it was
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)  # succeeds onto nothing or an empty folder, never over content
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise SpecadError(
                "appeared while this command ran and was kept; nothing was written "
                "(use --force to replace it)",
                shown,
            ) from err
        raise
