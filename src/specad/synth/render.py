"""Turn a scene into one camera's bands: reflectance mixing, shading, optics and sensor noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from specad.synth.materials import Library
from specad.synth.presets import Camera
from specad.synth.scene import Patch, Scene
from specad.synth.variation import cast_shadow, highlight, lamp, sawdust_bands

# Diffuse share of the lighting: keeps slopes facing away from the lamp from going black.
AMBIENT = 0.35
# Wetting darkens sawdust slightly in every band (refractive-index matching in the pores);
# at 1 mm and deeper the spot is this much darker, on top of the liquid's own absorption.
WET_DARKENING = 0.04
# Blinn-Phong exponent and gain for the foil's specular glints; SPECULAR_FLOOR is the share
# of the specular reflection caught from the diffuse surroundings anywhere on the foil.
GLINT_POWER = 60.0
GLINT_GAIN = 1.0
SPECULAR_FLOOR = 0.3


def lambert(height: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Relative irradiance of a height field (px units), 1 on flat ground."""
    gy, gx = np.gradient(height)
    cos = (light[2] - gx * light[0] - gy * light[1]) / np.sqrt(1 + gx**2 + gy**2)
    return AMBIENT + (1 - AMBIENT) * np.clip(cos, 0, None) / light[2]


def _glints(height: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Specular highlight of a wrinkled surface seen from straight above."""
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    gy, gx = np.gradient(height)
    cos = (half[2] - gx * half[0] - gy * half[1]) / np.sqrt(1 + gx**2 + gy**2)
    return SPECULAR_FLOOR + GLINT_GAIN * np.clip(cos, 0, 1) ** GLINT_POWER


def _patch(
    p: Patch, under: np.ndarray, lib: Library, w: np.ndarray, light: np.ndarray
) -> np.ndarray:
    """Pixels of the window under ``p`` after the object is laid over them."""
    cover = p.cover[..., None]
    if p.kind == "foil":
        n = lib.materials[p.cls]["refractive_index"]
        r = ((n - 1) / (n + 1)) ** 2
        film = 2 * r / (1 + r)  # two surfaces, incoherent
        absorbance = lib.spectrum(p.cls, "absorbance")
        t = lib.transmittance(absorbance, "sawdust", w, p.thickness.ravel()).reshape(under.shape)
        over = film * _glints(p.height, light)[..., None] + (1 - film) ** 2 * t * under / (
            1 - film * t * under
        )
    elif p.kind == "leaf":
        refl, trans = lib.band(p.cls, w), lib.band(p.cls, w, "transmittance")
        over = refl * lambert(p.height, light)[..., None] + trans**2 * under / (1 - refl * under)
    else:
        over = lib.band(p.cls, w) * lambert(p.height, light)[..., None]
    return under * (1 - cover) + over * cover


def _illumination(rng: np.random.Generator, n: int, camera: Camera) -> np.ndarray:
    """Smooth lamp falloff: radial vignetting times a gentle linear gradient."""
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    vignette = rng.uniform(*camera.vignetting)
    slope, phi = rng.uniform(0, 0.08), rng.uniform(0, 2 * np.pi)
    return (1 - vignette * (x**2 + y**2) / 2) * (1 + slope * (np.cos(phi) * x + np.sin(phi) * y))


def _optics(img: np.ndarray, blur: float, shift: tuple[float, float]) -> np.ndarray:
    """Gaussian blur, then a sub-pixel shift (dy, dx) by bilinear resampling.

    Both act within a few pixels (no Fourier ringing), so an object never leaks far beyond its
    mask in the RGB camera.
    """
    img = ndimage.gaussian_filter(img, sigma=(blur, blur, 0), mode="nearest")
    if shift == (0.0, 0.0):
        return img
    return ndimage.shift(img, (*shift, 0.0), order=1, mode="nearest")


def render(
    scene: Scene, camera: Camera, lib: Library, rng: np.random.Generator, difficulty: float
) -> np.ndarray:
    """(H, W, C) float32 reflectance that ``camera`` records of ``scene``."""
    w = lib.weights(camera)
    n = scene.mask.shape[0]
    dark = scene.dark[..., None]
    look = scene.look
    light_dust, dark_dust = (
        (lib.band("sawdust", w), lib.band("sawdust_dark", w))
        if look is None
        else sawdust_bands(look, lib, w)
    )
    sawdust = (1 - dark) * light_dust + dark * dark_dust
    ground = sawdust * scene.albedo[..., None]
    tray = scene.tray[..., None]
    ground = ground * (1 - tray) + tray * lib.band("tray_wood", w) * scene.grain[..., None]
    for material, depth in scene.liquids.items():
        wet = depth > 0
        t = lib.transmittance(lib.spectrum(material, "absorption_per_mm"), "sawdust", w, depth[wet])
        ground[wet] *= t * (1 - WET_DARKENING * np.minimum(depth[wet], 1.0))[:, None]
    light = camera.light()
    shade = lambert(scene.height, light)
    if look is not None:  # objects standing up take the direct light off the sawdust
        shade = AMBIENT + (shade - AMBIENT) * (1 - cast_shadow(scene, light))
    img = ground * shade[..., None]
    for p in scene.patches:
        img[p.rows, p.cols] = _patch(p, img[p.rows, p.cols], lib, w, light)
        if p.gloss > 0:  # achromatic: the lamp's own colour, applied with it below
            img[p.rows, p.cols] += (p.gloss * p.cover * highlight(p.height, light))[..., None]
    if look is not None:
        img *= lamp(look, camera, lib, w, rng, n)
    img *= _illumination(rng, n, camera)[..., None]
    dy, dx = (o * n / 256 + rng.normal(0, 0.15) if o else 0.0 for o in camera.offset_px)
    img = _optics(img, camera.blur_px, (dy, dx))
    sigma = difficulty * np.sqrt(
        np.asarray(camera.read_noise) ** 2 + camera.shot_noise * np.clip(img, 0, None)
    )
    img += sigma * rng.standard_normal(img.shape)
    img += difficulty * camera.column_noise * rng.standard_normal((1, n, img.shape[2]))
    return img.astype(np.float32)
