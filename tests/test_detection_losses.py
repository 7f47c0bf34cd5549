"""Fast R-CNN loss on a hand-computed case."""

from __future__ import annotations

import math

import numpy as np

from keras_dense.detection import fast_rcnn_loss, smooth_l1


def test_smooth_l1_branches():
    got = smooth_l1(np.array([0.0, 0.5, -0.5, 1.0, -2.0, 3.0], np.float32)).numpy()
    np.testing.assert_allclose(got, [0.0, 0.125, 0.125, 0.5, 1.5, 2.5], atol=1e-7)


def test_loss_hand_computed():
    # 2 images x 2 RoIs, K = 2 classes (+ background). Labels: fg 1, bg, padding, fg 2.
    labels = np.array([[1, 0], [-1, 2]], np.int32)
    logits = np.array(
        [[[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], [[5.0, 5.0, 5.0], [0.0, 0.0, 3.0]]], np.float32
    )
    targets = np.array(
        [[[0.5, -2.0, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0]], [[9.0, 9.0, 9.0, 9.0], [0, 0, 0, 0]]],
        np.float32,
    )
    bbox = np.full((2, 2, 12), 7.0, np.float32)  # wrong-class outputs must not count
    bbox[0, 0, 4:8] = [0.0, 0.0, 0.0, 0.0]  # class 1 of RoI (0, 0)
    bbox[1, 1, 8:12] = [0.2, 0.0, -1.0, 4.0]  # class 2 of RoI (1, 1)

    def nll(row, label):
        return math.log(sum(math.exp(v) for v in row)) - row[label]

    # Valid RoIs: 3 (the padding slot is ignored); both terms divide by 3.
    cls = (nll([0, 2, 0], 1) + nll([1, 0, 0], 0) + nll([0, 0, 3], 2)) / 3
    # RoI (0,0): diffs (-0.5, 2, 0, -1) -> 0.125 + 1.5 + 0 + 0.5; RoI (1,1): (0.2, 0, -1, 4)
    # -> 0.02 + 0 + 0.5 + 3.5.
    box = (0.125 + 1.5 + 0.0 + 0.5 + 0.02 + 0.0 + 0.5 + 3.5) / 3
    got = fast_rcnn_loss(labels, targets, logits, bbox, box_loss_weight=1.0)
    assert math.isclose(float(got["cls_loss"]), cls, rel_tol=1e-5)
    assert math.isclose(float(got["box_loss"]), box, rel_tol=1e-5)
    assert math.isclose(float(got["loss"]), cls + box, rel_tol=1e-5)
    weighted = fast_rcnn_loss(labels, targets, logits, bbox, box_loss_weight=2.5)
    assert math.isclose(float(weighted["loss"]), cls + 2.5 * box, rel_tol=1e-5)


def test_all_padding_gives_zero_not_nan():
    got = fast_rcnn_loss(
        np.full((1, 3), -1), np.zeros((1, 3, 4)), np.zeros((1, 3, 2)), np.zeros((1, 3, 8))
    )
    assert float(got["loss"]) == 0.0
