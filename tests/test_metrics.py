"""Metrics checked against scikit-learn, brute force, and a slow independent AUPRO reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from specad.errors import SpecadError
from specad.metrics import measures as metrics
from specad.metrics.ranking import Pixels


def _blob_data(
    seed: int, n_images: int = 6, size: int = 24
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Noisy maps that are brighter on a few random blobs of the truth; even images are normal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    maps, masks = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=np.int64)
        if i % 2:
            for class_id in rng.integers(1, 3, size=rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, size=2)
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(1, 12)] = class_id
        maps.append(rng.normal(size=(size, size)) + 1.5 * (mask > 0))
        masks.append(mask)
    return maps, masks


def _reference_aupro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float) -> float:
    """Slow AUPRO: explicit threshold loop and per-region overlaps, written independently."""
    regions = []  # (image index, boolean region mask)
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal = np.concatenate([(m == 0).ravel() for m in masks])
    flat = np.concatenate([m.ravel() for m in maps])
    points = [(0.0, 0.0)]
    for t in np.sort(np.unique(flat))[::-1]:
        fpr = np.sum((flat >= t) & normal) / np.sum(normal)
        overlaps = [np.sum(maps[i][region] >= t) / np.sum(region) for i, region in regions]
        points.append((fpr, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3])
def test_aupro_matches_slow_reference(seed: int, fpr_limit: float) -> None:
    maps, masks = _blob_data(seed)
    expected = _reference_aupro(maps, masks, fpr_limit)
    assert metrics.aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-3)


def test_aupro_of_a_subsample_is_close_to_exact() -> None:
    maps, masks = _blob_data(3, n_images=10, size=48)
    exact = metrics.aupro(maps, masks)
    pixels = Pixels.of(maps, masks, max_pixels=6000)
    assert abs(pixels.scores.size - 6000) < 500  # each pixel kept with probability 6000 / P
    assert metrics._aupro(pixels, metrics.AUPRO_FPR_LIMIT) == pytest.approx(exact, abs=0.05)


def test_aupro_perfect_inverted_and_undefined() -> None:
    _, masks = _blob_data(4)
    perfect = [(m > 0).astype(float) for m in masks]
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0)
    assert metrics.aupro([1.0 - p for p in perfect], masks) == pytest.approx(0.0, abs=1e-9)
    empty = [np.zeros_like(m) for m in masks]
    assert math.isnan(metrics.aupro(perfect, empty))


def test_image_and_pixel_auroc_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 7)
    scores = rng.normal(size=17) + labels
    assert metrics.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    maps, masks = _blob_data(5)
    flat_y = np.concatenate([m.ravel() > 0 for m in masks])
    flat_s = np.concatenate([m.ravel() for m in maps])
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(flat_y, flat_s))
    # A seeded subsample is deterministic and close to the full value.
    sub = metrics.pixel_auroc(maps, masks, max_pixels=2000)
    assert sub == metrics.pixel_auroc(maps, masks, max_pixels=2000)
    assert sub == pytest.approx(roc_auc_score(flat_y, flat_s), abs=0.03)
    assert math.isnan(metrics.image_auroc(scores, np.zeros(17)))


def test_f1_max_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=40)
    scores = np.round(rng.normal(size=40) + labels, 1)  # rounding creates ties
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        best = max(best, 2 * tp / (pred.sum() + labels.sum()))
    f1, threshold = metrics.f1_max(scores, labels)
    assert f1 == pytest.approx(best)
    pred = scores >= threshold
    assert 2 * np.sum(pred & (labels == 1)) / (pred.sum() + labels.sum()) == pytest.approx(f1)


def test_threshold_at_far() -> None:
    normal = np.random.default_rng(2).permutation(1000).astype(float)
    for far in (0.01, 0.05, 0.2):
        t = metrics.threshold_at_far(normal, far)
        assert np.mean(normal >= t) <= far  # never more false alarms than asked
        assert np.mean(normal >= np.nextafter(np.float32(t), -np.inf)) > far  # the lowest such
    ties = np.array([1.0, 2.0, 3.0, 3.0, 3.0] * 20)
    assert np.mean(ties >= metrics.threshold_at_far(ties, 0.1)) == 0  # ties stay below
    assert metrics.threshold_at_far(normal, 0.01) > metrics.threshold_at_far(normal, 0.1)
    maps = [normal.reshape(10, 100)[:5], normal.reshape(10, 100)[5:]]
    assert metrics.pixel_threshold_at_far(maps, 0.05) == metrics.threshold_at_far(normal, 0.05)
    with pytest.raises(ValueError):
        metrics.threshold_at_far(normal, 1.5)
    with pytest.raises(SpecadError):
        metrics.threshold_at_far([], 0.01)


def test_dice_iou_hand_made() -> None:
    mask = np.array([[0, 1, 1], [0, 2, 0]])
    score = np.array([[0.9, 0.8, 0.1], [0.0, 0.7, 0.0]])
    # Flagged {(0,0),(0,1),(1,1)}; truth {(0,1),(0,2),(1,1)}: tp=2, fp=1, fn=1.
    dice, iou = metrics.dice_iou([score, np.zeros((2, 2))], [mask, np.zeros((2, 2), int)], 0.5)
    assert dice == pytest.approx(4 / 6)
    assert iou == pytest.approx(2 / 4)
    with pytest.raises(SpecadError, match="shape"):
        metrics.dice_iou([score], [mask[:1]], 0.5)


def test_per_class_selects_normals_plus_class() -> None:
    names = ["good", "good", "scratch", "dent", "scratch", "good"]
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.8, 0.2])
    masks = [np.zeros((4, 4), int) for _ in names]
    masks[2][0, 0] = masks[3][1, 1] = masks[4][2, 2] = 1
    maps = [m.astype(float) for m in masks]
    maps[3] = 1.0 - maps[3]  # only the dent map is wrong
    result = metrics.per_class(scores, maps, masks, names)
    assert set(result) == {"dent", "scratch"}
    assert result["scratch"] == {"image_auroc": 1.0, "pixel_auroc": 1.0, "n_images": 5}
    dent = [0, 1, 3, 5]
    assert result["dent"]["n_images"] == 4
    assert result["dent"]["image_auroc"] == pytest.approx(roc_auc_score([0, 0, 1, 0], scores[dent]))
    pixel_truth = np.concatenate([masks[i].ravel() for i in dent])
    pixel_scores = np.concatenate([maps[i].ravel() for i in dent])
    assert result["dent"]["pixel_auroc"] == pytest.approx(roc_auc_score(pixel_truth, pixel_scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sort_matches_sklearn_per_class_with_ties(seed: int) -> None:
    """The single ranking gives scikit-learn's values for every class subset, ties included."""
    maps, masks = _blob_data(seed, n_images=9)
    maps = [np.round(m, 1) for m in maps]  # many ties
    names = ["good" if not g.any() else ("a" if i % 4 == 1 else "b") for i, g in enumerate(masks)]
    scores = np.round([m.max() for m in maps], 0)
    result = metrics.per_class(scores, maps, masks, names)
    for name in {"a", "b"} & set(names):
        sel = [i for i, n in enumerate(names) if n in ("good", name)]
        truth = np.concatenate([masks[i].ravel() > 0 for i in sel])
        flat = np.concatenate([maps[i].ravel() for i in sel])
        assert result[name]["pixel_auroc"] == pytest.approx(roc_auc_score(truth, flat), abs=1e-12)
    flat_y = np.concatenate([g.ravel() > 0 for g in masks])
    flat_s = np.concatenate([m.ravel() for m in maps])
    curves = metrics.roc_pr_curves(flat_s, flat_y)
    assert np.trapezoid(curves.tpr, curves.fpr) == pytest.approx(roc_auc_score(flat_y, flat_s))
    # Every point drawn is one of scikit-learn's (which has one per distinct score).
    fpr, tpr, _ = roc_curve(flat_y, flat_s, drop_intermediate=False)
    theirs = {(round(a, 12), round(b, 12)) for a, b in zip(fpr, tpr, strict=True)}
    ours = zip(curves.fpr[1:-1], curves.tpr[1:-1], strict=True)  # inner points: thresholds
    assert {(round(a, 12), round(b, 12)) for a, b in ours} <= theirs
    precision, recall, _ = precision_recall_curve(flat_y, flat_s)
    theirs = {(round(a, 12), round(b, 12)) for a, b in zip(precision, recall, strict=True)}
    ours = zip(curves.precision, curves.recall, strict=True)
    assert {(round(a, 12), round(b, 12)) for a, b in ours} <= theirs
    assert curves.recall[0] == 1 and (curves.precision[-1], curves.recall[-1]) == (1, 0)


