"""Reed-Xiaoli (RX) detector: Mahalanobis distance of each pixel spectrum to a background model.

RX needs no training beyond a mean and a covariance, works for any channel count, and is the
classic baseline every learned spectral detector should beat.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
import torch
from pydantic import Field
from sklearn.covariance import empirical_covariance, ledoit_wolf_shrinkage, shrunk_covariance
from torch import Tensor

from specad.bounds import ChannelCount, Seed, validate
from specad.errors import SpecadError
from specad.models.bands import CHUNK, blocks, covariance
from specad.models.base import (
    CubeDetector,
    FittedInput,
    Images,
    PositiveInt,
    Updatable,
    check_shape,
    detector,
)

Shrinkage = Literal["auto"] | Annotated[float, Field(strict=True, ge=0, le=1)]
Components = Literal["auto"] | Annotated[int, Field(strict=True, ge=1)] | None

TAIL_FACTOR = 2.0
"""``components="auto"``: the discarded variances lie within this factor of their mean, so every
distance is within this factor of full RX's (see `flat_tail`)."""


def flat_tail(variances: np.ndarray, factor: float = TAIL_FACTOR) -> int:
    """The fewest leading components (at least 1) after which the remaining ``variances``
    (descending) all lie within ``factor`` of their mean.

    Why this rule: RX with ``k`` components scores the discarded directions with their mean
    variance instead of their own, so each of their terms is off by that variance's ratio to
    the mean: bounding the ratio by ``factor`` bounds every distance to within ``factor`` of
    full RX's, whatever the pixel. It reads the training pixels' covariance, never a label.
    """
    c = len(variances)
    mean = np.cumsum(variances[::-1])[::-1] / np.arange(c, 0, -1)  # mean of variances[k:]
    high = np.maximum.accumulate(variances[::-1])[::-1]
    low = np.minimum.accumulate(variances[::-1])[::-1]
    flat = (high <= factor * mean) & (mean <= factor * low)
    return max(1, int(np.argmax(flat))) if flat.any() else c


