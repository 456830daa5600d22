"""The on-disk model format, and the checks that refuse a model that would score nonsense.

A model is two files in one folder. ``model.safetensors`` is the detector itself
(`specad.models.base.BaseDetector.save`: tensors, with parameters and fitted values such as the
threshold in its metadata; nothing is unpickled). ``model.json`` describes the input it expects:
kind, channels, bands, preprocessing, versions. Files written before the detector contract
(threshold, config and ``extra`` in ``model.json``; bare tensors) still load.
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
from specad.metrics import DEFAULT_FAR
from specad.models.base import FORMAT, BaseDetector
from specad.models.registry import from_file, read_file, restore

MODEL_FILE, META_FILE = "model.safetensors", "model.json"
LEGACY_KEYS = ("threshold", "config", "extra")
"""``model.json`` keys of files written before the detector contract."""


@dataclass
class ModelMeta:
    """What a detector expects of a cube: which channels, how preprocessed, which bands."""

    kind: str
    preprocess: Preprocess
    bands: list[str]
    wavelengths: list[float] | None
    rgb: tuple[int, int, int] | None
    versions: dict[str, str] = field(
        default_factory=lambda: {"specad": __version__, "torch": torch.__version__}
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        raw = json.loads(text)
        for key in LEGACY_KEYS:
            raw.pop(key, None)
        raw["preprocess"] = Preprocess(**raw["preprocess"])
        raw["rgb"] = tuple(raw["rgb"]) if raw.get("rgb") else None
        return cls(**raw)


def read_meta(path: Path) -> tuple[ModelMeta, dict[str, Any]]:
    """``model.json`` checked, and its raw fields (legacy files keep the threshold there)."""
    if not path.is_file():
        raise SpecadError("model file not found", path)
    try:
        raw = json.loads(path.read_text())
        meta = ModelMeta.from_json(json.dumps(raw))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise SpecadError(f"corrupt model metadata ({err})", path) from err
    check_meta(meta, path)
    return meta, raw


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


def check_detector(det: BaseDetector, meta: ModelMeta, path: Path) -> None:
    """The detector must be the kind ``model.json`` names, with finite thresholds."""
    if det.kind != meta.kind:
        raise SpecadError(f"model.json says '{meta.kind}', the file holds '{det.kind}'", path)
    thresholds = [det.threshold_, getattr(det, "int8_threshold_", None) or 0.0]
    if not all(isinstance(t, int | float) and np.isfinite(t) for t in thresholds):
        raise SpecadError("the threshold is not a finite number", path)


def load_model(path: str | Path) -> tuple[BaseDetector, ModelMeta]:
    """The detector in a model file (or the run folder holding it) and its ``model.json``."""
    path = model_file(path)
    meta_path = path.with_name(META_FILE)
    if not path.is_file():
        raise SpecadError("model file not found", path)
    meta, raw = read_meta(meta_path)
    metadata, tensors = read_file(path)
    if metadata.get("format") == FORMAT:
        det, source = from_file(metadata, tensors, path), path
    else:  # parameters and threshold in model.json: its errors name it
        params, values = _legacy_state(meta, raw, metadata, meta_path)
        det, source = restore(meta.kind, params, tensors, values, meta_path), meta_path
    check_detector(det, meta, source)
    return det, meta


def _legacy_state(
    meta: ModelMeta, raw: dict[str, Any], metadata: dict[str, str], meta_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters and fitted values of a model saved before the detector contract: RX and knn
    files kept their settings in the tensor file's metadata, everything else in model.json."""
    extra = raw.get("extra") or {}
    values: dict[str, Any] = {
        "threshold": raw.get("threshold"),
        "val_scores": extra.get("val_scores", []),
    }
    try:
        if meta.kind == "efficientad":
            params = {"config": raw["config"]}
            values |= {
                "in_channels": len(meta.preprocess.channels),
                "image_size": meta.preprocess.image_size,
                "wavelengths": meta.wavelengths,
                "steps": extra.get("steps"),
                "int8_threshold": extra.get("int8_threshold"),
                "far": raw["config"].get("train", {}).get("threshold_far", DEFAULT_FAR),
            }
        elif meta.kind == "rx":
            params = {
                "shrinkage": json.loads(metadata["shrinkage"]),
                "max_pixels": int(metadata["max_pixels"]),
                "seed": int(metadata["seed"]),
            }
            values["shrinkage"] = float(metadata["shrinkage_fitted"])
        elif meta.kind == "knn":
            params = json.loads(metadata["params"])
            values |= {
                "channels": int(metadata["channels"]),
                "wavelengths": json.loads(metadata["wavelengths"]),
            }
        else:
            raise SpecadError(f"unknown model kind '{meta.kind}'", meta_path)
    except (KeyError, ValueError, TypeError) as err:
        raise SpecadError(f"corrupt model metadata ({err})", meta_path) from err
    if values["threshold"] is None:
        raise SpecadError("the threshold is not a finite number", meta_path)
    return params, values


def model_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        return path / MODEL_FILE
    return path
