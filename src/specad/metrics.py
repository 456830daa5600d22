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
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.integrate import trapezoid

from specad.data import GOOD
from specad.errors import SpecadError

DEFAULT_FAR = 0.01
"""False-alarm rate on normal validation images that sets thresholds unless told otherwise."""
MAX_PIXELS = 20_000_000
"""Beyond this many pooled pixels, pixel metrics use a seeded uniform subsample (`_Pixels`):
the sort and its index arrays stay under about 700 MB. 100 test images at 384 px are 15 M."""
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


def _checked_pairs(maps: Maps, masks: Maps) -> None:
    if len(maps) != len(masks):
        raise SpecadError(f"got {len(maps)} anomaly maps but {len(masks)} masks")
    if len(maps) == 0:
        raise SpecadError("no anomaly maps given")
    for i, (m, g) in enumerate(zip(maps, masks, strict=True)):
        if np.shape(m) != np.shape(g):
            raise SpecadError(
                f"anomaly map {i} has shape {np.shape(m)} but its mask has {np.shape(g)}"
            )


def _pooled(maps: Maps, masks: Maps, exact_type: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All pixels' scores (float64, or float32 where every map is and ``exact_type``) and
    binary truth, after checking each map matches its mask."""
    _checked_pairs(maps, masks)
    single = exact_type and all(np.asarray(m).dtype == np.float32 for m in maps)
    dtype = np.float32 if single else np.float64
    s = np.concatenate([np.asarray(m, dtype=dtype).ravel() for m in maps])
    y = np.concatenate([np.asarray(g).ravel() > 0 for g in masks])
    if not np.isfinite(s).all():
        raise SpecadError("scores contain NaN or inf")
    return s, y


def _class_subsets(class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """For each anomaly class, the selection of normal images plus that class's images."""
    names = np.asarray(class_names, dtype=str)
    normal = names == GOOD
    return {c: normal | (names == c) for c in sorted(set(names.tolist()) - {GOOD})}


def _check_count(n: int, **sequences: Sequence[Any]) -> None:
    for name, seq in sequences.items():
        if len(seq) != n:
            raise SpecadError(f"got {n} image scores but {len(seq)} {name}")


# ---------------------------------------------------------------------------- one sort


@dataclass(frozen=True)
class _Ranking:
    """Scores sorted once, highest first, and cut into runs of equal score.

    The rule ``score >= threshold`` at the g-th distinct score flags runs 0..g, so every
    ranking metric (AUROC, best F1, ROC and PR curves, AUPRO), of all scores or of any subset,
    is a cumulative sum of per-run counts: one sort serves them all, exactly, ties included.
    Sorting again for each metric and each class (scikit-learn's way) took about 10 s of a
    25 s ``specad evaluate`` of 100 images at 256 px (AMD EPYC, 1 thread).
    """

    values: np.ndarray  # [G] the distinct scores, descending
    run: np.ndarray  # [P] each score's index into ``values``, in input order

    @classmethod
    def of(cls, scores: np.ndarray) -> _Ranking:
        order = np.argsort(scores)[::-1]  # [P] highest first
        ranked = scores[order]
        starts = np.ones(ranked.size, dtype=bool)  # [P] first of a run of equal scores
        np.not_equal(ranked[1:], ranked[:-1], out=starts[1:])
        run = np.empty(ranked.size, dtype=np.intp)
        run[order] = np.cumsum(starts) - 1
        return cls(ranked[starts], run)

    def per_run(self, weights: np.ndarray) -> np.ndarray:
        """[G] the total weight of each run; a boolean mask counts its selected scores."""
        if weights.dtype == bool:  # counting the selected runs beats float weights of 0 and 1
            return np.bincount(self.run[weights], minlength=self.values.size)
        return np.bincount(self.run, weights=weights, minlength=self.values.size)

    def flags(self, y: np.ndarray, among: np.ndarray | None = None) -> _Flags:
        """True and false positives at each threshold, of all scores or of ``among`` only."""
        pos, neg = (y, ~y) if among is None else (y & among, ~y & among)
        return _Flags(self.values, self.per_run(pos), self.per_run(neg))


@dataclass(frozen=True)
class _Flags:
    """Counts of the rule ``score >= values[g]`` at each distinct score (`_Ranking.flags`)."""

    values: np.ndarray  # [G] thresholds, descending
    pos: np.ndarray  # [G] anomalous scores equal to each threshold
    neg: np.ndarray  # [G] normal scores equal to each threshold

    @cached_property
    def tp(self) -> np.ndarray:
        """[G] anomalous scores flagged at each threshold."""
        return np.cumsum(self.pos)

    @cached_property
    def fp(self) -> np.ndarray:
        """[G] normal scores flagged at each threshold."""
        return np.cumsum(self.neg)

    @property
    def defined(self) -> bool:
        """Both classes present: AUROC and F1 mean something."""
        return bool(self.pos.size and self.tp[-1] > 0 and self.fp[-1] > 0)

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, TPR) from (0, 0) to (1, 1)."""
        return np.r_[0.0, self.fp / self.fp[-1]], np.r_[0.0, self.tp / self.tp[-1]]

    def auroc(self) -> float:
        """P(anomalous score > normal score) + P(tie) / 2: the area under `roc`. A normal
        score in run g lies below the ``tp[g] - pos[g]`` anomalous scores above it and ties
        with ``pos[g]``."""
        if not self.defined:
            return math.nan
        wins = np.dot(self.neg, self.tp - 0.5 * self.pos)
        return float(wins / (self.tp[-1] * self.fp[-1]))

    def f1_max(self) -> tuple[float, float]:
        """Best F1 and the highest threshold reaching it; F1 = 2 TP / (TP + FP + P)."""
        if not self.defined:
            return math.nan, math.nan
        f1 = 2 * self.tp / (self.tp + self.fp + self.tp[-1])
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.values[best])

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Scikit-learn's order: rising thresholds, ending at (1, 0)."""
        flagged = (self.tp + self.fp).astype(np.float64)
        precision = np.divide(self.tp, flagged, out=np.ones_like(flagged), where=flagged > 0)
        return np.r_[precision[::-1], 1.0], np.r_[(self.tp / self.tp[-1])[::-1], 0.0]


