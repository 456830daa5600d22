"""Assembling the report folder: the index, a page per cube, metrics.json and config.yaml.

The index embeds every figure as a base64 PNG and inlines the one stylesheet, so the single file
can be mailed or archived and still reads offline without JavaScript. The per-cube pages sit
beside it (``images/<model>/<dataset>/<class>_<stem>.html`` with a folder of panel PNGs) because
a hundred pages of panels inline would make the index too heavy to open. Markup lives in the
Jinja2 templates under ``templates/``, which escape every value they are given.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from specad import __version__
from specad.inference import Detector
from specad.inference.regions import Region
from specad.io import atomic_dir, refuse_overlap
from specad.io.files import escaped
from specad.metrics import AUPRO_FPR_LIMIT
from specad.report.config import ReportConfig
from specad.report.figures import FigureOut, dataset_figures, model_colour
from specad.report.panels import cube_view, map_range, model_panels, panel_thresholds
from specad.report.runs import (
    DatasetRuns,
    Run,
    dataset_names,
    instructive_order,
    run_dataset,
    safe_name,
    unique,
    verdict,
)
from specad.report.viewer import PAGE_BUDGET, Normal, viewer_data
from specad.runtime import cpu_model

SUMMARY_METRICS = (
    ("image_auroc", "Image AUROC"),
    ("image_f1_max", "Image F1-max"),
    ("pixel_auroc", "Pixel AUROC"),
    (f"aupro_{AUPRO_FPR_LIMIT}", f"AUPRO@{AUPRO_FPR_LIMIT}"),
)


@dataclass
class PageEntry:
    """One per-cube page in a model's list: where it is and what happened to the cube."""

    index: int
    href: str
    verdict: str


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, fmt: str = ".3f") -> str:
    return "–" if _missing(value) else format(value, fmt)


def _hue(value: float) -> str:
    """Hue from red (0.5, chance) to green (1) for a 0-1 score cell."""
    return f"{120 * float(np.clip((value - 0.5) / 0.5, 0, 1)):.0f}"


def _printable(value: Any) -> Any:
    """What a template prints, file names that are not UTF-8 shown by their bytes (`escaped`):
    a page with such a name can be written, and shows it as it is. (`Markup` is left alone.)"""
    return escaped(value) if type(value) is str else value


_ENV = Environment(
    loader=PackageLoader("specad.report", "templates"),
    autoescape=select_autoescape(("html.j2",)),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_printable,
)
_ENV.filters.update(num=_num, hue=_hue)
_ENV.tests["missing"] = _missing
_ENV.globals["colour"] = model_colour


def render(template: str, **context: Any) -> str:
    """A page from its template; the report's pages and `specad scene`'s share one environment."""
    return _ENV.get_template(template).render(**context) + "\n"


# --------------------------------------------------------------------------- the whole report


def write_report(cfg: ReportConfig, progress: bool = False) -> Path:
    """Run every model on every dataset and write the report folder; returns its index.html.

    The folder is built under a temporary name and swapped in at the end, so a failure leaves
    any previous report untouched and nothing half-written. An output that is, holds or lies
    in a dataset or model is refused first, ``force`` or not.
    """
    models = [s.path for s in cfg.models.values() if s.path is not None]
    refuse_overlap(cfg.out, [*cfg.datasets, *models])
    with atomic_dir(cfg.out, cfg.force) as tmp:
        loaded = {m: Detector.load(s.path) for m, s in cfg.models.items() if s.path is not None}
        names = dataset_names(cfg.datasets)
        results = [
            run_dataset(cfg, n, p, loaded, progress)
            for n, p in zip(names, cfg.datasets, strict=True)
        ]
        (tmp / "figures").mkdir()
        sections = [
            _section(
                cfg.far, dr, dataset_figures(tmp, cfg.far, dr), _write_pages(tmp, cfg, dr, progress)
            )
            for dr in results
        ]
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
                    "source": str(cfg.models[run.model]),
                    "datasets": {},
                },
            )
            entry["datasets"][dr.name] = run.metrics
    return {"specad": __version__, "far": cfg.far, "models": models}


# --------------------------------------------------------------------------- the index