def test_evaluate_summary_is_json_and_consistent() -> None:
    maps, masks = _blob_data(6, n_images=8)
    labels = np.array([int(m.any()) for m in masks])
    names = ["good" if not y else f"c{i % 3}" for i, y in enumerate(labels)]
    scores = np.array([m.max() for m in maps])
    val_maps, _ = _blob_data(7, n_images=4)  # even images have no blobs
    summary = metrics.evaluate(
        scores, labels, maps, masks, names, val_scores=scores[labels == 0], val_maps=val_maps[::2]
    )
    json.dumps(summary, allow_nan=False)
    assert summary["image_auroc"] == pytest.approx(metrics.image_auroc(scores, labels))
    assert summary["aupro_0.3"] == pytest.approx(metrics.aupro(maps, masks))
    assert set(summary["per_class"]) == set(names) - {"good"}
    far = summary["thresholds"]["val_far"]
    assert far["source"] == "val"
    assert far["image_threshold"] == pytest.approx(metrics.threshold_at_far(scores[labels == 0]))
    f1 = summary["thresholds"]["f1_optimal"]
    assert f1["image_f1"] == pytest.approx(metrics.f1_max(scores, labels)[0])
    assert 0 <= f1["pixel_dice"] <= 1
    fallback = metrics.evaluate(scores, labels, maps, masks, names)["thresholds"]["val_far"]
    assert fallback["source"] == "test_good"


def test_curves_are_thinned_and_cover_classes() -> None:
    maps, masks = _blob_data(8, n_images=8, size=40)
    names = ["good" if not m.any() else ("a" if i % 4 == 1 else "b") for i, m in enumerate(masks)]
    scores = np.array([m.max() for m in maps])
    result = metrics.curves(scores, maps, masks, names, max_points=300)
    pixel = result["overall"]["pixel"]
    assert pixel.precision.size <= 300 and pixel.fpr.size <= 300
    assert pixel.fpr[0] == 0 and pixel.fpr[-1] == 1 and pixel.tpr[-1] == 1
    assert pixel.auroc == pytest.approx(metrics.pixel_auroc(maps, masks))
    assert set(result["per_class"]) == {"a", "b"}
    assert result["per_class"]["a"]["image"].recall[0] == 1


def test_too_few_normal_images_is_said_with_the_numbers() -> None:
    scores = np.linspace(0.1, 0.4, 30)
    with pytest.warns(metrics.ThresholdWarning, match="30 normal validation scores .* needs 100"):
        t = metrics.threshold_at_far(scores, 0.01)
    assert t > 0.4 and not metrics.is_anomalous(0.4, t)
