"""The one place that maps detector names to classes, and reading any saved detector back.

Adding a detector: write its class on the contract of `specad.models.base`, add it here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from specad.errors import SpecadError
from specad.models.base import FORMAT, FORMAT_VERSION, BaseDetector
from specad.models.efficientad.detector import EfficientADDetector
from specad.models.knn import KNN
from specad.models.rx import RX
from specad.models.scene import CRD, GlobalRX, LocalRX, TwoStepGLRT

DETECTORS: dict[str, type[BaseDetector]] = {
    cls.kind: cls for cls in (EfficientADDetector, KNN, RX, GlobalRX, LocalRX, CRD, TwoStepGLRT)
}
"""Detector name -> class."""


def fit_on_dataset_names() -> tuple[str, ...]:
    """Detectors fitted on a dataset in seconds, by name (``specad evaluate NAME DATASET``,
    ``specad fit NAME DATASET``); the others need `specad train -c CONFIG`. Read from
    `DETECTORS` on each call, so a detector added there is fittable and named in the CLI's
    help with no other edit."""
    return tuple(name for name, cls in DETECTORS.items() if not cls.needs_training)


@dataclass(frozen=True)
class ModelSpec:
    """What a MODEL argument names, told apart once where it enters (the command line, a report
    config): a detector fitted on the dataset in seconds (``kind``, one of
    `fit_on_dataset_names`) or a saved model (``path``: a run folder or its model file)."""

    kind: str | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, value: str | Path | ModelSpec) -> ModelSpec:
        if isinstance(value, ModelSpec):
            return value
        text = str(value)
        return cls(kind=text) if text in fit_on_dataset_names() else cls(path=Path(text))

    def __str__(self) -> str:
        return self.kind if self.kind is not None else str(self.path)


def detector_class(kind: str, path: Path | None = None) -> type[BaseDetector]:
    if kind not in DETECTORS:
        raise SpecadError(f"unknown detector '{kind}' (one of {', '.join(DETECTORS)})", path)
    return DETECTORS[kind]


def read_file(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """A safetensors file's metadata and tensors; errors name the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, SafetensorError, ValueError) as err:
        raise SpecadError(f"corrupt model weights ({err})", path) from err
    return metadata, tensors


def load_detector(path: Path) -> BaseDetector:
    """The detector saved in ``path`` by `BaseDetector.save`."""
    return from_file(*read_file(path), path)


def from_file(metadata: dict[str, str], tensors: dict[str, Tensor], path: Path) -> BaseDetector:
    """The detector in a file already read by `read_file`."""
    check_format(metadata.get("format"), path)
    try:
        params: dict[str, Any] = json.loads(metadata["params"])
        values: dict[str, Any] = json.loads(metadata["fitted"])
    except (KeyError, ValueError) as err:
        raise SpecadError(f"corrupt detector metadata ({err})", path) from err
    kind = metadata.get("kind", "")
    cls = detector_class(kind, path)
    try:
        return cls(**params).restore(tensors, values)
    except SpecadError as err:
        raise SpecadError(str(err), path) from err
    except (KeyError, TypeError, ValueError) as err:
        raise SpecadError(f"corrupt {kind} model ({type(err).__name__}: {err})", path) from err


def check_format(written: str | None, path: Path) -> None:
    """Refuse, in one line naming ``path``, saved state of another format version than this
    specad writes (`specad.models.base.FORMAT`); none at all counts as version 0. An older
    file is refitted rather than converted: no code reads yesterday's layouts."""
    if written == FORMAT:
        return
    found = re.fullmatch(r"specad\.detector/(\d{1,6})", written or "specad.detector/0", re.ASCII)
    if found is None:
        raise SpecadError("not a specad detector file", path)
    version = int(found[1])
    if version < FORMAT_VERSION:
        raise SpecadError(
            f"written by an older specad (format {version}, this one reads "
            f"{FORMAT_VERSION}); refit it with `specad fit` or `specad train`",
            path,
        )
    raise SpecadError(
        f"written by a newer specad (format {version}, this one reads {FORMAT_VERSION}); "
        "upgrade specad to load it",
        path,
    )
