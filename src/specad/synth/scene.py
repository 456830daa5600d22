"""Band-independent scene geometry: sawdust, the wooden tray and the anomalous objects.

Everything here is in RGB-camera pixels and knows nothing about bands, so every preset renders
the same scene (and the same mask) for a seed. Sizes are physical (mm) and converted with the
pixel pitch, so a 1 mm PLA cube stays ~1 px at 256 px and sub-pixel at 64 px.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# Sampling of the area coverage used both to render an object's edge and to draw its mask.
SUPERSAMPLE = 4
# A pixel belongs to an object's mask when at least this fraction of its area is covered.
MASK_COVER = 0.5
# Anomalies stay this far (mm) inside the tray walls so the contrast ring is all sawdust.
WALL_MARGIN_MM = 8.0

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]
Kind = Literal["opaque", "leaf", "foil"]


@dataclass
class Patch:
    """An object drawn over the sawdust in a bounding box of the image (material = class)."""

    cls: str
    kind: Kind
    rows: slice
    cols: slice
    cover: np.ndarray  # (h, w) covered area fraction
    height: np.ndarray  # (h, w) surface height in px, for shading and highlights
    thickness: np.ndarray | None = None  # foil: optical path relative to the bulk sample
    # Used only with a Variation (the -hard presets): height of the top above the sawdust (px)
    # for cast shadows, how much light the object blocks, and its specular gain.
    lift: float = 0.0
    opacity: float = 1.0
    gloss: float = 0.0


@dataclass(frozen=True)
class Look:
    """One cube's sawdust batch and lamp; the per-camera lamp strengths come with it."""

    gain: float  # lamp intensity, shared by the cameras
    temp_k: float  # lamp colour temperature
    wood_mix: float  # share of the other wood in the sawdust spectrum
    moisture_mm: float  # equivalent water path of the batch
    camera_gain: float
    gradient: float
    hotspot: float
    walls: np.ndarray  # (H, W) height of the tray walls above the sawdust (px), 0 inside


@dataclass
class Scene:
    height: np.ndarray  # sawdust surface height (px), for shading
    albedo: np.ndarray  # achromatic brightness of grains and occlusion near the walls
    dark: np.ndarray  # fraction of dark (bark-like) particles
    tray: np.ndarray  # 0..1 how much of the pixel is bare tray wood (walls, bottom patches)
    grain: np.ndarray  # wood-grain brightness of the tray
    mask: np.ndarray  # uint8 class ids (there are 10 classes), RGB-camera geometry
    liquids: dict[str, np.ndarray] = field(default_factory=dict)  # material -> depth (mm)
    patches: list[Patch] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)  # what was placed, for synth.json
    inner: float = 0.0  # usable half-width inside the walls (px), for later placements
    look: Look | None = None  # per-cube sawdust batch and lamp (the -hard presets only)


# --------------------------------------------------------------------------- noise


def _freqs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]


def _gauss_ft(shape: tuple[int, int], s_u: float, s_v: float, theta: float = 0.0) -> np.ndarray:
    """Fourier transform of a unit-sum Gaussian with std (s_u, s_v) along an angle."""
    ky, kx = _freqs(shape)
    ku = kx * np.cos(theta) + ky * np.sin(theta)
    kv = -kx * np.sin(theta) + ky * np.cos(theta)
    return np.exp(-2 * np.pi**2 * ((s_u * ku) ** 2 + (s_v * kv) ** 2))


def fbm(
    rng: np.random.Generator, shape: tuple[int, int], scales: list[float], weights: list[float]
) -> np.ndarray:
    """Sum of independent Gaussian-smoothed noises, each of unit std, weighted per scale (px)."""
    out = np.zeros(shape)
    for scale, weight in zip(scales, weights, strict=True):
        layer = np.fft.irfft2(
            np.fft.rfft2(rng.standard_normal(shape)) * _gauss_ft(shape, scale, scale), s=shape
        )
        out += weight * layer / (layer.std() + 1e-12)
    return out


