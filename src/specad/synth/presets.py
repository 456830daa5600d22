"""Cameras and dataset presets.

A preset is a set of cameras plus counts; the scenes themselves depend only on the seed and
the scene settings, so ``tray6``, ``tray-rgb`` and ``tray-hsi`` show the same trays.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields, replace

import numpy as np

from specad.bounds import MAX_IMAGE_SIZE
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
        """This config, checked before anything is drawn: every number finite and of its type,
        each setting within `SYNTH_BOUNDS`, so that no setting can make an all-NaN dataset or
        allocate without bound."""
        _finite(self, "")
        for name, (low, high) in SYNTH_BOUNDS.items():
            value = getattr(self, name)
            kind = numbers.Integral if name == "size" or name.startswith("n_") else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kind):
                what = "a whole number" if kind is numbers.Integral else "a number"
                raise SpecadError(f"synth {name} must be {what}, got {value!r:.40}")
            if not low <= value <= high:
                raise SpecadError(f"synth {name} must be {low:g}..{high:g}, got {value:.6g}")
        if not isinstance(self.anomaly_mix, dict):
            raise SpecadError("synth anomaly_mix must map class names to weights")
        unknown = set(self.anomaly_mix) - set(CLASSES)
        if unknown:
            raise SpecadError(f"unknown anomaly classes {sorted(unknown)}; known: {list(CLASSES)}")
        if min(self.anomaly_mix.values(), default=0.0) < 0:
            raise SpecadError("anomaly_mix weights must be >= 0")
        if not self.classes() and self.n_test_anomalous > 0:
            raise SpecadError("anomaly_mix gives every class weight 0")
        if self.variation is not None and not isinstance(self.variation, Variation):
            raise SpecadError("synth variation must be a Variation or None")
        return self


MAX_SYNTH_IMAGES = 100_000
"""Most images of one split or class a synthetic dataset may have."""
SYNTH_BOUNDS: dict[str, tuple[float, float]] = {
    "size": (32, MAX_IMAGE_SIZE),
    "fov_mm": (50.0, 1000.0),
    "difficulty": (0.1, 10.0),
    **dict.fromkeys(("n_train", "n_val", "n_test_good", "n_test_anomalous"), (0, MAX_SYNTH_IMAGES)),
}
"""Each numeric setting's range. ``size`` as a model input may be (larger scenes only cost time
and disk). ``difficulty`` scales object sizes by d**-0.5 and noise by d: far below a tenth objects
outgrow the picture, above ten noise buries every class. ``fov_mm`` spans a close-up of the
tray's centre to a view five times as wide as the tray."""


def _finite(value: object, where: str) -> None:
    """Refuse a NaN, an infinity or a non-number wherever a number belongs in ``value`` (a
    config, a camera, a variation, their tuples and mappings), naming the field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            _finite(getattr(value, f.name), f"{where}.{f.name}".lstrip("."))
    elif isinstance(value, tuple | list):
        for item in value:
            _finite(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    elif isinstance(value, numbers.Number) and not isinstance(value, bool):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise SpecadError(f"synth {where} must be a finite number, got {value!r:.40}")
    elif not isinstance(value, str | None):
        raise SpecadError(f"synth {where} must be a number, got {type(value).__name__}")


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
    if not isinstance(preset, str) or preset not in PRESETS:
        raise SpecadError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
    names = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SpecadError(f"unknown synth settings {unknown}; known: {sorted(names)}")
    return replace(PRESETS[preset], **overrides).validate()