def _auroc(s: np.ndarray, y: np.ndarray) -> float:
    return _Ranking.of(s).flags(y).auroc()


@dataclass(frozen=True)
class _Pixels:
    """The pooled pixels of a set of maps: scores, truth, the image each came from, ranked once.

    Beyond ``max_pixels`` they are a seeded uniform subsample (``seed``; each pixel kept with
    probability ``max_pixels / P``), deterministic, and unbiased for every ranking metric
    (standard error of AUROC ~1e-4 at `MAX_PIXELS`). Scores keep the maps' float type: float32
    maps sort twice as fast as float64 copies, and converting adds no ties.
    """

    scores: np.ndarray  # [P]
    truth: np.ndarray  # [P] bool, anomalous
    image: np.ndarray  # [P] index of the map each pixel came from
    region_weight: np.ndarray  # [P] 1 / size of the pixel's anomalous region, 0 off regions
    n_regions: int  # 8-connected anomalous regions in all masks
    ranking: _Ranking

    @classmethod
    def of(cls, maps: Maps, masks: Maps, max_pixels: float = MAX_PIXELS, seed: int = 0) -> _Pixels:
        s, y = _pooled(maps, masks, exact_type=True)
        image = np.repeat(np.arange(len(maps), dtype=np.int32), [np.size(m) for m in maps])
        weights, n_regions = _region_weights(masks)
        if s.size > max_pixels:
            keep = np.random.default_rng(seed).random(s.size) < max_pixels / s.size
            s, y, image, weights = s[keep], y[keep], image[keep], weights[keep]
        return cls(s, y, image, weights, n_regions, _Ranking.of(s))

    def flags(self, images: np.ndarray | None = None) -> _Flags:
        """Counts over all pixels, or over those of the selected ``images`` ([N] bool)."""
        return self.ranking.flags(self.truth, None if images is None else images[self.image])


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
    return _auroc(*_scores_labels(scores, labels))


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (``score >= threshold``)."""
    s, y = _scores_labels(scores, labels)
    return _Ranking.of(s).flags(y).f1_max()


def pixel_auroc(maps: Maps, masks: Maps, max_pixels: int = MAX_PIXELS, seed: int = 0) -> float:
    """Pixel AUROC over all pixels of all images pooled together (a seeded uniform subsample
    beyond ``max_pixels``, see `_Pixels`)."""
    return _Pixels.of(maps, masks, max_pixels, seed).flags().auroc()


def dice_iou(maps: Maps, masks: Maps, threshold: float) -> tuple[float, float]:
    """Dice and IoU of ``map >= threshold`` against ``mask > 0``, pooled over all pixels.

    Pooling (rather than averaging per image) keeps normal images, which have an empty truth,
    from contributing undefined 0/0 terms; the result is ``nan`` only if truth and prediction
    are both empty everywhere.
    """
    return _dice_iou(*_pooled(maps, masks), threshold)


def _region_weights(masks: Maps) -> tuple[np.ndarray, int]:
    """Each anomalous pixel's 1 / (size of its 8-connected region), pooled; the region count."""
    weights = []
    n_regions = 0
    for g in masks:
        regions, n = ndimage.label(np.asarray(g) > 0, structure=_EIGHT_CONNECTED)
        inverse_size = np.zeros(n + 1)
        inverse_size[1:] = 1.0 / np.bincount(regions.ravel(), minlength=n + 1)[1:]
        weights.append(inverse_size[regions].ravel())
        n_regions += n
    return np.concatenate(weights), n_regions


