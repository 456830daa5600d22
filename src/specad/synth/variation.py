"""Normal variation of a real line, for the ``-hard`` presets: batches, clumps, lamps, 3-D objects.

``tray6`` draws every tray from one sawdust under one lamp, with flat objects lying on top, so a
global per-pixel model of the spectrum (RX) learns "normal" almost exactly. Here each cube gets
its own sawdust batch and lamp, and the objects stand up (cast shadows, shine) or sink into the
sawdust. Everything is drawn from its own random stream after the tray6 scene is built, so a
``-hard`` scene is the tray6 scene of the same seed with these effects on top, and tray6 itself
is untouched. The spectral facts stay: none of these effects mimics a liquid or a film at
1200/1450 nm more than a few percent, and none changes what RGB can see of water or foil.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from specad.synth.materials import Library
from specad.synth.presets import Camera, Variation
from specad.synth.scene import (
    MASK_COVER,
    Look,
    Patch,
    Scene,
    _outline,
    _rasterise,
    _window,
    fbm,
)

# Second radiation constant hc/k (nm K) and the lamp temperature of the white reference.
C2_NM_K = 1.4388e7
REFERENCE_K = 3100.0
# The lamp's colour change is normalised here, so gain and colour temperature stay separate.
NORMALISE_NM = 1000.0
# Blinn-Phong exponent of the plastics' highlights: glossy but not mirror-like.
GLOSS_POWER = 40.0
# Cast-shadow penumbra (px of height above the light ray) before the 0.7 px blur.
PENUMBRA_PX = 1.0
# Sawdust heaped over a buried object is at most this high (px): a low ridge, not a wall.
MOUND_PX = 2.0
# Height (mm) and shadow opacity of each kind of object: flakes are thin, a real leaf lets some
# light through, a clear film lies flat and blocks almost none (so RGB still cannot see foil).
LIFT_MM = {"pet": (0.5, 2.0), "pom": (0.5, 2.0), "leaf": (1.0, 3.0), "fake_leaf": (1.0, 3.0)}
OPACITY = {"leaf": 0.6, "foil": 0.0}


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def vary(
    scene: Scene, rng: np.random.Generator, var: Variation, cls: str | None, cid: int, pitch: float
) -> None:
    """Put ``var``'s batch, clumps, lamp, 3-D objects, burial and pellets into ``scene``."""
    scene.look = Look(
        gain=_u(rng, var.gain),
        temp_k=_u(rng, var.colour_temp_k),
        wood_mix=_u(rng, var.wood_mix),
        moisture_mm=_u(rng, var.moisture_mm),
        camera_gain=var.camera_gain,
        gradient=var.gradient,
        hotspot=var.hotspot,
        walls=_walls(scene) * _u(rng, var.wall_mm) / pitch,
    )
    _batch(scene, rng, var)
    _clumps(scene, rng, var, pitch)
    if not scene.patches:
        return
    for p, meta in zip(scene.patches, scene.objects, strict=True):
        _stand_up(p, rng, var, meta, pitch)
        if rng.random() < var.bury_probability:
            _bury(scene, p, rng, var, meta)
    if cls is not None and cls.startswith("pla_") and rng.random() < var.pellet_probability:
        for _ in range(int(rng.integers(var.pellets[0], var.pellets[1] + 1))):
            _pellet(scene, rng, var, cls, pitch)
    scene.mask[:] = 0  # masks again, from what is visible now
    for p in scene.patches:
        own = scene.mask[p.rows, p.cols]
        hit = p.cover >= MASK_COVER
        if not hit.any():
            hit = p.cover == p.cover.max()
        own[hit] = cid


def _walls(scene: Scene) -> np.ndarray:
    """The wall part of ``scene.tray``: bare wood connected to the image border."""
    labels, _ = ndimage.label(scene.tray > 0.5)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0]).astype(float)


def _batch(scene: Scene, rng: np.random.Generator, var: Variation) -> None:
    """Another sawdust batch: brightness, grain contrast and share of dark particles."""
    scene.albedo = _u(rng, var.albedo) * scene.albedo ** _u(rng, var.texture)
    scene.dark = np.clip(scene.dark + _u(rng, var.dark_fraction) - 0.12, 0.0, 1.0)


