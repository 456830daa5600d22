"""Running every model on every dataset, and ordering the results for people to read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from specad.data import Dataset, load_dataset
from specad.evaluate import run_and_evaluate
from specad.fit import fit_on_dataset
from specad.inference import Detector, SplitResults
from specad.metrics import curves
from specad.models.modelfile import ModelMeta
from specad.predict import cluster
from specad.report.config import ReportConfig

CURVE_PIXELS = 250_000
"""Pixel curves are drawn from a seeded subsample of this size: identical at plot resolution and
far cheaper than the metrics' own sample. Legends quote the AUROC from the metrics."""


@dataclass
class Run:
    """One model on one dataset: everything the figures, tables and pages are drawn from."""

    model: str
    kind: str
    test: SplitResults
    metrics: dict[str, Any]
    curves: dict[str, Any]
    runtime: str  # how the maps were computed (torch, onnx, int8, ...): int8 maps differ
    meta: ModelMeta  # its channels, bands and normal envelope: the pages' spectra

    @property
    def threshold(self) -> float:
        """The model's calibrated image threshold: the one ``specad predict`` compares with."""
        return self.metrics["thresholds"]["val_far"]["image_threshold"]


@dataclass
class DatasetRuns:
    """Every model's run on one dataset, under the dataset's file-name-safe key."""

    name: str
    dataset: Dataset
    runs: list[Run]


def safe_name(text: str) -> str:
    """``text`` with runs of characters unsafe in file names and anchors replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def unique(names: Sequence[str]) -> list[str]:
    """``names`` with repeats numbered (``a``, ``a-2``, ``a-3``) so that each is a distinct key."""
    out: list[str] = []
    for base in names:
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out.append(name)
    return out


def dataset_names(paths: Sequence[Path]) -> list[str]:
    """Unique, file-name-safe keys from the dataset folder names."""
    return unique([safe_name(p.resolve().name).strip("-.") or "dataset" for p in paths])


def run_dataset(
    cfg: ReportConfig, name: str, root: Path, loaded: dict[str, Detector], progress: bool
) -> DatasetRuns:
    """Every model on one dataset's test and validation cubes, with metrics and curves."""
    ds = load_dataset(root)
    for split in ("test", "val"):  # a missing split is refused before any fitting
        ds.require(split)
    runs = []
    for model, spec in cfg.models.items():
        det = loaded[model] if spec.kind is None else fit_on_dataset(spec.kind, ds)
        with cluster(cfg.scheduler, cfg.workers, det, spec, "cpu") as dask:
            res, summary = run_and_evaluate(  # with predict's verdicts: the model's threshold
                det, ds, cfg.far, det.threshold, tiled=cfg.tiled, progress=progress, cluster=dask
            )
        crv = curves(res.scores, res.maps, res.masks, res.class_names, max_pixels=CURVE_PIXELS)
        runs.append(Run(model, det.kind, res, summary, crv, det.runtime, det.meta))
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
