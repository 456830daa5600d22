"""The specad pipeline in cuvis.ai: same numbers as specad, reloads in a fresh process through
cuvis.ai's loader, and its plugin manifest registers the nodes by name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from cuvis_ai_core.utils.node_registry import NodeRegistry
from cuvis_ai_schemas.pipeline import PortSpec
from cuvis_ai_schemas.plugin import load_plugin_manifest

from specad.cuvis import (
    PLUGIN_DIR,
    PLUGIN_MANIFEST,
    EfficientADNode,
    RXNode,
    build_pipeline,
    nodes,
)
from specad.io import Cube, to_reflectance

from .conftest import batch, reference

SCALE = 1e-4  # the camera stores reflectance x 10000 as uint16


def counts(cubes: list[Cube]) -> torch.Tensor:
    return torch.from_numpy(np.round(batch(cubes).numpy() / SCALE).astype(np.uint16))


def test_pipeline_normalises_detects_and_decides(model: Path, cubes: list[Cube]) -> None:
    raw = counts(cubes)
    out = build_pipeline(model, scale=SCALE).forward(batch={"cube": raw})
    reflectance = [to_reflectance(Cube(c), scale=SCALE) for c in raw.numpy()]
    ref = reference(model, reflectance)
    np.testing.assert_allclose(
        out["detector", "anomaly_map"].numpy(), ref["anomaly_map"], atol=1e-5
    )
    np.testing.assert_allclose(
        out["detector", "anomaly_score"].numpy(), ref["anomaly_score"], atol=1e-5
    )
    assert torch.equal(out["decider", "decisions"], out["detector", "mask"])


def test_rx_baseline_runs_in_the_same_pipeline(rx_model: Path, cubes: list[Cube]) -> None:
    out = build_pipeline(rx_model, detector=RXNode).forward(batch={"cube": batch(cubes)})
    ref = reference(rx_model, cubes)
    np.testing.assert_allclose(
        out["detector", "anomaly_map"].numpy(), ref["anomaly_map"], atol=1e-5
    )
    assert torch.equal(out["decider", "decisions"], out["detector", "mask"])


def test_saved_pipelines_reload_identically_in_a_fresh_process(
    model: Path, rx_model: Path, cubes: list[Cube], tmp_path: Path
) -> None:
    """Both detectors' pipelines, saved with save_to_file, through cuvis.ai's restore_pipeline."""
    raw = counts(cubes)
    torch.save(raw, tmp_path / "input.pt")
    before = {}
    for path, detector in ((model, EfficientADNode), (rx_model, RXNode)):
        pipeline = build_pipeline(path, scale=SCALE, detector=detector)
        before[detector.KIND] = pipeline.forward(batch={"cube": raw})
        pipeline.save_to_file(tmp_path / f"{detector.KIND}.yaml")
    script = textwrap.dedent(
        f"""
        import torch
        from cuvis_ai_core.utils.restore import restore_pipeline
        raw = torch.load({str(tmp_path / "input.pt")!r})
        for kind in {list(before)!r}:
            pipeline = restore_pipeline(f"{tmp_path}/{{kind}}.yaml",
                                        plugins_dirs=[{str(PLUGIN_DIR)!r}], device="cpu")
            torch.save(pipeline.forward(batch={{"cube": raw}}), f"{tmp_path}/{{kind}}.out.pt")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    for kind, expected in before.items():
        after = torch.load(tmp_path / f"{kind}.out.pt")
        assert after.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(after[key], value), (kind, key)


def test_plugin_manifest_registers_the_nodes_by_name() -> None:
    registry = NodeRegistry()
    registry.register_plugin(PLUGIN_MANIFEST)
    assert registry.list_plugins() == ["specad"]
    for name in (
        "EfficientADNode",
        "RXNode",
        "SceneDetectorNode",
        "ReflectanceNormalizer",
        "ThresholdDecider",
    ):
        assert registry.get(name) is getattr(nodes, name)


def _port(spec: PortSpec) -> dict:
    """A class's PortSpec as the manifest writes it: dtype name, symbolic dims as -1."""
    if spec.dtype is torch.Tensor:
        dtype = ""
    elif isinstance(spec.dtype, torch.dtype):
        dtype = str(spec.dtype).removeprefix("torch.")
    else:
        dtype = np.dtype(spec.dtype).name
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return {
        "dtype": dtype,
        "shape": shape,
        "optional": spec.optional,
        "description": spec.description,
    }


def test_manifest_describes_the_node_classes() -> None:
    """The palette reads ports from the manifest without importing specad: keep them equal."""
    for entry in load_plugin_manifest(PLUGIN_MANIFEST).capabilities:
        cls = getattr(nodes, entry.class_name.rsplit(".", 1)[1])
        assert entry.category == cls.get_category().value
        assert set(entry.tags) == {t.value for t in cls.get_tags()}
        for declared, specs in (
            (entry.input_specs, cls.INPUT_SPECS),
            (entry.output_specs, cls.OUTPUT_SPECS),
        ):
            got = {k: v.model_dump(exclude={"variadic"}) for k, v in declared.items()}
            assert got == {k: _port(v) for k, v in specs.items()}, entry.class_name


def test_the_integration_never_imports_torchvision() -> None:
    """scripts/setup-cuvis.sh leaves torchvision out where the disk is short; this holds it."""
    code = "import sys, specad.cuvis, specad.cuvis.pipeline; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