def aupro(maps: Maps, masks: Maps, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Normalised area under the per-region-overlap curve, as in the MVTec AD benchmark.

    The regions are the 8-connected components of each binary mask. At each threshold the PRO is
    the mean, over all regions of all images, of the fraction of the region's pixels flagged; the
    FPR is taken over all background pixels. PRO is integrated (trapezoid) over FPR in
    ``[0, fpr_limit]``, linearly interpolating the curve at ``fpr_limit``, and divided by
    ``fpr_limit`` so a perfect map scores 1. Every distinct score is a threshold (exact).
    Returns ``nan`` when the masks hold no anomalous region.
    """
    return _aupro(_Pixels.of(maps, masks, max_pixels=math.inf), fpr_limit)


def _aupro(pixels: _Pixels, fpr_limit: float) -> float:
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    n_normal = np.count_nonzero(~pixels.truth)
    if pixels.n_regions == 0 or n_normal == 0:
        return math.nan
    # Each region pixel weighs 1/region size, so the flagged weight over the whole weight (the
    # number of regions; less in a subsample) is the mean per-region overlap.
    fpr = np.r_[0.0, np.cumsum(pixels.ranking.per_run(~pixels.truth)) / n_normal]
    pro = np.r_[0.0, np.cumsum(pixels.ranking.per_run(pixels.region_weight))]
    pro /= pro[-1]
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
    return _per_class(s, _Pixels.of(maps, masks, max_pixels), class_names)


def _per_class(
    s: np.ndarray, pixels: _Pixels, class_names: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    labels = np.asarray(class_names, dtype=str) != GOOD
    return {
        name: {
            "image_auroc": _auroc(s[sel], labels[sel]),
            "pixel_auroc": pixels.flags(sel).auroc(),
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
    pixels = _Pixels.of(maps, masks)
    image_flags, pixel_flags = _Ranking.of(s).flags(y), pixels.flags()

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
        "per_class": _per_class(s, pixels, class_names),
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


def _curves(flags: _Flags, max_points: int) -> Curves | None:
    if not flags.defined:
        return None
    fpr, tpr = flags.roc()
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
    return _curves(_Ranking.of(s).flags(y), max_points)


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
    images = _Ranking.of(s)
    pixels = _Pixels.of(maps, masks, max_pixels)

    def level_curves(sel: np.ndarray | None) -> dict[str, Curves | None]:
        return {
            "image": _curves(images.flags(labels, sel), max_points),
            "pixel": _curves(pixels.flags(sel), max_points),
        }

    return {
        "overall": level_curves(None),
        "per_class": {name: level_curves(sel) for name, sel in _class_subsets(class_names).items()},
    }
