"""Image- and pixel-level anomaly-detection metrics shared by every model.

Plain functions over arrays, so RX, EfficientAD and any later model are judged by the same code.
Conventions used throughout:

* a sample is flagged anomalous when ``score >= threshold`` (scikit-learn's curve convention);
* ground-truth masks hold class ids: ``0`` is background, any id ``> 0`` is anomalous;
* per-image class names call normal images `specad.data.GOOD` (``"good"``);
* maps may differ in size between images: pixel metrics pool the flattened pixels;
* a metric that is undefined (e.g. AUROC with a single class present) is ``nan``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.integrate import trapezoid

from specad.data import GOOD
from specad.errors import SpecadError
from specad.metrics.ranking import MAX_PIXELS, Flags, Maps, Pixels, flags_of, pooled

DEFAULT_FAR = 0.01
"""False-alarm rate on normal validation images that sets thresholds unless told otherwise."""
CURVE_POINTS = 2_000
"""Curves are thinned to about this many points: enough to plot, small enough to store."""
AUPRO_FPR_LIMIT = 0.3


@dataclass(frozen=True)
class Curves:
    """ROC and precision-recall curves of one score set, ready for the report to plot."""

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    auroc: float


# ---------------------------------------------------------------------------- input handling


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat float scores and boolean labels, rejecting inputs sklearn would choke on."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() != 0
    if s.shape != y.shape:
        raise SpecadError(f"got {s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise SpecadError("scores contain NaN or inf")
    return s, y


def _class_groups(class_names: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """A group per image, 0 for the normal ones and 1, 2, ... per anomaly class (sorted), and
    the classes' groups: a class is scored on groups 0 and its own."""
    classes = sorted({str(n) for n in class_names} - {GOOD})
    index = {c: i + 1 for i, c in enumerate(classes)}
    return np.array([index.get(str(n), 0) for n in class_names], dtype=np.int32), index


def _check_count(n: int, **sequences: Sequence[Any]) -> None:
    for name, seq in sequences.items():
        if len(seq) != n:
            raise SpecadError(f"got {n} image scores but {len(seq)} {name}")


# ---------------------------------------------------------------------------- scalar metrics


