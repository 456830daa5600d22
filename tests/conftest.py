"""Shared fixtures: a tiny dataset in specad's layout, built in a few milliseconds."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from specad.io import Cube, write_cube

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
    *args: str, timeout: float = 300, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The ``specad`` command in a child process, bounded in time: the one CLI helper of the
    tests."""
    return subprocess.run(
        [sys.executable, "-m", "specad", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else os.environ | env,
    )


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


def checksums(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (or of each root that is a file), by path: compared
    before and after a failing command to prove nothing of the user's changed."""
    sums = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            sums[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return sums


BANDS = ["R", "G", "B", "SWIR1050", "SWIR1200", "SWIR1450"]
WAVELENGTHS = [630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0]


def make_dataset(
    root: Path, size: int = 64, channels: int = 6, counts=(6, 4, 3), defects=2, seed: int = 0
) -> Path:
    """Smooth random 'sawdust' cubes; defects are bright squares in the SWIR bands only."""
    rng = np.random.default_rng(seed)
    bands, wl = BANDS[:channels], WAVELENGTHS[:channels]

    def cube() -> np.ndarray:
        base = 0.4 + 0.05 * rng.standard_normal((size, size, channels))
        return base.astype(np.float32)

    for split, n in zip(("train", "val", "test"), counts, strict=True):
        for i in range(n):
            write_cube(root / split / "good" / f"{split}{i:03d}.tif", Cube(cube(), bands, wl))
    names = {1: "square", 2: "stripe"}
    for cid in range(1, defects + 1):
        name = names[cid]
        for i in range(2):
            data, mask = cube(), np.zeros((size, size), np.uint8)
            y, x = rng.integers(4, size - 16, 2)
            sl = (slice(y, y + 10), slice(x, x + (10 if cid == 1 else 3)))
            data[sl][..., 3:] += 0.5
            mask[sl] = cid
            write_cube(root / "test" / name / f"{name}{i:03d}.tif", Cube(data, bands, wl))
            (root / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "ground_truth" / name / f"{name}{i:03d}.png")
    classes = {"0": "background"} | {str(c): names[c] for c in range(1, defects + 1)}
    (root / "classes.json").write_text(json.dumps(classes))
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")
