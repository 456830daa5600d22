"""The demo end to end at a small size: synth, fit knn, train with the CPU preset (its
EfficientNet-Lite0 teacher), report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_line_failure, run_specad

from specad.inference import Detector


@pytest.mark.slow
def test_demo_writes_a_report_with_every_class_and_every_model(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = run_specad(
        "demo", "--out", str(out), "--size", "64", "--train",
        "--set", "train.steps=3", "--set", "train.val_every=0", timeout=600, check=True,
    )  # fmt: skip
    index = Path(done.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert index == out / "report" / "index.html" and index.is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"knn", "efficientad", "rx"}
    table = done.stdout.rpartition("report: ")[0]  # the summary comes just before the path
    assert "image AUROC" in table and "AUPRO@0.3" in table
    for name, record in metrics["models"].items():
        figure = next(iter(record["datasets"].values()))["image_auroc"]
        assert f"{name} " in table and f"{figure:.4f}" in table
    assert Detector.load(out / "knn").model.kind == "knn"
    # the report runs what `auto` picks: the fastest accurate runtime measured on this CPU (bf16
    # only where the CPU has it), and without exports torch or bf16
    exported = (out / "run" / "model.onnx").is_file()
    assert exported != ("warning: ONNX export skipped" in done.stderr)
    runtime = metrics["models"]["efficientad"]["runtime"]
    assert runtime == Detector.load(out / "run").runtime
    assert runtime in ({"int8", "onnx", "torch", "bf16"} if exported else {"torch", "bf16"})
    assert metrics["models"]["rx"]["runtime"] == "numpy"
    classes = json.loads((out / "tray6" / "classes.json").read_text())
    html = index.read_text()
    for name in classes.values():
        if name != "background":
            assert name in html
    trained = Detector.load(out / "run").model
    assert trained.model.teacher == "efficientnet-lite0"  # the CPU preset's (MTD, tray6-hard)


def test_demo_training_keys_need_train(tmp_path: Path) -> None:
    done = run_specad("demo", "--out", str(tmp_path / "d"), "--set", "train.steps=3")
    one_line_failure(done)
    assert done.stderr.strip() == (
        "error: --set sets EfficientAD training keys; add --train to train it"
    )
    assert not (tmp_path / "d").exists()
