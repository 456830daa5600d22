"""The detector nodes give the numbers of ``specad predict`` and keep their state in state_dict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_ai_core.pipeline.pipeline import CuvisPipeline
from cuvis_ai_schemas.pipeline import PortCompatibilityError

from specad.cuvis import (
    EfficientADNode,
    KNNNode,
    ReflectanceNormalizer,
    RXNode,
    SceneDetectorNode,
)
from specad.errors import SpecadError
from specad.io import Cube

from .conftest import batch, reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_same(out: dict[str, torch.Tensor], ref: dict[str, np.ndarray]) -> None:
    assert out["anomaly_map"].dtype == torch.float32 and out["mask"].dtype == torch.bool
    assert out["anomaly_map"].shape == ref["anomaly_map"].shape
    np.testing.assert_allclose(out["anomaly_map"].cpu().numpy(), ref["anomaly_map"], atol=1e-5)
    np.testing.assert_allclose(out["anomaly_score"].cpu().numpy(), ref["anomaly_score"], atol=1e-5)
    assert np.array_equal(out["mask"].cpu().numpy(), ref["mask"])


@pytest.mark.parametrize("device", DEVICES)
def test_efficientad_node_equals_specad_predict(
    model: Path, cubes: list[Cube], device: str
) -> None:
    node = EfficientADNode(str(model)).to(device)
    out = node.forward(cube=batch(cubes).to(device))
    assert out["anomaly_map"].device.type == device
    assert_same(out, reference(model, cubes))


def test_tiled_node_equals_tiled_predict(model: Path, cubes: list[Cube]) -> None:
    """A cube larger than the model's input is scored in native-resolution tiles."""
    big = [Cube(np.tile(c.data, (2, 2, 1))[:100, :90], c.bands, c.wavelengths) for c in cubes[:2]]
    out = EfficientADNode(str(model), tiled=True).forward(cube=batch(big))
    assert out["anomaly_map"].shape == (2, 100, 90, 1)
    assert_same(out, reference(model, big, tiled=True))


def test_rx_node_equals_specad_predict(rx_model: Path, cubes: list[Cube]) -> None:
    assert_same(RXNode(str(rx_model)).forward(cube=batch(cubes)), reference(rx_model, cubes))


def test_knn_node_equals_specad_predict_and_keeps_its_state(
    knn_model: Path, cubes: list[Cube]
) -> None:
    ref = reference(knn_model, cubes)
    node = KNNNode(str(knn_model))
    target = KNNNode(str(knn_model))
    target.detector.model.bank_ = target.detector.model.bank_ + 1.0
    target.detector.model.calibrate([123.0])  # another threshold, until loaded
    target.load_state_dict(node.state_dict())  # bank, extractor and threshold come back
    for out in (node.forward(cube=batch(cubes)), target.forward(cube=batch(cubes))):
        # batched distances differ from one-at-a-time ones in the last float bits (maps are
        # scaled on val/good, so they and the scores come near zero: absolute tolerance too)
        for key in ("anomaly_map", "anomaly_score"):
            np.testing.assert_allclose(out[key].numpy(), ref[key], rtol=1e-5, atol=1e-5)
        assert np.array_equal(out["mask"].numpy(), ref["mask"])


def test_channels_select_by_wavelength_or_index(model: Path, cubes: list[Cube]) -> None:
    """A camera cube with more, reordered bands is reduced to the model's six."""
    order = [5, 0, 4, 1, 3, 2]
    extra = np.full((*cubes[0].shape[:2], 1), 0.3, np.float32)
    wide = torch.cat(
        [batch(cubes)[..., order], torch.from_numpy(extra).expand(len(cubes), -1, -1, -1)], -1
    )
    wavelengths = np.array([cubes[0].wavelengths[i] for i in order] + [1600], np.int32)
    ref = reference(model, cubes)
    by_nm = EfficientADNode(str(model), channels=[630.0, 532.0, 465.0, 1050.0, 1200.0, 1450.0])
    assert_same(by_nm.forward(cube=wide, wavelengths=wavelengths), ref)
    by_index = EfficientADNode(str(model), channels=[1, 3, 5, 4, 2, 0])
    assert_same(by_index.forward(cube=wide), ref)


def test_state_dict_carries_weights_threshold_and_statistics(model: Path) -> None:
    source = EfficientADNode(str(model))
    state = source.state_dict()
    assert "_extra_state" in state and any(k.startswith("model.student.") for k in state)
    target = EfficientADNode(str(model))
    target.detector.model.calibrate([123.0])  # another threshold, until loaded
    target.detector.meta.preprocess.mean = [0.0] * 6
    with torch.no_grad():
        next(target.model.student.parameters()).add_(1.0)
    target.load_state_dict(state)
    assert target.detector.meta == source.detector.meta
    assert target.detector.threshold == source.detector.threshold != 123.0
    for key, value in target.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state[key]), key


def test_cube_port_needs_the_models_channels(model: Path) -> None:
    node = EfficientADNode(str(model))
    assert node.in_channels == 6 and EfficientADNode(str(model), channels=[0]).in_channels == -1
    pipeline = CuvisPipeline("ports")
    pipeline.connect(ReflectanceNormalizer(name="n").outputs.cube, node.inputs.cube)
    with pytest.raises(PortCompatibilityError, match="Dimension 3 mismatch"):
        pipeline.forward(batch={"cube": torch.zeros(1, 64, 64, 5)})


def test_wrong_model_kind_is_a_clear_error(rx_model: Path) -> None:
    with pytest.raises(
        SpecadError, match="EfficientADNode runs 'efficientad' models, this one is 'rx'"
    ):
        EfficientADNode(str(rx_model))


def test_importing_specad_does_not_import_cuvis_ai() -> None:
    code = (
        "import sys, specad, specad.cuvis, specad.inference; "
        "assert not [m for m in sys.modules if m.startswith('cuvis_ai')]; "
        "specad.cuvis.EfficientADNode; assert 'cuvis_ai_core' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["global-rx", "lrx", "crd", "2s-glrt"])
def test_scene_detector_node_equals_the_scene_detector(name: str) -> None:
    """Each scene detector as a node: the map of `specad scene` on every cube of the batch."""
    from specad.models.bands import BandPrep
    from specad.models.scene import detect_scene

    rng = np.random.default_rng(0)
    scenes = rng.normal(size=(2, 17, 15, 6)).astype(np.float32)
    scenes[:, 8:10, 7:9] += 4.0
    params = {"outer": 7, "inner": 3} if name != "global-rx" else {}
    node = SceneDetectorNode(name, params=params, reduce="pca", components=4)
    out = node.forward(cube=torch.from_numpy(scenes))
    assert out["anomaly_map"].shape == (2, 17, 15, 1)
    for i, scene in enumerate(scenes):
        data, _ = BandPrep(reduce="pca", components=4).apply(Cube(scene))
        expected = detect_scene(data, name, **params)
        np.testing.assert_allclose(out["anomaly_map"][i, ..., 0].numpy(), expected, rtol=1e-5)
        assert out["anomaly_score"][i] == pytest.approx(float(expected.max()), rel=1e-5)


def test_scene_detector_node_refuses_unknown_names() -> None:
    with pytest.raises(SpecadError, match="unknown detector 'nope'"):
        SceneDetectorNode("nope")
