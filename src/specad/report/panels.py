"""The pictures on a per-cube page: the cube's false-colour views, its map and binary masks.

Panels are composed with Pillow, an order of magnitude faster than a matplotlib figure per cube,
and each is its own PNG so that the page, not the picture, lays out and wraps the titles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from specad.data import select_channels
from specad.io import Cube
from specad.spectral import SWIR_MIN_NM
from specad.visual import display_bands, false_colour, heat, overlay

PANEL = 256
"""Longest side of each per-cube panel in pixels."""
OUTLINE = np.array([0, 230, 255], np.uint8)
"""Ground-truth outlines in cyan: it stands out against both the photos and the inferno map."""
SMALL_REGION = 12
"""Defects smaller than this many panel pixels across also get a ring of this radius."""
DEFAULT_FACTORS = (0.5, 1.0, 2.0)
"""Binary panels by default: the calibrated threshold, and half and twice it, to show how
sensitive the mask is to the threshold."""


@dataclass
class Panel:
    """One titled picture of a per-cube page; ``key`` names its PNG."""

    key: str
    title: str
    image: Image.Image


@dataclass
class CubeView:
    """What every model's panels for one cube share: its false-colour views and truth outline.

    The first view is the RGB one, which the map overlay is drawn on.
    """

    views: list[Panel]
    outline: np.ndarray

    @property
    def rgb(self) -> np.ndarray:
        return np.asarray(self.views[0].image)

    @property
    def size(self) -> tuple[int, int]:
        return self.views[0].image.size


def panel_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) of a panel for an image of ``shape``: longest side ``PANEL``."""
    h, w = shape[:2]
    scale = PANEL / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def swir_indices(
    cube: Cube, spec: list[int | float | str] | None, path: Path | None = None
) -> list[int]:
    """Bands for the SWIR false colour: as configured, else the three longest wavelengths
    (longest as red), else the last three bands; fewer than three bands repeat the last."""
    if spec is not None:
        return select_channels(cube, spec, path)
    if cube.wavelengths is not None:
        order = [int(i) for i in np.argsort(cube.wavelengths)[::-1]]
    else:
        order = list(range(cube.channels - 1, -1, -1))
    return (order[:3] + [order[-1]] * 3)[:3]


def false_colour_views(
    cube: Cube, swir_spec: list[int | float | str] | None, path: Path | None = None
) -> list[tuple[str, str, list[int]]]:
    """(key, title, bands) of the views a cube's bands make, chosen from what the bands are.

    Always the RGB view. A SWIR view only when SWIR bands are configured or the cube has bands
    at or above ``SWIR_MIN_NM``; a cube without wavelengths shows its last three bands when they
    are not the RGB ones, without calling them SWIR. So a 3-band RGB cube gets one view.
    """
    rgb = display_bands(cube.rgb, cube.channels)
    views = [("rgb", f"RGB false colour ({_band_label(cube, rgb)})", rgb)]
    has_swir = cube.wavelengths is not None and max(cube.wavelengths) >= SWIR_MIN_NM
    if swir_spec is not None or has_swir:
        swir = swir_indices(cube, swir_spec, path)
        views.append(("swir", f"SWIR false colour ({_band_label(cube, swir)})", swir))
    elif cube.wavelengths is None and not set(last := swir_indices(cube, None)) <= set(rgb):
        views.append(("bands", f"false colour, last bands ({_band_label(cube, last)})", last))
    return views


def _band_label(cube: Cube, indices: Sequence[int]) -> str:
    if cube.wavelengths is not None:
        return "/".join(f"{cube.wavelengths[i]:g}" for i in indices) + " nm"
    return "/".join(cube.bands[i] for i in indices)


def cube_view(cube: Cube, mask: np.ndarray, swir_spec: list | None, path: Path) -> CubeView:
    """The false-colour views of ``cube`` at panel size and the outline of its true defects."""
    size = panel_size(cube.shape)
    views = [
        Panel(key, title, Image.fromarray(false_colour(cube.data, bands)).resize(size))
        for key, title, bands in false_colour_views(cube, swir_spec, path)
    ]
    truth = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(
        size, Image.Resampling.NEAREST
    )
    inside = np.asarray(truth) > 0
    outline = inside & ~ndimage.binary_erosion(inside, iterations=2)
    # A defect of a few pixels is lost in its own outline: ring it so the eye finds it.
    yy, xx = np.ogrid[: inside.shape[0], : inside.shape[1]]
    for box in ndimage.find_objects(ndimage.label(inside)[0]):
        if max(b.stop - b.start for b in box) < SMALL_REGION:
            cy, cx = ((b.start + b.stop - 1) / 2 for b in box)
            outline |= np.abs(np.hypot(yy - cy, xx - cx) - SMALL_REGION) < 1.0
    return CubeView(views, outline)


