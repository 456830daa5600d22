"""Running a detector on a dataset and scoring it against the truth.

The glue between :mod:`specad.inference` (maps) and :mod:`specad.metrics` (numbers), shared by
``specad evaluate`` and the report (single scenes: :mod:`specad.scenes`; fitting:
:mod:`specad.fit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specad.data import Dataset
from specad.inference import Detector, SplitResults, run_split
from specad.io import escaped
from specad.metrics import DEFAULT_FAR, evaluate, is_anomalous

if TYPE_CHECKING:
    from specad.distributed import Cluster


def evaluate_split(
    test: SplitResults, val: SplitResults, far: float = DEFAULT_FAR, threshold: float | None = None
) -> dict[str, Any]:
    """Metrics of a test run, with thresholds calibrated on the validation (normal) run.

    ``threshold`` is the detector's fitted image threshold; given, it is the one the
    ``val_far`` operating point and each test cube's verdict use (as ``specad predict`` does),
    instead of one refitted at ``far``. ``cubes`` lists every test cube's score and verdict.
    """
    summary = evaluate(
        test.scores,
        test.labels,
        test.maps,
        test.masks,
        test.class_names,
        val_scores=val.scores,
        val_maps=val.maps,
        far=far,
        image_threshold=threshold,
    )
    used = summary["thresholds"]["val_far"]["image_threshold"]
    summary["cubes"] = [
        {
            "file": escaped(sample.path),
            "label": sample.label,
            "score": float(score),
            "anomalous": is_anomalous(float(score), used),
        }
        for sample, score in zip(test.samples, test.scores, strict=True)
    ]
    return summary


def evaluate_detector(
    detector: Detector,
    dataset: Dataset,
    *,
    far: float | None = None,
    tiled: bool = False,
    progress: bool = False,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Run on ``val/good`` and ``test`` and return :func:`specad.metrics.evaluate`'s summary;
    with ``cluster``, on its Dask workers (see :mod:`specad.distributed`).

    Verdicts use the detector's own threshold, as ``predict`` does, unless ``far`` asks for a
    threshold refitted on the validation scores at that false-alarm rate.
    """
    threshold = detector.threshold if far is None else None
    far = DEFAULT_FAR if far is None else far
    return run_and_evaluate(
        detector, dataset, far, threshold, tiled=tiled, progress=progress, cluster=cluster
    )[1]


def run_and_evaluate(
    detector: Detector,
    dataset: Dataset,
    far: float,
    threshold: float | None,
    *,
    tiled: bool = False,
    progress: bool = False,
    cluster: Cluster | None = None,
) -> tuple[SplitResults, dict[str, Any]]:
    """The test run and `evaluate_split`'s summary of it: ``val`` and ``test`` scored here, or
    on the Dask workers of ``cluster`` cube for cube the same. Shared by ``specad evaluate``
    and the report, so both score the same way."""
    if cluster is not None:
        val = cluster.run_split(dataset.require("val"), tiled=tiled)
        test = cluster.run_split(dataset.require("test"), tiled=tiled)
    else:
        val = run_split(detector, dataset.require("val"), tiled=tiled, progress=progress)
        test = run_split(detector, dataset.require("test"), tiled=tiled, progress=progress)
    return test, evaluate_split(test, val, far, threshold)
