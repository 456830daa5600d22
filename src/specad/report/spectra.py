"""The index's spectra: each defect class's mean spectrum beside the normal envelope, so that a
reader sees at once which bands tell a class from normal (water: 1450 nm)."""

from __future__ import annotations

import numpy as np

from specad.models.modelfile import ModelMeta
from specad.report.runs import DatasetRuns

MAX_CLASS_CUBES = 16
"""Test cubes read per class (evenly spaced) for its mean: a few already give a stable mean."""


def class_means(dr: DatasetRuns) -> tuple[ModelMeta, dict[str, np.ndarray]]:
    """The model whose channels and envelope the means are in (the first with an envelope), and
    each defect class's mean spectrum over its true defect pixels."""
    run = next((r for r in dr.runs if r.meta.envelope is not None), dr.runs[0])
    channels, test = run.meta.preprocess.channels, run.test
    means: dict[str, np.ndarray] = {}
    for name in sorted({s.label for s in test.samples if s.anomalous}):
        which = [i for i, s in enumerate(test.samples) if s.label == name]
        total, count = np.zeros(len(channels)), 0
        for i in which[:: max(1, -(-len(which) // MAX_CLASS_CUBES))]:
            inside = test.masks[i] > 0
            if inside.any():
                pixels = test.samples[i].read().data[inside][:, channels].astype(np.float64)
                total, count = total + pixels.sum(0), count + len(pixels)
        if count:
            means[name] = total / count
    return run.meta, means
