"""Ranking metrics at every threshold at once, from one sort of the normal scores.

`Flags` holds the true and false positives at each distinct anomalous score, from which
AUROC, the best F1, ROC and PR curves and the PRO curve follow exactly, ties included;
`Pixels` pools a set of anomaly maps with their truth, a group per image (so one anomaly class
with the normal images is a choice of groups, not a new sort) and the per-region weights AUPRO
needs. `specad.metrics.measures` turns these into the reported figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.integrate import trapezoid

from specad.errors import SpecadError

MAX_PIXELS = 20_000_000
"""Beyond this many pooled pixels, pixel metrics use a seeded uniform subsample (`Pixels`):
the sort and its index arrays stay under about 700 MB. 100 test images at 384 px are 15 M."""
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

Maps = Sequence[np.ndarray] | np.ndarray


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


def pooled(maps: Maps, masks: Maps, exact_type: bool = False) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass(frozen=True)
class Flags:
    """The rule ``score >= t`` at each distinct anomalous score t, highest first.

    Only anomalous scores move the true positives, so these thresholds carry every ranking
    metric: F1 peaks at one of them, and between two of them the ROC (or PRO) curve runs flat
    through the normal scores above the lower one, then rises along a diagonal through those
    tied with it (a tie counts half). The normal scores are sorted once (NumPy's vectorised
    sort) and each threshold is placed among them by binary search, so no per-metric or
    per-class sort of all pixels is needed: with scikit-learn those sorts were the larger part
    of a ``specad evaluate``.
    """

    values: np.ndarray  # [K] the distinct anomalous scores, descending
    tp: np.ndarray  # [K] anomalous scores (or their weights) at or above each value
    fp: np.ndarray  # [K] normal scores at or above each value
    fp_above: np.ndarray  # [K] normal scores strictly above each value
    n_normal: int

    @classmethod
    def of(
        cls,
        normal: Sequence[np.ndarray],
        anomalous: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> Flags:
        """From sorted (ascending) parts of the normal scores and the anomalous scores; with
        ``weights``, ``tp`` sums each anomalous score's weight instead of counting it."""
        order = np.argsort(anomalous)[::-1]  # [A] few: the anomalous scores only
        ranked = anomalous[order]
        last = np.ones(ranked.size, dtype=bool)  # [A] last of a run of equal scores
        np.not_equal(ranked[1:], ranked[:-1], out=last[:-1])
        values = ranked[last]
        gain = np.ones(ranked.size) if weights is None else weights[order]
        n_normal = sum(part.size for part in normal)
        fp = n_normal - sum(np.searchsorted(part, values, "left") for part in normal)
        fp_above = n_normal - sum(np.searchsorted(part, values, "right") for part in normal)
        return cls(
            values,
            np.cumsum(gain, dtype=np.float64)[last],
            np.asarray(fp),
            np.asarray(fp_above),
            n_normal,
        )

    @property
    def defined(self) -> bool:
        """Both classes present: AUROC and F1 mean something."""
        return bool(self.values.size and self.n_normal and self.tp[-1] > 0)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, TPR) from (0, 0) to (1, 1), two points per threshold: where the flat run
        ends and where the threshold's ties end."""
        tp = self.tp / self.tp[-1]
        fpr = np.r_[0.0, np.column_stack([self.fp_above, self.fp]).ravel() / self.n_normal, 1.0]
        tpr = np.r_[0.0, np.column_stack([np.r_[0.0, tp[:-1]], tp]).ravel(), 1.0]
        return fpr, tpr

    def auroc(self) -> float:
        """P(anomalous > normal) + P(tie) / 2, the area under `curve`."""
        return float(trapezoid(*self.curve()[::-1])) if self.defined else math.nan

    def f1_max(self) -> tuple[float, float]:
        """Best F1 and the highest threshold reaching it; F1 = 2 TP / (TP + FP + P)."""
        if not self.defined:
            return math.nan, math.nan
        f1 = 2 * self.tp / (self.tp + self.fp + self.tp[-1])
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.values[best])

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Scikit-learn's order (rising thresholds, from recall 1 down to the point (1, 0)),
        with the highest and lowest precision reached at each recall."""
        tp = np.repeat(self.tp, 2)
        fp = np.column_stack([self.fp, np.r_[self.fp_above[1:], self.n_normal]]).ravel()
        precision, recall = tp / (tp + fp), tp / self.tp[-1]
        return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def flags_of(scores: np.ndarray, labels: np.ndarray) -> Flags:
    """`Flags` of a set of scores with boolean labels (True: anomalous)."""
    return Flags.of([np.sort(scores[~labels])], scores[labels])


@dataclass(frozen=True)
class Pixels:
    """The pooled pixels of a set of maps: scores, truth, the group of the image each came
    from (an anomaly class, say) and the per-region weights AUPRO needs.

    The normal pixels of each group are sorted once, so the flags of any union of groups (one
    class with the normal images) cost binary searches of that union's anomalous pixels.
    Beyond ``max_pixels`` the pixels are a seeded uniform subsample (``seed``; each kept with
    probability ``max_pixels / P``), deterministic and unbiased for every ranking metric
    (standard error of AUROC ~1e-4 at `MAX_PIXELS`). Scores keep the maps' float type: float32
    maps sort twice as fast as float64 copies, and converting would add no information.
    """

    scores: np.ndarray  # [P]
    truth: np.ndarray  # [P] bool, anomalous
    group: np.ndarray  # [P] group index of the image each pixel came from
    region_weight: np.ndarray  # [P] 1 / size of the pixel's anomalous region, 0 off regions
    normal: tuple[np.ndarray, ...]  # per group: its normal pixels' scores, sorted

    @classmethod
    def of(
        cls,
        maps: Maps,
        masks: Maps,
        groups: Sequence[int] | None = None,
        max_pixels: float = MAX_PIXELS,
        seed: int = 0,
    ) -> Pixels:
        """``groups`` [N]: a small integer per image (default: all 0)."""
        s, y = pooled(maps, masks, exact_type=True)
        per_image = np.zeros(len(maps), np.int32) if groups is None else np.asarray(groups)
        group = np.repeat(per_image.astype(np.int32), [np.size(m) for m in maps])
        weights = region_weights(masks)
        if s.size > max_pixels:
            keep = np.random.default_rng(seed).random(s.size) < max_pixels / s.size
            s, y, group, weights = s[keep], y[keep], group[keep], weights[keep]
        n_groups = int(per_image.max(initial=0)) + 1
        normal = tuple(np.sort(s[~y & (group == g)]) for g in range(n_groups))
        return cls(s, y, group, weights, normal)

    def flags(self, groups: Sequence[int] | None = None, weighted: bool = False) -> Flags:
        """Flags over all pixels or those of ``groups``; ``weighted``: TP sums region weights,
        so TP / its total is the mean per-region overlap (PRO)."""
        chosen = range(len(self.normal)) if groups is None else groups
        anomalous = self.truth
        if groups is not None:
            wanted = np.zeros(len(self.normal), dtype=bool)  # a table beats np.isin here
            wanted[list(groups)] = True
            anomalous = anomalous & wanted[self.group]
        weights = self.region_weight[anomalous] if weighted else None
        return Flags.of([self.normal[g] for g in chosen], self.scores[anomalous], weights)


def region_weights(masks: Maps) -> np.ndarray:
    """[P] each pixel's 1 / (size of its 8-connected anomalous region), 0 off regions, pooled:
    the weights of one region sum to 1."""
    weights = []
    for g in masks:
        regions, n = ndimage.label(np.asarray(g) > 0, structure=_EIGHT_CONNECTED)
        inverse_size = np.zeros(n + 1, dtype=np.float32)
        inverse_size[1:] = 1.0 / np.bincount(regions.ravel(), minlength=n + 1)[1:]
        weights.append(inverse_size[regions].ravel())
    return np.concatenate(weights)