def _pixels(cube: np.ndarray) -> np.ndarray:
    """The (H*W, C) pixel view of an (H, W, C) cube."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise SpecadError(f"expected an (H, W, C) cube, got shape {cube.shape}")
    return cube.reshape(-1, cube.shape[2])


@detector
class RX(Updatable, CubeDetector):
    """Global RX detector fitted on normal cubes: ``d(y) = (y - mu)^T S^-1 (y - mu)``.

    ``fit`` estimates the background mean ``mu`` and covariance ``S`` from a uniform random
    subsample of at most ``max_pixels`` training pixels; they stand for every pixel seen
    (``pixels_``), so that `update_maps` pools more normal cubes into them exactly. The
    covariance is shrunk toward a scaled identity, ``(1 - a) S + a tr(S)/C I``, which keeps it
    invertible when bands are highly correlated or pixels are few: ``a`` is the Ledoit-Wolf
    estimate for ``"auto"``, or the given number (``0`` is classic RX). Its inverse is kept as a
    whitening matrix from an eigendecomposition, discarding numerically null directions like a
    pseudo-inverse, so distances never go negative. A saved RX keeps the mean, the covariance,
    ``a`` and the pixel count; the whitening is derived from them again when it is loaded.

    ``components`` k (None: all) keeps the k leading principal axes and scores the rest by
    their mean variance ``s2`` (probabilistic PCA): ``d(y) = |W^T (y - mu)|^2 + |r|^2 / s2``
    with ``r`` the part of ``y - mu`` off those axes, which costs C x k per pixel instead of
    C x C. ``"auto"`` picks k by `flat_tail`. With k = C it is classic RX.
    Shapes: cube (H, W, C) -> map (H, W); images [B, C, H, W] -> maps [B, 1, H, W].
    """

    kind: ClassVar[str] = "rx"
    fitted: ClassVar[tuple[str, ...]] = ("mean_", "covariance_", "pixels_", "whitening_")
    shrinkage: Shrinkage = "auto"
    max_pixels: Annotated[int, Field(strict=True, ge=2)] = 200_000
    components: Components = None
    seed: Seed = 0

    def fit_maps(
        self, train: Images, val: Images, *, wavelengths: Any = None, units: Any = None
    ) -> Self:
        return self.fit_cubes(self.cubes(train))

    def fit_cubes(self, cubes: Iterable[np.ndarray], pixels: int | None = None) -> Self:
        """Fit the background on normal (H, W, C) cubes; ``cubes`` may be a one-pass iterator.
        ``pixels``: how many pixels the cubes are a sample of (None: their own count), the
        weight `update_cubes` pools them with."""
        kept, seen = self._sample(cubes)
        alpha = ledoit_wolf_shrinkage(kept) if self.shrinkage == "auto" else self.shrinkage
        return self._background(
            kept.mean(axis=0), empirical_covariance(kept), alpha, pixels or seen
        )

    def update_maps(self, images: Images) -> Self:
        """Pool normal ``images`` [B, C, H, W] (or [C, H, W] each) into the background."""
        return self.update_cubes(self.cubes(images))

    def update_cubes(self, cubes: Iterable[np.ndarray], pixels: int | None = None) -> Self:
        """Pool the pixels of normal (H, W, C) ``cubes`` into the fitted mean and covariance:
        exactly the statistics of the union of both samples (counts, means and covariances
        pooled), with no pass over the cubes it was fitted on. ``pixels`` as in `fit_cubes`.
        The shrinkage stays the fitted one: Ledoit-Wolf's needs the pixels themselves."""
        self.check_fitted()
        kept, seen = self._sample(cubes, self.mean_.shape[0])
        n, mean, cov = pool(
            (self.pixels_, self.mean_, self.covariance_),
            (pixels or seen, kept.mean(axis=0), empirical_covariance(kept)),
        )
        return self._background(mean, cov, self.shrinkage_, n)

    def _sample(
        self, cubes: Iterable[np.ndarray], channels: int | None = None
    ) -> tuple[np.ndarray, int]:
        """A uniform random sample of at most ``max_pixels`` of the cubes' pixels, [n, C]
        float64, and how many pixels there were; ``channels``: the count they must have."""
        # Bottom-k sampling: every pixel draws a random key and the smallest keys are kept, a
        # uniform sample without replacement over the whole stream in bounded memory.
        rng = np.random.default_rng(self.seed)
        kept: np.ndarray | None = None
        keys = np.empty(0)
        seen = 0
        for i, cube in enumerate(cubes):
            px = _pixels(cube)
            if channels is not None and px.shape[1] != channels:
                raise SpecadError(f"cube {i} has {px.shape[1]} channels, the model {channels}")
            if kept is not None and px.shape[1] != kept.shape[1]:
                raise SpecadError(
                    f"training cube {i} has {px.shape[1]} channels, earlier ones {kept.shape[1]}"
                )
            seen += px.shape[0]
            new_keys = rng.random(px.shape[0])
            if keys.size == self.max_pixels:  # full: only keys below the largest kept can enter
                below = new_keys < keys.max()
                px, new_keys = px[below], new_keys[below]
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
        return kept, seen

    def _background(self, mean: np.ndarray, cov: np.ndarray, alpha: float, pixels: int) -> Self:
        """Keep ``mean`` and the covariance ``cov`` of ``pixels`` pixels, and the whitening of
        ``cov`` shrunk by ``alpha``: what the maps use, derived from them alone."""
        self.mean_, self.covariance_, self.pixels_ = mean, cov, int(pixels)
        cov = shrunk_covariance(cov, shrinkage=alpha)
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[::-1], eigvec[:, ::-1]  # leading axes first
        keep = eigval > eigval[0] * cov.shape[0] * np.finfo(np.float64).eps
        eigval, eigvec = eigval[keep], eigvec[:, keep]
        k = flat_tail(eigval) if self.components == "auto" else self.components or len(eigval)
        k = min(k, len(eigval))
        self.whitening_ = eigvec[:, :k] / np.sqrt(eigval[:k])
        self.residual_ = float(1 / eigval[k:].mean()) if k < len(eigval) else 0.0
        self.shrinkage_ = float(alpha)
        return self

    @property
    def fitted_input(self) -> FittedInput:
        """Any image size, of the channel count it was fitted on; fails clearly if it was never
        fitted."""
        self.check_fitted()
        return FittedInput(channels=self.mean_.shape[0])

    def score_cube(self, cube: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of every pixel to the background, as (H, W) float32."""
        return self._distances(_pixels(cube).T).reshape(np.shape(cube)[:2])

    def _score_maps(self, x: Tensor) -> Tensor:
        """[B, 1, H, W] from images [B, C, H, W], each read bands-first as it lies in memory."""
        maps = [self._distances(xi.flatten(1).cpu().numpy()).reshape(xi.shape[1:]) for xi in x]
        return torch.from_numpy(np.stack(maps)[:, None])

    def _distances(self, columns: np.ndarray) -> np.ndarray:
        """[N] float32 distances of the pixels in the columns of a [C, N] array, a block of
        `CHUNK` columns at a time in float64."""
        channels = self.fitted_input.channels
        if columns.shape[0] != channels:
            raise SpecadError(f"model expects {channels} channels, got {columns.shape[0]}")
        inverse_sd = np.linalg.norm(self.whitening_, axis=0)[:, None]  # 1 / sqrt(variance)
        axes = (self.whitening_ / inverse_sd.T).T  # unit principal axes, [k, C]
        out = np.empty(columns.shape[1], dtype=np.float32)
        for start in range(0, columns.shape[1], CHUNK):
            chunk = columns[:, start : start + CHUNK].astype(np.float64) - self.mean_[:, None]
            along = axes @ chunk  # [k, n]: coordinates on the kept axes
            d = np.square(along * inverse_sd).sum(axis=0)
            if self.residual_:  # the rest of each pixel, scored by the discarded mean variance
                rest = np.square(chunk).sum(axis=0) - np.square(along).sum(axis=0)
                d += np.maximum(rest, 0.0) * self.residual_
            out[start : start + CHUNK] = d
        return out

    def _tensors(self) -> dict[str, Tensor]:
        return {
            "mean": torch.from_numpy(self.mean_),
            "covariance": torch.from_numpy(self.covariance_),
        }

    def _scalars(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage_, "pixels": self.pixels_}

    def _restore(self, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:
        mean, cov = tensors["mean"], tensors["covariance"]
        check_shape(self.kind, "mean", mean, None)
        c = validate(ChannelCount, len(mean), None, "rx channels")
        check_shape(self.kind, "covariance", cov, c, c)
        cov = cov.double().numpy()
        if not np.allclose(cov, cov.T, rtol=1e-9, atol=0) or np.trace(cov) <= 0:
            raise SpecadError("rx tensor 'covariance' is not a symmetric covariance")
        alpha = validate(Shrinkage, scalars["shrinkage"], None, "rx shrinkage")
        pixels = validate(PositiveInt, scalars["pixels"], None, "rx pixels")
        self._background(mean.double().numpy(), cov, alpha, pixels)


def pool(
    a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]
) -> tuple[int, np.ndarray, np.ndarray]:
    """The (count, mean, covariance) of two samples together from each one's: the covariance
    of the union is the count-weighted mean of the two plus the spread of their means. Biased
    (divided by the count) covariances, as `empirical_covariance` gives."""
    (n, mean_a, cov_a), (m, mean_b, cov_b) = a, b
    total = n + m
    gap = mean_b - mean_a
    mean = mean_a + gap * (m / total)
    cov = (n * cov_a + m * cov_b) / total + np.outer(gap, gap) * (n * m / total**2)
    return total, mean, cov


def rx_scene(cube: np.ndarray, shrinkage: Shrinkage = 0.0) -> np.ndarray:
    """Classic global RX of one scene against its own background (all of its pixels).

    This is the usual protocol for single hyperspectral scenes without a separate normal set;
    anomalies are assumed rare enough not to distort the scene statistics. The statistics and
    the scores are computed a block of pixels at a time, so a large scene costs its map and
    not float64 copies of itself (``"auto"`` shrinkage excepted: Ledoit-Wolf needs all the
    centred pixels at once).
    """
    px = _pixels(cube)
    if px.shape[0] < 2:
        raise SpecadError("RX needs at least 2 pixels")
    try:
        mean, cov = covariance(blocks(px), ddof=0)
    except ValueError as err:
        raise SpecadError(str(err)) from None
    if shrinkage == "auto":
        shrinkage = ledoit_wolf_shrinkage(px - mean, assume_centered=True)
    return RX(shrinkage=shrinkage)._background(mean, cov, shrinkage, len(px)).score_cube(cube)


def rx_scene_bytes(shape: tuple[int, int, int], shrinkage: Shrinkage = 0.0) -> int:
    """Estimated peak bytes of `rx_scene` on an (H, W, B) cube beyond the cube itself."""
    pixels, bands = shape[0] * shape[1], shape[2]
    blocks_bytes = 8 * CHUNK * bands * 4 + 8 * bands * bands * 4
    return 4 * pixels + blocks_bytes + (16 * pixels * bands if shrinkage == "auto" else 0)
