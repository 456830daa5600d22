"""The on-disk model format, and the checks that refuse a model that would score nonsense.

A model is two files in one folder. ``model.safetensors`` is the detector itself
(`specad.models.base.BaseDetector.save`: tensors, with parameters and fitted values such as the
threshold in its metadata; nothing is unpickled). ``model.json`` describes the input it expects:
kind, channels, bands, preprocessing, versions. The tensor file names its format version; one
of another version is refused in one line that says to refit it
(`specad.models.registry.check_format`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from specad import __version__
from specad.bounds import FiniteFloat, Index, validate
from specad.data import Preprocess
from specad.errors import SpecadError
from specad.models.base import BaseDetector
from specad.models.envelope import Envelope
from specad.models.registry import from_file, read_file

MODEL_FILE, META_FILE = "model.safetensors", "model.json"
Sha256 = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class Added:
    """A cube an update added, and its SHA-256 when it was added."""

    file: Annotated[str, Field(strict=True)]
    sha256: Sha256


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class Update:
    """One ``specad update`` (`specad.update`): the parent's ``model.safetensors`` digest, the
    confirmed-normal cubes added, the val its threshold was calibrated on (None: the parent's
    stored val scores), and when (UTC, ISO 8601)."""

    parent: Sha256
    added: list[Added]
    val: Annotated[str, Field(strict=True)] | None
    time: Annotated[str, Field(strict=True)]


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class ModelMeta:
    """What a detector expects of a cube: which channels, how preprocessed, which bands.

    Validated when made, ``model.json`` included (bounds in `specad.bounds`): one line names the
    first bad field, and nothing a file says can index missing channels or allocate unbounded.
    """

    kind: Annotated[str, Field(strict=True)]
    preprocess: Preprocess
    bands: list[Annotated[str, Field(strict=True)]]
    wavelengths: list[FiniteFloat] | None
    rgb: tuple[Index, Index, Index] | None
    envelope: Envelope | None = None
    """The normal pixels per band (`specad.models.envelope`); None in a model.json written
    before specad kept it, which loads and scores as before (no format change: `--explain` and
    the report's spectra ask for a refit)."""
    versions: dict[str, str] = field(
        default_factory=lambda: {"specad": __version__, "torch": torch.__version__}
    )
    updates: list[Update] = field(default_factory=list)
    """The updates that made this model from a fitted one, oldest first (empty: as fitted)."""

    @model_validator(mode="after")
    def _describes_the_channels(self) -> ModelMeta:
        n = len(self.preprocess.channels)
        if len(self.bands) != n:
            raise ValueError(f"bands has {len(self.bands)} names for {n} channels")
        if self.wavelengths is not None and len(self.wavelengths) != n:
            raise ValueError(f"wavelengths has {len(self.wavelengths)} values for {n} channels")
        if self.rgb is not None and max(self.rgb) >= n:
            raise ValueError(f"rgb {list(self.rgb)} are not indices of the {n} channels")
        if self.envelope is not None and len(self.envelope.median) != n:
            raise ValueError(f"envelope has {len(self.envelope.median)} bands for {n} channels")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> ModelMeta:
        """The metadata in ``text``; a malformed or invalid one is one line naming ``path``."""
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise SpecadError(f"corrupt model metadata ({err})", path) from err
        if not isinstance(raw, dict):
            raise SpecadError("corrupt model metadata (not a JSON object)", path)
        return validate(cls, raw, path)


def read_meta(path: Path) -> ModelMeta:
    """``model.json``, checked."""
    if not path.is_file():
        raise SpecadError("model file not found", path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecadError(f"cannot read model metadata ({err})", path) from err
    return ModelMeta.from_json(text, path)


def check_detector(det: BaseDetector, meta: ModelMeta, path: Path, meta_path: Path) -> None:
    """The detector in ``path`` must be the kind ``model.json`` (``meta_path``) names and take
    the input its preprocessing gives (channels, size, standardisation): a ``model.json``
    edited, or taken from another fit, would score differently without a word.

    ``image_size`` 0 (each cube at its own size) passes for a detector fitted on a dataset:
    cubes that all had one size leave the same fitted state as a resize to that size would.
    """
    if det.kind != meta.kind:
        raise SpecadError(f"model.json says '{meta.kind}', the file holds '{det.kind}'", path)
    fitted, needs = f"the detector in {path.name} was fitted on", det.fitted_input
    selected = len(meta.preprocess.channels)
    if needs.channels is not None and needs.channels != selected:
        raise SpecadError(
            f"preprocess.channels selects {selected} channels, {fitted} {needs.channels}",
            meta_path,
        )
    size = meta.preprocess.image_size
    native = size == 0 and not det.needs_training
    if needs.size is not None and size != needs.size and not native:
        raise SpecadError(
            f"preprocess.image_size is {size}, {fitted} {needs.size} px input "
            "(model.json edited, or from another fit?)",
            meta_path,
        )
    given = meta.preprocess.units() or ([1.0] * selected, [0.0] * selected)
    if needs.units is not None and not np.allclose(needs.units, given, rtol=1e-9, atol=1e-12):
        raise SpecadError(
            f"preprocess.mean/std are not the statistics {fitted} (model.json edited, or from "
            "another fit?)",
            meta_path,
        )


def load_model(path: str | Path) -> tuple[BaseDetector, ModelMeta]:
    """The detector in a model file (or the run folder holding it) and its ``model.json``;
    the tensor file's format version is checked first, so an old model is one line saying
    to refit it, whatever its ``model.json`` holds."""
    path = model_file(path)
    if not path.is_file():
        raise SpecadError("model file not found", path)
    det = from_file(*read_file(path), path)
    meta_path = path.with_name(META_FILE)
    meta = read_meta(meta_path)
    check_detector(det, meta, path, meta_path)
    return det, meta


def model_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        return path / MODEL_FILE
    return path
