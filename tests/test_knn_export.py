"""knn on the exported runtimes: its patch map as one ONNX graph, int8 on the backbone only,
chosen by ``auto`` like EfficientAD's, and spectral maps added in torch after the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset
from test_cli import specad

from specad.data import load_dataset
from specad.evaluate import fit_on_dataset
from specad.export import INT8_FILE, ONNX_FILE, export_detector
from specad.infer import Detector
from specad.scoring import run_split

SMALL = {"image_size": 64, "coreset_size": 128}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("d") / "ds")


def test_cli_exports_knn_and_every_runtime_gives_the_torch_maps(root: Path, tmp_path: Path) -> None:
    # six channels: the spectral maps are on, added in torch after the exported patch map
    run = tmp_path / "run"
    specad(
        "fit", "knn", str(root), "--out", str(run), *(f"--set={k}={v}" for k, v in SMALL.items())
    )
    done = specad("export", str(run), "--int8", "--data", str(root))
    assert "onnx: largest map difference" in done.stdout and "auto on" in done.stdout
    assert (run / ONNX_FILE).is_file() and (run / INT8_FILE).is_file()
    samples = load_dataset(root).require("test")
    reference = run_split(Detector.load(run, device="cpu", runtime="torch"), samples)
    onnx = run_split(Detector.load(run, device="cpu", runtime="onnx"), samples)
    for x, y in zip(reference.maps, onnx.maps, strict=True):  # export's parity rule
        np.testing.assert_allclose(x, y, atol=1e-3 * max(1.0, float(np.abs(x).max())))
    int8 = run_split(Detector.load(run, device="cpu", runtime="int8"), samples)  # runs; its
    assert np.isfinite(int8.scores).all()  # accuracy is for `export` to judge, on real images
    done = specad("evaluate", str(run), str(root), "--json")
    assert json.loads(done.stdout)["image_auroc"] == 1.0


def test_a_three_channel_export_is_the_whole_map(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", channels=3)
    det = fit_on_dataset("knn", load_dataset(root), device="cpu", **SMALL)
    assert det.model.spectra_ is None  # three channels: the patch map alone
    path = det.save(tmp_path / "run")
    assert export_detector(det, path)["onnx"] < 1e-3
    val = load_dataset(root).require("val")
    x = torch.stack([det.meta.preprocess.cube_tensor(s.read()) for s in val])
    onnx = Detector.load(path, device="cpu", runtime="onnx")
    torch.testing.assert_close(onnx.maps(x), det.use_runtime("torch").maps(x), atol=1e-3, rtol=0)


def test_the_exported_graph_pads_inside_its_convolutions(tmp_path: Path) -> None:
    # the backbone's "same" padding must reach onnxruntime as constants it folds into the
    # convolutions: a separate pad before each one cost a sixth of the graph's time
    import onnxruntime as ort

    root = make_dataset(tmp_path / "ds", channels=3)
    det = fit_on_dataset("knn", load_dataset(root), device="cpu", **SMALL)
    path = det.save(tmp_path / "run")
    export_detector(det, path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path.parent / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    assert ops.count("Conv") + ops.count("FusedConv") >= 30
    assert "Pad" not in ops, ops
