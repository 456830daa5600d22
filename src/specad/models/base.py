"""The one contract every specad detector follows, after scikit-learn and PyOD estimators.

>>> det = KNN(coreset_size=1024)    # __init__ stores parameters only, validated by their types
>>> det.fit(train, val)             # -> det: maps fitted on train, calibration_ on val (normal)
>>> maps = det.score_maps(x)        # [B, C, H, W] -> [B, 1, H, W], larger = more anomalous
>>> det.score(maps[0])              # an image's score: its map's maximum, for every detector
>>> det.predict(x)                  # score >= threshold, the one comparison (specad.metrics)
>>> det.save("model.safetensors"); load_detector("model.safetensors")

Images are float tensors [B, C, H, W], or sequences of [C, H, W] tensors whose sizes may differ,
already preprocessed (`specad.data.Preprocess`; the `Detector` of `specad.inference` does that for
cubes). Parameters are the fields of a pydantic dataclass (`detector` below), so a bad value is
refused in ``__init__`` with one line, the same way for every detector. Fitted state ends in
``_``; asking an unfitted detector for maps or verdicts raises one clear error. What is learned
on normal validation images (thresholds, map quantiles) is one value, `Calibration`.

What only some detectors have is a mixin that callers test with ``isinstance``: `Exportable`
(an ONNX graph of the maps), `Trained` (a network made by a training run) and `Updatable` (maps
that take more normal images without a refit).

Adding a detector: subclass `BaseDetector` under ``@detector``, implement ``_score_maps`` (and
``fit_maps`` if it learns from normal images, ``_tensors``/``_restore`` if it keeps tensors),
and add the class to `specad.models.registry.DETECTORS`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar

import numpy as np
import torch
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from specad.bounds import FiniteFloat, shown, validate
from specad.errors import SpecadError
from specad.io import save_tensors
from specad.metrics import DEFAULT_FAR, is_anomalous, threshold_at_far

Images = Tensor | Sequence[Tensor]
"""[B, C, H, W], or [C, H, W] images of differing sizes."""
Units = tuple[Sequence[float], Sequence[float]]
"""Per-channel ``(scale, offset)`` with ``stored = image * scale + offset``: how preprocessed
images map back to the cube's own units (`specad.data.Preprocess.units`)."""

FORMAT_VERSION = 5
"""The model file format. Raised whenever saved state changes meaning: a file of another version
is refused in one line (`specad.models.registry.check_format`), never half read."""
FORMAT = f"specad.detector/{FORMAT_VERSION}"
T = TypeVar("T", bound=type)
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]


