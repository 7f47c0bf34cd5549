"""VOC mAP on hand-worked examples (both AP definitions) and the devkit's special cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keras_dense.evaluation import voc_detection_map


def gt(boxes, labels, difficult=None):
    out = {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels)}
    if difficult is not None:
        out["difficult"] = np.array(difficult, bool)
    return out


def det(boxes, scores, labels):
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "labels": np.array(labels),
    }


A, B, C, D = [0, 0, 9, 9], [20, 20, 39, 39], [50, 0, 69, 29], [0, 50, 29, 79]
FAR = [200, 200, 220, 220]


@pytest.mark.parametrize("use_07", [False, True])
def test_perfect_detector_scores_one(use_07):
    truths = [gt([A, B], [1, 2]), gt([C, D], [1, 1])]
    dets = [det([A, B], [0.9, 0.8], [1, 2]), det([C, D], [0.7, 0.95], [1, 1])]
    result = voc_detection_map(dets, truths, use_07_metric=use_07)
    assert math.isclose(result["map"], 1.0) and set(result["ap"]) == {1, 2}
    assert all(math.isclose(v, 1.0) for v in result["ap"].values())


def test_known_ranking_all_point_and_11_point():
    truths = [gt([A, B], [1, 1]), gt([C, D], [1, 1])]
    # Ranked: 0.9 TP (A), 0.8 FP (far), 0.7 TP (C), 0.6 FP (A again), 0.5 TP (B); D missed.
    dets = [det([A, FAR, A, B], [0.9, 0.8, 0.6, 0.5], [1, 1, 1, 1]), det([C], [0.7], [1])]
    # precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/4, 1/4, 2/4, 2/4, 3/4.
    # All points: recall steps of 1/4 at monotone precision 1, 2/3, 3/5 (and 0 up to 1).
    all_point = 0.25 * (1 + 2 / 3 + 3 / 5)
    # 11 points: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3; t = .6, .7 -> 3/5; .8 - 1 -> 0.
    eleven = (3 * 1 + 3 * (2 / 3) + 2 * (3 / 5)) / 11
    got = voc_detection_map(dets, truths)
    assert math.isclose(got["ap"][1], all_point, rel_tol=1e-9)
    assert math.isclose(got["map"], all_point, rel_tol=1e-9)
    got07 = voc_detection_map(dets, truths, use_07_metric=True)
    assert math.isclose(got07["ap"][1], eleven, rel_tol=1e-9)


def test_difficult_is_neither_miss_nor_false_positive():
    truths = [gt([A, B], [1, 1], [False, True])]
    # The top detection hits the difficult box: ignored, so AP stays 1 (one positive, found).
    dets = [det([B, A], [0.9, 0.8], [1, 1])]
    assert voc_detection_map(dets, truths)["ap"][1] == 1.0
    # Not detecting the difficult box is no miss either.
    assert voc_detection_map([det([A], [0.8], [1])], truths)["ap"][1] == 1.0
    # A class whose only boxes are difficult has no AP.
    truths = [gt([A, B], [1, 2], [False, True])]
    assert voc_detection_map([det([A, B], [0.9, 0.9], [1, 2])], truths)["ap"] == {1: 1.0}


def test_inclusive_pixels_and_threshold_is_inclusive():
    truths = [gt([[0, 0, 9, 9]], [1])]
    # Inclusive: 10 x 5 / 10 x 10 = exactly 0.5 -> a hit (the devkit tests ov >= 0.5).
    # Without the +1 it would be 9 x 4 / 81 = 0.44, a false positive.
    hit = voc_detection_map([det([[0, 0, 9, 4]], [0.9], [1])], truths)
    assert hit["ap"][1] == 1.0
    miss = voc_detection_map([det([[0, 0, 9, 3]], [0.9], [1])], truths)  # 0.4
    assert miss["ap"][1] == 0.0
    assert voc_detection_map([det([[0, 0, 9, 3]], [0.9], [1])], truths, 0.4)["ap"][1] == 1.0


def test_map_is_the_mean_over_classes_and_wrong_class_is_fp():
    truths = [gt([A, B], [1, 2])]
    dets = [det([A, B], [0.9, 0.8], [1, 1])]  # B labelled 1: a false positive for class 1
    got = voc_detection_map(dets, truths)
    assert got["ap"] == {1: 1.0, 2: 0.0} and got["map"] == 0.5
    with pytest.raises(ValueError, match="one entry per image"):
        voc_detection_map(dets, truths * 2)
