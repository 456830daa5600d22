"""The bounds every way a parameter arrives is checked against: configs, ``--set``,
``model.json`` and a detector's saved tensors. One home, so that a config that trains is a model
file that loads, and no file can make specad allocate without bound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from specad.errors import SpecadError

T = TypeVar("T")

MIN_IMAGE_SIZE = 16
"""Smallest model input side: below it the teachers' feature grids vanish."""
MAX_IMAGE_SIZE = 1024
"""Largest model input side: 4x the default and 2x the largest measured (512). A 1024 px input
is 4 MB per channel and image, so a model file cannot make a prediction allocate without bound
(cubes larger than this keep their resolution with ``--tiled``)."""
MAX_CHANNELS = 1024
"""Most input channels a model may have (imaging spectrometers record up to a few hundred)."""
ImageSize = Annotated[int, Field(strict=True, ge=0, le=MAX_IMAGE_SIZE)]
"""A model input side: 0 (the cube's own size) or `MIN_IMAGE_SIZE`..`MAX_IMAGE_SIZE`."""
ChannelCount = Annotated[int, Field(strict=True, ge=1, le=MAX_CHANNELS)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Index = Annotated[int, Field(strict=True, ge=0)]


def check_image_size(size: int) -> int:
    """`ImageSize`'s lower bound, where 0 (keep the cube's size) is allowed below it."""
    if 0 < size < MIN_IMAGE_SIZE:
        raise ValueError(f"must be 0 (the cube's own size) or at least {MIN_IMAGE_SIZE} px")
    return size


def validate(model: type[T], raw: Any, path: Path | None, prefix: str = "") -> T:
    """``raw`` validated as ``model`` (a pydantic model or dataclass), with the first error as
    one line: ``prefix key.sub: message (got value)``."""
    try:
        return TypeAdapter(model).validate_python(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = (prefix + ".".join(str(p) for p in first["loc"])).strip() or "config"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        got = "" if first["type"] in ("missing", "extra_forbidden") else shown(first["input"])
        raise SpecadError(f"{where}: {message}{got}{more}", path) from err


def shown(value: Any) -> str:
    """`` (got VALUE)`` for a scalar or a list, cut short (a generated value can be megabytes);
    nothing for a whole section, whose problem the message states."""
    if not isinstance(value, str | int | float | list | None):
        return ""
    if isinstance(value, list) and len(value) > 4:
        return f" (got a list of {len(value)})"
    text = repr(value)
    return f" (got {text[:40]}{'...' if len(text) > 40 else ''})"
