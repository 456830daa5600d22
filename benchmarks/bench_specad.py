"""specad side of the speed benchmark: EfficientAD-S inference and training steps on CPU.

Paths: ``fp32`` eager, ``bf16`` autocast, ``bf16+cl`` autocast with channels_last, and
``detector``: whatever :class:`specad.infer.Detector` does by default, so that the benchmark
follows the product as its fast paths change. Run ``python benchmarks/bench_specad.py --help``.
"""

from __future__ import annotations

from collections.abc import Callable

import harness
import torch

from specad.config import ModelConfig
from specad.data import Preprocess
from specad.infer import Detector, ModelMeta
from specad.models.build import build_efficientad
from specad.models.efficientad import EfficientAD, ae_augment
from specad.train import train_step

TEACHERS = ("pdn-random", "efficientnet-lite0")


def cases() -> list[harness.Case]:
    """3 channels on every path (the anomalib comparison), 6 and 30 on the default and best."""
    out = []
    for teacher in TEACHERS:
        for channels in (3, 6, 30):
            few = ("fp32", "bf16+cl", "detector")
            paths = ("fp32", "bf16", "bf16+cl", "detector") if channels == 3 else few
            for batch in (1, 8):
                for path in paths:
                    out.append(harness.case("infer", teacher, path, channels, batch))
        for channels in (3, 6):
            for path in ("fp32", "bf16", "bf16+cl"):
                out.append(harness.case("train", teacher, path, channels, 1))
    return out


def _model(c: harness.Case) -> EfficientAD:
    return build_efficientad(ModelConfig(teacher=c["model"]), c["channels"], harness.SIZE)


def _detector(model: EfficientAD, channels: int) -> Detector:
    pre = Preprocess(channels, list(range(channels)), harness.SIZE)
    bands = [f"b{i}" for i in range(channels)]
    meta = ModelMeta("efficientad", pre, float("inf"), bands, None, None)
    return Detector(model, meta, "cpu")


def prepare(c: harness.Case) -> Callable[[], object]:
    """The timed call of a case: one inference batch, or one full optimiser step."""
    model = _model(c)
    x = harness.random_images(c["batch"], c["channels"], seed=0)
    penalty = harness.random_images(c["batch"], c["channels"], seed=1)
    bf16 = "bf16" in c["path"]
    if c["path"].endswith("+cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        penalty = penalty.contiguous(memory_format=torch.channels_last)

    if c["task"] == "infer" and c["path"] == "detector":
        det = _detector(model, c["channels"])
        return lambda: det.maps(x).amax(dim=(1, 2, 3))
    if c["task"] == "infer":
        model.eval()

        def infer() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model.anomaly_map(x).float().amax(dim=(1, 2, 3))

        return infer

    params = [*model.student.parameters(), *model.autoencoder.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)  # train.py's and anomalib's
    gen = torch.Generator().manual_seed(0)
    model.train()

    def step() -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return train_step(model, opt, x, ae_augment(x, gen), penalty)["total"].detach()

    return step


if __name__ == "__main__":
    harness.main("specad", __file__, cases(), prepare)
