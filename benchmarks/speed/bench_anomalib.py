"""anomalib 2.7.0 side of the speed benchmark; runs in ``benchmarks/.venv-anomalib``.

It times anomalib's own torch model (EfficientAD-S, 384 teacher channels, no padding, padded
maps: anomalib's defaults) with random teacher weights, so nothing is downloaded. Lightning's
per-step overhead is left out, which flatters anomalib's training step slightly. bf16 training
is not measured: ``torch.quantile`` refuses bf16 input, so anomalib cannot train that way.
"""

from __future__ import annotations

from collections.abc import Callable

import harness
import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize


def cases() -> list[harness.Case]:
    out = [
        harness.case("infer", "anomalib", path, 3, batch)
        for batch in (1, 8)
        for path in ("fp32", "bf16+cl")
    ]
    return [*out, harness.case("train", "anomalib", "fp32", 3, 1)]


def _model() -> EfficientAdModel:
    """The model as after anomalib's fitting, with neutral statistics.

    Non-zero teacher statistics and quantiles make anomalib take its normalising branches, as
    in real training and inference; their values do not change the amount of work.
    """
    torch.manual_seed(0)
    model = EfficientAdModel(384, EfficientAdModelSize.S, padding=False, pad_maps=True)
    model.teacher.requires_grad_(False)
    with torch.no_grad():
        model.mean_std["std"].fill_(1.0)
        model.quantiles["qb_st"].fill_(0.1)
        model.quantiles["qb_ae"].fill_(0.1)
    return model


def prepare(c: harness.Case) -> Callable[[], object]:
    """The timed call of a case: one inference batch, or one full optimiser step."""
    model = _model()
    x = harness.random_images(c["batch"], 3, seed=0)
    bf16 = "bf16" in c["path"]
    if c["path"].endswith("+cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    if c["task"] == "infer":
        model.eval()

        def infer() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model(x).pred_score  # the max of the map, computed by anomalib

        return infer

    penalty = harness.random_images(c["batch"], 3, seed=1)
    params = [*model.student.parameters(), *model.ae.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)  # anomalib's defaults
    model.train()

    def train_step() -> torch.Tensor:
        loss = sum(model(batch=x, batch_imagenet=penalty))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return train_step


if __name__ == "__main__":
    harness.main("anomalib", __file__, cases(), prepare)