def _clumps(scene: Scene, rng: np.random.Generator, var: Variation, pitch: float) -> None:
    """Compacted clumps: raised (shaded like a lump), denser, so darker and with more bark."""
    n = scene.mask.shape[0]
    c = (n - 1) / 2
    wobble = np.clip(1 + 0.4 * fbm(rng, (n, n), [3.0 / pitch], [1.0]), 0, None)
    for _ in range(int(rng.integers(var.clumps[0], var.clumps[1] + 1))):
        radius = _u(rng, var.clump_mm) / pitch
        cy, cx = c + rng.uniform(-scene.inner, scene.inner, 2)
        edge = _outline(rng, 0.4)
        rows, cols = _window(n, cy, cx, 1.5 * radius)
        y, x = np.ogrid[rows, cols]
        rho = np.hypot(y - cy, x - cx) / (radius * edge(np.arctan2(y - cy, x - cx)))
        g = np.clip(1 - rho**2, 0, 1) ** 1.5 * (1 - scene.tray[rows, cols]) * wobble[rows, cols]
        scene.height[rows, cols] += rng.uniform(1.0, 3.0) / pitch * g
        scene.albedo[rows, cols] *= 1 - rng.uniform(0.05, 0.2) * np.clip(g, 0, 1)
        scene.dark[rows, cols] = np.clip(
            scene.dark[rows, cols] + rng.uniform(0.0, 0.25) * g, 0.0, 1.0
        )


def _stand_up(p: Patch, rng: np.random.Generator, var: Variation, meta: dict, pitch: float) -> None:
    """Height above the sawdust, rounded edges and gloss of a placed object."""
    if p.kind == "foil":
        return  # a clear film: its own Fresnel glints already, no shadow
    if p.cls.startswith("pla_"):
        p.lift = meta["size_mm"] / pitch  # a cube stands as high as it is wide
    else:
        p.lift = _u(rng, LIFT_MM[p.cls]) / pitch
    p.opacity = OPACITY.get(p.cls, 1.0)
    p.gloss = _u(rng, var.gloss) * (0.5 if p.kind == "leaf" else 1.0)
    bevel = min(p.lift, 3.0) * ndimage.gaussian_filter(p.cover, 1.0, mode="constant")
    p.height = p.height + bevel
    meta["height_mm"] = round(p.lift * pitch, 2)


def _bury(scene: Scene, p: Patch, rng: np.random.Generator, var: Variation, meta: dict) -> None:
    """Cover part of an object with sawdust: it renders and is masked only where visible."""
    footprint = p.cover >= MASK_COVER
    if footprint.sum() < 4:
        return
    ys, xs = np.mgrid[p.rows, p.cols].astype(float)
    cy, cx = ys[footprint].mean(), xs[footprint].mean()
    radius = max(np.sqrt(footprint.sum() / np.pi), 1.0)
    a = rng.uniform(0, 2 * np.pi)
    s = ((ys - cy) * np.sin(a) + (xs - cx) * np.cos(a)) / radius
    s = s + 0.3 * fbm(rng, s.shape, [max(radius / 3, 1.0)], [1.0])
    share = _u(rng, var.buried_share)
    cut = np.quantile(s[footprint], 1 - share)
    buried = np.clip((s - cut) * radius / 1.5 + 0.5, 0.0, 1.0)
    p.cover = p.cover * (1 - buried)
    mound = min(p.lift, MOUND_PX) * ndimage.gaussian_filter(buried * footprint, 1.5)
    scene.height[p.rows, p.cols] += mound
    meta["footprint_px"] = int(footprint.sum())
    meta["visible_px"] = int((p.cover >= MASK_COVER).sum())


def _pellet(scene: Scene, rng: np.random.Generator, var: Variation, cls: str, pitch: float) -> None:
    """A 1-2 px PLA pellet somewhere in the tray (broken-off piece of the same colour)."""
    n = scene.mask.shape[0]
    c = (n - 1) / 2
    edge = _u(rng, var.pellet_mm) / pitch
    half = edge / 2
    cy, cx = c + rng.uniform(-scene.inner + 3, scene.inner - 3, 2)
    rows, cols, cover, _, _ = _rasterise(
        n,
        cy,
        cx,
        half * np.sqrt(2),
        rng.uniform(0, np.pi),
        lambda u, v: (np.abs(u) < half) & (np.abs(v) < half),
    )
    p = Patch(cls, "opaque", rows, cols, cover, np.zeros_like(cover))
    p.lift, p.gloss = edge, _u(rng, var.gloss)
    scene.patches.append(p)
    scene.objects.append(
        {
            "class": cls,
            "pellet": True,
            "centre_px": [round(cy, 2), round(cx, 2)],
            "size_mm": round(edge * pitch, 2),
        }
    )


