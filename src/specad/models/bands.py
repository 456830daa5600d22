"""Band preparation before a single-scene detector: drop bands, then optionally reduce to a few
PCA or MNF components.

Both change results: water-absorption and noisy edge bands add noise that local covariances
from a few hundred pixels cannot average out, and a reduction to the leading components both
denoises and makes the local detectors cheap (their cost grows with the cube of the band
count). :class:`BandPrep` records what it did, so the output says how a map was made.
"""

from __future__ import annotations

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
        """The prepared (H, W, B') float64 data, and a JSON-able record of what was done."""
        kept = self.kept_bands(cube)
        data = cube.data[:, :, kept].astype(np.float64)
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


def pca(cube: np.ndarray, components: int) -> np.ndarray:
    """Projection of the centred (H, W, B) scene on its ``components`` leading principal axes."""
    px = cube.reshape(-1, cube.shape[2])
    px = px - px.mean(axis=0)
    _, vec = np.linalg.eigh(np.cov(px, rowvar=False))
    return (px @ vec[:, ::-1][:, :components]).reshape(*cube.shape[:2], components)


def mnf(cube: np.ndarray, components: int) -> np.ndarray:
    """Minimum noise fraction (Green et al. 1988): the ``components`` directions with the largest
    signal-to-noise ratio, from the generalised eigenproblem ``S v = l N v`` where ``S`` is the
    scene covariance and ``N`` half the covariance of neighbour differences (the noise, if the
    signal is spatially smooth). Components come out with unit noise variance."""
    b = cube.shape[2]
    px = cube.reshape(-1, b)
    px = px - px.mean(axis=0)
    diffs = np.concatenate(
        [(cube[1:] - cube[:-1]).reshape(-1, b), (cube[:, 1:] - cube[:, :-1]).reshape(-1, b)]
    )
    noise = np.cov(diffs, rowvar=False) / 2
    noise += np.eye(b) * 1e-9 * np.trace(noise) / b  # a dead (constant) band has no noise
    _, vec = scipy.linalg.eigh(np.cov(px, rowvar=False), noise)
    return (px @ vec[:, ::-1][:, :components]).reshape(*cube.shape[:2], components)