def _dice_iou(s: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    pred = s >= threshold
    tp = np.count_nonzero(pred & y)
    union = tp + np.count_nonzero(pred & ~y) + np.count_nonzero(~pred & y)
    if union == 0:
        return math.nan, math.nan
    return 2 * tp / (union + tp), tp / union


def _rates(s: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) of the rule ``score >= threshold``."""
    pred = s >= threshold
    tpr = float(pred[y].mean()) if y.any() else math.nan
    fpr = float(pred[~y].mean()) if (~y).any() else math.nan
    return tpr, fpr


def image_auroc(scores: Any, labels: Any) -> float:
    """Area under the image-level ROC curve (labels: 0 normal, 1 anomalous)."""
    return flags_of(*_scores_labels(scores, labels)).auroc()


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (``score >= threshold``)."""
    return flags_of(*_scores_labels(scores, labels)).f1_max()


def pixel_auroc(maps: Maps, masks: Maps, max_pixels: int = MAX_PIXELS, seed: int = 0) -> float:
    """Pixel AUROC over all pixels of all images pooled together (a seeded uniform subsample
    beyond ``max_pixels``, see `Pixels`)."""
    return Pixels.of(maps, masks, max_pixels=max_pixels, seed=seed).flags().auroc()


def dice_iou(maps: Maps, masks: Maps, threshold: float) -> tuple[float, float]:
    """Dice and IoU of ``map >= threshold`` against ``mask > 0``, pooled over all pixels.

    Pooling (rather than averaging per image) keeps normal images, which have an empty truth,
    from contributing undefined 0/0 terms; the result is ``nan`` only if truth and prediction
    are both empty everywhere.
    """
    return _dice_iou(*pooled(maps, masks), threshold)


def aupro(maps: Maps, masks: Maps, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Normalised area under the per-region-overlap curve, as in the MVTec AD benchmark.

    The regions are the 8-connected components of each binary mask. At each threshold the PRO is
    the mean, over all regions of all images, of the fraction of the region's pixels flagged; the
    FPR is taken over all background pixels. PRO is integrated (trapezoid) over FPR in
    ``[0, fpr_limit]``, linearly interpolating the curve at ``fpr_limit``, and divided by
    ``fpr_limit`` so a perfect map scores 1. Every distinct score is a threshold (exact).
    Returns ``nan`` when the masks hold no anomalous region.
    """
    return _aupro(Pixels.of(maps, masks, max_pixels=math.inf), fpr_limit)


def _aupro(pixels: Pixels, fpr_limit: float) -> float:
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    # Each region pixel weighs 1/region size, so the flagged weight over the whole weight (the
    # number of regions; less in a subsample) is the mean per-region overlap.
    flags = pixels.flags(weighted=True)
    if not flags.defined:
        return math.nan
    fpr, pro = flags.curve()
    end = int(np.searchsorted(fpr, fpr_limit, side="right"))  # first point beyond the limit
    x, z = fpr[:end], pro[:end]
    if end < fpr.size:
        x0, x1, z0, z1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        x = np.append(x, fpr_limit)
        z = np.append(z, z0 + (z1 - z0) * (fpr_limit - x0) / (x1 - x0))
    return float(trapezoid(z, x) / fpr_limit)


def per_class(
    scores: Any,
    maps: Maps,
    masks: Maps,
    class_names: Sequence[str],
    max_pixels: int = MAX_PIXELS,
) -> dict[str, dict[str, float | int]]:
    """Image and pixel AUROC for each anomaly class against all the normal test images.

    Each class is scored on the normal images plus its own, so a rare easy class cannot hide
    behind (or be hidden by) the others; labels follow from the names (``"good"`` is normal).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    _check_count(s.size, maps=maps, masks=masks, class_names=class_names)
    groups, classes = _class_groups(class_names)
    return _per_class(s, Pixels.of(maps, masks, groups, max_pixels), groups, classes)


def _per_class(
    s: np.ndarray, pixels: Pixels, groups: np.ndarray, classes: dict[str, int]
) -> dict[str, dict[str, float | int]]:
    labels = groups > 0
    result: dict[str, dict[str, float | int]] = {}
    for name, g in classes.items():
        sel = np.isin(groups, [0, g])
        result[name] = {
            "image_auroc": flags_of(s[sel], labels[sel]).auroc(),
            "pixel_auroc": pixels.flags([0, g]).auroc(),
            "n_images": int(sel.sum()),
        }
    return result


# ---------------------------------------------------------------------------- thresholds


def is_anomalous(score: Any, threshold: float) -> Any:
    """The one comparison every command uses: flagged when ``score >= threshold``; a bool for
    a score, a boolean array for a map."""
    flagged = np.asarray(score) >= threshold
    return bool(flagged) if flagged.ndim == 0 else flagged


class ThresholdWarning(UserWarning):
    """Too few normal validation images to measure the false-alarm rate asked for."""


def threshold_at_far(normal_scores: Any, far: float = DEFAULT_FAR) -> float:
    """The one threshold rule: the lowest threshold that flags at most a fraction ``far`` of the
    normal (validation / good) scores under the one comparison, ``score >= threshold``.

    With ``k = floor(far * n)`` normal scores allowed at or above it, it is the next float32
    above the (k+1)-th largest score, so ties never push the false alarms above ``k``. When
    ``n < 1 / far`` no normal image may be flagged (k = 0): the threshold is then just above the
    largest score, and a :class:`ThresholdWarning` says so with the numbers.
    """
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    s = np.asarray(normal_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise SpecadError("no normal images to set the false-alarm threshold from")
    k = int(np.floor(far * s.size + 1e-9))
    kth = np.partition(s, s.size - 1 - k)[s.size - 1 - k]
    threshold = float(np.nextafter(np.float32(kth), np.float32(np.inf)))
    if k == 0 and s.size > 1:
        warnings.warn(
            ThresholdWarning(
                f"{s.size} normal validation scores cannot measure a false-alarm rate of "
                f"{far:g} (that needs {math.ceil(1 / far)}); the threshold is just above the "
                f"largest of them ({kth:.4g}), so none of them is flagged"
            ),
            stacklevel=2,
        )
    return threshold


def pixel_threshold_at_far(normal_maps: Maps, far: float = DEFAULT_FAR) -> float:
    """Like :func:`threshold_at_far` over all pixels of normal maps, for binary pixel masks."""
    return threshold_at_far(np.concatenate([np.ravel(m) for m in normal_maps]), far)


# ---------------------------------------------------------------------------- summaries


def _jsonable(value: Any) -> Any:
    """Plain Python values with ``nan`` as ``None``, so ``json.dumps`` output is strict JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    return value


def evaluate(
    scores: Any,
    labels: Any,
    maps: Maps,
    masks: Maps,
    class_names: Sequence[str],
    val_scores: Any = None,
    val_maps: Maps | None = None,
    far: float = DEFAULT_FAR,
    image_threshold: float | None = None,
) -> dict[str, Any]:
    """A JSON-serialisable summary of a test run (undefined values become ``None``).

    Two operating points are reported: ``val_far`` sets the thresholds at false-alarm rate
    ``far`` on ``val_scores`` / ``val_maps`` (normal validation images) - what a deployment would
    do; without validation data it falls back to the good test images, marked by ``source``.
    ``image_threshold``, when given (a model's fitted threshold), replaces the image one.
    ``f1_optimal`` picks the thresholds that maximise test F1: an optimistic upper bound.
    """
    s, y = _scores_labels(scores, labels)
    _check_count(s.size, maps=maps, masks=masks, class_names=class_names)
    groups, classes = _class_groups(class_names)
    pixels = Pixels.of(maps, masks, groups)
    image_flags, pixel_flags = flags_of(s, y), pixels.flags()

    if image_threshold is not None:
        far_image = float(image_threshold)
    else:
        far_image = threshold_at_far(s[~y] if val_scores is None else val_scores, far)
    normal_maps = [maps[i] for i in np.flatnonzero(~y)] if val_maps is None else val_maps
    far_pixel = pixel_threshold_at_far(normal_maps, far)
    image_f1, f1_image = image_flags.f1_max()
    _, f1_pixel = pixel_flags.f1_max()

    def operating_point(image_threshold: float, pixel_threshold: float) -> dict[str, float]:
        tpr, fpr = _rates(s, y, image_threshold)
        dice, iou = _dice_iou(pixels.scores, pixels.truth, pixel_threshold)
        return {
            "image_threshold": image_threshold,
            "image_tpr": tpr,
            "image_fpr": fpr,
            "pixel_threshold": pixel_threshold,
            "pixel_dice": dice,
            "pixel_iou": iou,
        }

    summary = {
        "n_images": int(s.size),
        "n_anomalous": int(y.sum()),
        "image_auroc": image_flags.auroc(),
        "image_f1_max": image_f1,
        "pixel_auroc": pixel_flags.auroc(),
        f"aupro_{AUPRO_FPR_LIMIT}": _aupro(pixels, AUPRO_FPR_LIMIT),
        "per_class": _per_class(s, pixels, groups, classes),
        "thresholds": {
            "val_far": {
                "source": "test_good" if val_scores is None else "val",
                "far": far,
                **operating_point(far_image, far_pixel),
            },
            "f1_optimal": {"image_f1": image_f1, **operating_point(f1_image, f1_pixel)},
        },
    }
    return _jsonable(summary)


def _thin(n: int, max_points: int) -> np.ndarray:
    """Evenly spaced indices keeping both ends, to cap a curve's size for plotting."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def _curves(flags: Flags, max_points: int) -> Curves | None:
    if not flags.defined:
        return None
    fpr, tpr = flags.curve()
    precision, recall = flags.precision_recall()
    roc_idx = _thin(fpr.size, max_points)
    pr_idx = _thin(precision.size, max_points)
    return Curves(
        fpr=fpr[roc_idx],
        tpr=tpr[roc_idx],
        precision=precision[pr_idx],
        recall=recall[pr_idx],
        auroc=flags.auroc(),
    )


def roc_pr_curves(scores: Any, labels: Any, max_points: int = CURVE_POINTS) -> Curves | None:
    """ROC and PR curves thinned to ``max_points``; ``None`` unless both classes are present."""
    s, y = _scores_labels(scores, labels)
    return _curves(flags_of(s, y), max_points)


def curves(
    scores: Any,
    maps: Maps,
    masks: Maps,
    class_names: Sequence[str],
    max_points: int = CURVE_POINTS,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Image- and pixel-level curves, overall and per anomaly class, for the report's plots.

    Returns ``{"overall": {"image": Curves, "pixel": Curves}, "per_class": {name: {...}}}``
    (an entry is ``None`` where the curve is undefined). Pixel curves use the same seeded
    subsample as :func:`pixel_auroc`.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    _check_count(s.size, maps=maps, masks=masks, class_names=class_names)
    groups, classes = _class_groups(class_names)
    pixels = Pixels.of(maps, masks, groups, max_pixels)

    def level_curves(chosen: list[int] | None) -> dict[str, Curves | None]:
        sel = slice(None) if chosen is None else np.isin(groups, chosen)
        return {
            "image": _curves(flags_of(s[sel], groups[sel] > 0), max_points),
            "pixel": _curves(pixels.flags(chosen), max_points),
        }

    return {
        "overall": level_curves(None),
        "per_class": {name: level_curves([0, g]) for name, g in classes.items()},
    }
