"""EfficientAD's training config (`specad train -c CONFIG`): its data, model, penalty and train
sections, validated so that unknown keys and wrong types fail with one clear line. The CPU
preset, ``cpu.yaml`` beside this file, is one (``examples/cpu.yaml`` links to it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from specad.bounds import (
    MAX_BATCH_SIZE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    Channels,
    FiniteFloat,
    Rate,
    Seed,
    Strict,
    apply_override,
    read_yaml_mapping,
    validate,
)
from specad.metrics import DEFAULT_FAR
from specad.runtime import DeviceName

CPU_PRESET = Path(__file__).parent / "cpu.yaml"
"""The CPU-sized preset (``examples/cpu.yaml``), which ``specad demo --train`` trains with."""


class Normalization(Strict):
    mean: list[FiniteFloat]
    std: list[Annotated[FiniteFloat, Field(gt=0)]]


class DataConfig(Strict):
    root: Path
    channels: Channels = "all"
    image_size: int = Field(256, ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)
    axes: Literal["hwc", "chw", "whc", "cwh", "hcw", "wch"] | None = None
    normalize: Literal["train", "none"] | Normalization = "train"
    flips: bool = False
    rot90: bool = False


class ModelConfig(Strict):
    teacher: Literal["efficientnet-lite0", "pdn-random", "pdn-distilled", "pdn-file"] = "pdn-random"
    teacher_file: Path | None = None
    channel_mapping: Literal["repeat", "wavelength"] = "repeat"
    size: Literal["small", "medium"] = "small"
    padding: bool | None = None
    """Padded convolutions in the student (and a PDN teacher); None picks by teacher
    (`student_padding`)."""
    ae_weight: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)
    """Share of the student-autoencoder map in the anomaly map; the student-teacher map has
    the rest."""


def student_padding(model: ModelConfig) -> bool:
    """The padding a model is built with. Unset: unpadded for PDN teachers (anomalib's default),
    padded for EfficientNet-Lite0, whose stride-8 grid is then exactly half the student's, so
    the student is pooled to it by a whole factor and exports to ONNX at any size divisible by 8
    (unpadded, 56 cells onto 32 at 256 px, it could not be exported)."""
    if model.padding is not None:
        return model.padding
    return model.teacher == "efficientnet-lite0"


class PenaltyConfig(Strict):
    enabled: bool = True
    folder: Path | None = None
    mapping: Literal["repeat", "wavelength"] = "repeat"


class TrainConfig(Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    lr: float = Field(1e-4, gt=0, le=1, allow_inf_nan=False)
    weight_decay: float = Field(1e-5, ge=0, allow_inf_nan=False)
    lr_decay_at: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
    seed: Seed = 0
    device: DeviceName = "auto"
    bf16: Literal["auto", "on", "off"] = "auto"
    cache_teacher: bool = True
    export: list[Literal["onnx", "int8"]] = ["onnx", "int8"]
    log_every: int = Field(25, ge=1)
    val_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    threshold_far: Rate = DEFAULT_FAR


def min_image_size(model: ModelConfig) -> int:
    """Smallest input side the model accepts (measured): an unpadded PDN's 4x4 kernels need
    34 px; padded PDNs and the EfficientNet-Lite0 teacher work from 16."""
    return 34 if model.teacher != "efficientnet-lite0" and not student_padding(model) else 16


class Training(Strict):
    """How EfficientAD's network is trained: a config's train and penalty sections and the data
    section's geometric augmentation. With the model section it is all the detector keeps of a
    config: no dataset path, no input preparation (`specad.data.Preprocess` has those)."""

    train: TrainConfig = TrainConfig()
    penalty: PenaltyConfig = PenaltyConfig()
    flips: bool = False
    rot90: bool = False


class EfficientADConfig(Strict):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    penalty: PenaltyConfig = PenaltyConfig()
    train: TrainConfig = TrainConfig()

    @property
    def training(self) -> Training:
        return Training(
            train=self.train, penalty=self.penalty, flips=self.data.flips, rot90=self.data.rot90
        )

    @model_validator(mode="after")
    def _image_fits_model(self) -> EfficientADConfig:
        least = min_image_size(self.model)
        if self.data.image_size < least:
            raise ValueError(
                f"data.image_size {self.data.image_size} is too small for this model "
                f"(minimum {least} px)"
            )
        return self


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, **base: Any
) -> EfficientADConfig:
    """Read a YAML config over the sections in ``base``, apply ``key.sub=value`` overrides,
    validate. A section in both is merged key by key, the file's keys winning."""
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    if path is not None:
        path = Path(path)
        for key, value in read_yaml_mapping(path).items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = raw[key] | value
            else:
                raw[key] = value
        root = raw.get("data", {}).get("root") if isinstance(raw.get("data"), dict) else None
        if isinstance(root, str) and not Path(root).is_absolute() and not Path(root).exists():
            raw["data"]["root"] = str(path.parent / root)  # relative to the config's folder
    for item in overrides or []:
        apply_override(raw, item)
    return validate(EfficientADConfig, raw, path)


def dump_config(config: EfficientADConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
