"""Running a fitted detector on cubes: the :class:`Detector` that users load.

It joins a detector (`specad.models.base`) to what its cubes need: the preprocessing and band
description of ``model.json`` (`specad.models.modelfile`), a device and a runtime (torch, bf16,
or an ONNX export run by onnxruntime, `specad.inference.runners`), and resizing or tiling back
to cube size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specad.data import resize
from specad.errors import SpecadError
from specad.inference.runners import choose_runtime, open_runner
from specad.inference.tiling import batch_of, tiled_map
from specad.io import Cube, atomic_file
from specad.metrics import is_anomalous
from specad.models.base import BaseDetector
from specad.models.modelfile import META_FILE, ModelMeta, load_model, model_file
from specad.runtime import RUNTIMES, pick_device


@dataclass
class Prediction:
    """One cube's result: the map on the model's normalised scale, its score, and the threshold
    (None while the detector has none) that makes the binary mask."""

    anomaly_map: np.ndarray
    score: float
    threshold: float | None

    @property
    def mask(self) -> np.ndarray:
        """Pixels at or above the threshold."""
        if self.threshold is None:
            raise SpecadError("the detector has no threshold yet (fit it on val/good)")
        return is_anomalous(self.anomaly_map, self.threshold)  # type: ignore[no-any-return]


class Detector:
    """A fitted detector with its preprocessing, device and runtime.

    >>> det = Detector.load("runs/tray6/model.safetensors")
    >>> pred = det.predict(read_cube("cube.tif"))
    """

    def __init__(
        self, model: BaseDetector, meta: ModelMeta, device: str | torch.device = "auto"
    ) -> None:
        self.meta = meta
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device)
        self.runtime = model.runtimes[0]
        self._runner = None  # an OnnxRunner when the runtime is onnx or int8

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def threshold(self) -> float:
        """The image threshold for maps of this runtime: ``score >= threshold`` is anomalous."""
        self.model.check_fitted(calibrated=True)
        return self.model.calibration_.threshold_for(self.runtime)  # type: ignore[return-value]

    def use_runtime(self, runtime: str, model_path: str | Path | None = None) -> Detector:
        """How maps are computed; ``auto`` is `specad.inference.runners.choose_runtime`'s choice."""
        if runtime not in RUNTIMES:
            raise SpecadError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        if runtime == "auto":
            self.runtime, self._runner = choose_runtime(self.model, self.device, model_path)
            return self
        if runtime not in self.model.runtimes:
            runs = ", ".join(self.model.runtimes)
            raise SpecadError(
                f"runtime '{runtime}' does not apply to {self.kind} models (they run on {runs})"
            )
        self.runtime = runtime
        self._runner = open_runner(runtime, model_path) if runtime in ("onnx", "int8") else None
        return self

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] anomaly maps for preprocessed input [B, C, S, S]."""
        if self._runner is not None:  # opened for onnx and int8 only: an `Exportable` model
            return self.model.export_maps(x, self._runner(x))  # type: ignore[attr-defined]
        x = x.to(self.device, memory_format=torch.channels_last)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.runtime == "bf16"):
            return self.model.score_maps(x).float().cpu()

    def predict(
        self,
        cubes: Cube | Sequence[Cube],
        *,
        tiled: bool = False,
        batch_size: int = 8,
        paths: Sequence[Path | None] | None = None,
    ) -> Prediction | list[Prediction]:
        """Score one cube or a batch; maps come back at each cube's own size.

        ``tiled`` runs overlapping model-sized tiles at native resolution instead of shrinking a
        large cube, so that defects of a few pixels are not averaged away.
        """
        single = isinstance(cubes, Cube)
        cubes = [cubes] if single else list(cubes)
        paths = list(paths) if paths is not None else [None] * len(cubes)
        pre, maps = self.meta.preprocess, []
        if pre.image_size:  # a batch of many bands in fewer images
            batch_size = min(batch_size, batch_of(len(pre.channels), pre.image_size))
        for i in range(0, len(cubes), batch_size):
            chunk, names = cubes[i : i + batch_size], paths[i : i + batch_size]
            tiles = [tiled and pre.image_size and min(c.shape[:2]) >= pre.image_size for c in chunk]
            if any(tiles) or not pre.image_size:  # one at a time: no common batch shape
                for c, p, t in zip(chunk, names, tiles, strict=True):
                    m = tiled_map(self.maps, pre, c, path=p) if t else self._resized(c, p)
                    maps.append(m)
                continue
            pairs = zip(chunk, names, strict=True)
            out = self.maps(torch.stack([pre.cube_tensor(c, p) for c, p in pairs]))
            maps += [
                resize(m[None], c.shape[:2])[0, 0].numpy() for m, c in zip(out, chunk, strict=True)
            ]
        for m, p in zip(maps, paths, strict=True):
            if not np.isfinite(m).all():
                raise SpecadError(
                    "the anomaly map is not finite (cube values far outside what the model "
                    "was trained on?)",
                    p or "cube",
                )
        calibration = getattr(self.model, "calibration_", None)  # None while being fitted
        threshold = None if calibration is None else calibration.threshold_for(self.runtime)
        preds = [Prediction(m.astype(np.float32), self.model.score(m), threshold) for m in maps]
        return preds[0] if single else preds

    def _resized(self, cube: Cube, path: Path | None) -> np.ndarray:
        m = self.maps(self.meta.preprocess.cube_tensor(cube, path)[None])
        return resize(m, cube.shape[:2])[0, 0].numpy()

    def save(self, path: str | Path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` atomically; returns the tensor file."""
        path = model_file(path)
        with atomic_file(path) as tmp:  # nested, so that a failed write names its own file
            self.model.save(tmp)
            with atomic_file(path.with_name(META_FILE)) as meta_tmp:
                meta_tmp.write_text(self.meta.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", runtime: str = "auto") -> Detector:
        """Load a model file (or the run folder holding it). Errors name the file at fault."""
        model, meta = load_model(path)
        return cls(model, meta, device).use_runtime(runtime, model_file(path))
