"""knn on the exported runtimes: its patch map as one ONNX graph, int8 on the backbone only,
chosen by ``auto`` like EfficientAD's, and spectral maps added in torch after the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, run_specad

from specad.data import load_dataset
from specad.export import INT8_FILE, ONNX_FILE, export_detector
from specad.fit import fit_on_dataset
from specad.inference import Detector, run_split

SMALL = {"image_size": 64, "coreset_size": 128}


@pytest.fixture(scope="module")
def three_channels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """knn fitted on three-channel cubes, saved and exported: the dataset, the model's path and
    the largest map difference its onnx export reported."""
    root = make_dataset(tmp_path_factory.mktemp("d3") / "ds", channels=3)
    det = fit_on_dataset("knn", load_dataset(root), device="cpu", **SMALL)
    assert det.model.spectra_ is None  # three channels: the patch map alone
    path = det.save(tmp_path_factory.mktemp("m3") / "run")
    return root, path, export_detector(det, path)["onnx"]


@pytest.mark.slow
def test_cli_exports_knn_and_every_runtime_gives_the_torch_maps(
    tiny_root: Path, tmp_path: Path
) -> None:
    # six channels: the spectral maps are on, added in torch after the exported patch map
    root, run = tiny_root, tmp_path / "run"
    sets = (f"--set={k}={v}" for k, v in SMALL.items())
    run_specad("fit", "knn", str(root), "--out", str(run), *sets, check=True)
    done = run_specad("export", str(run), "--int8", "--data", str(root), check=True)
    assert "onnx: largest map difference" in done.stdout and "auto on" in done.stdout
    assert (run / ONNX_FILE).is_file() and (run / INT8_FILE).is_file()
    samples = load_dataset(root).require("test")
    reference = run_split(Detector.load(run, device="cpu", runtime="torch"), samples)
    onnx = run_split(Detector.load(run, device="cpu", runtime="onnx"), samples)
    for x, y in zip(reference.maps, onnx.maps, strict=True):  # export's parity rule
        np.testing.assert_allclose(x, y, atol=1e-3 * max(1.0, float(np.abs(x).max())))
    int8 = run_split(Detector.load(run, device="cpu", runtime="int8"), samples)  # runs; its
    assert np.isfinite(int8.scores).all()  # accuracy is for `export` to judge, on real images
    done = run_specad("evaluate", str(run), str(root), "--json", check=True)
    assert json.loads(done.stdout)["image_auroc"] == 1.0


def test_a_three_channel_export_is_the_whole_map(three_channels: tuple[Path, Path, float]) -> None:
    root, path, difference = three_channels
    assert difference < 1e-3
    torch_det = Detector.load(path, device="cpu", runtime="torch")
    val = load_dataset(root).require("val")
    x = torch.stack([torch_det.meta.preprocess.cube_tensor(s.read()) for s in val])
    onnx = Detector.load(path, device="cpu", runtime="onnx")
    torch.testing.assert_close(onnx.maps(x), torch_det.maps(x), atol=1e-3, rtol=0)


def test_the_exported_graph_pads_inside_its_convolutions(
    three_channels: tuple[Path, Path, float], tmp_path: Path
) -> None:
    # the backbone's "same" padding must reach onnxruntime as constants it folds into the
    # convolutions: a separate pad before each one cost a sixth of the graph's time
    import onnxruntime as ort

    _, path, _ = three_channels
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path.parent / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    assert ops.count("Conv") + ops.count("FusedConv") >= 30
    assert "Pad" not in ops, ops
