"""Every reader under mutated bytes: specad's own one-line error, or a result; never a crash.

A bounded number of cases per reader (seconds); ``benchmarks/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from fuzzing import TARGETS, Target, check_one, mutated
from hypothesis import HealthCheck, given, settings


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_reader_survives_mutated_files(target: Target) -> None:
    seeds_dir = Path(tempfile.mkdtemp())
    seeds = target.seeds(seeds_dir)
    shutil.rmtree(seeds_dir)

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        tmp = Path(tempfile.mkdtemp())
        try:
            check_one(target, tmp, data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    run()


def test_seeds_are_valid_inputs() -> None:
    """The fuzz starts from files each reader accepts, so mutations test real parsing."""
    for target in TARGETS:
        for seed in target.seeds(Path(tempfile.mkdtemp())):
            tmp = Path(tempfile.mkdtemp())
            assert target.feed(tmp, seed) is not None, target.name
