"""A training-free nearest-neighbour detector (PatchCore-style) on frozen EfficientNet-Lite0.

Pretrained features searched for their nearest normal neighbour found real defects better than
CPU-length EfficientAD training (issue 12), and fitting is a forward pass plus a coreset: seconds.

Memory, stated for the defaults (blocks 4 + 10 + 12: D = 344 features per patch, stride 8):

- fitted model: the bank, ``coreset_size`` x D float32 (2,048 x 344 = 2.8 MB), and the frozen
  extractor (blocks 0-12 of EfficientNet-Lite0, 5.7 MB), both saved in the model file;
- fitting: at most ``max_patches`` x D float32 patch features (50,000 x 344 = 69 MB) and their
  random projection (``max_patches`` x ``projection`` = 13 MB), besides the caller's images;
- scoring: patch-to-bank distances in chunks of at most ``CDIST_ELEMENTS`` floats (64 MB).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from specad.errors import SpecadError
from specad.models.teachers import EfficientNetLite0Teacher
from specad.spectral import Mapping

_FORMAT = "specad.knn/1"
CDIST_ELEMENTS = 1 << 24
"""Patch-to-bank distances computed at once (float32: 64 MB), which bounds scoring memory."""
_BATCH = 16  # images per extractor forward while fitting


class KNN:
    """Nearest-neighbour anomaly maps against a coreset of normal patch features.

    Features: the outputs of EfficientNet-Lite0 ``blocks``, upsampled to the first one's grid,
    concatenated and 3x3 average-pooled (`EfficientNetLite0Teacher`, stem adapted to N channels).
    The defaults were measured on MTD (benchmarks/real_results.md): adding block 12 to 4 + 10
    raised pixel AUROC from 0.71 to 0.75 and image AUROC from 0.87 to 0.90.
    ``fit`` keeps up to ``max_patches`` random patches of the normal images and reduces them to
    ``coreset_size`` by greedy k-centre selection, distances measured after a Gaussian random
    projection to ``projection`` dimensions as PatchCore does. A patch's score is the Euclidean
    distance to its nearest bank feature; the map is upsampled to the input size and blurred
    with a Gaussian of ``sigma`` pixels (0: none). Inputs are [B, N, S, S] tensors, [0, 1]-like
    as for the teacher (specad's `Preprocess` provides them).
    """

    def __init__(
        self,
        blocks: Sequence[int] = (4, 10, 12),
        coreset_size: int = 2048,
        projection: int = 64,
        max_patches: int = 50_000,
        sigma: float = 8.0,
        mapping: Mapping = "repeat",
        seed: int = 0,
    ) -> None:
        for name, value in {
            "coreset_size": coreset_size,
            "projection": projection,
            "max_patches": max_patches,
        }.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecadError(f"knn {name} must be a positive integer, got {value!r}")
        if not isinstance(sigma, int | float) or sigma < 0:
            raise SpecadError(f"knn sigma must be a number >= 0, got {sigma!r}")
        self.blocks = tuple(int(b) for b in blocks)
        self.coreset_size = coreset_size
        self.projection = projection
        self.max_patches = max_patches
        self.sigma = float(sigma)
        self.mapping = mapping
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments, as scikit-learn names them; saved with the model."""
        return {
            "blocks": list(self.blocks),
            "coreset_size": self.coreset_size,
            "projection": self.projection,
            "max_patches": self.max_patches,
            "sigma": self.sigma,
            "mapping": self.mapping,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ fitting

    @torch.inference_mode()
    def fit(self, images: Tensor, wavelengths: Sequence[float] | None = None) -> Self:
        """Build the bank from normal images [B, N, S, S]; ``wavelengths`` for that mapping."""
        if images.ndim != 4 or len(images) == 0:
            raise SpecadError(
                f"knn fit needs normal images [B, N, S, S], got {tuple(images.shape)}"
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.extractor_ = EfficientNetLite0Teacher(
            images.shape[1], self.blocks, self.mapping, wavelengths
        ).to(images.device)
        self.wavelengths_ = None if wavelengths is None else [float(w) for w in wavelengths]
        per_image = math.ceil(self.max_patches / len(images))
        kept = []
        for batch in images.split(_BATCH):
            for f in self._patches(batch):  # [h*w, D] per image
                pick = torch.randperm(len(f), generator=gen)[:per_image].to(f.device)
                kept.append(f[pick])
        patches = torch.cat(kept)[: self.max_patches]
        self.bank_ = patches[greedy_coreset(patches, self.coreset_size, self.projection, gen)]
        return self

    def _patches(self, x: Tensor) -> Tensor:
        """Patch features [B, h*w, D] of input [B, N, S, S]."""
        f = self.extractor_(x)
        return f.flatten(2).transpose(1, 2)

    # ------------------------------------------------------------------ scoring

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise SpecadError("knn model is not fitted; call fit() or KNN.load() first")

    @property
    def n_channels(self) -> int:
        """Input channels the model was fitted on; fails clearly if it was never fitted."""
        self._check_fitted()
        return self.extractor_.stem.in_channels

    @torch.inference_mode()
    def score_maps(self, x: Tensor) -> Tensor:
        """[B, 1, S, S] maps (distance to the nearest normal patch) for input [B, N, S, S]."""
        self._check_fitted()
        if x.ndim != 4 or x.shape[1] != self.n_channels:
            raise SpecadError(f"knn expects [B, {self.n_channels}, S, S], got {tuple(x.shape)}")
        x = x.to(self.bank_.device)
        f = self.extractor_(x)  # [B, D, h, w]
        b, d, h, w = f.shape
        queries = f.permute(0, 2, 3, 1).reshape(-1, d)
        step = max(1, CDIST_ELEMENTS // len(self.bank_))
        nearest = torch.cat([torch.cdist(q, self.bank_).amin(1) for q in queries.split(step)])
        maps = F.interpolate(nearest.view(b, 1, h, w), size=x.shape[-2:], mode="bilinear")
        return gaussian_blur(maps, self.sigma)

    # ------------------------------------------------------------------ devices and files

    def to(self, device: str | torch.device) -> Self:
        """Move the fitted extractor and bank (scoring runs where they are)."""
        self._check_fitted()
        self.extractor_ = self.extractor_.to(device)
        self.bank_ = self.bank_.to(device)
        return self

    def save(self, path: str | Path) -> None:
        """Write one safetensors file: the bank, the extractor, parameters in its metadata."""
        self._check_fitted()
        tensors = {"bank": self.bank_} | {
            f"extractor.{k}": v for k, v in self.extractor_.state_dict().items()
        }
        metadata = {
            "format": _FORMAT,
            "params": json.dumps(self.get_params()),
            "channels": str(self.n_channels),
            "wavelengths": json.dumps(self.wavelengths_),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by :meth:`save` (tensors only: nothing is unpickled)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not iterable)
        except (OSError, SafetensorError) as err:
            raise SpecadError(f"cannot read knn model: {err}", path=path) from err
        if metadata.get("format") != _FORMAT or "bank" not in tensors:
            raise SpecadError("not a specad knn model file", path=path)
        model = cls(**json.loads(metadata["params"]))
        model.wavelengths_ = json.loads(metadata["wavelengths"])
        model.extractor_ = EfficientNetLite0Teacher(
            int(metadata["channels"]), model.blocks, model.mapping, model.wavelengths_
        )
        prefix = "extractor."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.extractor_.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise SpecadError(f"knn extractor weights do not fit: {detail}", path) from err
        model.bank_ = tensors["bank"]
        return model


def greedy_coreset(
    features: Tensor, size: int, projection: int, generator: torch.Generator
) -> Tensor:
    """Indices of ``size`` rows chosen by greedy k-centre selection (PatchCore's coreset).

    Each step takes the row farthest from those chosen so far, so the coreset covers the feature
    space: rare normal patches survive, which uniform subsampling would drop. Distances are
    measured after a Gaussian random projection to ``projection`` dimensions (Johnson-
    Lindenstrauss), which makes each step cost rows x ``projection`` multiply-adds.
    """
    n, d = features.shape
    if size >= n:
        return torch.arange(n, device=features.device)
    if projection < d:
        matrix = torch.randn(d, projection, generator=generator) / math.sqrt(projection)
        features = features @ matrix.to(features.device)
    sq_norms = features.square().sum(1)
    nearest = torch.full((n,), float("inf"), device=features.device)
    chosen = torch.empty(size, dtype=torch.long, device=features.device)
    pick = int(torch.randint(n, (1,), generator=generator))
    for i in range(size):
        chosen[i] = pick
        # |a - b|^2 = |a|^2 - 2 a.b + |b|^2, one matrix-vector product per step
        dist = torch.addmv(sq_norms, features, features[pick], alpha=-2).add_(sq_norms[pick])
        torch.minimum(nearest, dist, out=nearest)
        pick = int(nearest.argmax())
    return chosen


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, 1, H, W] maps, edges replicated; ``sigma`` 0 is identity."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))