def _index_html(
    cfg: ReportConfig, results: list[DatasetRuns], sections: list[dict[str, Any]]
) -> str:
    runs = results[0].runs
    models = [
        {
            "name": run.model,
            "kind": run.kind,
            "source": cfg.models[run.model].path,
        }
        for run in runs
    ]
    runtimes = {run.model: run.runtime for dr in results for run in dr.runs}
    return render(
        "index.html.j2",
        title="specad report",
        models=models,
        runtimes=[(m, runtimes[m]) for m in cfg.models],
        sections=sections,
        summary_labels=[label for _, label in SUMMARY_METRICS],
        far=f"{cfg.far:g}",
        limit=AUPRO_FPR_LIMIT,
        tiled=cfg.tiled,
        cpu=cpu_model(),
        version=__version__,
        stamp=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )


def _section(
    far: float, dr: DatasetRuns, figures: dict[str, FigureOut], pages: dict[str, list[PageEntry]]
) -> dict[str, Any]:
    """Everything the index says about one dataset, as plain values for the templates."""
    ds, test = dr.dataset, dr.runs[0].test
    return {
        "name": dr.name,
        "root": str(ds.root),
        "n_train": len(ds.split("train")),
        "n_val": len(ds.split("val")),
        "n_normal": int((test.labels == 0).sum()),
        "n_anomalous": int(test.labels.sum()),
        "classes": ds.defect_names,
        "models": [run.model for run in dr.runs],
        "figures": figures,
        "summary": _summary_rows(dr.runs),
        "per_class": [
            {
                "name": c,
                "count": test.class_names.count(c),
                "cells": [
                    (
                        r.metrics["per_class"][c]["image_auroc"],
                        r.metrics["per_class"][c]["pixel_auroc"],
                    )
                    for r in dr.runs
                ],
            }
            for c in dr.runs[0].metrics["per_class"]
        ],
        "operating_points": [
            {"i": i, "model": run.model, "label": label, "p": run.metrics["thresholds"][key]}
            for i, run in enumerate(dr.runs)
            for key, label in _operating_points(run, far)
        ],
        "page_lists": [_page_list(run, pages[run.model]) for run in dr.runs],
    }


def _summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per model: the summary metrics, each flagged when it is the best of several models."""
    best = {
        key: max((r.metrics[key] for r in runs if not _missing(r.metrics[key])), default=None)
        for key, _ in SUMMARY_METRICS
    }
    return [
        {
            "model": run.model,
            "cells": [
                (run.metrics[key], len(runs) > 1 and run.metrics[key] == best[key])
                for key, _ in SUMMARY_METRICS
            ],
            "n_images": run.metrics["n_images"],
            "n_anomalous": run.metrics["n_anomalous"],
        }
        for run in runs
    ]


def _operating_points(run: Run, far: float) -> list[tuple[str, str]]:
    """(key, label) of the two thresholds a model is shown at."""
    val_far = run.metrics["thresholds"]["val_far"]
    source = "val" if val_far["source"] == "val" else "normal test cubes"
    return [
        ("val_far", f"calibrated: FAR {far:g} on {source}"),
        ("f1_optimal", "F1-optimal on test (optimistic)"),
    ]


def _page_list(run: Run, entries: list[PageEntry]) -> dict[str, Any]:
    """One model's list of per-image pages, as the index shows it."""
    samples = run.test.samples
    return {
        "model": run.model,
        "n_cubes": len(samples),
        "threshold": run.threshold,
        "missed": sum(e.verdict == "missed" for e in entries),
        "false_alarms": sum(e.verdict == "false alarm" for e in entries),
        "entries": [
            {
                "href": e.href,
                "cube": samples[e.index].path.name,
                "label": samples[e.index].label,
                "score": run.test.scores[e.index],
                "verdict": e.verdict,
            }
            for e in entries
        ],
    }


# --------------------------------------------------------------------------- per-cube pages


