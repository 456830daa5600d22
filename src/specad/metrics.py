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
from scipy import ndimage
from scipy.integrate import trapezoid
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from specad.data import GOOD
from specad.errors import SpecadError

DEFAULT_FAR = 0.01
"""False-alarm rate on normal validation images that sets thresholds unless told otherwise."""
MAX_PIXELS = 2_000_000
"""Pixel AUROC / pixel curves beyond this many pixels use a seeded uniform subsample."""
CURVE_POINTS = 2_000
"""Curves are thinned to about this many points: enough to plot, small enough to store."""
AUPRO_FPR_LIMIT = 0.3
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

Maps = Sequence[np.ndarray] | np.ndarray


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


def _pooled(maps: Maps, masks: Maps) -> tuple[np.ndarray, np.ndarray]:
    """All pixels' scores and binary truth, after checking each map matches its mask."""
    if len(maps) != len(masks):
        raise SpecadError(f"got {len(maps)} anomaly maps but {len(masks)} masks")
    if len(maps) == 0:
        raise SpecadError("no anomaly maps given")
    for i, (m, g) in enumerate(zip(maps, masks, strict=True)):
        if np.shape(m) != np.shape(g):
            raise SpecadError(
                f"anomaly map {i} has shape {np.shape(m)} but its mask has {np.shape(g)}"
            )
    s = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    y = np.concatenate([np.asarray(g).ravel() > 0 for g in masks])
    return _scores_labels(s, y)