def nest(part: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` named ``part.name``: a fitted part's tensors inside its owner's file."""
    return {f"{part}.{k}": v for k, v in tensors.items()}


def unnest(part: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors `nest` stored for ``part``, under their own names again."""
    prefix = f"{part}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def per_channel(channels: int) -> Any:
    """The type of a saved list of one finite number per channel (`validate` checks it)."""
    return Annotated[list[FiniteFloat], Field(min_length=channels, max_length=channels)]


def _ascending(scale: tuple[float, float]) -> tuple[float, float]:
    if not scale[0] < scale[1]:
        raise ValueError(f"{scale[0]:g} is not below {scale[1]:g}")  # a division by zero
    return scale


Quantiles = Annotated[tuple[FiniteFloat, FiniteFloat], AfterValidator(_ascending)]
"""A map's (low, high) normal quantiles, which `specad.models.maps.normalise` sends to 0, 0.1."""


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Calibration:
    """What a detector learns from normal validation images, held and saved as one value.

    - The threshold rule: `specad.metrics.threshold_at_far` at the false-alarm rate ``far`` on
      the normal image scores ``val_scores``.
    - ``threshold``: every runtime's image threshold (None until calibrated), unless
      ``runtime_thresholds`` gives a runtime its own: an int8 export's maps differ from fp32
      ones (`specad.export.export_detector`).
    - ``quantiles``: map name -> the normal quantiles that normalise that map before maps are
      added (knn's patch and spectral maps); empty for detectors whose maps need none here.
    """

    far: Annotated[float, Field(strict=True, gt=0, lt=1)] = DEFAULT_FAR
    val_scores: tuple[FiniteFloat, ...] = ()
    threshold: FiniteFloat | None = None
    runtime_thresholds: dict[str, FiniteFloat] = dataclasses.field(default_factory=dict)
    quantiles: dict[str, Quantiles] = dataclasses.field(default_factory=dict)

    @classmethod
    def checked(cls, kind: str, fields: Any) -> Calibration:
        """``fields`` (a saved calibration, or a new one's) validated: one line naming the
        detector and the field, where a value is not finite or a quantile pair not ascending."""
        return validate(cls, fields, None, f"{kind} calibration ")

    def changed(self, kind: str, **fields: Any) -> Calibration:
        """This calibration with ``fields`` replaced, validated (`checked`)."""
        return self.checked(kind, dataclasses.asdict(self) | fields)

    def threshold_for(self, runtime: str) -> float | None:
        """The image threshold for maps computed by ``runtime``: its own where calibrated,
        else ``threshold``."""
        return self.runtime_thresholds.get(runtime, self.threshold)


@dataclasses.dataclass(frozen=True)
class FittedInput:
    """What the fitted maps need of their input; None: anything. A model file whose
    preprocessing gives other input is refused at load
    (`specad.models.modelfile.check_detector`)."""

    channels: int | None = None
    size: int | None = None
    """Side in pixels that the input is resized to."""
    units: Units | None = None
    """The per-channel standardisation the fitted input had (`Units`; identity for cube units)."""


def detector(cls: T) -> T:
    """Class decorator: the class's fields become its validated parameters (pydantic), and a
    refused value is a `SpecadError` naming the detector and the parameter."""
    if {"onnx", "int8"} & set(cls.runtimes) and not issubclass(cls, Exportable):
        raise TypeError(f"{cls.__name__}: only Exportable detectors run on onnx and int8")
    cls = pydantic_dataclass(cls, config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as err:
            first = err.errors()[0]
            names = [str(p) for p in first["loc"] if str(p).isidentifier() or isinstance(p, int)]
            where = ".".join(names) or "parameters"  # without pydantic's union branch tags
            unexpected = first["type"] == "unexpected_keyword_argument"
            got = "" if unexpected else shown(first["input"])
            raise SpecadError(f"{cls.kind} {where}: {first['msg']}{got}") from None

    cls.__init__ = __init__
    return cls


class BaseDetector(ABC):
    """What every detector is: parameters in, ``fit`` -> fitted state, maps, scores, verdicts."""

    kind: ClassVar[str]
    """The detector's name in the CLI, in configs and in saved files."""
    fitted: ClassVar[tuple[str, ...]] = ()
    """Attributes `fit_maps` sets; empty for detectors whose maps need no training data."""
    runtimes: ClassVar[tuple[str, ...]] = ("torch",)
    """How maps can be computed (`specad.inference.Detector.use_runtime`); the first is the default.
    ``onnx`` and ``int8`` are for `Exportable` detectors."""
    input_size: ClassVar[int] = 0
    """Side in pixels that cubes are resized to when fitted on a dataset; 0 keeps their size."""
    needs_training: ClassVar[bool] = False
    """Whether fitting is a training run (`specad train -c CONFIG`, a `Trained` detector) rather
    than a fit on a dataset in seconds (`specad fit NAME DATASET`)."""

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        train: Images,
        val: Images,
        *,
        far: float = DEFAULT_FAR,
        wavelengths: Sequence[float] | None = None,
        units: Units | None = None,
    ) -> Self:
        """Fit the maps on normal ``train`` images, then the threshold on normal ``val`` ones.
        ``units`` (None: the images are in the cube's units) serve detectors that need
        physical values, such as knn's spectral shape."""
        self.fit_maps(train, val, wavelengths=wavelengths, units=units)
        return self.calibrate(self.scores(val), far)

    def fit_maps(
        self,
        train: Images,
        val: Images,
        *,
        wavelengths: Sequence[float] | None = None,
        units: Units | None = None,
    ) -> Self:
        """Learn what the maps need from normal images (``val`` only for map quantiles);
        nothing here for detectors that score each image against itself."""
        return self

    def calibrate(
        self,
        val_scores: Sequence[float] | np.ndarray | None,
        far: float = DEFAULT_FAR,
        runtime: str | None = None,
    ) -> Self:
        """Set the image threshold in ``calibration_`` by the rule of
        `specad.metrics.threshold_at_far` on normal scores; map quantiles are kept, and a new
        threshold drops the runtimes' own. With ``runtime``, that runtime's own threshold
        instead, for maps that differ from fp32 torch ones (an int8 export's); ``val_scores``
        None then forgets it (`Calibration.threshold_for` falls back)."""
        if runtime is not None:
            self.check_fitted(calibrated=True)
            if runtime not in self.runtimes:
                runs = ", ".join(self.runtimes)
                raise SpecadError(f"{self.kind} has no runtime '{runtime}' (it runs on {runs})")
            own = dict(self.calibration_.runtime_thresholds)
            own.pop(runtime, None)
            if val_scores is not None:
                own[runtime] = threshold_at_far(val_scores, far)
            self.calibration_ = self.calibration_.changed(self.kind, runtime_thresholds=own)
            return self
        scores = np.asarray(val_scores, dtype=np.float64).ravel()
        self.calibration_ = getattr(self, "calibration_", Calibration()).changed(
            self.kind,
            far=float(far),
            val_scores=scores.tolist(),
            threshold=threshold_at_far(scores, far),
            runtime_thresholds={},
        )
        return self

    def check_fitted(self, calibrated: bool = False) -> None:
        """One clear error where fitted state (with ``calibrated``, the threshold) is missing."""
        missing = [a for a in self.fitted if not hasattr(self, a)]
        if calibrated and getattr(self, "calibration_", Calibration()).threshold is None:
            missing.append("threshold")
        if missing:
            raise SpecadError(
                f"{self.kind} detector is not fitted ({', '.join(missing)} missing); "
                "call fit() or load a saved one"
            )

    # ------------------------------------------------------------------ maps, scores, verdicts

    def score_maps(self, x: Tensor) -> Tensor:
        """[B, 1, H, W] anomaly maps of preprocessed images [B, C, H, W]."""
        self.check_fitted()
        if x.ndim != 4:
            raise SpecadError(f"{self.kind} expects images [B, C, H, W], got {tuple(x.shape)}")
        with torch.inference_mode():
            return self._score_maps(x)

    @abstractmethod
    def _score_maps(self, x: Tensor) -> Tensor: ...

    @staticmethod
    def score(anomaly_map: Tensor | np.ndarray) -> float:
        """An image's score: its map's maximum (one definition for every detector)."""
        return float(anomaly_map.max())

    def scores(self, images: Images, batch_size: int = 8) -> np.ndarray:
        """Each image's score, maps computed ``batch_size`` images at a time where sizes match."""
        if isinstance(images, Tensor) and images.ndim == 4:
            batches = images.split(batch_size)
        else:
            batches = [image[None] for image in images]
        return np.array([self.score(m) for b in batches for m in self.score_maps(b)], np.float64)

    def predict(self, images: Images) -> np.ndarray:
        """Each image's verdict: ``score >= threshold``."""
        self.check_fitted(calibrated=True)
        threshold = self.calibration_.threshold
        return np.array([is_anomalous(s, threshold) for s in self.scores(images)])

    @property
    def fitted_input(self) -> FittedInput:
        """What the fitted maps need of their input (`FittedInput`): anything, unless the
        detector's fitted state records it."""
        return FittedInput()

    def to(self, device: str | torch.device) -> Self:  # noqa: ARG002 - nothing to move here
        """Move the fitted state to ``device``; maps are computed where it is."""
        return self

    # ------------------------------------------------------------------ state and files

    def get_params(self) -> dict[str, Any]:
        """The parameters, JSON-ready (scikit-learn's name)."""
        adapter = TypeAdapter(type(self))
        return adapter.dump_python(self, mode="json")  # type: ignore[no-any-return]

    def _tensors(self) -> dict[str, Tensor]:
        """Fitted tensors to save (names without dots are fine, prefixes group them)."""
        return {}

    def _scalars(self) -> dict[str, Any]:
        """Fitted JSON values to save, beside the calibration."""
        return {}

    def _restore(self, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:  # noqa: B027
        """Set the fitted state from what `_tensors` and `_scalars` saved (nothing by default);
        ``calibration_`` is already restored."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The fitted state: tensors (on the CPU) and JSON values, the whole calibration
        (every runtime's threshold) among them."""
        self.check_fitted(calibrated=True)
        values = self._scalars() | {"calibration": dataclasses.asdict(self.calibration_)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors().items()}
        return tensors, values

    def restore(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> Self:
        """Set the fitted state from what `state` returned, after the checks every detector's
        saved state must pass (`_restore` checks its own shapes)."""
        check_state(self.kind, tensors, values)
        self.calibration_ = Calibration.checked(self.kind, values.get("calibration"))
        self._restore(tensors, values)
        self.check_fitted(calibrated=True)
        return self

    def save(self, path: str | Path) -> None:
        """One safetensors file: fitted tensors, with the format version, parameters and
        fitted values as JSON in its metadata (no pickle, so loading a file from anyone is
        safe)."""
        tensors, values = self.state()
        metadata = {
            "format": FORMAT,
            "kind": self.kind,
            "params": json.dumps(self.get_params()),
            "fitted": json.dumps(values),
        }
        save_tensors(tensors, path, metadata)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


class Exportable(ABC):
    """Mixin of a detector whose maps an ONNX graph computes (`specad.export`), so that it runs
    on the ``onnx`` and ``int8`` runtimes; callers test ``isinstance(det, Exportable)``."""

    int8_scope: ClassVar[str] = ""
    """The int8 export quantises the ONNX nodes whose names start with this ("": all)."""

    @abstractmethod
    def export_graph(self) -> torch.nn.Module:
        """The module whose ONNX export computes the maps (`export_maps` finishes them)."""

    def export_maps(self, x: Tensor, maps: Tensor) -> Tensor:  # noqa: ARG002 - used by knn
        """The anomaly maps of input ``x`` [B, C, H, W] given ``maps``, what its ONNX export
        computed: those, unless part of the maps stays in torch (knn's spectral maps)."""
        return maps


class Trained(ABC):
    """Mixin of a detector that a training run makes (`specad train -c CONFIG`) around a
    network; callers test ``isinstance(det, Trained)``."""

    needs_training: ClassVar[bool] = True

    @property
    @abstractmethod
    def trained_network(self) -> torch.nn.Module:
        """The network the run made: a cuvis.ai pipeline holds it as a submodule, so that its
        weights move and save with the pipeline."""

    @property
    @abstractmethod
    def training_data(self) -> Path | None:
        """The dataset it was trained on, where known: `specad export` calibrates its int8
        runtime there unless told otherwise."""


class Updatable(ABC):
    """Mixin of a detector whose fitted maps take more normal images without a refit over the
    ones it was fitted on (`specad.update`, ``specad update``); callers test
    ``isinstance(det, Updatable)``."""

    @abstractmethod
    def update_maps(self, images: Images) -> Self:
        """Fold normal ``images``, preprocessed as the fitted ones were, into the fitted maps;
        the threshold is the caller's to set again (`BaseDetector.calibrate`)."""


def check_state(kind: str, tensors: dict[str, Tensor], values: Any) -> None:
    """Refuse saved state no detector can use: fitted values that are not a JSON object,
    tensors of a type no detector saves, or non-finite floating-point tensors."""
    if not isinstance(values, dict):
        raise SpecadError(f"{kind} fitted values are not a JSON object")
    for name, t in tensors.items():
        if t.dtype not in STATE_DTYPES:
            raise SpecadError(f"{kind} tensor '{name}' has type {t.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SpecadError(f"{kind} tensor '{name}' is not finite")


def check_shape(kind: str, name: str, t: Tensor, *sizes: int | None) -> None:
    """Refuse a saved tensor whose shape is not ``sizes`` (None: any length, at least 1)."""
    ok = t.ndim == len(sizes) and all(
        n >= 1 if want is None else n == want for n, want in zip(t.shape, sizes, strict=True)
    )
    if not ok:
        want = " x ".join("N" if n is None else str(n) for n in sizes)
        raise SpecadError(f"{kind} tensor '{name}' is {tuple(t.shape)}, expected {want}")


STATE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64)
"""Tensor types detectors save (int64: BatchNorm's batch counters)."""


class CubeDetector(BaseDetector):
    """A detector that maps one (H, W, C) NumPy cube at a time (RX and the scene detectors):
    float64 linear algebra, any image size, on the CPU."""

    runtimes: ClassVar[tuple[str, ...]] = ("numpy",)

    def _score_maps(self, x: Tensor) -> Tensor:
        maps = [self.score_cube(xi.permute(1, 2, 0).cpu().numpy()) for xi in x]  # (H, W) each
        return torch.from_numpy(np.stack(maps)[:, None].astype(np.float32))  # [B, 1, H, W]

    @abstractmethod
    def score_cube(self, cube: np.ndarray) -> np.ndarray:
        """The (H, W) map of one (H, W, C) cube."""

    @staticmethod
    def cubes(images: Iterable[Tensor]) -> Iterator[np.ndarray]:
        """(H, W, C) NumPy views of images given as tensors [C, H, W], one at a time."""
        return (x.permute(1, 2, 0).cpu().numpy() for x in images)
