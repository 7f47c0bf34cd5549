"""Box IoU, encoding and clipping against brute-force NumPy and hand-worked values."""

from __future__ import annotations

import math

import numpy as np

from keras_dense.detection import clip_boxes, decode_boxes, encode_boxes, iou_matrix

from detection_reference import inclusive_iou


def random_boxes(rng, shape):
    y0 = rng.uniform(0, 80, shape)
    x0 = rng.uniform(0, 80, shape)
    return np.stack(
        [y0, x0, y0 + rng.uniform(0, 40, shape), x0 + rng.uniform(0, 40, shape)], -1
    ).astype(np.float32)


def test_iou_matrix_matches_brute_force_batched():
    rng = np.random.default_rng(0)
    a = random_boxes(rng, (2, 7))
    b = random_boxes(rng, (2, 5))
    got = np.asarray(iou_matrix(a, b))
    assert got.shape == (2, 7, 5)
    for n in range(2):
        for i in range(7):
            for j in range(5):
                assert math.isclose(got[n, i, j], inclusive_iou(a[n, i], b[n, j]), abs_tol=1e-6)
    # Hand-worked: [0,0,9,9] vs [0,5,9,14]: 10x5 overlap / (100 + 100 - 50) = 1/3.
    one = np.asarray(iou_matrix([[0, 0, 9, 9]], [[0, 5, 9, 14], [20, 20, 30, 30]]))
    np.testing.assert_allclose(one, [[1 / 3, 0.0]], atol=1e-7)


def test_encode_hand_worked_and_round_trip():
    reference = np.array([[0.0, 0.0, 9.0, 9.0]], np.float32)  # 10 x 10, centre (5, 5)
    target = np.array([[0.0, 0.0, 19.0, 9.0]], np.float32)  # 20 high, centre y 10
    deltas = np.asarray(encode_boxes(target, reference))
    # dx = 0, dy = (10 - 5) / 10 = 0.5, dw = 0, dh = log 2; divided by (0.1, 0.1, 0.2, 0.2).
    np.testing.assert_allclose(deltas, [[0.0, 5.0, 0.0, math.log(2) / 0.2]], atol=1e-6)

    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, (3, 20))
    refs = random_boxes(rng, (3, 20))
    back = np.asarray(decode_boxes(encode_boxes(boxes, refs), refs))
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    stds = (1.0, 2.0, 3.0, 4.0)
    back = np.asarray(decode_boxes(encode_boxes(boxes, refs, stds), refs, stds))
    np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_clip_boxes_per_image():
    boxes = np.array(
        [[[-5.0, -3.0, 50.0, 70.0]], [[10.0, 20.0, 30.0, 40.0]]], np.float32
    )  # (2, 1, 4)
    shapes = np.array([[40, 60], [25, 100]], np.int32)
    got = np.asarray(clip_boxes(boxes, shapes[:, None, :]))
    np.testing.assert_array_equal(got, [[[0, 0, 39, 59]], [[10, 20, 24, 40]]])
    np.testing.assert_array_equal(
        np.asarray(clip_boxes([[-1.0, 5.0, 9.0, 12.0]], (8, 10))), [[0, 5, 7, 9]]
    )
