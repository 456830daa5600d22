"""The index's figures: ROC, precision-recall, score histograms and each defect class's mean
spectrum against the normal envelope, one set per dataset.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects (always the Agg renderer,
nothing global to close), written under ``figures/`` and embedded in the index as base64 PNG.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from specad.metrics import Curves
from specad.report.runs import DatasetRuns, Run
from specad.report.spectra import class_means

DPI = 90
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Okabe-Ito colours, distinguishable with the common colour-vision deficiencies."""
LINES = ("-", "--", "-.", ":")
"""Line styles cycled with the colours, so that models with identical curves stay visible."""
NORMAL_COLOUR, ANOMALY_COLOUR = "#56B4E9", "#D55E00"

Pick = Callable[[Run], tuple[Curves | None, float | None]]
"""A run's curves for one plot, with the AUROC its legend quotes."""


def model_colour(i: int) -> str:
    """The colour of the i-th model, the same in every figure and table."""
    return COLOURS[i % len(COLOURS)]


@dataclass
class FigureOut:
    """A rendered figure: written under figures/ and embedded in the index."""

    file: str
    png: bytes
    caption: str

    @property
    def base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


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
    return {"color": model_colour(i), "ls": LINES[i % len(LINES)], "lw": 2}


def _auroc(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _roc_axes(ax: Any, runs: list[Run], pick: Pick, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls=":", lw=1, color="#999999", label="chance")
    for i, run in enumerate(runs):
        c, auroc = pick(run)
        if c is not None:
            ax.plot(c.fpr, c.tpr, label=f"{run.model} ({_auroc(auroc)})", **_line(i))
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
        ax.set_title(f"{run.model}: calibrated threshold {run.threshold:.4g}")
        ax.set_xlabel("image score (maximum of the anomaly map)")
        ax.set_ylabel("test cubes")
        ax.legend(fontsize=9)
    return fig


def _spectra_figure(dr: DatasetRuns) -> Figure | None:
    """Per defect class: its mean spectrum over the true defect pixels, over the normal
    envelope (1st to 99th percentile, median) of the model it was taken with."""
    meta, means = class_means(dr)
    if not means:
        return None
    x = np.asarray(meta.wavelengths or range(len(meta.bands)), np.float64)
    order = np.argsort(x, kind="stable")
    fig, axes = _figure(len(means), min(4, len(means)), width=3.4, height=2.6)
    env = meta.envelope
    for ax, (name, mean) in zip(axes, means.items(), strict=True):
        if env is not None:
            lo, hi = np.asarray(env.p1)[order], np.asarray(env.p99)[order]
            ax.fill_between(
                x[order], lo, hi, color=NORMAL_COLOUR, alpha=0.35, label="normal 1-99 %"
            )
            ax.plot(
                x[order],
                np.asarray(env.median)[order],
                color=NORMAL_COLOUR,
                lw=1.5,
                ls="--",
                label="normal median",
            )
        ax.plot(x[order], mean[order], color=ANOMALY_COLOUR, lw=2, marker=".", label=name)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("wavelength (nm)" if meta.wavelengths else "band")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def dataset_figures(out: Path, far: float, dr: DatasetRuns) -> dict[str, FigureOut]:
    """Draw one dataset's figures, write them to ``out/figures/`` and return them by key."""
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
            _histogram_figure(runs, far),
            "Image scores of normal and anomalous test cubes with the calibrated threshold",
        ),
        "spectra": (
            _spectra_figure(dr),
            "Mean spectrum of each defect class's true pixels against the normal envelope",
        ),
    }
    figures = {}
    for key, (fig, caption) in drawn.items():
        if fig is None:
            continue
        fo = FigureOut(f"{dr.name}_{key}.png", _png(fig), caption)
        (out / "figures" / fo.file).write_bytes(fo.png)
        figures[key] = fo
    return figures
