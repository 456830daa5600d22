"""Band preparation before a single-scene detector: drop bands, then optionally reduce to a few
PCA or MNF components.

Both change results: water-absorption and noisy edge bands add noise that local covariances
from a few hundred pixels cannot average out, and a reduction to the leading components both
denoises and makes the local detectors cheap (their cost grows with the cube of the band
count). :class:`BandPrep` records what it did, so the output says how a map was made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from specad.errors import SpecadError
from specad.io import Cube

REDUCTIONS = ("none", "pca", "mnf")


def parse_ranges(text: str) -> list[tuple[float, float]]:
    """``"0-4,103-112,150"`` -> ``[(0, 4), (103, 112), (150, 150)]``; ends inclusive."""
    ranges = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = float(lo), float(hi) if sep else float(lo)
        except ValueError:
            raise SpecadError(f"bad band range '{part}' (expected e.g. 0-4,103-112,150)") from None
        if b < a:
            raise SpecadError(f"band range '{part}' ends before it starts")
        ranges.append((a, b))
    return ranges


@dataclass
class BandPrep:
    """What to do to a scene's bands before a detector.

    ``drop``: band indices to remove, as ranges (``parse_ranges``); ``drop_nm``: wavelength
    ranges in nm to remove (needs a cube with wavelengths); ``reduce``: ``"none"``, ``"pca"``
    (leading principal components of the scene) or ``"mnf"`` (minimum noise fraction: the
    components with the highest signal-to-noise ratio, noise estimated from differences of
    horizontally and vertically adjacent pixels); ``components``: how many to keep.
    """

    drop: list[tuple[float, float]] = field(default_factory=list)
    drop_nm: list[tuple[float, float]] = field(default_factory=list)
    reduce: str = "none"
    components: int = 20

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise SpecadError(f"unknown reduction '{self.reduce}' (one of {', '.join(REDUCTIONS)})")
        if self.reduce != "none" and (not isinstance(self.components, int) or self.components < 1):
            raise SpecadError(f"components must be a positive integer, got {self.components!r}")

    def kept_bands(self, cube: Cube) -> list[int]:
        """Indices of the bands that survive ``drop`` and ``drop_nm``."""
        gone = {i for lo, hi in self.drop for i in range(cube.channels) if lo <= i <= hi}
        if self.drop_nm:
            if cube.wavelengths is None:
                raise SpecadError(
                    "dropping bands by wavelength needs wavelengths; the cube has none"
                )
            w = cube.wavelengths
            gone |= {i for lo, hi in self.drop_nm for i in range(cube.channels) if lo <= w[i] <= hi}
        kept = [i for i in range(cube.channels) if i not in gone]
        if not kept:
            raise SpecadError(f"dropping bands leaves none of the cube's {cube.channels}")
        return kept

    def apply(self, cube: Cube) -> tuple[np.ndarray, dict]:
        """The prepared (H, W, B') data, and a JSON-able record of what was done.

        The data is the cube's own float32 (a view when no band is dropped: a large scene is
        not copied) or, after a reduction, float64 components; the detectors compute in
        float64 either way.
        """
        kept = self.kept_bands(cube)
        data = cube.data if len(kept) == cube.channels else cube.data[:, :, kept]
        record: dict = {"bands_in": cube.channels, "bands_dropped": cube.channels - len(kept)}
        if self.reduce != "none":
            if self.components > len(kept):
                raise SpecadError(
                    f"{self.components} {self.reduce.upper()} components asked, {len(kept)} bands"
                )
            reducer = pca if self.reduce == "pca" else mnf
            try:
                data = reducer(data, self.components)
            except (np.linalg.LinAlgError, ValueError) as err:  # too few or degenerate pixels
                raise SpecadError(f"{self.reduce.upper()} failed on this cube ({err})") from None
        record |= {"reduce": self.reduce, "bands_out": data.shape[2]}
        if self.reduce != "none":
            record["components"] = self.components
        return data, record

    def working_bytes(self, cube: Cube) -> tuple[int, int]:
        """Estimated bytes `apply` allocates on ``cube`` beyond the cube itself, and the band
        count it hands on: checked before anything is allocated."""
        h, w, _ = cube.shape
        kept = len(self.kept_bands(cube))
        copied = 0 if kept == cube.channels else 4 * h * w * kept
        if self.reduce == "none":
            return copied, kept
        return copied + 8 * h * w * self.components + 8 * CHUNK * kept * 4, self.components


CHUNK = 65_536
"""Pixels per block of the band statistics: their float64 working memory stays a few blocks,
whatever the scene's size."""


