"""The on-disk model format: ``model.safetensors`` (tensors only, safe to load from anyone) and
``model.json`` (what the tensors mean: kind, channels, bands, preprocessing, threshold, config
and versions), with the checks that refuse a ``model.json`` that would score nonsense.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specad import __version__
from specad.data import Preprocess
from specad.errors import SpecadError

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


@dataclass
class ModelMeta:
    kind: str
    preprocess: Preprocess
    threshold: float
    bands: list[str]
    wavelengths: list[float] | None
    rgb: tuple[int, int, int] | None
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(
        default_factory=lambda: {"specad": __version__, "torch": torch.__version__}
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        raw = json.loads(text)
        raw["preprocess"] = Preprocess(**raw["preprocess"])
        raw["rgb"] = tuple(raw["rgb"]) if raw.get("rgb") else None
        return cls(**raw)


def check_meta(meta: ModelMeta, path: Path) -> None:
    """Refuse metadata that would score nonsense: bad channels, sizes or normalisation."""
    pre = meta.preprocess
    if not isinstance(pre.source_channels, int) or pre.source_channels < 1:
        raise SpecadError(f"preprocess.source_channels is {pre.source_channels!r}", path)
    if not pre.channels or not all(
        isinstance(c, int) and 0 <= c < pre.source_channels for c in pre.channels
    ):
        raise SpecadError(
            f"preprocess.channels {pre.channels} are not indices of a "
            f"{pre.source_channels}-channel cube",
            path,
        )
    if not isinstance(pre.image_size, int) or pre.image_size < 0:
        raise SpecadError(f"preprocess.image_size is {pre.image_size!r}", path)
    for name, values in (("mean", pre.mean), ("std", pre.std)):
        if values is None:
            continue
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (len(pre.channels),) or not np.isfinite(arr).all():
            raise SpecadError(f"preprocess.{name} is not {len(pre.channels)} finite numbers", path)
    if pre.std is not None and min(pre.std) <= 0:
        raise SpecadError("preprocess.std has a zero or negative entry", path)
    thresholds = [meta.threshold, meta.extra.get("int8_threshold", 0.0)]
    if not all(isinstance(t, int | float) and np.isfinite(t) for t in thresholds):
        raise SpecadError("the threshold is not a finite number", path)


def rebuild_efficientad(meta: ModelMeta, state: dict[str, torch.Tensor], path: Path) -> Any:
    from specad.config import Config, validate
    from specad.models.build import build_efficientad

    meta_path = path.with_name(META_FILE)
    cfg = validate(Config, meta.config, meta_path)
    try:
        model = build_efficientad(
            cfg.model, len(meta.preprocess.channels), meta.preprocess.image_size, meta.wavelengths
        )
    except (RuntimeError, ValueError) as err:
        raise SpecadError(
            f"cannot build the model it describes ({str(err).splitlines()[0]})", meta_path
        ) from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SpecadError(
            f"weights do not fit the model ({str(err).splitlines()[0]})", path
        ) from err
    return model


def model_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        return path / MODEL_FILE
    return path
