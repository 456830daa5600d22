"""knn's default on real photographs it was not tuned on (issue 26): MVTec AD transistor (RGB)
and MTD (grayscale), read from ../shared/data. Slow: an import, a fit and a test split each."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_data

from specad.data import load_dataset
from specad.data.importing import import_dataset
from specad.evaluate import evaluate_detector
from specad.fit import fit_on_dataset

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture(scope="module")
def transistor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real") / "transistor"
    import_dataset(shared_data("mvtec_transistor"), root)
    return root


def test_knn_default_on_real_rgb_uses_the_patch_map_and_finds_the_defects(
    transistor: Path,
) -> None:
    # benchmarks/accuracy/real_results.md: 0.993 / 0.982 with the default, 0.954 / 0.979 when the
    # spectral maps were on for RGB; the bounds leave room for other CPUs' arithmetic only
    det = fit_on_dataset("knn", load_dataset(transistor))
    assert det.model.spectral_weight_ == 0 and det.model.spectra_ is None
    metrics = evaluate_detector(det, load_dataset(transistor))
    assert metrics["image_auroc"] >= 0.985
    assert metrics["pixel_auroc"] >= 0.975
