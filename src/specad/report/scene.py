"""The pages ``specad scene --out`` writes beside each map: the report's spectral viewer
(`specad.report.viewer`, the same template and script) on one scene scored against itself.

A scene has no training set, so neither a calibrated threshold nor a fitted normal envelope:

- the threshold flags the `SCENE_FAR` highest-scoring pixels of the scene (`threshold_at_far`,
  the one threshold rule, on the scene's own pixels, nearly all of them background): the
  regions a page lists are the scene's strongest candidates, not a calibrated verdict;
- the envelope (per band: median, 1st and 99th percentile) is that of the pixels below that
  threshold, the background as the detector sees it. All pixels would let targets that cover a
  percent or more of the scene pull the 99th percentile onto their own values, hiding the very
  deviation the viewer is there to show; pixels outside the truth would use the answer the
  scene is scored against, and most scenes come without one.

The viewer shows the bands the detector was given (those ``--drop-bands`` and ``--drop-nm``
keep, before any reduction), and each detector's page leads to the others' (←/→).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from specad.io import Cube
from specad.metrics import ThresholdWarning, is_anomalous, threshold_at_far
from specad.models.envelope import pixel_envelope
from specad.report.pages import render
from specad.report.panels import map_range
from specad.report.viewer import PAGE_BUDGET, Normal, viewer_data
from specad.scenes import SceneRun, describe_params

SCENE_FAR = 0.01
"""Fraction of a scene's pixels its page flags: its strongest candidates."""


def scene_threshold(score_map: np.ndarray) -> float:
    """The threshold that flags `SCENE_FAR` of the scene's pixels. On a scene of fewer than
    ``1 / SCENE_FAR`` pixels it flags none, as the page then says; the rule's warning, written
    for validation sets, would only confuse here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)
        return threshold_at_far(score_map, SCENE_FAR)


def scene_normal(cube: Cube, kept: list[int], flagged: np.ndarray) -> Normal:
    """The kept bands and the envelope of the pixels not ``flagged`` (module docstring)."""
    sub = cube.select(kept)
    background = sub.data[~flagged]
    return Normal(kept, sub.bands, sub.wavelengths, pixel_envelope([background[:, None, :]], 1))


def write_scene_pages(
    folder: Path,
    file: Path,
    cube: Cube,
    runs: list[SceneRun],
    mask: np.ndarray | None,
    kept: list[int],
) -> list[Path]:
    """``folder/<detector>.html`` for each run, beside the ``<detector>.png`` already there;
    each page with its picture within `PAGE_BUDGET`. Returns the pages."""
    truth = np.zeros(cube.shape[:2], bool) if mask is None else mask
    pages = [folder / f"{run.detector}.html" for run in runs]
    for k, (run, page) in enumerate(zip(runs, pages, strict=True)):
        threshold = scene_threshold(run.score_map)
        flagged = is_anomalous(run.score_map, threshold)
        picture = page.with_suffix(".png")
        before = pages[k - 1].name if k > 0 else None
        after = pages[k + 1].name if k + 1 < len(pages) else None
        viewer, regions = viewer_data(
            cube,
            truth,
            run.score_map,
            scene_normal(cube, kept, flagged),
            threshold,
            map_range([run.score_map], threshold),
            swir_spec=None,
            label="anomaly",
            budget=PAGE_BUDGET - picture.stat().st_size,
            nav={"previous": before, "next": after},
        )
        h, w, bands = cube.shape
        facts = [
            ("Scene", str(file)),
            ("Size", f"{h} × {w} pixels, {bands} bands"),
            ("Bands shown", f"{len(kept)} (those the detector was given, before any reduction)"),
            ("Detector", f"{run.detector}: {describe_params(run.params)}"),
            ("Pixel AUROC", "no truth given" if run.auroc is None else f"{run.auroc:.4f}"),
            (
                "Threshold",
                f"{threshold:.4g}: flags the top {SCENE_FAR:.0%} of this scene's pixels "
                "(a scene has no normal set to calibrate on)",
            ),
            ("Pixels at or above it", f"{int(flagged.sum())} of {flagged.size}"),
        ]
        if mask is not None:
            facts.append(("Truth pixels", f"{int(np.count_nonzero(mask))} of {mask.size}"))
        nav = [(before, "‹ previous"), (after, "next ›")]
        page.write_text(
            render(
                "scene.html.j2",
                title=f"{file.name} - {run.detector}",
                nav=[(href, text) for href, text in nav if href is not None],
                cube=file.name,
                detector=run.detector,
                facts=facts,
                picture=picture.name,
                viewer=viewer,
                regions=regions,
                has_envelope=True,
                normal="this scene's pixels below the threshold (its background)",
            ),
            encoding="utf-8",
        )
    return pages
