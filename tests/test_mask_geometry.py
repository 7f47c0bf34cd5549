"""Mask R-CNN's mask targets, pasting and loss against the NumPy references of
`mask_reference.py`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_dense.detection import mask_loss, mask_targets, paste_masks
from keras_dense.layers import ClassMasks
from keras_dense.prediction.palette import draw_instances, instance_colours

from mask_reference import crop_mask, paste_mask
from mask_reference import mask_loss as reference_mask_loss


def ellipse(height, width, cy, cx, ry, rx) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width] + 0.5
    return (((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0).astype(np.float32)


def instance_batch():
    """2 images of 40 x 48, 3 instance slots (the third of image 1 is padding)."""
    masks = np.zeros((2, 3, 40, 48), np.float32)
    masks[0, 0] = ellipse(40, 48, 15, 20, 9, 14)
    masks[0, 1] = ellipse(40, 48, 30, 38, 8, 7)
    masks[0, 2, 2:12, 30:47] = 1.0
    masks[1, 0] = ellipse(40, 48, 20, 24, 17, 20)
    masks[1, 1, 25:40, 0:10] = 1.0  # touches the image border
    return masks


def test_mask_targets_match_numpy_crop_and_resize():
    masks = instance_batch()
    rng = np.random.default_rng(0)
    corners = rng.uniform(-6, 30, (2, 5, 2))
    sizes = rng.uniform(3, 25, (2, 5, 2))
    rois = np.concatenate([corners, corners + sizes], -1).astype(np.float32)
    rois[1, 0] = [25, 0, 40, 10]  # exactly the border instance's box
    index = np.array([[0, 1, 2, -1, 1], [1, 0, 0, -1, 1]], np.int32)
    for threshold, size in ((0.5, 28), (None, 14), (None, 5)):
        got = mask_targets(masks, index, rois, mask_size=size, threshold=threshold).numpy()
        assert got.shape == (2, 5, size, size)
        for b in range(2):
            for r in range(5):
                if index[b, r] < 0:
                    np.testing.assert_array_equal(got[b, r], 0.0)
                    continue
                want = crop_mask(masks[b, index[b, r]], rois[b, r], size, threshold)
                if threshold is None:
                    np.testing.assert_allclose(got[b, r], want, atol=1e-5)
                else:  # a sample exactly at 0.5 may round either way in float32
                    assert np.mean(got[b, r] != want) < 0.01
    # The RoI equal to the border instance's box is all foreground, up to the image edge.
    full = mask_targets(masks, index, rois, mask_size=28).numpy()[1, 0]
    np.testing.assert_array_equal(full, 1.0)


def test_mask_targets_in_a_graph_with_dynamic_shapes_and_no_ground_truth():
    spec = [
        tf.TensorSpec([None, None, None, None]),
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None, None, 4]),
    ]
    fn = tf.function(lambda m, i, r: mask_targets(m, i, r, 7), input_signature=spec)
    masks = instance_batch()
    rois = np.array([[[5, 5, 25, 35]], [[0, 0, 40, 48]]], np.float32)
    got = fn(masks, np.array([[0], [0]], np.int32), rois).numpy()
    np.testing.assert_array_equal(got[0], crop_mask(masks[0, 0], rois[0, 0], 7)[None])
    empty = fn(np.zeros((2, 0, 40, 48), np.float32), np.full((2, 1), -1, np.int32), rois)
    np.testing.assert_array_equal(empty.numpy(), 0.0)


def test_paste_masks_matches_numpy_reference_at_any_size():
    rng = np.random.default_rng(1)
    grids = rng.uniform(0, 1, (2, 3, 6, 6)).astype(np.float32)
    boxes = np.array(
        [
            [[2.0, 3.0, 17.5, 20.0], [-4.0, 10.0, 8.0, 30.0], [0.0, 0.0, 3.0, 2.5]],
            [[5.0, 5.0, 30.0, 12.0], [10.2, 1.7, 11.9, 40.0], [20.0, 20.0, 40.0, 40.0]],
        ],
        np.float32,
    )
    for height, width in ((24, 31), (1, 17), (33, 1)):
        got = paste_masks(grids, boxes, (height, width)).numpy()
        assert got.shape == (2, 3, height, width)
        for b in range(2):
            for n in range(3):
                want = paste_mask(grids[b, n], boxes[b, n], height, width)
                np.testing.assert_allclose(got[b, n], want, atol=1e-4)


def test_crop_then_paste_round_trip_recovers_smooth_instances():
    masks = instance_batch()
    rows = []
    for b, g in ((0, 0), (0, 1), (1, 0), (1, 1)):
        ys, xs = np.nonzero(masks[b, g])
        rows.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])  # continuous box
    boxes = np.array([rows[:2], rows[2:]], np.float32)
    index = np.array([[0, 1], [0, 1]], np.int32)
    for threshold in (None, 0.5):
        grids = mask_targets(masks, index, boxes, 28, threshold=threshold)
        pasted = paste_masks(grids, boxes, (40, 48)).numpy() >= 0.5
        for b in range(2):
            for g in range(2):
                truth = masks[b, g] > 0
                iou = np.sum(truth & pasted[b, g]) / np.sum(truth | pasted[b, g])
                assert iou > 0.9, (b, g, threshold, iou)
                if threshold is None:
                    assert iou > 0.97, (b, g, iou)
        # Nothing is pasted outside the boxes.
        for b in range(2):
            for g in range(2):
                y0, x0, y1, x1 = boxes[b, g].astype(int)
                outside = pasted[b, g].copy()
                outside[y0:y1, x0:x1] = False
                assert not outside.any()


def test_mask_loss_matches_numpy_and_uses_the_class_channel_of_positives_only():
    rng = np.random.default_rng(2)
    labels = np.array([[2, 0, -1, 1], [3, 3, 0, 0]], np.int32)
    targets = (rng.uniform(size=(2, 4, 5, 5)) > 0.5).astype(np.float32)
    logits = rng.normal(0, 2, (2, 4, 5, 5, 3)).astype(np.float32)
    got = float(mask_loss(labels, targets, logits))
    np.testing.assert_allclose(got, reference_mask_loss(labels, targets, logits), rtol=1e-5)
    # Other channels, background and padding RoIs do not matter.
    changed = logits.copy()
    changed[0, 0, ..., [0, 2]] += 5.0
    changed[0, 1] += 3.0
    changed[0, 2] -= 3.0
    np.testing.assert_allclose(float(mask_loss(labels, targets, changed)), got, rtol=1e-6)
    assert float(mask_loss(np.zeros((1, 2), np.int32), targets[:1, :2], logits[:1, :2])) == 0.0


def test_class_masks_pick_the_sigmoid_of_each_detections_class():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 4, 3, 3, 5)).astype(np.float32)
    classes = np.array([[1, 5, 0, 3], [2, 2, 4, 0]], np.int32)
    got = np.asarray(ClassMasks()([logits, classes]))
    for b in range(2):
        for d in range(4):
            k = classes[b, d]
            want = 0.0 if k == 0 else 1.0 / (1.0 + np.exp(-logits[b, d, :, :, k - 1]))
            np.testing.assert_allclose(got[b, d], want, atol=1e-6)


def test_draw_instances_blends_each_instance_in_its_own_colour():
    image = np.random.default_rng(4).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    masks = np.zeros((2, 40, 48), bool)
    masks[0, 10:20, 10:20] = True
    masks[1, 25:35, 30:45] = True
    boxes = np.array([[8, 8, 22, 22], [23, 28, 37, 47]], np.float32)
    drawn = draw_instances(image, masks, boxes, [1, 2], [0.9, 0.8], ["a", "b"], alpha=0.5)
    colours = instance_colours(2)
    assert not np.array_equal(colours[0], colours[1])
    for k, (y, x) in enumerate([(15, 15), (30, 36)]):
        want = np.round(0.5 * image[y, x] + 0.5 * colours[k].astype(np.float32))
        np.testing.assert_array_equal(drawn[y, x], want.astype(np.uint8))
    # Away from the masks and the boxes (and their captions) the image is untouched.
    np.testing.assert_array_equal(drawn[:, :5], image[:, :5])
    with pytest.raises(ValueError, match="masks"):
        draw_instances(image, masks[:, :10], boxes, [1, 2], [0.9, 0.8], ["a", "b"])
