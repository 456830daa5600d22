"""``.cu3s`` session files through the Cubert cuvis SDK, which needs Cubert's native library
(not on PyPI): the SDK part skips, with the reason, where it is not installed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from specad.cuvis import ReflectanceNormalizer
from specad.errors import SpecadError
from specad.io import read_cube


def sdk_problem() -> str | None:
    """Why the SDK cannot be used here, or None.

    ``import cuvis`` calls sys.exit when the CUVIS variable (the native library's folder) is
    unset, so that is checked before importing.
    """
    if importlib.util.find_spec("cuvis") is None:
        return "the Cubert cuvis SDK is not installed (import cuvis fails)"
    if "CUVIS" not in os.environ:
        return "CUVIS, the folder of the SDK's native library, is not set"
    try:
        import cuvis  # noqa: F401
    except (ImportError, OSError) as err:
        return f"import cuvis fails: {err}"
    return None


def test_without_the_sdk_a_cu3s_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cuvis", None)  # makes `import cuvis` fail
    (tmp_path / "scan.cu3s").write_bytes(b"")
    with pytest.raises(SpecadError, match=r"scan.cu3s: reading .cu3s needs the Cubert cuvis SDK"):
        read_cube(tmp_path / "scan.cu3s")


def test_cu3s_measurement_becomes_a_cube_for_the_pipeline() -> None:
    problem = sdk_problem()
    if problem:
        pytest.skip(problem)
    sample = os.environ.get("SPECAD_CU3S")
    if not sample:
        pytest.skip("no .cu3s sample: set SPECAD_CU3S to a session file")
    cube = read_cube(sample)
    assert cube.wavelengths is not None and len(cube.wavelengths) == cube.channels
    assert np.isfinite(cube.data).all()
    out = ReflectanceNormalizer().forward(cube=torch.from_numpy(cube.data)[None])
    assert out["cube"].shape == (1, *cube.shape)
