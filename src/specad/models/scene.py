"""Single-scene hyperspectral anomaly detectors: every pixel against its own scene's background.

There is no training set: the background statistics come from the scene itself, either all of
it (global RX) or a dual window around each pixel. The dual window is an ``outer`` x ``outer``
square centred on the pixel under test with an ``inner`` x ``inner`` guard square removed, so a
target a few pixels wide does not leak into its own background; its ``K = outer**2 - inner**2``
pixels form the local background. Scene borders are mirrored (``numpy.pad(mode="symmetric")``,
as the published MATLAB code does).

Every detector follows specad's one contract (`specad.models.base`): ``__init__`` stores
validated parameters only, ``score_cube(cube)`` maps an (H, W, B) cube to an (H, W) float32
map, larger = more anomalous, and ``score_maps`` does the same for images [N, B, H, W]. They
need no fitting (``fit`` only sets a threshold), so they also run on datasets (``specad evaluate
lrx``). ``SCENE_DETECTORS`` maps the ``specad scene`` names to the classes. All work is batched
(torch matmuls, NumPy LAPACK solves): the local first and second moments come from running box
sums (cost independent of the window size), the per-pixel solves from batched LAPACK calls one
image row (with large windows, a block of it) at a time. Each detector estimates the memory a
scene needs (``working_bytes``) and refuses, in one line, a run beyond
`specad.bounds.MAX_SCENE_BYTES` before allocating it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from pydantic import StrictInt
from threadpoolctl import threadpool_limits

from specad.bounds import MAX_SCENE_BYTES, Loading
from specad.errors import SpecadError
from specad.models.base import CubeDetector, detector
from specad.models.rx import Shrinkage, rx_scene, rx_scene_bytes


def _checked(cube: np.ndarray) -> np.ndarray:
    """``cube`` as an (H, W, B) array of finite numbers, else one clear error."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise SpecadError(f"expected an (H, W, B) cube, got shape {cube.shape}")
    if not np.isfinite(cube).all():
        raise SpecadError("the cube contains NaN or inf")
    return cube


def _centred(cube: np.ndarray) -> np.ndarray:
    """(H, W, B) float64, centred on the scene mean: the local statistics below are sums of
    outer products, which lose digits when the mean is large against the spread."""
    x = cube.astype(np.float64)
    x -= x.reshape(-1, x.shape[2]).mean(axis=0)
    return x


def _scale(x: np.ndarray) -> float:
    """The mean square of the values of a scene (centred or not), or 1 for an all-zero one:
    the unit of the tiny loadings that keep a flat background's systems solvable."""
    return float(np.vdot(x, x)) / x.size or 1.0


FLOOR = 1e-9
"""Diagonal loading, relative to the scene's `_scale`, added to every local matrix: where a
background is flat (a constant scene, a constant ring) its covariance is zero, and this keeps
the system solvable (a pixel equal to its flat background scores 0, one that differs scores
high but finite), far below any loading the parameters ask for."""


