"""Build an EfficientAD model from a config section: the one place that maps names to classes."""

from __future__ import annotations

import numpy as np
import torch

from specad.errors import SpecadError
from specad.models.backbones import EfficientNetLite0Teacher
from specad.models.efficientad.config import ModelConfig, student_padding
from specad.models.efficientad.network import EfficientAD
from specad.models.efficientad.teachers import DISTILLED, pdn_teacher


def build_teacher(
    cfg: ModelConfig, in_channels: int, wavelengths: list[float] | None, seed: int
) -> torch.nn.Module:
    if cfg.teacher == "efficientnet-lite0":
        return EfficientNetLite0Teacher(
            in_channels, mapping=cfg.channel_mapping, wavelengths=wavelengths
        )
    if cfg.teacher == "pdn-file" and cfg.teacher_file is None:
        raise SpecadError("model.teacher is 'pdn-file' but model.teacher_file is not set")
    source = {"pdn-random": "random", "pdn-distilled": DISTILLED}.get(cfg.teacher, cfg.teacher_file)
    return pdn_teacher(
        in_channels,
        size=cfg.size,
        padding=student_padding(cfg),
        source=source,
        mapping=cfg.channel_mapping,
        wavelengths=wavelengths,
        seed=seed,
    )


def init_seeds(seed: int) -> tuple[int, int]:
    """Independent teacher and student seeds derived from one run seed.

    Seeding both from ``seed`` itself made a random PDN student a copy of its teacher, so the
    student-teacher difference EfficientAD learns from started at exactly zero.
    """
    teacher, student = np.random.SeedSequence(seed).spawn(2)
    return int(teacher.generate_state(1)[0]), int(student.generate_state(1)[0])


def build_efficientad(
    cfg: ModelConfig,
    in_channels: int,
    image_size: int,
    wavelengths: list[float] | None = None,
    seed: int = 0,
) -> EfficientAD:
    """A fresh model, reproducible from ``seed``: a random teacher and the student/autoencoder
    draw from independent streams derived from it (`init_seeds`). A configuration the network
    cannot be built from (a teacher file of other shapes) is a `SpecadError`."""
    teacher_seed, student_seed = init_seeds(seed)
    try:
        teacher = build_teacher(cfg, in_channels, wavelengths, teacher_seed)
        torch.manual_seed(student_seed)
        return EfficientAD(
            in_channels,
            image_size=image_size,
            teacher=teacher,
            size=cfg.size,
            padding=student_padding(cfg),
            ae_weight=cfg.ae_weight,
        )
    except (RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0]
        raise SpecadError(f"cannot build the EfficientAD model ({reason})") from err