def _subsample(
    s: np.ndarray, y: np.ndarray, max_pixels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded uniform subsample: unbiased for AUROC and keeps sklearn's sort affordable."""
    if s.size <= max_pixels:
        return s, y
    idx = np.random.default_rng(seed).choice(s.size, size=max_pixels, replace=False)
    return s[idx], y[idx]


def _class_subsets(class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """For each anomaly class, the selection of normal images plus that class's images."""
    names = np.asarray(class_names, dtype=str)
    normal = names == GOOD
    return {c: normal | (names == c) for c in sorted(set(names.tolist()) - {GOOD})}


def _take(maps: Maps, selection: np.ndarray) -> list[np.ndarray]:
    return [maps[i] for i in np.flatnonzero(selection)]


def _check_count(n: int, **sequences: Sequence[Any]) -> None:
    for name, seq in sequences.items():
        if len(seq) != n:
            raise SpecadError(f"got {n} image scores but {len(seq)} {name}")


# ---------------------------------------------------------------------------- scalar metrics


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def _auroc(s: np.ndarray, y: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if _both_classes(y) else math.nan


def _f1_max(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if not _both_classes(y):
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


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
    return _auroc(*_scores_labels(scores, labels))


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (``score >= threshold``)."""
    return _f1_max(*_scores_labels(scores, labels))


def pixel_auroc(maps: Maps, masks: Maps, max_pixels: int = MAX_PIXELS, seed: int = 0) -> float:
    """Pixel AUROC over all pixels of all images pooled together.

    Beyond ``max_pixels`` pixels a uniform subsample drawn with ``seed`` is used, so the result is
    deterministic and its error is negligible (standard error ~1e-4 at the default size).
    """
    return _auroc(*_subsample(*_pooled(maps, masks), max_pixels, seed))


def dice_iou(maps: Maps, masks: Maps, threshold: float) -> tuple[float, float]:
    """Dice and IoU of ``map >= threshold`` against ``mask > 0``, pooled over all pixels.

    Pooling (rather than averaging per image) keeps normal images, which have an empty truth,
    from contributing undefined 0/0 terms; the result is ``nan`` only if truth and prediction
    are both empty everywhere.
    """
    return _dice_iou(*_pooled(maps, masks), threshold)


def aupro(
    maps: Maps,
    masks: Maps,
    fpr_limit: float = AUPRO_FPR_LIMIT,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap curve, as in the MVTec AD benchmark.

    The regions are the 8-connected components of each binary mask. At each threshold the PRO is
    the mean, over all regions of all images, of the fraction of the region's pixels flagged; the
    FPR is taken over all background pixels. PRO is integrated (trapezoid) over FPR in
    ``[0, fpr_limit]``, linearly interpolating the curve at ``fpr_limit``, and divided by
    ``fpr_limit`` so a perfect map scores 1.

    Every distinct score is a threshold when ``num_thresholds`` is ``None`` (exact); otherwise
    scores are binned onto that many equally spaced thresholds, trading a little accuracy for
    avoiding the sort. Returns ``nan`` when the masks hold no anomalous region.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    s, y = _pooled(maps, masks)
    # Each region pixel weighs 1/region size, so summing weights of flagged pixels and dividing
    # by the number of regions gives the mean per-region overlap.
    weights = []
    n_regions = 0
    for g in masks:
        regions, n = ndimage.label(np.asarray(g) > 0, structure=_EIGHT_CONNECTED)
        inverse_size = np.zeros(n + 1)
        inverse_size[1:] = 1.0 / np.bincount(regions.ravel(), minlength=n + 1)[1:]
        weights.append(inverse_size[regions].ravel())
        n_regions += n
    n_normal = np.count_nonzero(~y)
    if n_regions == 0 or n_normal == 0:
        return math.nan

    if num_thresholds is None:
        _, key = np.unique(s, return_inverse=True)
    else:
        step = (s.max() - s.min()) / (num_thresholds - 1) or 1.0
        key = np.floor((s - s.min()) / step).astype(np.int64)
    # Sweeping the threshold from high to low = cumulative sums over keys in descending order.
    fpr = np.cumsum(np.bincount(key, weights=~y)[::-1]) / n_normal
    pro = np.cumsum(np.bincount(key, weights=np.concatenate(weights))[::-1]) / n_regions
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], pro])

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
    labels = np.asarray(class_names, dtype=str) != GOOD
    return {
        name: {
            "image_auroc": image_auroc(s[sel], labels[sel]),
            "pixel_auroc": pixel_auroc(_take(maps, sel), _take(masks, sel), max_pixels),
            "n_images": int(sel.sum()),
        }
        for name, sel in _class_subsets(class_names).items()
    }


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
    px_s, px_y = _pooled(maps, masks)
    px_sample = _subsample(px_s, px_y, MAX_PIXELS, seed=0)

    if image_threshold is not None:
        far_image = float(image_threshold)
    else:
        far_image = threshold_at_far(s[~y] if val_scores is None else val_scores, far)
    far_pixel = pixel_threshold_at_far(_take(maps, ~y) if val_maps is None else val_maps, far)
    image_f1, f1_image = _f1_max(s, y)
    _, f1_pixel = _f1_max(*px_sample)

    def operating_point(image_threshold: float, pixel_threshold: float) -> dict[str, float]:
        tpr, fpr = _rates(s, y, image_threshold)
        dice, iou = _dice_iou(px_s, px_y, pixel_threshold)
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
        "image_auroc": _auroc(s, y),
        "image_f1_max": image_f1,
        "pixel_auroc": _auroc(*px_sample),
        f"aupro_{AUPRO_FPR_LIMIT}": aupro(maps, masks, AUPRO_FPR_LIMIT),
        "per_class": per_class(s, maps, masks, class_names),
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


def roc_pr_curves(scores: Any, labels: Any, max_points: int = CURVE_POINTS) -> Curves | None:
    """ROC and PR curves thinned to ``max_points``; ``None`` unless both classes are present."""
    s, y = _scores_labels(scores, labels)
    if not _both_classes(y):
        return None
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    roc_idx = _thin(fpr.size, max_points)
    pr_idx = _thin(precision.size, max_points)
    return Curves(
        fpr=fpr[roc_idx],
        tpr=tpr[roc_idx],
        precision=precision[pr_idx],
        recall=recall[pr_idx],
        auroc=_auroc(s, y),
    )


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
    labels = np.asarray(class_names, dtype=str) != GOOD

    def level_curves(sel: np.ndarray) -> dict[str, Curves | None]:
        px = _subsample(*_pooled(_take(maps, sel), _take(masks, sel)), max_pixels, seed=0)
        return {
            "image": roc_pr_curves(s[sel], labels[sel], max_points),
            "pixel": roc_pr_curves(*px, max_points),
        }

    return {
        "overall": level_curves(np.ones(s.size, dtype=bool)),
        "per_class": {name: level_curves(sel) for name, sel in _class_subsets(class_names).items()},
    }