def _write_pages(
    tmp: Path, cfg: ReportConfig, dr: DatasetRuns, progress: bool
) -> dict[str, list[PageEntry]]:
    """Per-cube pages for every model; each cube is read and rendered once for all models."""
    from tqdm import tqdm

    # ``<class>_<stem>`` names, made unique because a stem may repeat across classes/formats.
    stems = unique([safe_name(f"{s.label}_{s.path.stem}") for s in dr.runs[0].test.samples])
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
    ranges = {run.model: map_range(run.test.maps, run.threshold) for run in dr.runs}
    needed = sorted(set().union(*(r.keys() for r in ranks.values())))
    samples, masks = dr.runs[0].test.samples, dr.runs[0].test.masks
    for i in tqdm(needed, disable=not progress, unit="page", desc=f"pages for {dr.name}"):
        cube = samples[i].read()
        view = cube_view(cube, masks[i], cfg.swir_bands, samples[i].path)
        for run in dr.runs:
            if i not in ranks[run.model]:
                continue
            rank = ranks[run.model][i]
            page = tmp / entries[run.model][rank].href
            panels = model_panels(
                view,
                run.test.maps[i],
                ranges[run.model],
                run.threshold,
                panel_thresholds(cfg.thresholds, run.threshold),
            )
            folder = page.with_suffix("")
            folder.mkdir()
            for p in panels:
                # Run-length zlib: noisy panels barely compress anyway, and it is twice as fast.
                p.image.save(folder / f"{p.key}.png", compress_level=9, compress_type=zlib.Z_RLE)
            shown = [
                {
                    "src": f"{folder.name}/{p.key}.png",
                    "title": p.title,
                    "width": p.image.width,
                    "height": p.image.height,
                }
                for p in panels
            ]
            pictures = sum((folder / f"{p.key}.png").stat().st_size for p in panels)
            before, after = _neighbours(entries[run.model], rank)
            viewer, regions = viewer_data(
                cube,
                masks[i],
                run.test.maps[i],
                Normal.of_model(run.meta),
                run.threshold,
                ranges[run.model],
                swir_spec=cfg.swir_bands,
                label=samples[i].label,
                budget=PAGE_BUDGET - pictures,
                nav={"previous": before, "next": after},
            )
            page.write_text(
                _page_html(
                    dr, run, entries[run.model], rank, ranges[run.model], shown, viewer, regions
                ),
                encoding="utf-8",
            )
    return entries


def _neighbours(entries: list[PageEntry], rank: int) -> tuple[str | None, str | None]:
    """The previous and next pages in a model's list, as links from a page of it."""
    before = Path(entries[rank - 1].href).name if rank > 0 else None
    after = Path(entries[rank + 1].href).name if rank + 1 < len(entries) else None
    return before, after


def _page_html(
    dr: DatasetRuns,
    run: Run,
    entries: list[PageEntry],
    rank: int,
    scale: tuple[float, float],
    panels: list[dict[str, Any]],
    viewer: dict[str, Any],
    regions: list[Region],
) -> str:
    e = entries[rank]
    sample, mask = run.test.samples[e.index], run.test.masks[e.index]
    flagged = float(np.mean(run.test.maps[e.index] >= run.threshold))
    nav = [(f"../../../index.html#images-{dr.name}", "← report")]
    before, after = _neighbours(entries, rank)
    if before is not None:
        nav.append((before, "‹ previous"))
    if after is not None:
        nav.append((after, "next ›"))
    facts = [
        ("Model", f"{run.model} ({run.kind})"),
        ("Dataset", dr.name),
        ("Cube", str(sample.path)),
        ("Class", sample.label),
        ("Image score", f"{run.test.scores[e.index]:.4g}"),
        ("Calibrated threshold", f"{run.threshold:.4g} (the model's, as predict uses)"),
        ("Verdict", e.verdict),
        ("Defect pixels (truth)", f"{int(np.count_nonzero(mask > 0))} of {mask.size}"),
        ("Pixels at or above threshold", f"{flagged:.2%}"),
        ("Map colour scale", f"{scale[0]:.3g} to {scale[1]:.3g} (same for every cube)"),
        ("Place in list", f"{rank + 1} of {len(entries)} (most instructive first)"),
    ]
    return render(
        "image.html.j2",
        title=f"{sample.path.name} - {run.model}",
        nav=nav,
        cube=sample.path.name,
        model=run.model,
        facts=facts,
        panels=panels,
        viewer=viewer,
        regions=regions,
        has_envelope=run.meta.envelope is not None,
        normal="the model's training pixels",
    )
