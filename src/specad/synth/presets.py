"""Cameras and dataset presets.

A preset is a set of cameras plus counts; the scenes themselves depend only on the seed and
the scene settings, so ``tray6``, ``tray-rgb`` and ``tray-hsi`` show the same trays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from specad.errors import SpecadError

# Anomaly classes in mask-id order (ids are 1.. in this order among the classes a mix uses).
CLASSES = (
    "pla_black",
    "pla_blue",
    "pla_white",
    "pet",
    "pom",
    "foil",
    "leaf",
    "fake_leaf",
    "water",
    "alcohol",
)


@dataclass(frozen=True)
class Camera:
    """One camera of the rig: its bands, optics and noise.

    ``offset_px`` is the camera's registration error (dy, dx) against the RGB camera, in pixels
    of a 256-px image (scaled with the image size); masks are drawn in RGB-camera geometry.
    Noise per band is ``sqrt(read**2 + shot * signal)`` plus a per-column offset (InGaAs-like).
    """

    name: str
    bands: tuple[str, ...]
    centres_nm: tuple[float, ...]
    fwhm_nm: tuple[float, ...]
    read_noise: tuple[float, ...]
    shot_noise: float
    column_noise: float = 0.0
    blur_px: float = 0.4
    offset_px: tuple[float, float] = (0.0, 0.0)
    light_azimuth_deg: float = 135.0
    light_elevation_deg: float = 55.0
    vignetting: tuple[float, float] = (0.04, 0.12)

    def light(self) -> np.ndarray:
        """Unit vector towards the lamp (x right, y down, z up)."""
        az, el = math.radians(self.light_azimuth_deg), math.radians(self.light_elevation_deg)
        return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


RGB_CAMERA = Camera(
    name="rgb",
    bands=("R", "G", "B"),
    centres_nm=(630.0, 532.0, 465.0),
    fwhm_nm=(80.0, 90.0, 80.0),
    read_noise=(0.004, 0.003, 0.005),
    shot_noise=1e-4,
)
SWIR_CAMERA = Camera(
    name="swir",
    bands=("SWIR1050", "SWIR1200", "SWIR1450"),
    centres_nm=(1050.0, 1200.0, 1450.0),
    fwhm_nm=(50.0, 50.0, 50.0),
    read_noise=(0.008, 0.008, 0.012),
    shot_noise=3e-4,
    column_noise=0.003,
    blur_px=0.7,
    offset_px=(1.4, -0.9),
    light_azimuth_deg=40.0,
    light_elevation_deg=50.0,
    vignetting=(0.08, 0.2),
)
_HSI_NM = tuple(float(round(w, 1)) for w in np.linspace(400.0, 1700.0, 31))
HSI_CAMERA = Camera(
    name="hsi",
    bands=tuple(f"{w:.0f}nm" for w in _HSI_NM),
    centres_nm=_HSI_NM,
    fwhm_nm=(45.0,) * len(_HSI_NM),
    read_noise=tuple(0.006 if w < 1000 else 0.01 for w in _HSI_NM),
    shot_noise=2e-4,
    blur_px=0.6,
    light_azimuth_deg=90.0,
    light_elevation_deg=60.0,
)


@dataclass(frozen=True)
class Variation:
    """How much trays, lamps and objects vary in the ``-hard`` presets (ranges are uniform).

    Without it every tray has the same sawdust under the same lamp, so a global per-pixel model
    (RX) separates almost everything. A real line sees other sawdust batches (wood mix, dark
    particles, moisture), clumps, lamps that age and drift, objects that stand up, cast shadows,
    shine and sink into the sawdust, and PLA that breaks into pellets.
    """

    gain: tuple[float, float] = (0.7, 1.3)  # lamp intensity of a cube, both cameras
    camera_gain: float = 0.06  # std of each camera's own exposure around it
    colour_temp_k: tuple[float, float] = (2800.0, 3400.0)  # halogen, white reference at 3100 K
    gradient: float = 0.3  # largest linear fall-off across the image, per camera
    hotspot: float = 0.35  # largest extra brightness at the lamp's centre, per camera
    wall_mm: tuple[float, float] = (5.0, 15.0)  # tray wall above the sawdust: casts a shadow
    wood_mix: tuple[float, float] = (0.0, 0.5)  # share of other (greyer, drier) wood
    dark_fraction: tuple[float, float] = (0.04, 0.3)  # mean share of dark particles
    albedo: tuple[float, float] = (0.85, 1.15)  # brightness of the batch
    texture: tuple[float, float] = (0.7, 1.8)  # contrast of the grain albedo
    moisture_mm: tuple[float, float] = (0.0, 0.12)  # equivalent water path of the batch
    clumps: tuple[int, int] = (2, 10)  # clumps per tray
    clump_mm: tuple[float, float] = (4.0, 15.0)  # clump radius
    bury_probability: float = 0.5  # share of objects partly under sawdust
    buried_share: tuple[float, float] = (0.2, 0.6)  # of such an object's footprint
    pellet_probability: float = 0.6  # PLA images that also hold pellets
    pellets: tuple[int, int] = (1, 6)  # pellets in such an image
    pellet_mm: tuple[float, float] = (0.8, 1.8)  # pellet edge: 1-2 px at 256 px
    gloss: tuple[float, float] = (0.05, 0.3)  # specular gain of plastics and leaves


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic dataset besides the seed.

    ``fov_mm`` is the width the image spans (tray ~200 mm inside, walls included), so the pixel
    pitch is ``fov_mm / size`` (0.82 mm at 256 px) and objects keep their physical sizes.
    ``anomaly_mix`` weights share ``n_test_anomalous`` among classes (0 drops one).
    ``difficulty`` 1 is the default; d scales object sizes by d**-0.5, liquid depth and foil
    thickness by 1/d, and sensor noise by d. ``variation`` (None: off, today's scenes exactly)
    adds the normal variation of a real line between trays; see :class:`Variation`.
    """

    cameras: tuple[Camera, ...]
    size: int = 256
    fov_mm: float = 210.0
    n_train: int = 200
    n_val: int = 30
    n_test_good: int = 30
    n_test_anomalous: int = 90
    anomaly_mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLASSES, 1.0))
    difficulty: float = 1.0
    variation: Variation | None = None

    @property
    def pitch_mm(self) -> float:
        return self.fov_mm / self.size

    def classes(self) -> list[str]:
        """Anomaly classes in use, in id order."""
        return [c for c in CLASSES if self.anomaly_mix.get(c, 0.0) > 0]

    def test_counts(self) -> dict[str, int]:
        """Split ``n_test_anomalous`` by weight (largest remainder, ties in class order)."""
        names = self.classes()
        w = np.array([self.anomaly_mix[c] for c in names], dtype=float)
        share = self.n_test_anomalous * w / w.sum()
        counts = np.floor(share).astype(int)
        extra = np.argsort(-(share - counts), kind="stable")[: self.n_test_anomalous - counts.sum()]
        counts[extra] += 1
        return dict(zip(names, counts.tolist(), strict=True))

    def validate(self) -> SynthConfig:
        unknown = set(self.anomaly_mix) - set(CLASSES)
        if unknown:
            raise SpecadError(f"unknown anomaly classes {sorted(unknown)}; known: {list(CLASSES)}")
        if not self.classes() and self.n_test_anomalous > 0:
            raise SpecadError("anomaly_mix gives every class weight 0")
        if min(self.anomaly_mix.values(), default=0.0) < 0:
            raise SpecadError("anomaly_mix weights must be >= 0")
        if self.size < 32:
            raise SpecadError(f"size must be >= 32 px, got {self.size}")
        if self.difficulty <= 0:
            raise SpecadError(f"difficulty must be > 0, got {self.difficulty}")
        counts = (self.n_train, self.n_val, self.n_test_good, self.n_test_anomalous)
        if min(counts) < 0:
            raise SpecadError("image counts must be >= 0")
        return self


