"""Boundary IoU against a brute-force NumPy reference written from the paper's definition."""

from __future__ import annotations

import numpy as np
import pytest

from keras_dense.evaluation.boundary_iou import (
    band_width,
    boundary_band,
    boundary_counts,
    boundary_scores,
)


def reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels of `mask` whose chessboard distance to the nearest pixel outside it (the image
    border counts as outside) is at most d, by brute force over every pixel pair."""
    h, w = mask.shape
    outside = [
        (y, x)
        for y in range(-1, h + 1)
        for x in range(-1, w + 1)
        if not (0 <= y < h and 0 <= x < w) or not mask[y, x]
    ]
    out = np.zeros_like(mask, bool)
    for y, x in zip(*np.nonzero(mask)):
        out[y, x] = min(max(abs(y - oy), abs(x - ox)) for oy, ox in outside) <= d
    return out


def reference_boundary_iou(truths, predictions, classes, ratio=0.02, ignore=None):
    inter, union = np.zeros(classes), np.zeros(classes)
    for g, p in zip(truths, predictions):
        d = max(1, int(round(ratio * np.hypot(*g.shape))))
        valid = np.ones(g.shape, bool) if ignore is None else g != ignore
        for c in range(classes):
            a = reference_band(g == c, d) & valid
            b = reference_band(p == c, d) & valid
            inter[c] += (a & b).sum()
            union[c] += (a | b).sum()
    present = union > 0
    return np.where(present, inter / np.maximum(union, 1), np.nan), present


@pytest.mark.parametrize("d", [1, 2, 3])
def test_band_is_the_brute_force_band(d):
    rng = np.random.default_rng(d)
    mask = np.zeros((18, 21), bool)
    mask[3:15, 2:17] = True
    mask[rng.random(mask.shape) < 0.1] ^= True  # holes and specks
    mask[:, 19:] = True  # touching the image border
    np.testing.assert_array_equal(boundary_band(mask, d), reference_band(mask, d))


def test_dataset_scores_equal_the_reference_with_an_ignore_label():
    rng = np.random.default_rng(0)
    truths, predictions = [], []
    for shape in [(30, 40), (44, 25)]:
        g = np.zeros(shape, np.int64)
        g[5:20, 8:30] = 1
        g[22:, :10] = 2
        g[0, :] = 255  # ignored
        p = g.copy()
        p[5:21, 9:31] = 1  # shifted by one pixel
        p[rng.random(shape) < 0.05] = 2
        p[0, :] = 0
        truths.append(g)
        predictions.append(p)
    counts = sum(boundary_counts(g, p, 3, ignore_label=255) for g, p in zip(truths, predictions))
    scores = boundary_scores(counts, ["bg", "a", "b"])
    want, present = reference_boundary_iou(truths, predictions, 3, ignore=255)
    got = np.array(
        [v if v is not None else np.nan for v in scores["per_class_boundary_iou"].values()]
    )
    np.testing.assert_allclose(got[present], want[present], rtol=1e-12)
    assert scores["boundary_iou"] == pytest.approx(np.mean(want[present]))
    # Perfect predictions score 1; a one-pixel shift hurts the boundary far more than mIoU.
    assert (
        boundary_scores(boundary_counts(truths[0], truths[0], 3, 255), "xyz")["boundary_iou"] == 1.0
    )
    assert 0.0 < scores["per_class_boundary_iou"]["a"] < 0.9


def test_band_width_and_shape_errors():
    assert band_width(512, 512) == round(0.02 * np.hypot(512, 512)) == 14
    assert band_width(10, 10) == 1
    with pytest.raises(ValueError, match="must be the same"):
        boundary_counts(np.zeros((4, 4)), np.zeros((4, 5)), 2)
