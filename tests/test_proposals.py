"""Selective-search proposals on synthetic images with a known object."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keras_dense.detection import selective_search

from detection_reference import inclusive_iou


def scene(height, width, box):
    """Textured background with one flat red rectangle at `box` (yxyx inclusive)."""
    rng = np.random.default_rng(0)
    image = rng.integers(90, 110, (height, width, 3)).astype(np.uint8)
    image[box[0] : box[2] + 1, box[1] : box[3] + 1] = (220, 30, 30)
    return image


def test_finds_the_object_with_pixel_yxyx_boxes():
    box = [20, 40, 59, 99]
    boxes = selective_search(scene(96, 128, box), max_side=None)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 95 and boxes[:, 3].max() <= 127
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert max(inclusive_iou(b, box) for b in boxes) > 0.95


def test_downscaling_maps_boxes_back_and_caps_the_count():
    box = [80, 160, 239, 399]
    image = scene(384, 512, box)
    boxes = selective_search(image, max_side=128)
    assert boxes[:, 2].max() <= 383 and boxes[:, 3].max() <= 511
    assert max(inclusive_iou(b, box) for b in boxes) > 0.9  # 4x coarser grid, same object
    few = selective_search(image, max_boxes=3, max_side=128)
    np.testing.assert_array_equal(few, boxes[:3])
    big = selective_search(image, max_side=128, min_size=100)
    assert ((big[:, 2:] - big[:, :2] + 1) >= 100).all()


def test_bad_arguments():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="image"):
        selective_search(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, mode="single")
    with pytest.raises(ValueError, match="max_boxes"):
        selective_search(image, max_boxes=0)
    assert cv2.ximgproc is not None