PRESETS: dict[str, SynthConfig] = {
    "tray6": SynthConfig(cameras=(RGB_CAMERA, SWIR_CAMERA)),
    "tray-rgb": SynthConfig(cameras=(RGB_CAMERA,)),
    # 31 float32 bands are ~8 MB a cube: fewer images by default. Scenes are keyed by split and
    # stem, so these are the first scenes of tray6 for the same seed, not new ones.
    "tray-hsi": SynthConfig(
        cameras=(HSI_CAMERA,), n_train=100, n_val=15, n_test_good=15, n_test_anomalous=50
    ),
    # tray6's scenes with the normal variation of a real line on top (same seed: same trays,
    # objects and masks before variation); tray-rgb-hard is its RGB view, as tray-rgb of tray6.
    "tray6-hard": SynthConfig(cameras=(RGB_CAMERA, SWIR_CAMERA), variation=Variation()),
    "tray-rgb-hard": SynthConfig(cameras=(RGB_CAMERA,), variation=Variation()),
}


def resolve(preset: str, overrides: dict) -> SynthConfig:
    """The named preset with ``overrides`` applied and checked."""
    if preset not in PRESETS:
        raise SpecadError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
    names = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SpecadError(f"unknown synth settings {unknown}; known: {sorted(names)}")
    return replace(PRESETS[preset], **overrides).validate()
