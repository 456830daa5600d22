"""The thread count: the usable cores that other programs leave idle, or ``--threads``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import one_line_failure, run_specad

from specad.errors import SpecadError
from specad.threads import busy_cores, choose_threads, usable_cores

SPIN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass"


@contextmanager
def every_core_busy() -> Iterator[None]:
    """One spinning process per usable core (each stops by itself after 20 s at the latest)."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(usable_cores())]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_cores_other_programs_keep_busy_are_left_to_them() -> None:
    with every_core_busy():
        assert busy_cores(0.5) >= usable_cores() - 0.5
        assert choose_threads() == 1


def test_requested_threads_are_checked_against_the_usable_cores() -> None:
    assert choose_threads(1) == 1
    with pytest.raises(SpecadError, match=r"--threads must be 1\.\.\d+"):
        choose_threads(usable_cores() + 1)


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_thread_count_is_one_line(value: str) -> None:
    one_line_failure(run_specad("--threads", value, "dataset", "check", "."), "--threads")


def test_too_many_threads_is_one_line_with_the_bound() -> None:
    done = run_specad("--threads", str(usable_cores() + 1), "dataset", "check", ".")
    one_line_failure(done, f"--threads must be 1..{usable_cores()}")