def _chips(
    rng: np.random.Generator, shape: tuple[int, int], count: int, long_px: float, short_px: float
) -> np.ndarray:
    """Elongated wood chips of random orientation and sign (peak amplitude ~1)."""
    out = np.zeros(shape)
    short_px = max(short_px, 0.5)
    for theta in np.linspace(0, np.pi, 4, endpoint=False):
        impulses = np.zeros(shape)
        ys, xs = rng.integers(0, shape[0], count // 4), rng.integers(0, shape[1], count // 4)
        np.add.at(
            impulses,
            (ys, xs),
            rng.choice([-1.0, 1.0], count // 4) * rng.uniform(0.5, 1.0, count // 4),
        )
        kernel = _gauss_ft(shape, long_px, short_px, theta + rng.uniform(0, np.pi / 4))
        out += (
            np.fft.irfft2(np.fft.rfft2(impulses) * kernel, s=shape) * 2 * np.pi * long_px * short_px
        )
    return out


# --------------------------------------------------------------------------- background


def _tray(
    rng: np.random.Generator, n: int, pitch: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Tray walls (slightly rotated), their wood grain, and the distance to the walls (px)."""
    c = (n - 1) / 2
    y, x = np.mgrid[0:n, 0:n] - c
    ang = np.radians(rng.uniform(-1.5, 1.5))
    u = np.cos(ang) * x + np.sin(ang) * y
    v = -np.sin(ang) * x + np.cos(ang) * y
    left, right, top, bottom = c - rng.uniform(5.0, 10.0, 4) / pitch
    to_side = np.minimum(u + left, right - u)
    to_end = np.minimum(v + top, bottom - v)
    dist = np.minimum(to_side, to_end)
    walls = np.clip(0.5 - dist, 0.0, 1.0)  # one-pixel anti-aliased edge
    across = np.where(to_side < to_end, u, v)  # grain runs along each wall
    warp = 3.0 * fbm(rng, (n, n), [6.0 / pitch], [1.0])
    grain = (
        1
        + 0.07 * np.sin(2 * np.pi * (across + warp) / (2.5 / pitch))
        + 0.03 * fbm(rng, (n, n), [0.5 / pitch], [1.0])
    )
    inner = min(left, right, top, bottom) * np.cos(ang) - abs(np.sin(ang)) * c
    return walls, grain, np.maximum(dist, 0.0), float(inner)


def _background(rng: np.random.Generator, n: int, pitch: float) -> tuple[Scene, float]:
    """Granular sawdust in a wooden tray; returns the scene and the usable half-width (px)."""
    shape = (n, n)
    px = 1.0 / pitch
    height = fbm(rng, shape, [0.5 * px, 1.5 * px, 6 * px], [1.0, 0.8, 1.5])
    chips = _chips(rng, shape, int(0.12 * (n * pitch) ** 2), 1.5 * px, 0.5 * px)
    height += 1.5 * np.abs(chips)
    gy, gx = np.gradient(height)
    height *= 0.12 / np.sqrt((gx**2 + gy**2).mean())  # rms slope ~0.12: grainy shading
    albedo = np.exp(0.07 * fbm(rng, shape, [0.5 * px, 1.5 * px, 8 * px], [1.0, 0.7, 0.6]))
    albedo *= 1 + 0.3 * np.maximum(-chips, 0)
    dark = np.clip(
        0.12 + 0.06 * fbm(rng, shape, [4 * px, 20 * px], [0.6, 1.0]) + 0.6 * np.maximum(chips, 0),
        0,
        1,
    )

    walls, grain, dist, inner = _tray(rng, n, pitch)
    albedo *= 1 - 0.25 * np.exp(-dist * pitch / 3.0)  # occlusion next to the walls
    tray = walls
    if rng.random() < 0.15:  # sawdust pushed aside: bare tray bottom shows through
        low = fbm(rng, shape, [15 * px], [1.0])
        tray = np.maximum(tray, np.clip((low - 2.3) / 0.3, 0, 1))
    height *= 1 - tray
    scene = Scene(height, albedo, dark, tray, grain, np.zeros(shape, np.uint8))
    return scene, inner


# --------------------------------------------------------------------------- objects


def _window(n: int, cy: float, cx: float, radius: float) -> tuple[slice, slice]:
    """Bounding box (clipped to the image) of a disc around (cy, cx)."""
    r = int(np.ceil(radius)) + 2
    return (
        slice(max(0, int(cy) - r), min(n, int(cy) + r + 2)),
        slice(max(0, int(cx) - r), min(n, int(cx) + r + 2)),
    )


def _local(
    ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates in an object's frame: u along its axis at angle ``theta``, v across."""
    dy, dx = ys[:, None] - cy, xs[None, :] - cx
    return np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy


def _rasterise(
    n: int, cy: float, cx: float, radius: float, theta: float, inside: Shape
) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]:
    """Area coverage of a shape around (cy, cx), plus the pixel-centre (u, v) of its window."""
    rows, cols = _window(n, cy, cx, radius)
    ys = np.arange(rows.start, rows.stop, dtype=float)
    xs = np.arange(cols.start, cols.stop, dtype=float)
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    fine = inside(*_local((ys[:, None] + sub).ravel(), (xs[:, None] + sub).ravel(), cy, cx, theta))
    cover = fine.reshape(len(ys), SUPERSAMPLE, len(xs), SUPERSAMPLE).mean(axis=(1, 3))
    return rows, cols, cover, *_local(ys, xs, cy, cx, theta)


def _outline(rng: np.random.Generator, roughness: float) -> Callable[[np.ndarray], np.ndarray]:
    """Irregular closed outline as a relative radius r(phi) = 1 + sum a_k cos(k phi + p_k)."""
    k = np.arange(2, 7)
    amp = rng.uniform(0, roughness, k.size) / k * 2
    phase = rng.uniform(0, 2 * np.pi, k.size)
    return lambda phi: 1 + (amp * np.cos(k * phi[..., None] + phase)).sum(-1)


def _blob(rng: np.random.Generator, radius: float, roughness: float) -> Shape:
    edge = _outline(rng, roughness)
    return lambda u, v: np.hypot(u, v) < radius * edge(np.arctan2(v, u))


def _leaf_shape(length: float, width: float) -> Shape:
    """Pointed-oval blade along u with a short stalk behind it."""

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = np.clip(u / length + 0.5, 0, 1)
        blade = (np.abs(u) < length / 2) & (np.abs(v) < 0.5 * width * np.sin(np.pi * t) ** 0.8)
        stalk = (u < -length / 2) & (u > -0.65 * length) & (np.abs(v) < 0.6)
        return blade | stalk

    return inside


def _place(
    rng: np.random.Generator, n: int, inner: float, pitch: float, radius: float, taken: list
) -> tuple[float, float]:
    """A centre inside the walls (with margin) not overlapping earlier objects."""
    c = (n - 1) / 2
    room = max(inner - WALL_MARGIN_MM / pitch - radius, 1.0)
    for _ in range(50):  # crowded tray: after 50 tries accept an overlap
        cy, cx = c + rng.uniform(-room, room, 2)
        if all(np.hypot(cy - y, cx - x) > radius + r + 2 for y, x, r in taken):
            break
    taken.append((cy, cx, radius))
    return float(cy), float(cx)


def _solid(
    rng: np.random.Generator, cls: str, size_mm: float, pitch: float
) -> tuple[Kind, float, Shape, dict]:
    """Kind, bounding radius (px), outline and metadata of one solid object."""
    if cls.startswith("pla_"):
        half = size_mm / pitch / 2
        return "opaque", half * np.sqrt(2), lambda u, v: (np.abs(u) < half) & (np.abs(v) < half), {}
    if cls in ("pet", "pom"):
        radius = size_mm / pitch / 2
        return "opaque", radius * 1.5, _blob(rng, radius, 0.25), {}
    if cls == "foil":
        radius = size_mm / pitch / 2
        return "foil", radius * 1.6, _blob(rng, radius, 0.35), {}
    length = size_mm / pitch
    width = length * rng.uniform(0.35, 0.55)
    meta = {"width_mm": round(width * pitch, 1)}
    return (
        "leaf" if cls == "leaf" else "opaque",
        0.65 * length + 1,
        _leaf_shape(length, width),
        meta,
    )


# Log-uniform size range (mm) and instance-count range per solid class (PLA: cube edge; PET/POM:
# flake diameter; foil: diameter; leaves: length). Liquids: spot radius and centre depth (mm).
SIZES_MM = {
    **dict.fromkeys(("pla_black", "pla_blue", "pla_white"), ((1.0, 16.0), (1, 3))),
    "pet": ((6.0, 20.0), (1, 2)),
    "pom": ((6.0, 20.0), (1, 2)),
    "foil": ((25.0, 60.0), (1, 1)),
    "leaf": ((25.0, 55.0), (1, 1)),
    "fake_leaf": ((25.0, 55.0), (1, 1)),
}
LIQUIDS = {
    "water": ("water", (8.0, 20.0), (1.0, 3.0)),
    "alcohol": ("ethanol", (6.0, 16.0), (1.0, 3.0)),
}


@dataclass
class Placement:
    """Where anomalies go: the scene, its generator, pixel pitch (mm), the tray's inner
    half-width (px), the difficulty, and the objects placed so far (centre and radius)."""

    scene: Scene
    rng: np.random.Generator
    pitch: float
    inner: float
    difficulty: float
    taken: list[tuple[float, float, float]] = field(default_factory=list)


def _add_solid(at: Placement, cls: str, cid: int) -> None:
    n = at.scene.mask.shape[0]
    (lo, hi), _ = SIZES_MM[cls]
    size_mm = float(np.exp(at.rng.uniform(np.log(lo), np.log(hi)))) * at.difficulty**-0.5
    kind, radius, inside, meta = _solid(at.rng, cls, size_mm, at.pitch)
    cy, cx = _place(at.rng, n, at.inner, at.pitch, radius, at.taken)
    theta = at.rng.uniform(0, np.pi)
    rows, cols, cover, u, v = _rasterise(n, cy, cx, radius, theta, inside)
    tilt = at.rng.normal(0, 0.08, 2)
    height = tilt[0] * u + tilt[1] * v  # a flat face, slightly tilted
    thickness = None
    if kind == "leaf" or cls == "fake_leaf":
        half_w = max(meta["width_mm"] / at.pitch / 2, 1.0)
        curl = at.rng.uniform(0.1, 0.3) if kind == "leaf" else at.rng.uniform(0.03, 0.1)
        height = height + curl * half_w * (1 - (v / half_w) ** 2) + 0.3 * np.exp(-(v**2) / 0.5)
    if kind == "foil":
        shape = cover.shape
        height = height + at.rng.uniform(1.0, 2.0) * fbm(
            at.rng, shape, [1.5 / at.pitch, 4 / at.pitch], [0.5, 1.0]
        )
        layers = 1 + np.clip(fbm(at.rng, shape, [5 / at.pitch], [1.0]), -0.8, 2.0)
        thickness = at.rng.uniform(0.5, 1.0) / at.difficulty * layers
    at.scene.patches.append(Patch(cls, kind, rows, cols, cover, height, thickness))
    own = at.scene.mask[rows, cols]
    hit = cover >= MASK_COVER
    if not hit.any():  # sub-pixel object: its most-covered pixel carries the label
        hit = cover == cover.max()
    own[hit] = cid
    at.scene.objects.append(
        {
            "class": cls,
            "centre_px": [round(cy, 2), round(cx, 2)],
            "size_mm": round(size_mm, 2),
            **meta,
        }
    )


def _add_liquid(at: Placement, cls: str, cid: int) -> None:
    """A soaked spot: depth d0 * sqrt(1 - rho^2) inside an irregular outline, uneven wetting."""
    n = at.scene.mask.shape[0]
    material, (r_lo, r_hi), (d_lo, d_hi) = LIQUIDS[cls]
    radius = at.rng.uniform(r_lo, r_hi) * at.difficulty**-0.5 / at.pitch
    depth0 = at.rng.uniform(d_lo, d_hi) / at.difficulty
    cy, cx = _place(at.rng, n, at.inner, at.pitch, radius * 1.5, [])
    edge = _outline(at.rng, 0.3)
    rows, cols = _window(n, cy, cx, radius * 1.5)
    u, v = _local(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop), cy, cx, 0.0)
    rho = np.hypot(u, v) / (radius * edge(np.arctan2(v, u)))
    wet = np.sqrt(np.clip(1 - rho**2, 0, 1))
    wet *= np.clip(1 + 0.25 * fbm(at.rng, wet.shape, [2 / at.pitch], [1.0]), 0.3, None)
    depth = np.zeros((n, n))
    depth[rows, cols] = depth0 * wet * (rho < 1)
    at.scene.liquids[material] = np.maximum(at.scene.liquids.get(material, 0.0), depth)
    at.scene.mask[depth > 0] = cid
    at.scene.objects.append(
        {
            "class": cls,
            "material": material,
            "centre_px": [round(cy, 2), round(cx, 2)],
            "size_mm": round(2 * radius * at.pitch, 2),
            "depth_mm": round(depth0, 2),
        }
    )


def make_scene(
    rng: np.random.Generator, size: int, pitch: float, cls: str | None, cid: int, difficulty: float
) -> Scene:
    """A tray of sawdust, with instances of anomaly class ``cls`` (mask id ``cid``) if given."""
    scene, inner = _background(rng, size, pitch)
    scene.inner = inner
    if cls is None:
        return scene
    at = Placement(scene, rng, pitch, inner, difficulty)
    if cls in LIQUIDS:
        _add_liquid(at, cls, cid)
        return scene
    _, (lo, hi) = SIZES_MM[cls]
    for _ in range(int(rng.integers(lo, hi + 1))):
        _add_solid(at, cls, cid)
    return scene