# --------------------------------------------------------------------------- rendering


def sawdust_bands(look: Look, lib: Library, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) band reflectances of this batch's light and dark particles: wood mix, moisture."""
    wet = lib.transmittance(
        lib.spectrum("water", "absorption_per_mm"), "sawdust", w, np.array([look.moisture_mm])
    )[0]
    light = (1 - look.wood_mix) * lib.band("sawdust", w) + look.wood_mix * lib.band("tray_wood", w)
    return light * wet, lib.band("sawdust_dark", w) * wet


def cast_shadow(scene: Scene, light: np.ndarray) -> np.ndarray:
    """(H, W) share of the direct light blocked by the walls and raised objects.

    Marches from every pixel towards the lamp in whole-pixel steps: shadowed where something
    stands higher than the ray from the pixel's own top; a small blur stands in for the lamp's
    penumbra.
    """
    lift = np.zeros_like(scene.height) if scene.look is None else scene.look.walls.copy()
    for p in scene.patches:
        if p.lift > 0 and p.opacity > 0:
            win = lift[p.rows, p.cols]
            np.maximum(win, p.lift * p.opacity * np.clip(p.cover, 0, 1), out=win)
    if not lift.any():
        return lift
    n = lift.shape[0]
    flat = np.hypot(light[0], light[1])
    dx, dy, rise = light[0] / flat, light[1] / flat, light[2] / flat
    depth = np.zeros_like(lift)
    for t in range(1, int(np.ceil(lift.max() / rise)) + 2):
        oy, ox = round(t * dy), round(t * dx)  # lift at p + t * direction
        src = lift[max(oy, 0) : n + min(oy, 0), max(ox, 0) : n + min(ox, 0)]
        dst = depth[max(-oy, 0) : n + min(-oy, 0), max(-ox, 0) : n + min(-ox, 0)]
        np.maximum(dst, src - t * rise, out=dst)
    depth -= lift  # the tops of walls and objects are lit
    return ndimage.gaussian_filter(np.clip(depth / PENUMBRA_PX, 0.0, 1.0), 0.7)


def highlight(height: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Blinn-Phong highlight of a surface seen from straight above (0..1)."""
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    gy, gx = np.gradient(height)
    cos = (half[2] - gx * half[0] - gy * half[1]) / np.sqrt(1 + gx**2 + gy**2)
    return np.clip(cos, 0, 1) ** GLOSS_POWER


def _planck(nm: np.ndarray, temp_k: float) -> np.ndarray:
    return nm**-5.0 / np.expm1(C2_NM_K / (nm * temp_k))


def lamp(
    look: Look, camera: Camera, lib: Library, w: np.ndarray, rng: np.random.Generator, n: int
) -> np.ndarray:
    """(H, W, C) lamp of this cube against the white reference: gain, colour, gradient, hotspot.

    A calibrated camera divides by a white reference taken at ``REFERENCE_K``; a lamp that has
    drifted since scales every band by its Planck ratio, warmer (lower K) mostly in the blue.
    """
    ratio = _planck(lib.grid_nm, look.temp_k) / _planck(lib.grid_nm, REFERENCE_K)
    ratio /= np.interp(NORMALISE_NM, lib.grid_nm, ratio)
    colour = w @ ratio
    gain = look.gain * (1 + look.camera_gain * rng.standard_normal())
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    phi = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0, look.gradient)
    field = 1 + slope * (np.cos(phi) * x + np.sin(phi) * y) / 2
    hy, hx = rng.uniform(-0.8, 0.8, 2)
    spread = rng.uniform(0.4, 0.9)
    field *= 1 + rng.uniform(0, look.hotspot) * np.exp(
        -((x - hx) ** 2 + (y - hy) ** 2) / (2 * spread**2)
    )
    return gain * field[..., None] * colour