def map_range(maps: list[np.ndarray], threshold: float) -> tuple[float, float]:
    """One colour scale per model, so that cubes of one model compare at a glance; it always
    reaches a bit past the threshold so the threshold tick sits inside the colour bar."""
    sample = np.concatenate([m.ravel()[:: max(1, m.size // 4096)] for m in maps])
    lo, hi = (float(v) for v in np.percentile(sample, [1, 99.9]))
    hi = max(hi, threshold + 0.25 * abs(threshold - lo), lo + 1e-6)
    return lo, hi


def panel_thresholds(configured: list[float] | None, calibrated: float) -> list[tuple[float, str]]:
    """(threshold, label) of the binary panels: configured ones beside the calibrated one, or
    ``DEFAULT_FACTORS`` times it."""
    if configured is None:
        return [
            (f * calibrated, "calibrated" if f == 1 else f"{f:g}x calibrated")
            for f in DEFAULT_FACTORS
        ]
    return [(calibrated, "calibrated"), *((t, "configured") for t in configured)]


def _rgb(image: np.ndarray) -> np.ndarray:
    return (image[..., :3] * 255).astype(np.uint8)


def _with_outline(image: np.ndarray, outline: np.ndarray) -> Image.Image:
    out = image.copy()
    out[outline] = OUTLINE
    return Image.fromarray(out)


def _colourbar(image: np.ndarray, lo: float, hi: float, threshold: float) -> Image.Image:
    """The map with a vertical colour bar whose ticks name the range and the threshold."""
    h, w = image.shape[:2]
    bar_w, gap, label_w = 14, 8, 78
    canvas = Image.new("RGB", (w + gap + bar_w + label_w, h), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    lut = _rgb(heat(np.linspace(1, 0, h), 1.0))
    canvas.paste(Image.fromarray(np.repeat(lut[:, None], bar_w, axis=1)), (w + gap, 0))
    draw, font, x = ImageDraw.Draw(canvas), ImageFont.load_default(size=12), w + gap

    def tick_y(value: float) -> int:
        return int(np.clip(round((hi - value) / (hi - lo) * (h - 1)), 0, h - 1))

    # The tick sits at the threshold; its label keeps clear of the range labels at the ends.
    ty = tick_y(threshold)
    draw.line([(x - 4, ty), (x + bar_w + 3, ty)], fill="black", width=2)
    label_y = int(np.clip(ty, 22, h - 23)) if h > 60 else ty
    draw.text((x + bar_w + 5, label_y), f"t={threshold:.3g}", "black", font, "lm")
    if h > 60:
        for value, y in ((hi, 7), (lo, h - 8)):
            draw.text((x + bar_w + 5, y), f"{value:.3g}", "#555555", font, "lm")
    return canvas


def model_panels(
    view: CubeView,
    anomaly_map: np.ndarray,
    scale: tuple[float, float],
    calibrated: float,
    thresholds: list[tuple[float, str]],
) -> list[Panel]:
    """What a per-cube page is about: the cube, one model's map, and what thresholds make of it.

    The overlay is :func:`specad.visual.overlay`, the picture ``specad predict`` writes.
    """
    lo, hi = scale
    amap = np.asarray(Image.fromarray(anomaly_map.astype(np.float32)).resize(view.size))
    panels = [
        Panel(v.key, v.title, _with_outline(np.asarray(v.image), view.outline)) for v in view.views
    ]
    panels += [
        Panel("map", "anomaly map", _colourbar(_rgb(heat(amap - lo, hi - lo)), lo, hi, calibrated)),
        Panel(
            "overlay",
            "map over RGB, truth outlined",
            _with_outline(overlay(view.rgb, amap, calibrated), view.outline),
        ),
    ]
    for n, (t, label) in enumerate(thresholds, 1):
        binary = np.where((amap >= t)[..., None], 255, 40).astype(np.uint8).repeat(3, axis=2)
        panels.append(
            Panel(f"t{n}", f"map >= {t:.3g} ({label})", _with_outline(binary, view.outline))
        )
    return panels
