"""Anomaly-detection metrics shared by every detector: the reported figures and the one
threshold rule (`measures`), computed from one sort of the normal scores (`ranking`); drift
of a line's scores from a calibration (`drift`).

The names callers need are importable from here.
"""

from specad.metrics.drift import DriftMonitor, DriftState
from specad.metrics.measures import (
    AUPRO_FPR_LIMIT,
    CURVE_POINTS,
    DEFAULT_FAR,
    Curves,
    ThresholdWarning,
    aupro,
    curves,
    dice_iou,
    evaluate,
    f1_max,
    image_auroc,
    is_anomalous,
    per_class,
    pixel_auroc,
    pixel_threshold_at_far,
    roc_pr_curves,
    threshold_at_far,
)

__all__ = [
    "AUPRO_FPR_LIMIT",
    "CURVE_POINTS",
    "DEFAULT_FAR",
    "Curves",
    "DriftMonitor",
    "DriftState",
    "ThresholdWarning",
    "aupro",
    "curves",
    "dice_iou",
    "evaluate",
    "f1_max",
    "image_auroc",
    "is_anomalous",
    "per_class",
    "pixel_auroc",
    "pixel_threshold_at_far",
    "roc_pr_curves",
    "threshold_at_far",
]
