"""The bounds every way a parameter arrives is checked against: configs, ``--set``,
``model.json`` and a detector's saved tensors. One home, so that a config that trains is a model
file that loads, and no file can make specad allocate without bound. The readers of those ways
are here too: a YAML config file (`read_yaml_mapping`) and ``--set key=value`` (`parse_sets`),
each refusing a bad value in one line that names it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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
Channels = Literal["all", "rgb", "swir"] | Annotated[list[int | float | str], Field(min_length=1)]
"""A channel selection (`specad.data.select_channels`)."""
Rate = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
"""A false-alarm rate: a finite share strictly between 0 and 1."""


class Strict(BaseModel):
    """A settings section: an unknown key is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


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


MAX_SCENE_BYTES = 1 << 30
"""Most working memory one single-scene run (``specad scene``, a scene detector's
``score_cube``) may need, estimated from the cube's pixels x bands and the detectors' windows
before anything is allocated: a small file (a compressed cube of zeros, a window the scene only
just admits) cannot make specad allocate without bound. Larger runs are refused with the
estimate: crop the scene, drop or reduce its bands, or choose smaller windows."""
MAX_LOADING = 1e6
"""Largest diagonal loading (a scene detector's ``ridge`` or ``lam``, relative to the data's
own scale): far beyond it every detector has reached its limit (a Euclidean distance, a zero
representation), and the loaded matrices would overflow on large data."""
Loading = Annotated[float, Field(strict=True, ge=0, le=MAX_LOADING)]
"""A relative diagonal loading, 0..`MAX_LOADING` (finite: NaN and inf are refused)."""


class _ValueLoader(yaml.SafeLoader):
    """YAML 1.1 as ``yaml.safe_load`` reads it, plus numbers in exponent notation without a dot
    (``1e-3``), which YAML 1.1 leaves as strings but every user means as numbers."""


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def text_value(text: str, what: str) -> Any:
    """A value typed on the command line (``--param lrx.outer=15``), read as YAML with
    `_ValueLoader` (no tags that build objects); a value that is not YAML is a one-line
    `SpecadError` naming ``what``."""
    try:
        return yaml.load(text, Loader=_ValueLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise SpecadError(f"{what}: the value is not valid YAML ({first})") from err


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file's top-level mapping; any problem is one line naming the file."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise SpecadError(f"{what} not found", path) from err
    except UnicodeDecodeError as err:
        raise SpecadError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from err
    except (yaml.YAMLError, RecursionError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise SpecadError(f"invalid YAML ({first})", path) from err
    except OSError as err:
        raise SpecadError(f"cannot read {what} ({err.strerror or err})", path) from err
    if not isinstance(loaded, dict):
        raise SpecadError(f"{what} must be a YAML mapping", path)
    return loaded


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``key.sub=value`` in ``raw``, the value read as YAML, numbers also in exponent
    notation (`text_value`); a bad one names the key."""
    if "=" not in item:
        raise SpecadError(f"--set expects key=value, got '{item[:60]}'")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecadError(f"--set '{key[:60]}': empty key")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecadError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = text_value(value, f"--set {key[:60]}")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` items as a nested mapping."""
    raw: dict[str, Any] = {}
    for item in items or []:
        apply_override(raw, item)
    return raw


MAX_CUBE_ELEMENTS = 1 << 28
"""Most values (pixels x bands) a cube file may declare, checked against its header before any
of it is read, whatever the format: 1 GiB as float32. Large airborne scenes fit under it (1024 x
1024 x 224 = 0.9 GB), while reading holds the stored array and a float32 copy, and detectors
work in float64 beside it, so a cube at the bound already needs several GiB: what a 2-core
machine with 24 GB holds beside its other work. A header declaring more is refused before it
can make specad allocate; crop the scene or drop bands to read it."""
MAX_EXPANSION = 100
"""Most bytes a compressed ``.npz`` member may inflate to per byte stored (above
`EXPANSION_FLOOR`). Measured cubes hold sensor noise, which deflate barely shrinks; a member far
beyond this is a block of constants or a decompression bomb, which a file of a few hundred KB
can make gigabytes."""
EXPANSION_FLOOR = 1 << 26
"""Bytes any ``.npz`` member may inflate to whatever its ratio (64 MiB): masks and truth maps are
mostly one value and compress far beyond `MAX_EXPANSION`, and so little is cheap to hold."""


MAX_SEED = (1 << 64) - 1
"""Largest seed: torch's generators hold 64 bits and numpy's take no negative seed, so seeds
0..2**64-1 mean one thing wherever one arrives (``synth --seed``, a config, ``--set seed=``)."""
Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
MAX_BATCH_SIZE = 1024
"""Most images a training batch may hold: far beyond what any schedule here uses, and refused
from the config alone, before any data is read; what a batch below it needs in memory is checked
against the device before training starts (`specad.models.efficientad.train_loop`)."""
