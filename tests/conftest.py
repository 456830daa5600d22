"""Shared fixtures and helpers: a tiny dataset in specad's layout, built in a few milliseconds;
the tiny models trained on it once per session; the one helper that runs the CLI."""

from __future__ import annotations

import functools
import locale
import multiprocessing
import multiprocessing.context
import os
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:  # one process per core already: no torch thread pools
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # spinning against each other
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "robustness"))
# The fuzzer's library and the tiny dataset live with the fuzzer (benchmarks import nothing from
# tests/); the fuzz tests import its modules by name through this one path entry.
from fuzz_data import BANDS as BANDS  # noqa: E402
from fuzz_data import WAVELENGTHS as WAVELENGTHS  # noqa: E402
from fuzz_data import checksums, make_dataset  # noqa: E402

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

    from specad.models.efficientad.config import EfficientADConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The real datasets beside the project (read-only, never copied into it)."""


def shared_data(name: str) -> Path:
    """``../shared/data/NAME``; a test without it is skipped with the reason, or fails where
    ``SPECAD_REQUIRE_DATA=1`` (CI: .ci/run), so a missing folder cannot pass silently."""
    path = SHARED / name
    if not path.is_dir():
        if os.environ.get("SPECAD_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} is missing, and SPECAD_REQUIRE_DATA=1 requires it")
        pytest.skip(f"shared data not found at {path}")
    return path


def run_specad(
    *args: str,
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m specad ARGS`` in a child process, bounded in time: the one CLI helper of the
    tests. ``check`` asserts it succeeded (exit 0), showing its stderr where it did not; a
    command expected to fail goes to `one_line_failure`.

    The child is forked from a server that has already imported specad, torch and scikit-learn
    (`_cli_server`), so a call costs milliseconds instead of the seconds those imports take; it
    is still a process of its own, running ``specad/__main__.py`` with its exit code, streams,
    working directory and umask. A call with ``env``, or after the environment changed, starts
    a fresh interpreter instead, since imports may have read the old one."""
    if env is not None or _environment() != _SERVER_ENV:
        done = subprocess.run(
            [sys.executable, "-m", "specad", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=None if env is None else os.environ | env,
        )
    else:
        done = _forked_cli(list(args), timeout, cwd)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


_SET_BY_IMPORTS = {"PYTEST_CURRENT_TEST", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK"}
"""Set by pytest and by importing scikit-learn, not by a test: the fork server has them too."""


def _environment() -> dict[str, str]:
    """The environment a test gave the command line."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _SET_BY_IMPORTS and not k.startswith("TORCHINDUCTOR_")
    }


_SERVER_ENV = _environment()
_PRELOAD = [
    "conftest", "specad.cli", "specad.fit", "specad.evaluate", "specad.predict", "specad.scenes",
    "specad.report", "specad.export", "specad.demo", "specad.models.scene", "specad.runtime",
]  # fmt: skip
"""What the fork server imports once: the command line and the APIs its commands import."""


@functools.cache
def _cli_server() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _forked_cli(args: list[str], timeout: float, cwd: Path | None) -> subprocess.CompletedProcess:
    umask = os.umask(0)
    os.umask(umask)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        child = _cli_server().Process(target=_cli_child, args=(args, cwd, umask, out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([sys.executable, "-m", "specad", *args], timeout)
        encoding = locale.getpreferredencoding(False)
        return subprocess.CompletedProcess(
            [sys.executable, "-m", "specad", *args],
            child.exitcode,
            out.read_text(encoding),
            err.read_text(encoding),
        )


def _cli_child(args: list[str], cwd: Path | None, umask: int, out: Path, err: Path) -> None:
    """In the forked child: what ``python -m specad ARGS`` does, streams to files."""
    os.umask(umask)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["-m", *args]
    runpy.run_module("specad", run_name="__main__", alter_sys=True)


def one_line_failure(done: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert the CLI failed as promised: exit 2, no traceback, exactly one ``error:`` line,
    which contains every needle. Returns that line."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def slow_case(*values: object) -> ParameterSet:
    """A parametrized case run only by the full suite (marked ``slow``): a further case of a
    kind the quick run (``pytest -m "not slow"``) already checks, each costing a process start
    or a fit."""
    return pytest.param(*values, marks=pytest.mark.slow)


def quick_first(cases: list) -> list:
    """``cases`` with all but the first as `slow_case`: the quick run checks the kind once,
    the full suite every case (a tuple is one case of several arguments)."""
    rest = [slow_case(*c) if isinstance(c, tuple) else slow_case(c) for c in cases[1:]]
    return [cases[0], *rest]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): a worker per core this process may use, as many as
    memory allows at about 3 GiB each (a worker trains and exports tiny models)."""
    from specad.runtime import available_memory
    from specad.threads import usable_cores

    return max(1, min(usable_cores(), available_memory() // (3 * 2**30)))


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


TINY_TRAIN = ("data.image_size=64", "model.teacher=pdn-random", "train.log_every=1")
"""A tiny EfficientAD: the random PDN teacher (nothing to download or distil) at 64 px."""


def tiny_config(root: Path, *sets: str) -> EfficientADConfig:
    """The config of a tiny EfficientAD trained on ``root``, with ``sets`` overrides."""
    from specad.models.efficientad.config import load_config

    return load_config(None, [*TINY_TRAIN, *sets], data={"root": str(root)})


@contextmanager
def unchanged(*roots: Path) -> Iterator[None]:
    """Lend ``roots`` to many tests, then prove that none of them changed a byte: sharing must
    not leak state from one test into another, so a test that changes a shared folder works on
    its own copy (``shutil.copytree`` into its ``tmp_path``)."""
    before = checksums(*roots)
    yield
    assert checksums(*roots) == before, f"a test changed the shared {roots}; copy it first"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make_dataset`'s default dataset, built once for the session; read-only."""
    root = make_dataset(tmp_path_factory.mktemp("shared") / "ds")
    with unchanged(root):
        yield root


@pytest.fixture(scope="session")
def tiny_rx(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of an RX model fitted on `tiny_root` (seconds), as `specad fit` writes it.
    Fitted once for the session; read-only."""
    import warnings

    from specad.data import load_dataset
    from specad.fit import fit_on_dataset
    from specad.metrics import ThresholdWarning

    run = tmp_path_factory.mktemp("shared") / "rx"
    with warnings.catch_warnings():  # four val/good cubes: the threshold rule says so, known
        warnings.simplefilter("ignore", ThresholdWarning)
        fit_on_dataset("rx", load_dataset(tiny_root)).save(run)
    with unchanged(run):
        yield run


@pytest.fixture(scope="session")
def tiny_efficientad(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run folder of a tiny EfficientAD trained 20 steps on `tiny_root`, as `specad train`
    writes it: the model, its onnx and int8 exports and the runtimes measured on this CPU.
    Trained once for the session; read-only."""
    from specad.fit import train

    run = tmp_path_factory.mktemp("shared") / "run"
    train(tiny_config(tiny_root, "train.steps=20"), run, progress=False)
    with unchanged(run):
        yield run
