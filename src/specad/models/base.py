"""The one contract every specad detector follows, after scikit-learn and PyOD estimators.

>>> det = KNN(coreset_size=1024)    # __init__ stores parameters only, validated by their types
>>> det.fit(train, val)             # -> det: maps fitted on train, threshold_ on val (normal)
>>> maps = det.score_maps(x)        # [B, C, H, W] -> [B, 1, H, W], larger = more anomalous
>>> det.score(maps[0])              # an image's score: its map's maximum, for every detector
>>> det.predict(x)                  # score >= threshold_, the one comparison (specad.metrics)
>>> det.save("model.safetensors"); load_detector("model.safetensors")

Images are float tensors [B, C, H, W], or sequences of [C, H, W] tensors whose sizes may differ,
already preprocessed (`specad.data.Preprocess`; the `Detector` of `specad.infer` does that for
cubes). Parameters are the fields of a pydantic dataclass (`detector` below), so a bad value is
refused in ``__init__`` with one line, the same way for every detector. Fitted state ends in
``_``; asking an unfitted detector for maps or verdicts raises one clear error.

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
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from specad.bounds import FiniteFloat, shown, validate
from specad.errors import SpecadError
from specad.metrics import DEFAULT_FAR, is_anomalous, threshold_at_far

Images = Tensor | Sequence[Tensor]
"""[B, C, H, W], or [C, H, W] images of differing sizes."""
Units = tuple[Sequence[float], Sequence[float]]
"""Per-channel ``(scale, offset)`` with ``stored = image * scale + offset``: how preprocessed
images map back to the cube's own units (`specad.data.Preprocess.units`)."""

FORMAT = "specad.detector/2"
T = TypeVar("T", bound=type)
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Seed = Annotated[int, Field(strict=True)]


