"""HTML reports that compare detectors on datasets: one self-contained index and a page per cube.

The index embeds every figure as a base64 PNG and uses inline CSS only, so the single file can be
mailed or archived and still reads offline without JavaScript. The per-cube pages sit beside it
(``images/<model>/<dataset>/<class>_<stem>.html`` with their panel PNG) because a hundred panels
inline would make the index too heavy to open.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects (always the Agg renderer,
nothing global to close) and the per-cube panels are composed with Pillow, which is an order of
magnitude faster than a matplotlib figure per cube.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage

from specad import __version__
from specad.config import read_yaml_mapping, validate
from specad.data import Dataset, load_dataset, select_channels
from specad.evaluate import evaluate_split
from specad.infer import Detector, SplitResults, fit_rx, run_split
from specad.io import Cube, atomic_dir
from specad.metrics import AUPRO_FPR_LIMIT, Curves, curves
from specad.visual import false_colour

RX_SPEC = "rx"
"""A model given as this word is an RX baseline fitted on each dataset's train/good split."""
DEFAULT_FACTORS = (0.5, 1.0, 2.0)
"""Binary panels by default: the calibrated threshold, and half and twice it, to show how
sensitive the mask is to the threshold."""
PANEL = 256
"""Longest side of each per-cube panel in pixels."""
DPI = 90
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Okabe-Ito colours, distinguishable with the common colour-vision deficiencies."""
LINES = ("-", "--", "-.", ":")
"""Line styles cycled with the colours, so that models with identical curves stay visible."""
NORMAL_COLOUR, ANOMALY_COLOUR = "#56B4E9", "#D55E00"
OUTLINE = np.array([0, 230, 255], np.uint8)
"""Ground-truth outlines in cyan: it stands out against both the photos and the inferno map."""
MAP_CMAP = "inferno"
SMALL_REGION = 12
"""Defects smaller than this many panel pixels across also get a ring of this radius."""
CURVE_PIXELS = 250_000
"""Pixel curves are drawn from a seeded subsample of this size: identical at plot resolution and
far cheaper than the metrics' own sample. Legends quote the AUROC from the metrics."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------- configuration


class ReportConfig(BaseModel):
    """What to compare, on which data, and where to write the report."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, str] = Field(min_length=1)
    """Display name -> model file (or run folder), or ``rx`` to fit RX on each dataset now."""
    datasets: list[Path] = Field(min_length=1)
    out: Path
    force: bool = False
    far: float = Field(0.01, gt=0, lt=1)
    """False-alarm rate on normal validation cubes that sets the calibrated threshold."""
    thresholds: list[float] | None = None
    """Map thresholds for the binary panels, added to the calibrated one; ``None`` gives 0.5x,
    1x and 2x the calibrated threshold (map units differ between models, factors do not)."""
    swir_bands: list[int | float | str] | None = Field(None, min_length=3, max_length=3)
    """Bands (index, nm or name) for the SWIR false colour as R, G, B; default: the three
    longest wavelengths, longest as red, or the last three bands."""
    max_images: int = Field(60, ge=0)
    """Per-cube pages per model and dataset, most instructive first."""
    tiled: bool = False

    @field_validator("models")
    @classmethod
    def _names_are_file_names(cls, models: dict[str, str]) -> dict[str, str]:
        for name in models:
            if not _NAME.fullmatch(name):
                raise ValueError(f"model name '{name}' must be letters, digits, '.', '_' or '-'")
        return models


def load_report_config(path: str | Path | None, **overrides: Any) -> ReportConfig:
    """Read and validate a report YAML; keyword overrides (e.g. CLI options) win unless None.

    Relative dataset and model paths that do not exist from the working directory are taken from
    the config's folder, so an example config works from wherever it is run.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = _inputs_from(read_yaml_mapping(path, "report config"), path.parent)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate(ReportConfig, raw, path)


def _inputs_from(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        if not isinstance(value, str) or value == RX_SPEC:
            return value
        p = Path(value)
        if p.is_absolute() or p.exists() or not (folder / p).exists():
            return value
        return str(folder / p)

    raw = dict(raw)
    if isinstance(raw.get("models"), dict):
        raw["models"] = {k: resolve(v) for k, v in raw["models"].items()}
    if isinstance(raw.get("datasets"), list):
        raw["datasets"] = [resolve(v) for v in raw["datasets"]]
    return raw


# --------------------------------------------------------------------------- running the models


@dataclass
class Run:
    """One model on one dataset: everything the figures, tables and pages are drawn from."""

    model: str
    kind: str
    test: SplitResults
    metrics: dict[str, Any]
    curves: dict[str, Any]
    runtime: str  # how the maps were computed (torch, onnx, int8, ...): int8 maps differ

    @property
    def threshold(self) -> float:
        """The image threshold at the report's false-alarm rate on validation cubes."""
        return self.metrics["thresholds"]["val_far"]["image_threshold"]


@dataclass
class DatasetRuns:
    name: str
    dataset: Dataset
    runs: list[Run]


def _dataset_names(paths: Sequence[Path]) -> list[str]:
    """Unique, file-name-safe keys from the dataset folder names."""
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", p.resolve().name).strip("-.") or "dataset"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _run_dataset(
    cfg: ReportConfig, name: str, root: Path, loaded: dict[str, Detector], progress: bool
) -> DatasetRuns:
    ds = load_dataset(root)
    test, val = ds.require("test"), ds.require("val")
    runs = []
    for model, spec in cfg.models.items():
        det = fit_rx(ds) if spec == RX_SPEC else loaded[model]
        res = run_split(det, test, tiled=cfg.tiled, progress=progress)
        val_res = run_split(det, val, tiled=cfg.tiled, progress=progress)
        summary = evaluate_split(res, val_res, cfg.far)
        crv = curves(res.scores, res.maps, res.masks, res.class_names, max_pixels=CURVE_PIXELS)
        runs.append(Run(model, det.kind, res, summary, crv, det.runtime))
    return DatasetRuns(name, ds, runs)


