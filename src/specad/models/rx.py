"""Reed-Xiaoli (RX) detector: Mahalanobis distance of each pixel spectrum to a background model.

RX needs no training beyond a mean and a covariance, works for any channel count, and is the
classic baseline every learned spectral detector should beat.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Self

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from sklearn.covariance import empirical_covariance, ledoit_wolf_shrinkage, shrunk_covariance

from specad.errors import SpecadError

Shrinkage = float | Literal["auto"]

_FORMAT = "specad.rx/1"
_CHUNK_PIXELS = 65_536  # bounds the float64 working memory of scoring large cubes


def _check_shrinkage(shrinkage: object) -> Shrinkage:
    if shrinkage == "auto":
        return "auto"
    is_number = isinstance(shrinkage, int | float) and not isinstance(shrinkage, bool)
    if is_number and 0.0 <= shrinkage <= 1.0:
        return float(shrinkage)
    raise SpecadError(f"RX shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")


def _pixels(cube: np.ndarray) -> np.ndarray:
    """The (H*W, C) pixel view of an (H, W, C) cube."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise SpecadError(f"expected an (H, W, C) cube, got shape {cube.shape}")
    return cube.reshape(-1, cube.shape[2])


class RX:
    """Global RX detector fitted on normal cubes, scikit-learn style.

    ``fit`` estimates the background mean and covariance from a uniform random subsample of at
    most ``max_pixels`` training pixels. The covariance is shrunk toward a scaled identity,
    ``(1 - a) S + a tr(S)/C I``, which keeps it invertible when bands are highly correlated or
    pixels are few: ``a`` is the Ledoit-Wolf estimate for ``"auto"``, or the given number
    (``0`` is classic RX). Its inverse is kept as a whitening matrix from an eigendecomposition,
    discarding numerically null directions like a pseudo-inverse, so distances never go negative.
    """

    def __init__(self, shrinkage: Shrinkage = "auto", max_pixels: int = 200_000, seed: int = 0):
        if not isinstance(max_pixels, int) or max_pixels < 2:
            raise SpecadError(f"RX max_pixels must be an integer >= 2, got {max_pixels!r}")
        if not isinstance(seed, int):
            raise SpecadError(f"RX seed must be an integer, got {seed!r}")
        self.shrinkage = _check_shrinkage(shrinkage)
        self.max_pixels = max_pixels
        self.seed = seed

    def fit(self, cubes: Iterable[np.ndarray]) -> Self:
        """Fit the background on normal (H, W, C) cubes; ``cubes`` may be a one-pass iterator."""
        # Bottom-k sampling: every pixel draws a random key and the smallest keys are kept, a
        # uniform sample without replacement over the whole stream in bounded memory.
        rng = np.random.default_rng(self.seed)
        kept: np.ndarray | None = None
        keys = np.empty(0)
        for i, cube in enumerate(cubes):
            px = _pixels(cube)
            if kept is not None and px.shape[1] != kept.shape[1]:
                raise SpecadError(
                    f"training cube {i} has {px.shape[1]} channels, earlier ones {kept.shape[1]}"
                )
            new_keys = rng.random(px.shape[0])
            if px.shape[0] > self.max_pixels:
                sel = np.argpartition(new_keys, self.max_pixels)[: self.max_pixels]
                px, new_keys = px[sel], new_keys[sel]
            px = px.astype(np.float64)
            kept = px if kept is None else np.concatenate([kept, px])
            keys = np.concatenate([keys, new_keys])
            if keys.size > self.max_pixels:
                sel = np.argpartition(keys, self.max_pixels)[: self.max_pixels]
                kept, keys = kept[sel], keys[sel]
        if kept is None or keys.size < 2:
            raise SpecadError("RX needs at least 2 training pixels")
        if not np.isfinite(kept).all():
            raise SpecadError("training cubes contain NaN or inf")

        alpha = ledoit_wolf_shrinkage(kept) if self.shrinkage == "auto" else self.shrinkage
        cov = shrunk_covariance(empirical_covariance(kept), shrinkage=alpha)
        eigval, eigvec = np.linalg.eigh(cov)
        keep = eigval > eigval.max() * cov.shape[0] * np.finfo(np.float64).eps
        self.mean_ = kept.mean(axis=0)
        self.whitening_ = eigvec[:, keep] / np.sqrt(eigval[keep])
        self.shrinkage_ = float(alpha)
        return self

    @property
    def n_channels(self) -> int:
        """Channel count the model was fitted on; fails clearly if it was never fitted."""
        if not hasattr(self, "mean_"):
            raise SpecadError("RX model is not fitted; call fit() or RX.load() first")
        return self.mean_.shape[0]

    def score_map(self, cube: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of every pixel to the background, as (H, W) float32."""
        px = _pixels(cube)
        if px.shape[1] != self.n_channels:
            raise SpecadError(f"model expects {self.n_channels} channels, got {px.shape[1]}")
        out = np.empty(px.shape[0], dtype=np.float32)
        for start in range(0, px.shape[0], _CHUNK_PIXELS):
            chunk = px[start : start + _CHUNK_PIXELS].astype(np.float64) - self.mean_
            out[start : start + _CHUNK_PIXELS] = np.square(chunk @ self.whitening_).sum(axis=1)
        return out.reshape(np.shape(cube)[:2])

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (float64 tensors, settings in its metadata); no pickle."""
        metadata = {
            "format": _FORMAT,
            "channels": str(self.n_channels),
            "shrinkage": json.dumps(self.shrinkage),
            "shrinkage_fitted": repr(self.shrinkage_),
            "max_pixels": str(self.max_pixels),
            "seed": str(self.seed),
        }
        tensors = {"mean": self.mean_, "whitening": np.ascontiguousarray(self.whitening_)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by :meth:`save`."""
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not iterable)
        except (OSError, SafetensorError) as err:
            raise SpecadError(f"cannot read RX model: {err}", path=path) from err
        if metadata.get("format") != _FORMAT or set(tensors) != {"mean", "whitening"}:
            raise SpecadError("not a specad RX model file", path=path)
        model = cls(
            shrinkage=json.loads(metadata["shrinkage"]),
            max_pixels=int(metadata["max_pixels"]),
            seed=int(metadata["seed"]),
        )
        model.mean_ = tensors["mean"]
        model.whitening_ = tensors["whitening"]
        model.shrinkage_ = float(metadata["shrinkage_fitted"])
        if model.n_channels != int(metadata["channels"]):
            raise SpecadError("RX model file is inconsistent: channel count", path=path)
        return model


def rx_scene(cube: np.ndarray, shrinkage: Shrinkage = 0.0) -> np.ndarray:
    """Classic global RX of one scene against its own background (all of its pixels).

    This is the usual protocol for single hyperspectral scenes without a separate normal set;
    anomalies are assumed rare enough not to distort the scene statistics.
    """
    n_pixels = math.prod(np.shape(cube)[:2])
    return RX(shrinkage=shrinkage, max_pixels=max(n_pixels, 2)).fit([cube]).score_map(cube)
