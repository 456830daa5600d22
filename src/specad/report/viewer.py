"""What a per-image page's spectral viewer shows: the cube and its map, compact enough to embed,
with the model's normal envelope and the mean spectra of the true and the detected regions.

The viewer (``templates/viewer.js``) needs no server and makes no request, so everything it
draws is in the page. The cube, in the model's channels, is sampled on a grid of at most
`VIEW_SIDE` pixels a side (each grid point a real pixel of the cube, never a blend, so a
clicked spectrum is one the camera saw) and quantised per band to uint8 (``value = min + q *
scale``, so within half a step ``scale`` of the cube). Each pixel's bytes are stored as
differences from the previous band (neighbouring bands differ little, so the differences
compress well), deflated and base64-encoded; the map is uint16 on the same grid. Where the page
would pass `PAGE_BUDGET`, the grid is made coarser until it fits.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specad.errors import SpecadError
from specad.inference.regions import find_regions, label_regions, region_means
from specad.io import Cube
from specad.models.envelope import Envelope
from specad.models.modelfile import ModelMeta
from specad.report.panels import swir_indices
from specad.spectral import SWIR_MIN_NM
from specad.visual import display_bands, heat

VIEW_SIDE = 256
"""Longest side of the viewer's grid, as of the panels."""
MIN_SIDE = 16
PAGE_BUDGET = 3_000_000
"""Bytes a per-image page may weigh, its panel pictures included."""
PAGE_MARGIN = 64_000
"""Bytes kept for the page's text, tables and script around the embedded data."""
MAX_TRACES = 12
"""Regions of each kind (true, detected) whose mean spectra a page offers, largest peak first."""
MAX_LISTED = 50
"""Detected regions a page lists."""


@dataclass(frozen=True)
class Normal:
    """The cube's bands the viewer shows, their names and wavelengths, and the envelope a pixel
    is judged against: a fitted model's channels and envelope (`of_model`), or a scene's own
    background (report/scene.py), which has no model."""

    channels: list[int]
    bands: list[str]
    wavelengths: list[float] | None
    envelope: Envelope | None

    @classmethod
    def of_model(cls, meta: ModelMeta) -> Normal:
        return cls(list(meta.preprocess.channels), meta.bands, meta.wavelengths, meta.envelope)


def _digits(values: Any, n: int = 5) -> list[float]:
    return [float(f"{v:.{n}g}") for v in np.asarray(values, np.float64).ravel()]


def _b64(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def grid(shape: tuple[int, ...], side: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the cube sampled at the centres of a grid whose longest side is
    ``side`` (the cube's own pixels where it is smaller)."""
    h, w = shape[:2]
    scale = min(1.0, side / max(h, w))
    gh, gw = max(1, round(h * scale)), max(1, round(w * scale))
    return ((np.arange(gh) + 0.5) * h / gh).astype(int), ((np.arange(gw) + 0.5) * w / gw).astype(
        int
    )


def encode_cube(data: np.ndarray) -> dict[str, Any]:
    """(h, w, C) values as per-band uint8 with their ``min`` and ``scale``; band-differenced,
    deflated, base64."""
    flat = data.reshape(-1, data.shape[-1]).astype(np.float64)
    finite = np.isfinite(flat)
    lo = np.where(finite.any(0), np.nanmin(np.where(finite, flat, np.inf), 0), 0.0)
    hi = np.where(finite.any(0), np.nanmax(np.where(finite, flat, -np.inf), 0), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1.0)
    q = np.clip(np.rint((np.where(finite, flat, lo) - lo) / scale), 0, 255).astype(np.uint8)
    q[:, 1:] = q[:, 1:] - q[:, :-1]  # uint8 wraps: the viewer adds them back modulo 256
    return {"min": lo.tolist(), "scale": scale.tolist(), "data": _b64(q.tobytes())}


def encode_map(values: np.ndarray) -> dict[str, Any]:
    """(h, w) map values as uint16 with ``min`` and ``scale``, deflated, base64."""
    v = values.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    scale = (hi - lo) / 65535 if hi > lo else 1.0
    q = np.rint((v - lo) / scale).astype("<u2")
    return {"min": lo, "scale": scale, "data": _b64(q.tobytes())}


def embedded(data: np.ndarray, anomaly_map: np.ndarray, budget: int) -> dict[str, Any]:
    """The cube and map on the finest grid (at most `VIEW_SIDE`) whose encoding fits
    ``budget`` bytes."""
    side = min(VIEW_SIDE, max(data.shape[:2]))
    while True:
        rows, cols = grid(data.shape, side)
        cube = encode_cube(data[np.ix_(rows, cols)])
        amap = encode_map(anomaly_map[np.ix_(rows, cols)])
        size = len(cube["data"]) + len(amap["data"]) + 40 * data.shape[-1]
        if size <= budget or side <= MIN_SIDE:
            break
        side = max(MIN_SIDE, int(side * math.sqrt(budget / size) * 0.97))
    return {"rows": rows.tolist(), "cols": cols.tolist(), "cube": cube, "map": amap}


def _presets(cube: Cube, swir_spec: Sequence | None) -> dict[str, list[int]]:
    """The band picker's presets: the RGB bands, and SWIR ones where the cube has them."""
    presets = {"rgb": display_bands(cube.rgb, cube.channels)}
    if swir_spec is not None or (cube.wavelengths and max(cube.wavelengths) >= SWIR_MIN_NM):
        try:
            presets["swir"] = swir_indices(cube, swir_spec)
        except SpecadError:  # configured bands the model's channels lack: the default ones
            presets["swir"] = swir_indices(cube, None)
    return presets


def viewer_data(
    cube: Cube,
    mask: np.ndarray,
    anomaly_map: np.ndarray,
    normal: Normal,
    threshold: float,
    scale: tuple[float, float],
    *,
    swir_spec: Sequence | None,
    label: str,
    budget: int,
    nav: dict[str, str | None],
) -> tuple[dict[str, Any], list[Any]]:
    """The viewer's data (JSON for the page) and the detected regions (`Region`, for the page's
    list) of one cube and one map; the embedded cube takes what ``budget`` leaves."""
    sub = cube.select(normal.channels)
    env = normal.envelope
    regions = find_regions(anomaly_map, threshold, sub.data, env, normal.bands, normal.wavelengths)
    labels, n = label_regions(mask > 0)
    truth = region_means(labels, n, sub.data)
    traces = [
        {"name": f"truth {k + 1} ({label})", "kind": "truth", "values": _digits(v)}
        for k, v in enumerate(truth[:MAX_TRACES])
    ] + [
        {"name": f"detected {k + 1}", "kind": "detected", "values": _digits(r.spectrum)}
        for k, r in enumerate(regions[:MAX_TRACES])
    ]
    lut = (heat(np.linspace(0, 1, 256), 1.0)[:, :3] * 255).round().astype(int)
    data: dict[str, Any] = {
        "bands": normal.bands,
        "nm": normal.wavelengths,
        "presets": _presets(sub, swir_spec),
        "threshold": threshold,
        "range": list(scale),
        "lut": lut.tolist(),
        "envelope": None
        if env is None
        else {
            "median": env.median,
            "p1": env.p1,
            "p99": env.p99,
            "spread": _digits(env.spread, 6),
        },
        "traces": traces,
        "nav": nav,
    }
    rest = len(json.dumps(data))
    data |= embedded(sub.data, anomaly_map, max(budget - rest - PAGE_MARGIN, 0))
    return data, regions[:MAX_LISTED]