def _check_windows(outer: int, inner: int, shape: tuple[int, ...] | None = None) -> None:
    for name, size in (("outer", outer), ("inner", inner)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
            raise SpecadError(f"{name} window must be an odd positive integer, got {size!r}")
    if inner >= outer:
        raise SpecadError(f"inner window ({inner}) must be smaller than the outer one ({outer})")
    if shape is not None and outer // 2 > min(shape[:2]):
        raise SpecadError(
            f"outer window {outer} is too large for a {shape[0]}x{shape[1]} scene "
            f"(at most {2 * min(shape[:2]) + 1})"
        )


def _ridge(cov: np.ndarray, ridge: float, floor: float) -> np.ndarray:
    """``cov + (ridge * tr(cov)/B + floor) * I`` over a stack of (.., B, B) matrices: keeps a
    local covariance from fewer than B pixels (or from correlated bands) invertible, and a zero
    one (a flat background) too."""
    b = cov.shape[-1]
    load = ridge * np.trace(cov, axis1=-2, axis2=-1) / b + floor
    out = cov.copy()
    out[..., np.arange(b), np.arange(b)] += load[..., None]
    return out


def _box_rows(xp: np.ndarray, top: int, size: int, width: int) -> Iterator[np.ndarray]:
    """For each output row, sums of x x^T over the ``size`` x ``size`` boxes starting at padded
    row ``top + i`` and columns ``top + j`` (j < width), as a (width, B, B) array.

    Running vertical sums per column (one row in, one row out) and a cumulative sum across
    columns make each row cost O(W B^2) whatever the box size (memory-bound: a few passes
    over W B^2 floats per row).
    """
    xt = torch.from_numpy(xp[:, top : top + width + size - 1])
    b = xt.shape[2]
    col = torch.zeros((xt.shape[1], b, b), dtype=xt.dtype)

    def add_row(r: int, sign: float) -> None:  # in place: no (W, B, B) temporary per row
        v = xt[top + r]
        col.baddbmm_(v[:, :, None], v[:, None, :], alpha=sign)

    for r in range(size):
        add_row(r, 1.0)
    cum = torch.zeros((col.shape[0] + 1, b, b), dtype=col.dtype)
    for i in range(xp.shape[0] - 2 * top - size + 1):
        if i:
            add_row(i + size - 1, 1.0)
            add_row(i - 1, -1.0)
        torch.cumsum(col, 0, out=cum[1:])
        yield (cum[size:] - cum[:-size]).numpy()


def _box_sums(xp: np.ndarray, top: int, size: int, width: int, height: int) -> np.ndarray:
    """Sums of x over the same boxes as :func:`_box_rows`, for all rows at once: (H, W, B)."""
    c = np.cumsum(np.cumsum(xp[top : top + height + size - 1, top : top + width + size - 1], 0), 1)
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]


