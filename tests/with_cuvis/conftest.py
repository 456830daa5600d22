"""Shared fixtures for the cuvis.ai integration: a small synthetic tray dataset and tiny models.

Without cuvis-ai-core (the main .venv) the tests here are not collected and the run says so.
scripts/test.sh runs them in .venv-cuvis with SPECAD_REQUIRE_CUVIS=1, where a missing
cuvis-ai-core is an error instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import cuvis_ai_core  # noqa: F401
except ModuleNotFoundError:
    if os.environ.get("SPECAD_REQUIRE_CUVIS"):
        raise
    # A module-level skip in a conftest crashes pytest when the folder is named on the command
    # line, so the tests are left out instead, with a line in the summary.
    collect_ignore_glob = ["test_*.py"]

    def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(
            "tests/with_cuvis not run: cuvis-ai-core is not installed (bash scripts/setup-cuvis.sh)"
        )


from specad.data import load_dataset
from specad.fit import fit_on_dataset, train
from specad.inference import Detector
from specad.io import Cube, read_cube
from specad.models.efficientad.config import load_config
from specad.synth import synthesize

TINY = ["data.image_size=64", "model.teacher=pdn-random", "train.steps=3"]


@pytest.fixture(scope="session")
def tray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic 6-band tray (RGB + SWIR) at 64 px, a few cubes per split."""
    out = tmp_path_factory.mktemp("tray") / "ds"
    return synthesize(out, "tray6", size=64, n_train=6, n_val=4, n_test_good=2, n_test_anomalous=4)


@pytest.fixture(scope="session")
def model(tray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EfficientAD model (random PDN teacher, 3 steps): real files, trained in seconds."""
    run = tmp_path_factory.mktemp("run") / "efficientad"
    return train(load_config(None, TINY, data={"root": str(tray)}), run, progress=False)


@pytest.fixture(scope="session")
def knn_model(tray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    knn = fit_on_dataset("knn", load_dataset(tray), device="cpu", image_size=64, coreset_size=64)
    return knn.save(tmp_path_factory.mktemp("knn") / "model.safetensors")


@pytest.fixture(scope="session")
def rx_model(tray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_on_dataset("rx", load_dataset(tray)).save(
        tmp_path_factory.mktemp("rx") / "model.safetensors"
    )


@pytest.fixture(scope="session")
def cubes(tray: Path) -> list[Cube]:
    return [read_cube(s.path) for s in load_dataset(tray).split("test")]


def batch(cubes: list[Cube]) -> torch.Tensor:
    """The cubes as one [B, H, W, C] float32 tensor, the layout of a node's ``cube`` port."""
    return torch.from_numpy(np.stack([c.data for c in cubes]))


def reference(model_path: Path, cubes: list[Cube], **kwargs: object) -> dict[str, np.ndarray]:
    """What ``specad predict`` gives on the detector's default runtime (torch for networks, whose
    weights nodes carry in their state_dict), one cube at a time, as port arrays."""
    detector = Detector.load(model_path, device="cpu", runtime="auto")
    detector.use_runtime(detector.model.runtimes[0])
    preds = [detector.predict(c, **kwargs) for c in cubes]
    return {
        "anomaly_map": np.stack([p.anomaly_map for p in preds])[..., None],
        "anomaly_score": np.array([p.score for p in preds], dtype=np.float32),
        "mask": np.stack([p.mask for p in preds])[..., None],
    }