def instructive_order(scores: np.ndarray, anomalous: np.ndarray, threshold: float) -> list[int]:
    """Indices with the errors first, worst first, then the rest by descending score.

    Misses (anomalous, lowest score first) alternate with false alarms (normal, highest score
    first) so that neither kind of error is pushed off a capped list by the other.
    """
    anomalous = np.asarray(anomalous, dtype=bool)
    flagged = scores >= threshold
    by_score = np.argsort(-scores, kind="stable")
    misses = [int(i) for i in by_score[::-1] if anomalous[i] and not flagged[i]]
    alarms = [int(i) for i in by_score if not anomalous[i] and flagged[i]]
    errors = [i for pair in zip_longest(misses, alarms) for i in pair if i is not None]
    taken = set(errors)
    return errors + [int(i) for i in by_score if i not in taken]


def verdict(anomalous: bool, score: float, threshold: float) -> str:
    """What the threshold did with a cube, in the words the pages use."""
    if anomalous:
        return "detected" if score >= threshold else "missed"
    return "false alarm" if score >= threshold else "normal"


# --------------------------------------------------------------------------- the whole report


def write_report(cfg: ReportConfig, progress: bool = False) -> Path:
    """Run every model on every dataset and write the report folder; returns its index.html.

    The folder is built under a temporary name and swapped in at the end, so a failure leaves
    any previous report untouched and nothing half-written.
    """
    with atomic_dir(cfg.out, cfg.force) as tmp:
        loaded = {m: Detector.load(s) for m, s in cfg.models.items() if s != RX_SPEC}
        names = _dataset_names(cfg.datasets)
        results = [
            _run_dataset(cfg, n, p, loaded, progress)
            for n, p in zip(names, cfg.datasets, strict=True)
        ]
        (tmp / "figures").mkdir()
        sections = [_dataset_section(tmp, cfg, dr, progress) for dr in results]
        (tmp / "index.html").write_text(_index_html(cfg, results, sections), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(_metrics_json(cfg, results), indent=2))
        (tmp / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
    return cfg.out / "index.html"


def _metrics_json(cfg: ReportConfig, results: list[DatasetRuns]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for dr in results:
        for run in dr.runs:
            entry = models.setdefault(
                run.model,
                {
                    "kind": run.kind,
                    "runtime": run.runtime,
                    "source": cfg.models[run.model],
                    "datasets": {},
                },
            )
            entry["datasets"][dr.name] = run.metrics
    return {"specad": __version__, "far": cfg.far, "models": models}


# --------------------------------------------------------------------------- figures


def _figure(n: int, ncols: int, width: float = 4.2, height: float = 3.5) -> tuple[Figure, list]:
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _line(i: int) -> dict[str, Any]:
    return {"color": COLOURS[i % len(COLOURS)], "ls": LINES[i % len(LINES)], "lw": 2}


Pick = Callable[[Run], tuple[Curves | None, float | None]]
"""A run's curves for one plot, with the AUROC its legend quotes."""


def _roc_axes(ax: Any, runs: list[Run], pick: Pick, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls=":", lw=1, color="#999999", label="chance")
    for i, run in enumerate(runs):
        c, auroc = pick(run)
        if c is not None:
            ax.plot(c.fpr, c.tpr, label=f"{run.model} ({_num(auroc)})", **_line(i))
    ax.set(xlim=(-0.01, 1), ylim=(0, 1.03), title=title)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, title="model (AUROC)", title_fontsize=9)


def _pr_axes(ax: Any, runs: list[Run], level: str, prevalence: float) -> None:
    ax.axhline(prevalence, ls=":", lw=1, color="#999999", label=f"chance ({prevalence:.3g})")
    for i, run in enumerate(runs):
        c = run.curves["overall"][level]
        if c is not None:
            ax.plot(c.recall, c.precision, label=run.model, **_line(i))
    ax.set(xlim=(0, 1.01), ylim=(0, 1.03), title=f"{level.capitalize()} level")
    ax.set_xlabel("recall (share of anomalies found)")
    ax.set_ylabel("precision (share of alarms that are real)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)


def _roc_figure(runs: list[Run]) -> Figure:
    fig, axes = _figure(2, 2)
    for ax, level in zip(axes, ("image", "pixel"), strict=True):
        title = f"{level.capitalize()} level, all classes"
        _roc_axes(
            ax, runs, lambda r, lv=level: (r.curves["overall"][lv], r.metrics[f"{lv}_auroc"]), title
        )
    return fig


def _class_roc_figure(runs: list[Run], level: str) -> Figure | None:
    classes = list(runs[0].curves["per_class"])
    if not classes:
        return None
    fig, axes = _figure(len(classes), min(4, len(classes)), width=3.6, height=3.3)
    for ax, name in zip(axes, classes, strict=True):
        _roc_axes(
            ax,
            runs,
            lambda r, n=name: (
                r.curves["per_class"][n][level],
                r.metrics["per_class"][n][f"{level}_auroc"],
            ),
            f"{name} vs good",
        )
        ax.label_outer()  # every panel spans [0, 1]: inner axis labels only repeat the outer ones
    fig.suptitle(f"{level.capitalize()} level, per anomaly class")
    return fig


def _pr_figure(runs: list[Run]) -> Figure:
    test = runs[0].test
    pixels = sum(m.size for m in test.masks)
    prevalence = {
        "image": float(test.labels.mean()),
        "pixel": sum(int(np.count_nonzero(m > 0)) for m in test.masks) / max(pixels, 1),
    }
    fig, axes = _figure(2, 2)
    for ax, level in zip(axes, ("image", "pixel"), strict=True):
        _pr_axes(ax, runs, level, prevalence[level])
    return fig


def _histogram_figure(runs: list[Run], far: float) -> Figure:
    fig, axes = _figure(len(runs), min(3, len(runs)))
    for ax, run in zip(axes, runs, strict=True):
        scores, anomalous = run.test.scores, run.test.labels.astype(bool)
        bins = np.histogram_bin_edges(scores, bins=int(np.clip(scores.size // 3, 10, 40)))
        for sel, label, colour in (
            (~anomalous, "normal", NORMAL_COLOUR),
            (anomalous, "anomalous", ANOMALY_COLOUR),
        ):
            if sel.any():
                ax.hist(scores[sel], bins=bins, alpha=0.65, color=colour, label=label)
        ax.axvline(run.threshold, color="#222222", ls="--", lw=1.5, label="threshold")
        ax.set_title(f"{run.model}: threshold {run.threshold:.4g} (FAR {far:.3g} on val)")
        ax.set_xlabel("image score (maximum of the anomaly map)")
        ax.set_ylabel("test cubes")
        ax.legend(fontsize=9)
    return fig


@dataclass
class FigureOut:
    """A rendered figure: written under figures/ and embedded in the index."""

    file: str
    png: bytes
    caption: str

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        alt = html.escape(self.caption)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{alt} (<code>figures/{html.escape(self.file)}</code>)</figcaption>"
            "</figure>"
        )


def _dataset_figures(tmp: Path, cfg: ReportConfig, dr: DatasetRuns) -> dict[str, FigureOut]:
    runs = dr.runs
    drawn = {
        "roc": (_roc_figure(runs), "ROC curves over all test cubes"),
        "roc_image_per_class": (
            _class_roc_figure(runs, "image"),
            "Image-level ROC for each anomaly class against the normal test cubes",
        ),
        "roc_pixel_per_class": (
            _class_roc_figure(runs, "pixel"),
            "Pixel-level ROC for each anomaly class against the normal test cubes",
        ),
        "pr": (_pr_figure(runs), "Precision-recall curves over all test cubes"),
        "scores": (
            _histogram_figure(runs, cfg.far),
            "Image scores of normal and anomalous test cubes with the calibrated threshold",
        ),
    }
    out = {}
    for key, (fig, caption) in drawn.items():
        if fig is None:
            continue
        fo = FigureOut(f"{dr.name}_{key}.png", _png(fig), caption)
        (tmp / "figures" / fo.file).write_bytes(fo.png)
        out[key] = fo
    return out


# --------------------------------------------------------------------------- per-cube panels


@dataclass
class CubeView:
    """What every model's panel for one cube shares: the false-colour views and truth outline."""

    rgb: np.ndarray
    swir: np.ndarray
    outline: np.ndarray
    rgb_title: str
    swir_title: str

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _panel_size(shape: tuple[int, ...]) -> tuple[int, int]:
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


def _band_label(cube: Cube, indices: Sequence[int]) -> str:
    if cube.wavelengths is not None:
        return "/".join(f"{cube.wavelengths[i]:g}" for i in indices) + " nm"
    return "/".join(cube.bands[i] for i in indices)


def _cube_view(cube: Cube, mask: np.ndarray, swir_spec: list | None, path: Path) -> CubeView:
    size = _panel_size(cube.shape)
    rgb_idx = list(cube.rgb) if cube.rgb is not None else [0, 0, 0]
    swir_idx = swir_indices(cube, swir_spec, path)

    def view(indices: list[int]) -> np.ndarray:
        return np.asarray(Image.fromarray(false_colour(cube.data, indices)).resize(size))

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
    return CubeView(
        view(rgb_idx),
        view(swir_idx),
        outline,
        f"RGB false colour ({_band_label(cube, rgb_idx)})",
        f"SWIR false colour ({_band_label(cube, swir_idx)})",
    )


def _map_range(maps: list[np.ndarray], threshold: float) -> tuple[float, float]:
    """One colour scale per model, so that cubes of one model compare at a glance; it always
    reaches a bit past the threshold so the threshold tick sits inside the colour bar."""
    sample = np.concatenate([m.ravel()[:: max(1, m.size // 4096)] for m in maps])
    lo, hi = (float(v) for v in np.percentile(sample, [1, 99.9]))
    hi = max(hi, threshold + 0.25 * abs(threshold - lo), lo + 1e-6)
    return lo, hi


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _with_outline(image: np.ndarray, outline: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[outline] = OUTLINE
    return out


def _colourbar(image: np.ndarray, lo: float, hi: float, threshold: float) -> Image.Image:
    """The map with a vertical colour bar whose ticks name the range and the threshold."""
    h, w = image.shape[:2]
    bar_w, gap, label_w = 14, 8, 78
    canvas = Image.new("RGB", (w + gap + bar_w + label_w, h), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    lut = (colormaps[MAP_CMAP](np.linspace(1, 0, h))[:, :3] * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(lut[:, None], bar_w, axis=1)), (w + gap, 0))
    draw, font, x = ImageDraw.Draw(canvas), _font(12), w + gap

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


def _panel_thresholds(cfg: ReportConfig, calibrated: float) -> list[tuple[float, str]]:
    if cfg.thresholds is None:
        return [
            (f * calibrated, "calibrated" if f == 1 else f"{f:g}x calibrated")
            for f in DEFAULT_FACTORS
        ]
    return [(calibrated, "calibrated"), *((t, "configured") for t in cfg.thresholds)]


def _compose(panels: list[tuple[str, Image.Image]], per_row: int = 4) -> Image.Image:
    """Titled panels in rows on a white sheet."""
    font, title_h, gap = _font(14), 22, 14
    rows = [panels[i : i + per_row] for i in range(0, len(panels), per_row)]
    widths = [sum(p.width for _, p in row) + gap * (len(row) + 1) for row in rows]
    heights = [title_h + max(p.height for _, p in row) + gap for row in rows]
    sheet = Image.new("RGB", (max(widths), sum(heights) + gap), "white")
    draw, y = ImageDraw.Draw(sheet), gap
    for row, row_h in zip(rows, heights, strict=True):
        x = gap
        for title, panel in row:
            draw.text((x, y + title_h // 2), title, "#1f2328", font, "lm")
            sheet.paste(panel, (x, y + title_h))
            x += panel.width + gap
        y += row_h
    return sheet


def _panel_sheet(
    view: CubeView,
    anomaly_map: np.ndarray,
    map_range: tuple[float, float],
    calibrated: float,
    thresholds: list[tuple[float, str]],
) -> Image.Image:
    """The figure a per-cube page is about: the cube, the map, and what thresholds make of it."""
    lo, hi = map_range
    amap = np.asarray(Image.fromarray(anomaly_map.astype(np.float32)).resize(view.size))
    level = np.clip((amap - lo) / (hi - lo), 0, 1)
    coloured = (colormaps[MAP_CMAP](level)[..., :3] * 255).astype(np.uint8)
    grey = view.rgb.mean(axis=2, keepdims=True) * 0.85
    alpha = (0.8 * level)[..., None]
    overlay = (grey * (1 - alpha) + coloured * alpha).astype(np.uint8)
    panels = [
        (view.rgb_title, Image.fromarray(_with_outline(view.rgb, view.outline))),
        (view.swir_title, Image.fromarray(_with_outline(view.swir, view.outline))),
        ("anomaly map", _colourbar(coloured, lo, hi, calibrated)),
        ("map over RGB, truth outlined", Image.fromarray(_with_outline(overlay, view.outline))),
    ]
    for t, label in thresholds:
        binary = np.where((amap >= t)[..., None], 255, 40).astype(np.uint8).repeat(3, axis=2)
        flagged = Image.fromarray(_with_outline(binary, view.outline))
        panels.append((f"map >= {t:.3g} ({label})", flagged))
    return _compose(panels)


# --------------------------------------------------------------------------- per-cube pages


@dataclass
class PageEntry:
    """One per-cube page in a model's list: where it is and what happened to the cube."""

    index: int
    href: str
    verdict: str


def _page_stems(dr: DatasetRuns) -> list[str]:
    """``<class>_<stem>`` names, made unique because a stem may repeat across classes/formats."""
    stems: list[str] = []
    for s in dr.runs[0].test.samples:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{s.label}_{s.path.stem}")
        stem, i = base, 2
        while stem in stems:
            stem, i = f"{base}-{i}", i + 1
        stems.append(stem)
    return stems


def _write_pages(
    tmp: Path, cfg: ReportConfig, dr: DatasetRuns, progress: bool
) -> dict[str, list[PageEntry]]:
    """Per-cube pages for every model; each cube is read and rendered once for all models."""
    from tqdm import tqdm

    stems = _page_stems(dr)
    entries: dict[str, list[PageEntry]] = {}
    for run in dr.runs:
        order = instructive_order(run.test.scores, run.test.labels, run.threshold)
        entries[run.model] = [
            PageEntry(
                i,
                f"images/{run.model}/{dr.name}/{stems[i]}.html",
                verdict(bool(run.test.labels[i]), run.test.scores[i], run.threshold),
            )
            for i in order[: cfg.max_images]
        ]
        (tmp / "images" / run.model / dr.name).mkdir(parents=True, exist_ok=True)
    ranks = {m: {e.index: r for r, e in enumerate(es)} for m, es in entries.items()}
    ranges = {run.model: _map_range(run.test.maps, run.threshold) for run in dr.runs}
    needed = sorted(set().union(*(r.keys() for r in ranks.values())))
    samples, masks = dr.runs[0].test.samples, dr.runs[0].test.masks
    for i in tqdm(needed, disable=not progress, unit="page", desc=f"pages for {dr.name}"):
        view = _cube_view(samples[i].read(), masks[i], cfg.swir_bands, samples[i].path)
        for run in dr.runs:
            if i not in ranks[run.model]:
                continue
            rank = ranks[run.model][i]
            page = tmp / entries[run.model][rank].href
            sheet = _panel_sheet(
                view,
                run.test.maps[i],
                ranges[run.model],
                run.threshold,
                _panel_thresholds(cfg, run.threshold),
            )
            # Run-length zlib: noisy panels barely compress anyway, and it is twice as fast.
            sheet.save(page.with_suffix(".png"), compress_level=9, compress_type=zlib.Z_RLE)
            page.write_text(
                _page_html(cfg, dr, run, entries[run.model], rank, ranges[run.model]),
                encoding="utf-8",
            )
    return entries


def _page_html(
    cfg: ReportConfig,
    dr: DatasetRuns,
    run: Run,
    entries: list[PageEntry],
    rank: int,
    map_range: tuple[float, float],
) -> str:
    e = entries[rank]
    sample, mask = run.test.samples[e.index], run.test.masks[e.index]
    amap = run.test.maps[e.index]
    flagged = float(np.mean(amap >= run.threshold))
    nav = [f'<a href="../../../index.html#images-{dr.name}">&larr; report</a>']
    if rank > 0:
        nav.append(f'<a href="{Path(entries[rank - 1].href).name}">&lsaquo; previous</a>')
    if rank + 1 < len(entries):
        nav.append(f'<a href="{Path(entries[rank + 1].href).name}">next &rsaquo;</a>')
    facts = [
        ("Model", f"{run.model} ({run.kind})"),
        ("Dataset", dr.name),
        ("Cube", str(sample.path)),
        ("Class", sample.label),
        ("Image score", f"{run.test.scores[e.index]:.4g}"),
        ("Calibrated threshold", f"{run.threshold:.4g} (FAR {cfg.far:g} on val)"),
        ("Verdict", _badge(e.verdict)),
        ("Defect pixels (truth)", f"{int(np.count_nonzero(mask > 0))} of {mask.size}"),
        ("Pixels at or above threshold", f"{flagged:.2%}"),
        ("Map colour scale", f"{map_range[0]:.3g} to {map_range[1]:.3g} (same for every cube)"),
        ("Place in list", f"{rank + 1} of {len(entries)} (most instructive first)"),
    ]
    rows = "".join(
        f'<tr><th class="l">{html.escape(k)}</th><td class="l">'
        f"{v if k == 'Verdict' else html.escape(v)}</td></tr>"
        for k, v in facts
    )
    png = html.escape(Path(e.href).with_suffix(".png").name)
    body = f"""
<nav class="pager">{" &middot; ".join(nav)}</nav>
<h1>{html.escape(sample.path.name)} <span class="muted">&mdash; {html.escape(run.model)}</span></h1>
<table>{rows}</table>
<figure><img src="{png}" alt="panels for {html.escape(sample.path.name)}"></figure>
<h2>What the panels show</h2>
<ul>
<li><b>RGB / SWIR false colour</b>: three bands as red, green and blue, each stretched between its
1st and 99th percentile. The cyan line is the outline of the ground-truth defect, if any.</li>
<li><b>Anomaly map</b>: the model's per-pixel score on a colour scale shared by all cubes of this
model; the tick <i>t</i> on the colour bar marks the calibrated threshold.</li>
<li><b>Map over RGB</b>: the same map blended over a grey copy of the RGB view; the more
anomalous, the more opaque.</li>
<li><b>Binary maps</b>: white pixels are at or above the threshold in the title. The image is
flagged when any pixel is (the image score is the map's maximum).</li>
</ul>
"""
    return _document(f"{sample.path.name} - {run.model}", body)


# --------------------------------------------------------------------------- HTML

CSS = """
body{margin:0;background:#eef1f4;color:#1f2328;
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 36px 64px;background:#fff;min-height:100vh}
h1{font-size:28px;margin:0 0 6px}
h2{font-size:22px;margin:44px 0 10px;padding-bottom:4px;border-bottom:2px solid #d0d7de}
h3{font-size:17px;margin:28px 0 6px}
p{max-width:80ch}
a{color:#0757b8}
code{font-size:13px;background:#f3f4f6;padding:0 3px;border-radius:3px}
.muted,figcaption{color:#57606a}
figcaption{font-size:13px}
table{border-collapse:collapse;margin:8px 0 18px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
th[colspan]{text-align:center}
.l{text-align:left}
tbody tr:nth-child(even) td{background-color:#fafbfc}
figure{margin:14px 0}
figure img{max-width:100%;height:auto;border:1px solid #e5e7eb}
nav.toc{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 16px}
nav.toc ul{margin:4px 0;padding-left:20px}
nav.pager{margin-bottom:12px}
dl.metrics{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;max-width:100ch}
dl.metrics dt{font-weight:600}
dl.metrics dd{margin:0}
.lists{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:0 28px}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;
white-space:nowrap}
.missed{background:#ffd7d1;color:#8a1c0f}
.false-alarm{background:#ffe6ad;color:#6b4200}
.detected{background:#d1f0d7;color:#14532d}
.normal{background:#e5e9ee;color:#374151}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px}
"""


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>{body}</main></body></html>\n"
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _badge(text: str) -> str:
    return f'<span class="badge {text.replace(" ", "-")}">{html.escape(text)}</span>'


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, fmt: str = ".3f") -> str:
    return "&ndash;" if _missing(value) else format(value, fmt)


def _score_td(value: Any, best: bool = False) -> str:
    """A 0-1 score cell tinted from red (0.5, chance) to green (1), so weak spots stand out."""
    if _missing(value):
        return "<td>&ndash;</td>"
    hue = 120 * float(np.clip((value - 0.5) / 0.5, 0, 1))
    text = f"<strong>{value:.3f}</strong>" if best else f"{value:.3f}"
    return f'<td style="background:hsl({hue:.0f},65%,88%)">{text}</td>'


def _model_swatch(i: int, name: str) -> str:
    colour = COLOURS[i % len(COLOURS)]
    return f'<span class="swatch" style="background:{colour}"></span>{html.escape(name)}'


SUMMARY_METRICS = (
    ("image_auroc", "Image AUROC"),
    ("image_f1_max", "Image F1-max"),
    ("pixel_auroc", "Pixel AUROC"),
    (f"aupro_{AUPRO_FPR_LIMIT}", f"AUPRO@{AUPRO_FPR_LIMIT}"),
)

HOW_TO_READ = """
<p>Every model was run on the <i>test</i> cubes of every dataset. A model gives each cube an
anomaly map (one score per pixel) and an image score, the maximum of that map: normal
(&ldquo;good&rdquo;) cubes should score low, anomalous ones high. <b>Start with the summary
table</b>, then use the per-class table to find defect types a model misses. AUROC and AUPRO judge
the <i>ranking</i> and need no threshold; the operating-point table shows what one fixed threshold
does. That threshold is <b>calibrated</b> so that a fraction {far} of the normal <i>validation</i>
cubes raise an alarm, as a deployment would set it; it is the dashed line in the score histograms
and decides the verdicts on the per-image pages. Each model's list of per-image pages starts with
its worst misses and worst false alarms, the quickest way to see what goes wrong.</p>
<dl class="metrics">
<dt>Image AUROC</dt><dd>Chance that a random anomalous cube scores above a random normal one:
0.5 is guessing, 1 is a perfect ranking.</dd>
<dt>Image F1-max</dt><dd>The best balance of precision and recall over all thresholds, chosen on
the test set itself, so an optimistic upper bound.</dd>
<dt>Pixel AUROC</dt><dd>The same ranking measure over all pixels pooled: are defect pixels scored
above background pixels? Large defects dominate it.</dd>
<dt>AUPRO@{limit}</dt><dd>The mean share of each defect region that is found, every region
counting equally however small, averaged over false-positive rates from 0 to {limit} and
scaled so 1 is perfect. The fairest pixel measure for small defects.</dd>
<dt>TPR / FPR</dt><dd>Share of anomalous cubes flagged / share of normal cubes flagged, at one
threshold.</dd>
<dt>Dice / IoU</dt><dd>Overlap of the thresholded map with the true defect pixels
(1 = identical, 0 = disjoint).</dd>
</dl>
"""


def _setup_html(cfg: ReportConfig, results: list[DatasetRuns]) -> str:
    models = "".join(
        f'<tr><td class="l">{_model_swatch(i, run.model)}</td><td class="l">{run.kind}</td>'
        f'<td class="l">'
        + (
            "RX fitted on each dataset's train/good now"
            if cfg.models[run.model] == RX_SPEC
            else f"<code>{html.escape(cfg.models[run.model])}</code>"
        )
        + "</td></tr>"
        for i, run in enumerate(results[0].runs)
    )
    datasets = ""
    for dr in results:
        ds, labels = dr.dataset, dr.runs[0].test.labels
        datasets += (
            f'<tr><td class="l"><a href="#ds-{dr.name}">{dr.name}</a></td>'
            f'<td class="l"><code>{html.escape(str(ds.root))}</code></td>'
            f"<td>{len(ds.split('train'))}</td><td>{len(ds.split('val'))}</td>"
            f"<td>{int((labels == 0).sum())}</td><td>{int(labels.sum())}</td>"
            f'<td class="l">{html.escape(", ".join(ds.defect_names)) or "&ndash;"}</td></tr>'
        )
    return (
        '<h2 id="setup">Models and data</h2><table><thead><tr><th class="l">Model</th>'
        '<th class="l">Kind</th><th class="l">Source</th></tr></thead>'
        f"<tbody>{models}</tbody></table>"
        '<table><thead><tr><th class="l">Dataset</th><th class="l">Folder</th><th>Train</th>'
        '<th>Val</th><th>Test normal</th><th>Test anomalous</th><th class="l">Anomaly classes</th>'
        f"</tr></thead><tbody>{datasets}</tbody></table>"
    )


def _summary_html(results: list[DatasetRuns]) -> str:
    rows = ""
    for dr in results:
        best = {
            key: max(
                (r.metrics[key] for r in dr.runs if not _missing(r.metrics[key])), default=None
            )
            for key, _ in SUMMARY_METRICS
        }
        for i, run in enumerate(dr.runs):
            m = run.metrics
            cells = "".join(
                _score_td(m[key], len(dr.runs) > 1 and m[key] == best[key])
                for key, _ in SUMMARY_METRICS
            )
            rows += (
                f'<tr><td class="l">{dr.name}</td><td class="l">{_model_swatch(i, run.model)}</td>'
                f"{cells}<td>{m['n_images']} ({m['n_anomalous']})</td></tr>"
            )
    head = "".join(f"<th>{label}</th>" for _, label in SUMMARY_METRICS)
    return (
        '<h2 id="summary">Summary</h2><p>Threshold-free scores on the test cubes; higher is '
        "better, the best per dataset in bold. Cells are tinted from red (0.5, chance) to green "
        "(1).</p>"
        f'<table><thead><tr><th class="l">Dataset</th><th class="l">Model</th>{head}'
        f"<th>Images (anomalous)</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _per_class_html(dr: DatasetRuns) -> str:
    runs = dr.runs
    classes = list(runs[0].metrics["per_class"])
    if not classes:
        return "<p>The test split has no anomalous cubes.</p>"
    names = runs[0].test.class_names
    groups = "".join(
        f'<th colspan="2">{_model_swatch(i, r.model)}</th>' for i, r in enumerate(runs)
    )
    sub = "<th>Image AUROC</th><th>Pixel AUROC</th>" * len(runs)
    rows = ""
    for c in classes:
        cells = "".join(
            _score_td(r.metrics["per_class"][c]["image_auroc"])
            + _score_td(r.metrics["per_class"][c]["pixel_auroc"])
            for r in runs
        )
        rows += f'<tr><td class="l">{html.escape(c)}</td><td>{names.count(c)}</td>{cells}</tr>'
    return (
        "<p>Each anomaly class scored against all normal test cubes, so a rare class is neither "
        "hidden by the others nor hides them.</p>"
        '<table><thead><tr><th class="l" rowspan="2">Class</th><th rowspan="2">Anomalous cubes</th>'
        f"{groups}</tr><tr>{sub}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _thresholds_html(cfg: ReportConfig, dr: DatasetRuns) -> str:
    rows = ""
    for i, run in enumerate(dr.runs):
        points = run.metrics["thresholds"]
        source = "val" if points["val_far"]["source"] == "val" else "normal test cubes"
        for key, label in (
            ("val_far", f"calibrated: FAR {cfg.far:g} on {source}"),
            ("f1_optimal", "F1-optimal on test (optimistic)"),
        ):
            p = points[key]
            rows += (
                f'<tr><td class="l">{_model_swatch(i, run.model)}</td><td class="l">{label}</td>'
                f"<td>{_num(p['image_threshold'], '.4g')}</td><td>{_num(p['image_tpr'])}</td>"
                f"<td>{_num(p['image_fpr'])}</td><td>{_num(p['pixel_threshold'], '.4g')}</td>"
                f"<td>{_num(p['pixel_dice'])}</td><td>{_num(p['pixel_iou'])}</td></tr>"
            )
    return (
        "<p>Two thresholds per model. The calibrated one is what a deployment would use; the "
        "F1-optimal one is picked on the test cubes and shows the best that is possible. Image "
        "thresholds apply to image scores; pixel thresholds (set the same way on map pixels) to "
        "the maps.</p>"
        '<table><thead><tr><th class="l" rowspan="2">Model</th>'
        '<th class="l" rowspan="2">Operating point</th><th colspan="3">Image level</th>'
        '<th colspan="3">Pixel level</th></tr><tr><th>Threshold</th><th>TPR</th><th>FPR</th>'
        "<th>Threshold</th><th>Dice</th><th>IoU</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _page_list_html(dr: DatasetRuns, pages: dict[str, list[PageEntry]]) -> str:
    lists = ""
    for i, run in enumerate(dr.runs):
        entries = pages[run.model]
        counts = {v: sum(e.verdict == v for e in entries) for v in ("missed", "false alarm")}
        rows = "".join(
            f"<tr><td>{rank + 1}</td>"
            f'<td class="l"><a href="{e.href}">{html.escape(run.test.samples[e.index].path.name)}'
            f'</a></td><td class="l">{html.escape(run.test.samples[e.index].label)}</td>'
            f'<td>{run.test.scores[e.index]:.4g}</td><td class="l">{_badge(e.verdict)}</td></tr>'
            for rank, e in enumerate(entries)
        )
        lists += (
            f"<div><h4>{_model_swatch(i, run.model)}: {len(entries)} of {len(run.test.samples)} "
            f"cubes, {counts['missed']} missed, {_plural(counts['false alarm'], 'false alarm')} "
            f"(threshold {run.threshold:.4g})</h4>"
            '<table><thead><tr><th>#</th><th class="l">Cube</th><th class="l">Class</th>'
            f'<th>Score</th><th class="l">Verdict</th></tr></thead><tbody>{rows}</tbody></table>'
            "</div>"
        )
    return (
        "<p>Most instructive first: misses (anomalous cubes with the lowest scores) alternating "
        "with false alarms (normal cubes with the highest scores), then the rest by descending "
        "score. Each page shows the cube in false colour, its anomaly map and binary masks.</p>"
        f'<div class="lists">{lists}</div>'
    )


def _dataset_section(tmp: Path, cfg: ReportConfig, dr: DatasetRuns, progress: bool) -> str:
    figs = _dataset_figures(tmp, cfg, dr)
    pages = _write_pages(tmp, cfg, dr, progress)
    per_class_figs = "".join(
        figs[k].html() for k in ("roc_image_per_class", "roc_pixel_per_class") if k in figs
    )
    return f"""
<h2 id="ds-{dr.name}">Dataset {html.escape(dr.name)}</h2>
<h3 id="curves-{dr.name}">ROC curves</h3>
<p>How the true-positive rate grows as the threshold is lowered and more false positives are
accepted. A curve hugging the top-left corner is a good ranking; the diagonal is chance. The legend
gives each model's AUROC. Image level: cubes; pixel level: all map pixels.</p>
{figs["roc"].html()}
{per_class_figs}
<h3>Precision-recall curves</h3>
<p>Of the alarms raised, how many are real (precision), against how many real anomalies are found
(recall). More telling than ROC when anomalies are rare, as defect pixels are.</p>
{figs["pr"].html()}
<h3>Score distributions</h3>
<p>Image scores of normal and anomalous test cubes. Little overlap means an easy threshold; normal
cubes right of the dashed line are false alarms, anomalous cubes left of it are misses.</p>
{figs["scores"].html()}
<h3 id="classes-{dr.name}">Per-class results</h3>
{_per_class_html(dr)}
<h3 id="thresholds-{dr.name}">Operating points</h3>
{_thresholds_html(cfg, dr)}
<h3 id="images-{dr.name}">Per-image pages</h3>
{_page_list_html(dr, pages)}
"""


def _index_html(cfg: ReportConfig, results: list[DatasetRuns], sections: list[str]) -> str:
    toc = "".join(
        f'<li><a href="#ds-{dr.name}">Dataset {dr.name}</a>: '
        f'<a href="#curves-{dr.name}">curves</a>, <a href="#classes-{dr.name}">per class</a>, '
        f'<a href="#thresholds-{dr.name}">operating points</a>, '
        f'<a href="#images-{dr.name}">per-image pages</a></li>'
        for dr in results
    )
    runtimes = {run.model: run.runtime for dr in results for run in dr.runs}
    models = ", ".join(f"{html.escape(m)} ({html.escape(runtimes[m])})" for m in cfg.models)
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = (
        "<h1>Anomaly-detection report</h1>"
        f'<p class="muted">{models} on {len(results)} dataset(s) &middot; calibrated at '
        f"false-alarm rate {cfg.far:g} &middot; {'tiled' if cfg.tiled else 'whole-cube'} "
        f"inference &middot; specad {__version__} &middot; {stamp}</p>"
        '<nav class="toc"><b>Contents</b><ul><li><a href="#how">How to read this report</a></li>'
        '<li><a href="#setup">Models and data</a></li><li><a href="#summary">Summary</a></li>'
        f"{toc}</ul></nav>"
        '<h2 id="how">How to read this report</h2>'
        + HOW_TO_READ.format(far=f"{cfg.far:g}", limit=AUPRO_FPR_LIMIT)
        + _setup_html(cfg, results)
        + _summary_html(results)
        + "".join(sections)
        + '<p class="muted">Files: <code>metrics.json</code> (every number above), '
        "<code>figures/</code> (the figures as PNG), <code>config.yaml</code> (this report's "
        "settings), <code>images/</code> (per-image pages).</p>"
    )
    return _document("specad report", body)
