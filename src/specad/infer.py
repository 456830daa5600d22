"""Running a trained model: the :class:`Detector` that users load.

It keeps a model's preprocessing, its runner (torch, or an ONNX export on onnxruntime) and its
threshold; the files are :mod:`specad.modelfile`'s, the device and CPU features
:mod:`specad.runtime`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specad.data import Preprocess, resize
from specad.errors import SpecadError
from specad.io import Cube, atomic_file
from specad.metrics import threshold_at_far
from specad.modelfile import (
    META_FILE,
    ModelMeta,
    check_meta,
    model_file,
    rebuild_efficientad,
)
from specad.runtime import RUNTIMES, cpu_has_amx, cpu_has_vnni, pick_device


@dataclass
class Prediction:
    """One cube's result: the map on the model's normalised scale, a score, and the binary mask."""

    anomaly_map: np.ndarray
    score: float
    mask: np.ndarray


class Detector:
    """A trained anomaly detector (EfficientAD or RX) with its preprocessing and threshold.

    >>> det = Detector.load("runs/tray6/model.safetensors")
    >>> pred = det.predict(read_cube("cube.tif"))
    """

    def __init__(self, model: Any, meta: ModelMeta, device: str | torch.device = "auto") -> None:
        self.meta = meta
        self.device = pick_device(device) if isinstance(device, str) else device
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device, memory_format=torch.channels_last).eval()
        elif meta.kind == "knn":
            model = model.to(self.device)
        self.model = model
        self.runtime = "numpy" if meta.kind == "rx" else "torch"
        self._runner: Any = None  # an OnnxRunner when the runtime is onnx or int8

    def use_runtime(self, runtime: str, model_path: str | Path | None = None) -> Detector:
        """Pick how EfficientAD maps are computed; ``model_path`` locates the ONNX exports.

        torch: eager, channels_last; bf16: the same under bf16 autocast; onnx / int8: the fp32
        or int8 export run by onnxruntime on the CPU. ``auto`` on a CPU takes the first export
        made from these very weights: int8 (only on CPUs with VNNI, and only if it has its own
        threshold, fitted at export on validation images), then onnx; otherwise torch, under
        bf16 on CPUs with AMX. On a GPU it is torch.
        """
        if runtime not in RUNTIMES:
            raise SpecadError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        if self.kind != "efficientad":
            if runtime not in ("auto", "torch"):
                raise SpecadError(
                    f"runtime '{runtime}' applies to EfficientAD models, not {self.kind}"
                )
            return self
        self._runner, self.runtime = None, runtime
        if runtime == "auto":
            exports = ["onnx"]
            if cpu_has_vnni() and "int8_threshold" in self.meta.extra:
                exports.insert(0, "int8")
            for candidate in exports if self.device.type == "cpu" and model_path else []:
                try:
                    return self.use_runtime(candidate, model_path)
                except SpecadError:  # no export, or a stale one: try the next
                    continue
            self.runtime = "bf16" if self.device.type == "cpu" and cpu_has_amx() else "torch"
            return self
        if runtime in ("onnx", "int8"):
            from specad.export import INT8_FILE, ONNX_FILE, OnnxRunner, weights_digest

            if model_path is None:
                raise SpecadError(f"runtime '{runtime}' needs the saved model's path")
            path = model_file(model_path)
            onnx = path.with_name(INT8_FILE if runtime == "int8" else ONNX_FILE)
            if not onnx.is_file():
                raise SpecadError(f"no {runtime} export; run `specad export {path.parent}`", onnx)
            self._runner = OnnxRunner(onnx, weights_digest(path))
        return self

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def threshold(self) -> float:
        """The calibrated threshold; int8 maps differ from fp32, so int8 has its own."""
        if self.runtime == "int8" and "int8_threshold" in self.meta.extra:
            return float(self.meta.extra["int8_threshold"])
        return self.meta.threshold

    # ------------------------------------------------------------------ maps on model input

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] anomaly maps for preprocessed input [B, C, S, S]."""
        if self._runner is not None:
            return self._runner(x)
        if self.kind == "efficientad":
            return self._torch_maps(x, bf16=self.runtime == "bf16")
        if self.kind == "knn":
            return self.model.score_maps(x).cpu()
        maps = [self.model.score_map(xi.permute(1, 2, 0).numpy()) for xi in x.cpu()]
        return torch.from_numpy(np.stack(maps)[:, None].astype(np.float32))

    @torch.inference_mode()
    def _torch_maps(self, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        x = x.to(self.device, memory_format=torch.channels_last)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
            return self.model.anomaly_map(x).float().cpu()

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
        elif not self.meta.preprocess.image_size:  # native resolution: no common batch shape
            maps = [
                self.maps(self.meta.preprocess.cube_tensor(c, p)[None])[0, 0].numpy()
                for c, p in zip(cubes, paths, strict=True)
            ]
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
        for m, p in zip(maps, paths, strict=True):
            if not np.isfinite(m).all():
                raise SpecadError(
                    "the anomaly map is not finite (cube values far outside what the model "
                    "was trained on?)",
                    p or "cube",
                )
        preds = [self._prediction(m) for m in maps]
        return preds[0] if single else preds

    def _prediction(self, anomaly_map: np.ndarray) -> Prediction:
        score = float(anomaly_map.max())
        return Prediction(anomaly_map.astype(np.float32), score, anomaly_map >= self.threshold)

    def _tiled_map(self, cube: Cube, path: Path | None) -> np.ndarray:
        pre = self.meta.preprocess
        tile = pre.image_size
        h, w = cube.shape[:2]
        if not tile or h < tile or w < tile:
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

        path = model_file(path)
        with atomic_file(path) as tmp:
            if isinstance(self.model, torch.nn.Module):
                state = {
                    k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                }
                save_file(state, str(tmp))
            else:
                self.model.save(tmp)
            with atomic_file(path.with_name(META_FILE)) as meta_tmp:
                meta_tmp.write_text(self.meta.to_json())
        return path

    def export(
        self,
        model_path: str | Path,
        images: torch.Tensor | None = None,
        *,
        int8: bool = False,
        validation: torch.Tensor | None = None,
        far: float = 0.01,
    ) -> dict[str, float]:
        """Write ``model.onnx`` (and ``model.int8.onnx``) beside the saved model file.

        ``images`` are preprocessed normal images [B, C, S, S]: the int8 calibration set and the
        parity check. With ``validation`` images the int8 export gets its own threshold, at the
        same false-alarm rate ``far`` as the model's, saved in ``model.json``; only then does
        ``auto`` choose it. Returns each export's largest absolute map difference from the torch
        fp32 maps on ``images``; an fp32 export that differs by more than 1e-3 is refused.
        """
        from specad.export import (
            INT8_FILE,
            ONNX_FILE,
            OnnxRunner,
            export_onnx,
            quantize_int8,
            weights_digest,
        )

        path = model_file(model_path)
        size = self.meta.preprocess.image_size
        if self.kind != "efficientad" or not size:
            raise SpecadError("ONNX export needs an EfficientAD model with fixed image_size", path)
        if int8 and images is None:
            raise SpecadError("int8 export needs calibration images", path)
        channels = len(self.meta.preprocess.channels)
        if images is None:
            images = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
        digest = weights_digest(path)
        reference = torch.cat([self._torch_maps(b) for b in images.split(8)])

        def parity(runner: OnnxRunner) -> float:
            maps = torch.cat([runner(b) for b in images.split(8)])
            return float((maps - reference).abs().max())

        model = copy.deepcopy(self.model)
        onnx = export_onnx(model, channels, size, path.with_name(ONNX_FILE), digest)
        diffs = {"onnx": parity(OnnxRunner(onnx, digest))}
        if diffs["onnx"] > 1e-3:
            onnx.unlink()
            raise SpecadError(f"ONNX export's maps differ from torch by {diffs['onnx']:.2g}", onnx)
        if int8:  # a new int8 file needs a new threshold, or none
            batches = (b.float().numpy() for b in images.split(1))
            runner = OnnxRunner(
                quantize_int8(onnx, path.with_name(INT8_FILE), batches, digest), digest
            )
            diffs["int8"] = parity(runner)
            self.meta.extra.pop("int8_threshold", None)
            if validation is not None:
                scores = torch.cat([runner(b) for b in validation.split(8)]).amax((1, 2, 3))
                self.meta.extra["int8_threshold"] = threshold_at_far(scores.numpy(), far)
        with atomic_file(path.with_name(META_FILE)) as tmp:
            tmp.write_text(self.meta.to_json())
        return diffs

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", runtime: str = "auto") -> Detector:
        """Load a model file (or the run folder holding it). Errors name the file at fault.

        ``runtime`` is :meth:`use_runtime`'s choice; ``auto`` picks the fastest available.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = model_file(path)
        meta_path = path.with_name(META_FILE)
        for p in (path, meta_path):
            if not p.is_file():
                raise SpecadError("model file not found", p)
        try:
            meta = ModelMeta.from_json(meta_path.read_text())
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise SpecadError(f"corrupt model metadata ({err})", meta_path) from err
        check_meta(meta, meta_path)
        if meta.kind == "rx":
            from specad.models.rx import RX

            return cls(RX.load(path), meta, device).use_runtime(runtime)
        if meta.kind == "knn":
            from specad.models.knn import KNN

            return cls(KNN.load(path), meta, device).use_runtime(runtime)
        if meta.kind != "efficientad":
            raise SpecadError(f"unknown model kind '{meta.kind}'", meta_path)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise SpecadError(f"corrupt model weights ({err})", path) from err
        model = rebuild_efficientad(meta, state, path)
        return cls(model, meta, device).use_runtime(runtime, path)


def _tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins with about a quarter overlap, the last tile flush with the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile * 3 // 4)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]
