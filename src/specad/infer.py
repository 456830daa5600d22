"""Running a trained model: the :class:`Detector` that users load, and the model file format.

A model is two files side by side: ``model.safetensors`` (tensors only, safe to load from anyone)
and ``model.json`` (what the tensors mean: kind, channels, bands, preprocessing, threshold,
config and versions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specad import __version__
from specad.data import Preprocess, resize
from specad.errors import SpecadError
from specad.io import Cube, atomic_file

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present, else CPU; ``name`` (e.g. ``cpu``, ``cuda:1``) overrides."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SpecadError(f"unknown device '{name}'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecadError(f"device '{name}' requested but CUDA is not available")
    return device


@dataclass
class Prediction:
    """One cube's result: the map on the model's normalised scale, a score, and the binary mask."""

    anomaly_map: np.ndarray
    score: float
    mask: np.ndarray


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


class Detector:
    """A trained anomaly detector (EfficientAD or RX) with its preprocessing and threshold.

    >>> det = Detector.load("runs/tray6/model.safetensors")
    >>> pred = det.predict(read_cube("cube.tif"))
    """

    def __init__(self, model: Any, meta: ModelMeta, device: str | torch.device = "auto") -> None:
        self.meta = meta
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    # ------------------------------------------------------------------ maps on model input

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] anomaly maps for preprocessed input [B, C, S, S]."""
        if self.kind == "efficientad":
            return self.model.anomaly_map(x.to(self.device)).float().cpu()
        maps = [self.model.score_map(xi.permute(1, 2, 0).numpy()) for xi in x.cpu()]
        return torch.from_numpy(np.stack(maps)[:, None].astype(np.float32))

    # ------------------------------------------------------------------ cubes in, predictions out

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
        if tiled:
            maps = [self._tiled_map(c, p) for c, p in zip(cubes, paths, strict=True)]
        else:
            maps = []
            for i in range(0, len(cubes), batch_size):
                chunk = cubes[i : i + batch_size]
                x = torch.stack(
                    [
                        self.meta.preprocess.cube_tensor(c, p)
                        for c, p in zip(chunk, paths[i : i + batch_size], strict=True)
                    ]
                )
                out = self.maps(x)
                maps += [
                    resize(m[None], c.shape[:2])[0, 0].numpy()
                    for m, c in zip(out, chunk, strict=True)
                ]
        preds = [self._prediction(m) for m in maps]
        return preds[0] if single else preds

    def _prediction(self, anomaly_map: np.ndarray) -> Prediction:
        score = float(anomaly_map.max())
        return Prediction(anomaly_map.astype(np.float32), score, anomaly_map > self.threshold)

    def _tiled_map(self, cube: Cube, path: Path | None) -> np.ndarray:
        pre = self.meta.preprocess
        tile = pre.image_size
        h, w = cube.shape[:2]
        if h < tile or w < tile:
            return self.predict(cube, paths=[path]).anomaly_map  # type: ignore[union-attr]
        native = Preprocess(pre.source_channels, pre.channels, 0, pre.mean, pre.std)
        x = native.normalise(
            torch.from_numpy(np.ascontiguousarray(cube.data[:, :, pre.channels].transpose(2, 0, 1)))
        )
        total = np.zeros((h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        for top in _tile_starts(h, tile):
            for left in _tile_starts(w, tile):
                m = self.maps(x[None, :, top : top + tile, left : left + tile])[0, 0].numpy()
                total[top : top + tile, left : left + tile] += m
                weight[top : top + tile, left : left + tile] += 1
        return total / weight

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` atomically; returns the tensor file."""
        from safetensors.torch import save_file

        path = _model_path(path)
        state = (
            self.model.state_dict()
            if isinstance(self.model, torch.nn.Module)
            else self.model.tensors()
        )
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        with atomic_file(path) as tmp:
            save_file(state, str(tmp))
            with atomic_file(path.with_name(META_FILE)) as meta_tmp:
                meta_tmp.write_text(self.meta.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """Load a model file (or the run folder holding it). Errors name the file at fault."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = _model_path(path)
        meta_path = path.with_name(META_FILE)
        for p in (path, meta_path):
            if not p.is_file():
                raise SpecadError("model file not found", p)
        try:
            meta = ModelMeta.from_json(meta_path.read_text())
        except (ValueError, TypeError, KeyError) as err:
            raise SpecadError(f"corrupt model metadata ({err})", meta_path) from err
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise SpecadError(f"corrupt model weights ({err})", path) from err
        model = _rebuild(meta, state, path)
        return cls(model, meta, device)


def _rebuild(meta: ModelMeta, state: dict[str, torch.Tensor], path: Path) -> Any:
    if meta.kind == "rx":
        from specad.models.rx import RX

        return RX.from_tensors(state)
    if meta.kind != "efficientad":
        raise SpecadError(f"unknown model kind '{meta.kind}'", path)
    from specad.config import Config
    from specad.models.build import build_efficientad

    cfg = Config.model_validate(meta.config)
    model = build_efficientad(
        cfg.model,
        len(meta.preprocess.channels),
        meta.preprocess.image_size,
        meta.wavelengths,
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SpecadError(
            f"weights do not fit the model ({str(err).splitlines()[0]})", path
        ) from err
    return model


def _model_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        return path / MODEL_FILE
    return path


def _tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins with about a quarter overlap, the last tile flush with the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile * 3 // 4)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]
