"""The spectral library behind the generator, and its integration into camera bands.

``materials.json`` (built by ``tools/derive_materials.py``) samples every material on one
400-1700 nm grid, so any band set (RGB, SWIR filters, 31 hyperspectral bands) is a matrix
product away and new presets need no new data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from specad.synth.presets import Camera

# Paths (mm of liquid, or foil path relative to bulk) at which band transmittances are tabulated;
# a soaked pixel then needs one interpolation per band instead of a full spectrum.
_PATH_GRID = np.linspace(0.0, 8.0, 161)


@dataclass(frozen=True)
class Library:
    """Spectra on a common wavelength grid, keyed by material name."""

    grid_nm: np.ndarray
    materials: dict[str, dict]

    def spectrum(self, name: str, key: str = "reflectance") -> np.ndarray:
        return np.asarray(self.materials[name][key], dtype=np.float64)

    def weights(self, camera: Camera) -> np.ndarray:
        """(C, n) Gaussian band responses of ``camera``, each summing to 1 over the grid."""
        centres = np.asarray(camera.centres_nm)[:, None]
        sigma = np.asarray(camera.fwhm_nm)[:, None] / (2 * np.sqrt(2 * np.log(2)))
        w = np.exp(-0.5 * ((self.grid_nm[None, :] - centres) / sigma) ** 2)
        return w / w.sum(axis=1, keepdims=True)

    def band(self, name: str, weights: np.ndarray, key: str = "reflectance") -> np.ndarray:
        """(C,) band-integrated ``key`` spectrum of ``name``."""
        return weights @ self.spectrum(name, key)

    def transmittance(
        self, attenuation: np.ndarray, under: str, weights: np.ndarray, path: np.ndarray
    ) -> np.ndarray:
        """(N, C) band transmittance exp(-attenuation * path) seen over material ``under``.

        Integrating the product spectrum (not the band-mean attenuation) keeps strong, narrow
        absorptions such as water at 1450 nm from being underestimated inside a wide band.
        """
        lit = weights * self.spectrum(under)[None, :]
        table = (np.exp(-np.outer(_PATH_GRID, attenuation)) @ lit.T) / lit.sum(axis=1)
        path = np.clip(path, 0.0, _PATH_GRID[-1])
        return np.stack([np.interp(path, _PATH_GRID, col) for col in table.T], axis=-1)


@cache
def load_library() -> Library:
    """Read the packaged ``materials.json`` once per process."""
    text = resources.files("specad.synth").joinpath("materials.json").read_text()
    doc = json.loads(text)
    return Library(np.asarray(doc["grid_nm"], dtype=np.float64), doc["materials"])
