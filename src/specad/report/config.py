"""What a report compares and where it goes: the validated ``report.yaml`` and CLI options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

from specad.bounds import read_yaml_mapping, validate
from specad.errors import SpecadError
from specad.metrics import DEFAULT_FAR
from specad.models.registry import ModelSpec

SpecField = Annotated[
    ModelSpec, BeforeValidator(ModelSpec.parse), PlainSerializer(str, return_type=str)
]
"""A model as the YAML names it, parsed once into a `ModelSpec` and written back as it was."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ReportConfig(BaseModel):
    """What to compare, on which data, and where to write the report."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, SpecField] = Field(min_length=1)
    """Display name -> model file (or run folder), or ``rx``/``knn`` to fit one on each dataset."""
    datasets: list[Path] = Field(min_length=1)
    out: Path
    force: bool = False
    scheduler: str | None = None
    """Score on this Dask scheduler (``tcp://HOST:8786``), as ``specad evaluate --scheduler``."""
    workers: int | None = Field(None, ge=1)
    """Score on a local Dask cluster of this many processes, as ``evaluate --workers``."""
    far: float = Field(DEFAULT_FAR, gt=0, lt=1)
    """False-alarm rate on normal validation cubes that sets the pixel thresholds; image
    verdicts use each model's own calibrated threshold, as ``specad predict`` does."""
    thresholds: list[float] | None = None
    """Map thresholds for the binary panels, added to the calibrated one; ``None`` gives 0.5x,
    1x and 2x the calibrated threshold (map units differ between models, factors do not)."""
    swir_bands: list[int | float | str] | None = Field(None, min_length=3, max_length=3)
    """Bands (index, nm or name) for the SWIR false colour as R, G, B; default: the three
    longest wavelengths, longest as red, shown when the cube has SWIR bands."""
    max_images: int = Field(60, ge=0)
    """Per-cube pages per model and dataset, most instructive first."""
    tiled: bool = False

    @field_validator("models")
    @classmethod
    def _names_are_file_names(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        # Model names become folder names under images/, so they must be safe as such, and
        # distinct also where a file system ignores case.
        seen: dict[str, str] = {}
        for name in models:
            if not _NAME.fullmatch(name):
                raise ValueError(f"model name '{name}' must be letters, digits, '.', '_' or '-'")
            if name.casefold() in seen:
                raise ValueError(
                    f"model names '{seen[name.casefold()]}' and '{name}' differ only in case "
                    "(some file systems do not tell them apart)"
                )
            seen[name.casefold()] = name
        return models


def named_models(flags: list[str]) -> dict[str, str]:
    """``--model`` values (``NAME=PATH``, or a path or ``rx``/``knn`` named after its last part)
    by name. Two with one name are refused: each name is one column, folder and entry of
    ``metrics.json``, and a dictionary would silently keep only the last."""
    models: dict[str, str] = {}
    for flag in flags:
        name, source = flag.split("=", 1) if "=" in flag else (Path(flag).stem, flag)
        if name in models:
            raise SpecadError(
                f"--model {models[name]} and {source} are both named '{name}'; "
                "name each with --model NAME=PATH"
            )
        models[name] = source
    return models


def load_report_config(path: str | Path | None, **overrides: Any) -> ReportConfig:
    """Read and validate a report YAML; keyword overrides (e.g. CLI options) win unless None.

    Relative dataset and model paths that do not exist from the working directory are taken from
    the config's folder, so an example config works from wherever it is run.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = _inputs_from(read_yaml_mapping(path, "report config"), path.parent)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate(ReportConfig, raw, path)


def _inputs_from(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``raw`` with relative model and dataset paths found beside the config where only there."""

    def resolve(value: Any) -> Any:
        if not isinstance(value, str) or ModelSpec.parse(value).kind is not None:
            return value
        p = Path(value)
        if p.is_absolute() or p.exists() or not (folder / p).exists():
            return value
        return str(folder / p)

    raw = dict(raw)
    if isinstance(raw.get("models"), dict):
        raw["models"] = {k: resolve(v) for k, v in raw["models"].items()}
    if isinstance(raw.get("datasets"), list):
        raw["datasets"] = [resolve(v) for v in raw["datasets"]]
    return raw
