"""specad side of the speed benchmark: EfficientAD-S inference and training steps on CPU.

Inference paths: ``fp32`` plain eager (what anomalib does), then the runtimes a user can pick
(``torch``: channels_last; ``bf16``; ``onnx``; ``int8``) and ``detector``: what
:class:`specad.inference.Detector` picks by itself for a model as ``specad train`` leaves it, so the
benchmark follows the product as it changes. Training paths: ``fp32`` plain eager step on full
student outputs without caching, ``bf16`` autocast, and ``train``: the step as ``specad train``
runs it (channels_last, cached teacher outputs).
Run ``python benchmarks/speed/bench_specad.py --help``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
from collections.abc import Callable
from pathlib import Path

import harness
import torch

from specad.data import Preprocess
from specad.errors import SpecadError
from specad.export import export_detector, measure_runtimes
from specad.inference import Detector
from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import ModelConfig, Training
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.efficientad.network import EfficientAD
from specad.models.efficientad.train_loop import ae_augment, train_step
from specad.models.modelfile import ModelMeta

RUNTIMES = ("torch", "bf16", "onnx", "int8")


def cases() -> list[harness.Case]:
    """Every path on 3 channels (the anomalib comparison); fewer on 6 and 30 and on EfficientNet."""
    out = []
    for channels, paths in (
        (3, ("fp32", *RUNTIMES, "detector")),
        (6, ("fp32", "onnx", "int8", "detector")),
        (30, ("fp32", "onnx", "int8", "detector")),
    ):
        for batch in (1, 8):
            out += [harness.case("infer", "pdn-random", p, channels, batch) for p in paths]
    for channels in (3, 6):
        out += [
            harness.case("train", "pdn-random", p, channels, 1) for p in ("fp32", "bf16", "train")
        ]
    for batch in (1, 8):
        out += [
            harness.case("infer", "efficientnet-lite0", p, 6, batch) for p in ("fp32", "detector")
        ]
    out += [harness.case("train", "efficientnet-lite0", p, 6, 1) for p in ("fp32", "train")]
    return out


def _model(c: harness.Case) -> EfficientAD:
    """A fresh model whose student differs from its teacher, as after training.

    A random PDN teacher and the student start from the same seed, so their trunks would be
    identical and onnxruntime would merge them (common-subexpression elimination) and time half
    the work; a small perturbation keeps every convolution real.
    """
    model = build_efficientad(ModelConfig(teacher=c["model"]), c["channels"], harness.SIZE)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    return model


def _export(path: Path, channels: int, int8: bool) -> None:
    """The exports ``specad train`` writes, and its measurement of which runtime is fastest here
    (`measure_runtimes`: ``auto`` follows it); run in a child so their memory is not counted.

    Random images stand in for the calibration and validation ones: speed does not depend on
    them. The int8 threshold they give lets ``auto`` choose int8 where fewer than
    `specad.export.RANK_MIN_IMAGES` are given, as here (no ranking check on random images).
    """
    det = Detector.load(path, device="cpu", runtime="torch")
    images = harness.random_images(8, channels, seed=2)
    with contextlib.suppress(SpecadError):  # as `specad train`: unexportable models run on torch
        export_detector(det, path, images, int8=int8, validation=images if int8 else None)
        if int8:
            measure_runtimes(det, path, images)


def _detector(model: EfficientAD, c: harness.Case, folder: Path) -> Detector:
    """The model saved and exported as ``specad train`` leaves it, then loaded with a runtime."""
    channels = c["channels"]
    pre = Preprocess(channels, list(range(channels)), harness.SIZE)
    bands = [f"b{i}" for i in range(channels)]
    meta = ModelMeta("efficientad", pre, bands, None, None)
    model_cfg = ModelConfig(teacher=c["model"])
    detector = EfficientADDetector.from_network(model, model_cfg, Training(), channels)
    detector.calibrate([0.0])
    path = Detector(detector, meta, "cpu").save(folder / "model.safetensors")
    child = multiprocessing.get_context("spawn").Process(
        target=_export, args=(path, channels, c["path"] in ("int8", "detector"))
    )
    child.start()
    child.join()
    runtime = "auto" if c["path"] == "detector" else c["path"]
    return Detector.load(path, device="cpu", runtime=runtime)


def prepare(c: harness.Case) -> Callable[[], object]:
    """The timed call of a case: one inference batch, or one full optimiser step."""
    model = _model(c)
    x = harness.random_images(c["batch"], c["channels"], seed=0)
    if c["task"] == "infer" and c["path"] == "fp32":
        model.eval()

        def infer() -> torch.Tensor:
            with torch.inference_mode():
                return model.anomaly_map(x).amax(dim=(1, 2, 3))

        return infer
    if c["task"] == "infer":
        det = _detector(model, c, Path(tempfile.mkdtemp()))
        step = lambda: det.maps(x).amax(dim=(1, 2, 3))  # noqa: E731
        step.flop_reference = lambda: model.eval().anomaly_map(x)  # ORT calls are not counted
        step.runtime = det.runtime
        return step

    penalty = harness.random_images(c["batch"], c["channels"], seed=1)
    params = [*model.student.parameters(), *model.autoencoder.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)  # train.py's and anomalib's
    gen = torch.Generator().manual_seed(0)
    model.train()
    teacher_x = None
    if c["path"] == "train":
        model = model.to(memory_format=torch.channels_last)
        x, penalty = (t.contiguous(memory_format=torch.channels_last) for t in (x, penalty))
        teacher_x = model.teacher_features(x)

    def step() -> torch.Tensor:
        losses = train_step(
            model, opt, x, ae_augment(x, gen), penalty, teacher_x, c["path"] == "bf16"
        )
        return losses["total"].detach()

    return step


if __name__ == "__main__":
    harness.main("specad", __file__, cases(), prepare)