def nest(part: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` named ``part.name``: a fitted part's tensors inside its owner's file."""
    return {f"{part}.{k}": v for k, v in tensors.items()}


def unnest(part: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors `nest` stored for ``part``, under their own names again."""
    prefix = f"{part}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def detector(cls: T) -> T:
    """Class decorator: the class's fields become its validated parameters (pydantic), and a
    refused value is a `SpecadError` naming the detector and the parameter."""
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
    """How maps can be computed (`specad.infer.Detector.use_runtime`); the first is the default."""
    int8_scope: ClassVar[str] = ""
    """The int8 export quantises the ONNX nodes whose names start with this ("": all)."""
    input_size: ClassVar[int] = 0
    """Side in pixels that cubes are resized to when fitted on a dataset; 0 keeps their size."""
    needs_training: ClassVar[bool] = False
    """Whether fitting is a training run (`specad train -c CONFIG`) rather than a fit on a
    dataset in seconds (`specad fit NAME DATASET`)."""

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
        """Fit the maps on normal ``train`` images, then ``threshold_`` on normal ``val`` ones.
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
        """Learn what the maps need from normal images (``val`` only for map normalisation);
        nothing here for detectors that score each image against itself."""
        return self

    def calibrate(
        self,
        val_scores: Sequence[float] | np.ndarray,
        far: float = DEFAULT_FAR,
        runtime: str | None = None,
    ) -> Self:
        """``threshold_``: the rule of `specad.metrics.threshold_at_far` on normal scores.
        With ``runtime``, that runtime's own threshold instead (``runtime_thresholds_``): its
        maps differ from fp32 torch ones (an int8 export's do); a new ``threshold_`` drops them.
        ``val_scores`` None forgets the runtime's threshold (`threshold_for` falls back)."""
        if runtime is not None:
            self.check_fitted(threshold=True)
            self.runtime_thresholds_.pop(runtime, None)
            if val_scores is not None:
                self.runtime_thresholds_[runtime] = threshold_at_far(val_scores, far)
            return self
        scores = np.asarray(val_scores, dtype=np.float64)
        self.threshold_ = threshold_at_far(scores, far)
        self.val_scores_ = scores
        self.far_ = float(far)
        self.runtime_thresholds_: dict[str, float] = {}
        return self

    def check_fitted(self, threshold: bool = False) -> None:
        missing = [a for a in self.fitted + ("threshold_",) * threshold if not hasattr(self, a)]
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
        """Each image's verdict: ``score >= threshold_``."""
        self.check_fitted(threshold=True)
        return np.array([is_anomalous(s, self.threshold_) for s in self.scores(images)])

    @property
    def fitted_size(self) -> int | None:
        """Side in pixels that the fitted maps need their input resized to; None: any size.
        A model file that resizes otherwise is refused at load (`specad.modelfile`)."""
        return None

    @property
    def fitted_channels(self) -> int | None:
        """Input channels the fitted maps need; None: any. A model file whose preprocessing
        selects another number is refused at load (`specad.modelfile`)."""
        return None

    @property
    def fitted_units(self) -> Units | None:
        """The per-channel standardisation the fitted maps' input had (`Units`; identity for
        cube units), where the fitted state records it; None: not recorded. A model file whose
        preprocessing standardises otherwise is refused at load (`specad.modelfile`)."""
        return None

    @property
    def calibrated(self) -> bool:
        """Whether ``threshold_`` is set, so that verdicts can be given."""
        return hasattr(self, "threshold_")

    @property
    def trained_network(self) -> torch.nn.Module | None:
        """The network a training run made (`needs_training`): a cuvis.ai pipeline holds it as
        a submodule, so its weights move and save with the pipeline. None for fitted state."""
        return None

    @property
    def training_data(self) -> Path | None:
        """The dataset the detector was fitted on, where it knows it: `specad export`
        calibrates its int8 runtime there unless told otherwise."""
        return None

    def export_graph(self) -> torch.nn.Module:
        """The module whose ONNX export computes the maps (`export_maps` finishes them);
        only detectors with ``onnx`` in `runtimes` have one."""
        raise SpecadError(f"{self.kind} models have no ONNX export")

    def has_threshold_for(self, runtime: str) -> bool:
        """Whether ``runtime`` has its own calibrated threshold (`calibrate`)."""
        self.check_fitted(threshold=True)
        return runtime in self.runtime_thresholds_

    def threshold_for(self, runtime: str) -> float:
        """The image threshold for maps computed by ``runtime``: its own where calibrated
        (int8 maps differ from fp32 ones; `specad.export.export_detector`), else ``threshold_``."""
        self.check_fitted(threshold=True)
        return self.runtime_thresholds_.get(runtime, self.threshold_)

    def export_maps(self, x: Tensor, maps: Tensor) -> Tensor:  # noqa: ARG002 - used by knn
        """The anomaly maps of input ``x`` [B, C, H, W] given ``maps``, what its ONNX export
        computed: those, unless part of the maps stays in torch (knn's spectral maps)."""
        return maps

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
        """Fitted JSON values to save, beside the threshold."""
        return {}

    def _restore(self, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:  # noqa: B027
        """Set the fitted state from what `_tensors` and `_scalars` saved (nothing by default)."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The fitted state: tensors (on the CPU) and JSON values, the threshold among them."""
        self.check_fitted(threshold=True)
        values = self._scalars() | {
            "threshold": self.threshold_,
            "val_scores": self.val_scores_.tolist(),
            "far": self.far_,
        }
        if "int8" in self.runtimes:
            values["int8_threshold"] = self.runtime_thresholds_.get("int8")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors().items()}
        return tensors, values

    def restore(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> Self:
        """Set the fitted state from what `state` returned, after the checks every detector's
        saved state must pass (`_restore` checks its own shapes)."""
        check_state(self.kind, tensors, values)
        self._restore(tensors, values)
        self.threshold_ = float(values["threshold"])  # as saved, whatever rule made it
        self.val_scores_ = np.asarray(values.get("val_scores", []), dtype=np.float64)
        self.far_ = float(values.get("far", DEFAULT_FAR))
        self.runtime_thresholds_ = {}
        if "int8" in self.runtimes:
            int8 = values.get("int8_threshold")
            if validate(FiniteFloat | None, int8, None, "int8_threshold") is not None:
                self.runtime_thresholds_["int8"] = float(int8)
        self.check_fitted(threshold=True)
        return self

    @classmethod
    def saved_state(
        cls, params: dict[str, Any], values: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Parameters and fitted values as a saved file holds them, in today's names: a file
        outlives a rename of its detector's parameters (identity unless a detector renamed
        some). Either may be anything a file holds: validation comes after."""
        return params, values

    @classmethod
    def legacy_state(
        cls, raw: dict[str, Any], metadata: dict[str, str], input_size: tuple[int, int]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Parameters and fitted values (beside the threshold) of a file saved before this
        contract: ``raw`` is its ``model.json``, ``metadata`` its tensor file's, ``input_size``
        the (channels, side) its preprocessing gives. Only kinds that existed then have one."""
        raise SpecadError(f"{cls.kind} models have no file format before the detector contract")

    def save(self, path: str | Path) -> None:
        """One safetensors file: fitted tensors, with parameters and fitted values as JSON in
        its metadata (no pickle, so loading a file from anyone is safe)."""
        from safetensors.torch import save_file

        tensors, values = self.state()
        metadata = {
            "format": FORMAT,
            "kind": self.kind,
            "params": json.dumps(self.get_params()),
            "fitted": json.dumps(values),
        }
        save_file(tensors, str(path), metadata=metadata)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


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