def blocks(pixels: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive blocks of `CHUNK` rows of an (N, B) array, as float64."""
    for start in range(0, len(pixels), CHUNK):
        yield pixels[start : start + CHUNK].astype(np.float64)


def covariance(rows: Iterable[np.ndarray], ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (divided by ``n - ddof``) of the rows of every (n_i, B) block, in
    one pass over the blocks, never holding more than one: each block is shifted by the first
    one's mean, so a large offset loses no digits. NaN or inf anywhere is an error."""
    n, shift, s1, s2 = 0, None, None, None
    for block in rows:
        if shift is None:
            shift = block.mean(axis=0)
            s1, s2 = np.zeros_like(shift), np.zeros((len(shift), len(shift)))
        centred = block - shift
        s1 += centred.sum(axis=0)
        s2 += centred.T @ centred
        n += len(block)
    if shift is None or n - ddof < 1:
        raise ValueError(f"too few pixels for a covariance ({n})")
    if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise SpecadError("the cube contains NaN or inf")
    mean = s1 / n
    return shift + mean, (s2 - n * np.outer(mean, mean)) / (n - ddof)


def _project(pixels: np.ndarray, mean: np.ndarray, axes: np.ndarray, shape: tuple) -> np.ndarray:
    """``(pixels - mean) @ axes`` block by block, as an (H, W, components) float64 cube."""
    out = np.empty((len(pixels), axes.shape[1]))
    for start in range(0, len(pixels), CHUNK):
        out[start : start + CHUNK] = (pixels[start : start + CHUNK] - mean) @ axes
    return out.reshape(*shape[:2], axes.shape[1])


def pca(cube: np.ndarray, components: int) -> np.ndarray:
    """Projection of the centred (H, W, B) scene on its ``components`` leading principal axes."""
    px = cube.reshape(-1, cube.shape[2])
    mean, cov = covariance(blocks(px))
    _, vec = np.linalg.eigh(cov)
    return _project(px, mean, vec[:, ::-1][:, :components], cube.shape)


def _neighbour_differences(cube: np.ndarray) -> Iterator[np.ndarray]:
    """Differences of vertically, then horizontally adjacent pixels, a band of rows at a time."""
    h, w, b = cube.shape
    step = max(1, CHUNK // w)
    for top in range(0, h - 1, step):
        end = min(top + step, h - 1)
        yield (cube[top + 1 : end + 1].astype(np.float64) - cube[top:end]).reshape(-1, b)
    for top in range(0, h, step):
        rows = cube[top : top + step].astype(np.float64)
        yield (rows[:, 1:] - rows[:, :-1]).reshape(-1, b)


def mnf(cube: np.ndarray, components: int) -> np.ndarray:
    """Minimum noise fraction (Green et al. 1988): the ``components`` directions with the largest
    signal-to-noise ratio, from the generalised eigenproblem ``S v = l N v`` where ``S`` is the
    scene covariance and ``N`` half the covariance of neighbour differences (the noise, if the
    signal is spatially smooth). Components come out with unit noise variance."""
    b = cube.shape[2]
    px = cube.reshape(-1, b)
    mean, signal = covariance(blocks(px))
    _, noise = covariance(_neighbour_differences(cube))
    noise /= 2
    # a dead (constant) band has no noise; a noise-free or constant scene has none at all
    noise += np.eye(b) * 1e-9 * (np.trace(noise) or np.trace(signal) or b) / b
    _, vec = scipy.linalg.eigh(signal, noise)
    return _project(px, mean, vec[:, ::-1][:, :components], cube.shape)