def annulus_moments(
    x: np.ndarray, outer: int, inner: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(row, s1, s2)`` for each image row: the sums of x (W, B) and of x x^T (W, B, B)
    over the dual-window background of every pixel in that row."""
    h, w, _ = x.shape
    t, ti = outer // 2, inner // 2
    xp = np.pad(x, ((t, t), (t, t), (0, 0)), mode="symmetric")
    s1 = _box_sums(xp, 0, outer, w, h) - _box_sums(xp, t - ti, inner, w, h)
    rows = zip(_box_rows(xp, 0, outer, w), _box_rows(xp, t - ti, inner, w), strict=True)
    for i, (s2_out, s2_in) in enumerate(rows):
        yield i, s1[i], s2_out - s2_in


def _moments_bytes(shape: tuple[int, int, int], outer: int, inner: int) -> int:
    """Estimated peak bytes of `annulus_moments` (with the centred cube it reads): the padded
    cube and its box sums, then per row the running (W + outer, B, B) sums of both windows."""
    h, w, b = shape
    padded = (h + outer - 1) * (w + outer - 1)
    return 8 * (b * (3 * h * w + 3 * padded) + b * b * 3 * (2 * w + outer + inner))


BLOCK_BYTES = 1 << 26
"""Working memory of one block of per-pixel systems (CRD's Gram matrices, the 2S-GLRT's test
windows): with large windows a row is solved a few pixels at a time, not all at once."""


def _block(pixel_bytes: int, width: int) -> int:
    """How many pixels of a row to solve together: as many as `BLOCK_BYTES` holds, at least 1."""
    return max(1, min(width, BLOCK_BYTES // pixel_bytes))


def refuse_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, before anything is allocated, a run whose estimated working memory is beyond
    `MAX_SCENE_BYTES`: one line with the estimate, the limit and what to change."""
    if needed > MAX_SCENE_BYTES:
        raise SpecadError(
            f"{what} would need about {needed / 2**30:.1f} GiB of memory, more than the limit "
            f"of {MAX_SCENE_BYTES / 2**30:.1f} GiB (specad.bounds.MAX_SCENE_BYTES): {advice}"
        )


class SceneDetector(CubeDetector):
    """Base of the single-scene detectors: every pixel against its own scene's background."""

    def __post_init__(self) -> None:
        if hasattr(self, "outer"):
            _check_windows(self.outer, self.inner)

    def score_cube(self, cube: np.ndarray) -> np.ndarray:
        """The (H, W) float32 map of an (H, W, B) cube; larger = more anomalous. Windows the
        scene cannot hold, and runs beyond `MAX_SCENE_BYTES`, are refused before any work."""
        cube = _checked(cube)
        if hasattr(self, "outer"):
            _check_windows(self.outer, self.inner, cube.shape)
        h, w, b = cube.shape
        what = f"{self.kind} on {h}x{w}x{b}"
        refuse_memory(self.working_bytes(cube.shape), what, self.advice)
        # Thousands of small LAPACK calls: threading inside each one only adds contention.
        with threadpool_limits(1, user_api="blas"):
            return self._score_map(cube)

    def working_bytes(self, shape: tuple[int, int, int]) -> int:
        """Estimated peak bytes of `score_cube` on an (H, W, B) cube beyond the cube itself."""
        raise NotImplementedError

    @property
    def advice(self) -> str:
        """What to change when a run would need more than `MAX_SCENE_BYTES`."""
        windows = "use smaller windows (outer, inner), " if hasattr(self, "outer") else ""
        return windows + "crop the scene or reduce its bands (--reduce pca)"

    def _score_map(self, cube: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@detector
class GlobalRX(SceneDetector):
    """Global RX (Reed & Yu 1990): ``d(y) = (y - mu)^T S^-1 (y - mu)`` with the scene's mean and
    covariance; ``shrinkage`` as in :class:`specad.models.rx.RX` (0 = classic, pseudo-inverse).

    Shapes: cube (H, W, B) -> map (H, W). Cost O(H W B^2 + B^3): a fraction of a second.
    """

    kind: ClassVar[str] = "global-rx"
    shrinkage: Shrinkage = 0.0

    def working_bytes(self, shape: tuple[int, int, int]) -> int:
        return math.prod(shape) + rx_scene_bytes(shape, self.shrinkage)

    def _score_map(self, cube: np.ndarray) -> np.ndarray:
        return rx_scene(cube, shrinkage=self.shrinkage)


@detector
class LocalRX(SceneDetector):
    """Local (dual-window) RX: RX against the mean ``mu_p`` and covariance ``C_p`` of the ``K``
    background pixels in the dual window around each pixel ``p``:

        d(y_p) = (y_p - mu_p)^T (C_p + r tr(C_p)/B I)^-1 (y_p - mu_p)

    with ridge ``r`` (``ridge``) because ``C_p`` from ``K`` pixels is singular when ``K <= B``
    and ill-conditioned even when not. Shapes: cube (H, W, B) -> map (H, W). Cost
    O(H W B^3 / 3) for the batched solves, independent of the window sizes.
    """

    kind: ClassVar[str] = "lrx"
    outer: StrictInt = 25
    inner: StrictInt = 5
    ridge: Loading = 1e-3

    def working_bytes(self, shape: tuple[int, int, int]) -> int:
        h, w, b = shape
        return math.prod(shape) + _moments_bytes(shape, self.outer, self.inner) + 8 * 8 * w * b * b

    def _score_map(self, cube: np.ndarray) -> np.ndarray:
        x = _centred(cube)
        k = self.outer**2 - self.inner**2
        floor = FLOOR * _scale(x)
        out = np.empty(x.shape[:2], dtype=np.float32)
        for i, s1, s2 in annulus_moments(x, self.outer, self.inner):
            mu = s1 / k
            cov = s2 / k - mu[:, :, None] * mu[:, None, :]
            d = (x[i] - mu)[:, :, None]
            z = np.linalg.solve(_ridge(cov, self.ridge, floor), d)
            out[i] = (d * z).sum(axis=(1, 2))
        return out


@detector
class TwoStepGLRT(SceneDetector):
    """Two-step GLRT for multipixel anomalies of unknown pattern (Liu, Hou, Li, Tao, Orlando &
    Li, IEEE TNNLS 2022, doi:10.1109/TNNLS.2021.3071026).

    The ``L = inner**2`` pixels of the inner window form the test matrix ``X`` (B x L); the
    ``K`` pixels of the surrounding ring form ``Y`` (B x K), assumed zero-mean Gaussian with
    unknown covariance. With ``S = Y Y^T`` the statistic is the largest eigenvalue

        T(p) = lambda_max(X^T S^-1 X)

    Bands are first scaled to [0, 1] each (the paper's preprocessing; the zero-mean model makes
    the detector depend on it). ``ridge`` loads ``S`` as in :class:`LocalRX` (0 = plain
    inverse, needs ``K > B``). Shapes: cube (H, W, B) -> map (H, W). Cost O(H W (B^3 / 3 +
    L^3)): keep ``inner`` small (3-7).
    """

    kind: ClassVar[str] = "2s-glrt"
    outer: StrictInt = 21
    inner: StrictInt = 5
    ridge: Loading = 1e-6

    def _pixel_bytes(self, bands: int) -> int:
        """Bytes of one pixel's systems: its loaded (B, B) matrix, (B, L) tests, (L, L) product."""
        tests = self.inner**2
        return 8 * (2 * bands * bands + 4 * bands * tests + 5 * tests * tests)

    def working_bytes(self, shape: tuple[int, int, int]) -> int:
        h, w, b = shape
        block = _block(self._pixel_bytes(b), w) * self._pixel_bytes(b)
        scaled = 8 * b * (3 * h * w + (h + self.inner) * (w + self.inner))
        return scaled + _moments_bytes(shape, self.outer, self.inner) + block

    def _score_map(self, cube: np.ndarray) -> np.ndarray:
        x = minmax_bands(cube.astype(np.float64))
        tests = _windows(x, self.inner)
        floor = FLOOR * (self.outer**2 - self.inner**2) * _scale(x)
        step = _block(self._pixel_bytes(x.shape[2]), x.shape[1])
        out = np.empty(x.shape[:2], dtype=np.float32)
        for i, _, s in annulus_moments(x, self.outer, self.inner):
            for j in range(0, x.shape[1], step):
                part = slice(j, j + step)
                window = tests[i, part]
                xt = window.reshape(*window.shape[:2], -1)  # (w, B, L)
                z = np.linalg.solve(_ridge(s[part], self.ridge, floor), xt)
                m = np.matmul(xt.transpose(0, 2, 1), z)  # (w, L, L)
                out[i, part] = np.linalg.eigvalsh((m + m.transpose(0, 2, 1)) / 2)[:, -1]
        return out


@detector
class CRD(SceneDetector):
    """Collaborative-representation detector (Li & Du, IEEE TGRS 2015): each pixel ``y`` is
    represented by its ``K`` dual-window background pixels ``X_s`` (B x K),

        alpha = (X_s^T X_s + lambda Gamma^2)^-1 X_s^T y,   Gamma = diag(||y - x_i||_2),
        r(y) = ||y - X_s alpha||_2,

    so background pixels that resemble ``y`` get the weight and an anomaly, which no mix of its
    neighbours reproduces, keeps a large residual. ``lam`` is scale-free (both terms scale with
    the data squared). Shapes: cube (H, W, B) -> map (H, W). Cost O(H W (K^2 B + K^3 / 3)),
    which grows with the window: (outer, inner) = (11, 5) is K = 96.
    """

    kind: ClassVar[str] = "crd"
    outer: StrictInt = 11
    inner: StrictInt = 5
    lam: Loading = 1e-6

    def _pixel_bytes(self, bands: int) -> int:
        """Bytes of one pixel's system: its window, its (B, K) ring and (K, K) Gram matrix."""
        k = self.outer**2 - self.inner**2
        return 8 * (bands * self.outer**2 + 3 * bands * k + 4 * k * k)

    def working_bytes(self, shape: tuple[int, int, int]) -> int:
        h, w, b = shape
        padded = (h + self.outer - 1) * (w + self.outer - 1)
        block = _block(self._pixel_bytes(b), w) * self._pixel_bytes(b)
        return 8 * (h * w * b + padded * b) + block

    def _score_map(self, cube: np.ndarray) -> np.ndarray:
        x = _centred(cube)
        flat = FLOOR * x.shape[2] * _scale(x)
        t, ti = self.outer // 2, self.inner // 2
        ring = np.ones((self.outer, self.outer), dtype=bool)
        ring[t - ti : t + ti + 1, t - ti : t + ti + 1] = False
        windows = _windows(x, self.outer)
        step = _block(self._pixel_bytes(x.shape[2]), x.shape[1])
        out = np.empty(x.shape[:2], dtype=np.float32)
        for i, j in itertools.product(range(x.shape[0]), range(0, x.shape[1], step)):
            part, y = windows[i, j : j + step], x[i, j : j + step, :, None]
            xs = part.reshape(*part.shape[:2], -1)[:, :, ring.ravel()]  # (w, B, K)
            out[i, j : j + step] = self._residuals(torch.from_numpy(xs), torch.from_numpy(y), flat)
        return out

    def _residuals(self, xs: torch.Tensor, y: torch.Tensor, flat: float) -> np.ndarray:
        """CRD residuals of the pixels ``y`` (w, B, 1) against their rings ``xs`` (w, B, K)."""
        gram = (xs.mT @ xs).numpy()  # (w, K, K)
        k = gram.shape[1]
        dist2 = torch.square(xs - y).sum(dim=1).numpy()  # (w, K)
        # the tiny floor keeps the system solvable where mirrored borders repeat y itself,
        # and where the background is flat
        floor = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None] / k + flat
        gram[:, np.arange(k), np.arange(k)] += self.lam * dist2 + floor
        alpha = torch.from_numpy(np.linalg.solve(gram, (xs.mT @ y).numpy()))  # (w, K, 1)
        return torch.linalg.vector_norm(y - xs @ alpha, dim=(1, 2)).numpy()


def _windows(x: np.ndarray, size: int) -> np.ndarray:
    """Copy-free (H, W, B, size, size) view of the ``size`` x ``size`` neighbourhood of every
    pixel, borders mirrored; take one row at a time, a full copy is H W B size^2 floats."""
    t = size // 2
    xp = np.pad(x, ((t, t), (t, t), (0, 0)), mode="symmetric")
    return np.lib.stride_tricks.sliding_window_view(xp, (size, size), (0, 1))


def minmax_bands(x: np.ndarray) -> np.ndarray:
    """Each band scaled to [0, 1] over the scene (constant bands become 0)."""
    lo = x.min(axis=(0, 1))
    span = x.max(axis=(0, 1)) - lo
    return (x - lo) / np.where(span > 0, span, 1.0)


SCENE_DETECTORS: dict[str, type[SceneDetector]] = {
    cls.kind: cls for cls in (GlobalRX, LocalRX, CRD, TwoStepGLRT)
}
"""``specad scene`` name (the registry name, `specad.models.registry`) -> detector class."""


def make_detector(name: str, **params: float | int) -> SceneDetector:
    """The scene detector called ``name`` with the given parameters (unknown ones are an error)."""
    if name not in SCENE_DETECTORS:
        raise SpecadError(f"unknown detector '{name}' (one of {', '.join(SCENE_DETECTORS)})")
    return SCENE_DETECTORS[name](**params)  # type: ignore[arg-type]


def detect_scene(
    cube: np.ndarray, detector: str = "global-rx", **params: float | int
) -> np.ndarray:
    """One call: the (H, W) map of detector ``detector`` on an (H, W, B) scene."""
    return make_detector(detector, **params).score_cube(cube)


@dataclass(frozen=True)
class Member:
    """One detector of an ensemble, run after its own band reduction (`specad.models.bands`)."""

    detector: str
    reduce: str = "none"
    components: int = 20

    def __str__(self) -> str:
        bands = "all bands" if self.reduce == "none" else f"{self.reduce.upper()} {self.components}"
        return f"{bands} / {self.detector}"


AUTO = "auto"
"""``specad scene``'s default detector name: the ensemble `SCENE_DEFAULT`."""
SCENE_DEFAULT = (Member("global-rx"), Member("global-rx", "pca"), Member("global-rx", "mnf"))
"""Global RX on all bands, after PCA to 20 components and after MNF to 20, rank-fused.

Chosen on the three shared HAD scenes (benchmarks/accuracy/scene_default_results.md): among global
RX on each band preparation and their rank fusions, the candidate with the best mean pixel AUROC,
a family whose choice held on the scene left out (leave-one-scene-out, above global RX on all
bands), while choosing among the local detectors too overfitted the two scenes it saw. It beats
global RX on all bands on each shared scene and costs about
three global RX runs.
"""


def rank_fuse(maps: list[np.ndarray]) -> np.ndarray:
    """The mean of each (H, W) map's pixel ranks, scaled to [0, 1]: an ensemble in which no
    detector's scale dominates (RX distances and CRD residuals live on unrelated scales)."""
    from scipy.stats import rankdata

    fused = np.zeros(maps[0].shape)
    for m in maps:  # one map's ranks at a time
        fused += rankdata(m.ravel()).reshape(m.shape)
    return fused / (len(maps) * fused.size)
