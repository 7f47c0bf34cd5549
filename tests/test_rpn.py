"""Region Proposal Network: anchors, training targets and sampling, loss, head and proposals.

The references are brute-force NumPy written from the paper (Ren et al., 2015) and
py-faster-rcnn's documented behaviour, loop by loop, independent of the library code.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.detection import (
    decode_boxes,
    generate_anchors,
    match_anchors,
    rpn_loss,
    rpn_targets,
    sample_anchors,
)
from keras_dense.layers import ProposalLayer, RPNHead, flatten_rpn_outputs

from detection_reference import inclusive_iou, reference_proposals

# ------------------------------------------------------------------------ references


def reference_anchors(height, width, stride, scales, ratios):
    """Anchors cell by cell: centre of the cell's pixel block, h / w = ratio, area scale^2."""
    rows = []
    for i in range(height):
        for j in range(width):
            cy, cx = stride * i + stride / 2.0, stride * j + stride / 2.0
            for ratio in ratios:
                for scale in scales:
                    h, w = scale * math.sqrt(ratio), scale / math.sqrt(ratio)
                    rows.append([cy - h / 2, cx - w / 2, cy + h / 2 - 1, cx + w / 2 - 1])
    return np.array(rows, np.float64)


def reference_labels(anchors, gts, image_hw, pos=0.7, neg=0.3):
    """Paper / py-faster-rcnn labelling of one image, before sampling (1, 0, -1)."""
    height, width = image_hw
    inside = [a[0] >= 0 and a[1] >= 0 and a[2] < height and a[3] < width for a in anchors]
    iou = np.array([[inclusive_iou(a, g) for g in gts] for a in anchors]).reshape(
        len(anchors), len(gts)
    )
    labels = np.full(len(anchors), -1)
    for n in range(len(anchors)):
        if not inside[n]:
            continue
        best = iou[n].max() if len(gts) else -1.0
        if best < neg:
            labels[n] = 0
        if best >= pos:
            labels[n] = 1
    for g in range(len(gts)):
        best = max((iou[n, g] for n in range(len(anchors)) if inside[n]), default=0.0)
        if best <= 0:
            continue
        for n in range(len(anchors)):
            if inside[n] and iou[n, g] == best:
                labels[n] = 1
    return labels


# --------------------------------------------------------------------------- anchors


def test_anchors_of_a_2x2_map_by_hand():
    # Stride 16, scale 32, ratios h/w = 1/4, 1, 4: 16 x 64, 32 x 32, 64 x 16 boxes centred on
    # (8 + 16 i, 8 + 16 j); inclusive ends: [c - h/2, c - w/2, c + h/2 - 1, c + w/2 - 1].
    got = generate_anchors(2, 2, 16, scales=(32,), ratios=(0.25, 1, 4)).numpy()
    cell = {
        (0, 0): [[0, -24, 15, 39], [-8, -8, 23, 23], [-24, 0, 39, 15]],
        (0, 1): [[0, -8, 15, 55], [-8, 8, 23, 39], [-24, 16, 39, 31]],
        (1, 0): [[16, -24, 31, 39], [8, -8, 39, 23], [-8, 0, 55, 15]],
        (1, 1): [[16, -8, 31, 55], [8, 8, 39, 39], [-8, 16, 55, 31]],
    }
    expected = np.array([cell[(i, j)] for i in range(2) for j in range(2)]).reshape(-1, 4)
    np.testing.assert_array_equal(got, expected)
    # py-faster-rcnn's base anchor: the 16 x 16 anchor of cell (0, 0) is [0, 0, 15, 15].
    base = generate_anchors(1, 1, 16, scales=(16,), ratios=(1,)).numpy()
    np.testing.assert_array_equal(base, [[0, 0, 15, 15]])


def test_default_anchors_match_the_brute_force_and_keep_area_and_ratio():
    got = generate_anchors(3, 4).numpy()
    expected = reference_anchors(3, 4, 16, (128, 256, 512), (0.5, 1, 2))
    assert got.shape == (3 * 4 * 9, 4)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    h = got[:9, 2] - got[:9, 0] + 1
    w = got[:9, 3] - got[:9, 1] + 1
    np.testing.assert_allclose(h * w, np.tile([128.0**2, 256.0**2, 512.0**2], 3), rtol=1e-5)
    np.testing.assert_allclose(h / w, np.repeat([0.5, 1.0, 2.0], 3), rtol=1e-5)


def test_anchors_with_dynamic_feature_size():
    fn = tf.function(
        lambda f: generate_anchors(tf.shape(f)[1], tf.shape(f)[2], 8, (16, 24), (1, 2)),
        input_signature=[tf.TensorSpec([None, None, None, 1])],
    )
    got = fn(tf.zeros([1, 3, 5, 1])).numpy()
    np.testing.assert_allclose(got, reference_anchors(3, 5, 8, (16, 24), (1, 2)), atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"stride": 0}, "stride"), ({"scales": ()}, "scales"), ({"ratios": (1, -2)}, "ratios")],
)
def test_anchor_arguments_are_checked(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_anchors(2, 2, **kwargs)


# ------------------------------------------------------------------- target assignment

# 8 x 8 map at stride 16, one 32 x 32 anchor per cell: anchor (i, j) is
# [16 i - 8, 16 j - 8, 16 i + 23, 16 j + 23]; in a 128 x 128 image it is inside for 1 <= i, j <= 6.
SMALL = {"stride": 16, "scales": (32,), "ratios": (1,)}


def small_anchors():
    return generate_anchors(8, 8, **SMALL).numpy()


def anchor_index(i, j):
    return i * 8 + j


def hand_batch():
    gts = np.zeros((2, 3, 4), np.float32)
    gts[0, 0] = [24, 24, 55, 55]  # exactly anchor (2, 2)
    gts[0, 1] = [72, 72, 83, 83]  # 12 x 12 inside anchors (4,4), (4,5), (5,4), (5,5): IoU 0.14
    gts[0, 2] = [0, 0, 0, 0]  # padding
    gts[1, 0] = [72, 72, 99, 99]  # IoU 0.77 with anchor (5, 5), which crosses image 1's border
    gts[1, 1] = [8, 8, 39, 40]
    return gts, np.array([2, 2], np.int32), np.array([[128, 128], [100, 100]], np.int32)


def test_matching_hand_cases_and_brute_force():
    anchors = small_anchors()
    gts, counts, shapes = hand_batch()
    labels = match_anchors(anchors, gts, counts, shapes)["labels"].numpy()
    # Image 0: the exact match is positive; its 16-px neighbours have IoU 1/3 (ignored) and
    # the diagonal ones 1/7 (negative).
    assert labels[0, anchor_index(2, 2)] == 1
    assert labels[0, anchor_index(2, 3)] == -1
    assert labels[0, anchor_index(3, 3)] == 0
    # The small box's best IoU is 144 / 1024 < 0.7, tied between four anchors: all positive.
    for i, j in [(4, 4), (4, 5), (5, 4), (5, 5)]:
        assert labels[0, anchor_index(i, j)] == 1
    # Border-crossing anchors are ignored.
    assert (labels[0, [anchor_index(0, j) for j in range(8)]] == -1).all()
    # Image 1 (valid 100 x 100): anchor (5, 5) = [72, 72, 103, 103] has IoU 0.77 with box 0
    # but crosses the border: ignored; the best inside anchor of that box is positive.
    assert labels[1, anchor_index(5, 5)] == -1
    for b in range(2):
        expected = reference_labels(anchors, gts[b, : counts[b]], shapes[b])
        np.testing.assert_array_equal(labels[b], expected, err_msg=f"image {b}")
    assert (labels == 1).sum() == 1 + 4 + 2


def test_matching_brute_force_on_random_boxes():
    rng = np.random.default_rng(3)
    anchors = generate_anchors(6, 7, 16, scales=(24, 48), ratios=(0.5, 1, 2)).numpy()
    gts = np.zeros((3, 5, 4), np.float32)
    counts = np.array([5, 1, 0], np.int32)
    for b in range(3):
        corner = rng.integers(0, 60, (5, 2))
        size = rng.integers(10, 50, (5, 2))
        gts[b] = np.concatenate([corner, corner + size], -1)
    shapes = np.array([[96, 112], [90, 100], [96, 112]], np.int32)
    labels = match_anchors(anchors, gts, counts, shapes)["labels"].numpy()
    for b in range(3):
        expected = reference_labels(anchors, gts[b, : counts[b]], shapes[b])
        np.testing.assert_array_equal(labels[b], expected, err_msg=f"image {b}")
    assert (labels[2] != 1).all() and (labels[2] == 0).any()  # no box: negatives only


def test_gt_valid_masks_boxes():
    anchors = small_anchors()
    gts, counts, shapes = hand_batch()
    valid = np.array([[True, False, True], [True, True, True]])
    labels = match_anchors(anchors, gts, counts, shapes, gt_valid=valid)["labels"].numpy()
    assert labels[0, anchor_index(4, 4)] == 0
    assert labels[0, anchor_index(2, 2)] == 1


def test_a_box_touching_no_inside_anchor_makes_no_positive():
    # [0, 0, 3, 3] overlaps only border anchors: py-faster-rcnn's tie rule would turn every
    # inside anchor (all at IoU 0 with it) positive; here none is.
    anchors = small_anchors()
    gts = np.array([[[0, 0, 3, 3]]], np.float32)
    labels = match_anchors(anchors, gts, np.array([1]), np.array([[128, 128]]))["labels"]
    labels = labels.numpy()
    assert (labels != 1).all()
    assert (labels == 0).sum() == 36  # the 6 x 6 inside anchors


def many_boxes_batch(num_gt):
    """16 x 16 map, scales 16 and 64: every inside 64-px anchor matched exactly by a box."""
    anchors = generate_anchors(16, 16, 16, scales=(16, 64), ratios=(1,)).numpy()
    cells = [(i, j) for i in range(2, 14) for j in range(2, 14)][:num_gt]
    gts = np.array([[16 * i - 24, 16 * j - 24, 16 * i + 39, 16 * j + 39] for i, j in cells])
    return anchors, gts[None].astype(np.float32), np.array([num_gt]), np.array([[256, 256]])


def test_sampling_many_positives_keeps_exactly_half():
    anchors, gts, counts, shapes = many_boxes_batch(140)
    before = match_anchors(anchors, gts, counts, shapes)["labels"].numpy()
    assert (before == 1).sum() == 140 and (before == 0).sum() >= 128
    labels = rpn_targets(anchors, gts, counts, shapes, seed=(4, 5))["labels"].numpy()
    assert (labels == 1).sum() == 128
    assert (labels == 0).sum() == 128
    assert ((labels == 1) <= (before == 1)).all() and ((labels == 0) <= (before == 0)).all()


def test_sampling_few_positives_keeps_all_and_fills_with_negatives():
    anchors, gts, counts, shapes = many_boxes_batch(5)
    before = match_anchors(anchors, gts, counts, shapes)["labels"].numpy()
    labels = rpn_targets(anchors, gts, counts, shapes, seed=(4, 5))["labels"].numpy()
    assert (before == 1).sum() == 5
    np.testing.assert_array_equal(labels == 1, before == 1)
    assert (labels == 0).sum() == 256 - 5
    assert ((labels == 0) <= (before == 0)).all()


def test_sampling_is_seeded_random_and_batched():
    labels = np.full((2, 600), 0, np.int32)
    labels[:, :300] = 1
    labels[1, 100:300] = -1  # image 1: 100 positives, 300 negatives
    a = sample_anchors(labels, seed=(1, 2)).numpy()
    b = sample_anchors(labels, seed=(1, 2)).numpy()
    c = sample_anchors(labels, seed=(1, 3)).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a[0] == 1).sum() == 128 and (a[0] == 0).sum() == 128
    assert (a[1] == 1).sum() == 100 and (a[1] == 0).sum() == 156
    assert (a[1, 100:300] == -1).all()


def test_sampling_fewer_anchors_than_the_minibatch():
    labels = np.array([[1, 0, 0, -1, 1]], np.int32)
    np.testing.assert_array_equal(sample_anchors(labels, 256).numpy(), labels)


def test_box_targets_decode_to_the_matched_box():
    anchors = small_anchors()
    gts, counts, shapes = hand_batch()
    out = rpn_targets(anchors, gts, counts, shapes, seed=(0, 0))
    labels = out["labels"].numpy()
    targets = out["box_targets"].numpy()
    matched = out["matched_boxes"].numpy()
    assert (labels == 1).sum() == 7
    decoded = decode_boxes(targets, anchors[None], (1.0, 1.0, 1.0, 1.0)).numpy()
    for b, n in zip(*np.nonzero(labels == 1)):
        np.testing.assert_allclose(decoded[b, n], gts[b, matched[b, n]], atol=1e-3)
    assert (targets[labels != 1] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"positive_iou": 1.5}, "positive_iou"),
        ({"negative_iou": 0.8}, "negative_iou"),
        ({"batch_size_per_image": 0}, "batch_size_per_image"),
        ({"positive_fraction": -0.1}, "positive_fraction"),
    ],
)
def test_target_arguments_are_checked(kwargs, name):
    gts, counts, shapes = hand_batch()
    with pytest.raises(ValueError, match=name):
        rpn_targets(small_anchors(), gts, counts, shapes, **kwargs)


# ------------------------------------------------------------------------------ loss


def test_loss_on_a_hand_case():
    labels = np.array([[1, 0, -1, 1]], np.int32)
    logits = np.array([[2.0, -1.0, 5.0, 0.0]], np.float32)
    targets = np.zeros((1, 4, 4), np.float32)
    deltas = np.zeros((1, 4, 4), np.float32)
    deltas[0, 0] = [0.05, -0.5, 0.0, 1.0]
    deltas[0, 1] = [9.0, 9.0, 9.0, 9.0]  # negative: no box loss
    deltas[0, 2] = [9.0, 9.0, 9.0, 9.0]  # not sampled: no loss
    targets[0, 3] = [0.0, 0.0, -0.1, 0.2]
    out = {k: float(v) for k, v in rpn_loss(labels, targets, logits, deltas).items()}
    # Log loss: -log sigmoid(2), -log(1 - sigmoid(-1)) = -log sigmoid(1), -log sigmoid(0).
    cls = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 3
    # Smooth L1 with sigma 3: 4.5 x^2 below |x| = 1/9, else |x| - 1/18.
    box = (4.5 * 0.05**2 + (0.5 - 1 / 18) + (1 - 1 / 18)) + (4.5 * 0.1**2 + (0.2 - 1 / 18))
    box /= 3
    assert out["cls_loss"] == pytest.approx(cls, rel=1e-5)
    assert out["box_loss"] == pytest.approx(box, rel=1e-5)
    assert out["loss"] == pytest.approx(cls + box, rel=1e-5)


def test_loss_takes_head_maps():
    labels = np.array([[1, 0, 0, -1, 1, 0]], np.int32)
    logits = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    deltas = np.ones((1, 1, 2, 12), np.float32)
    flat = rpn_loss(labels, np.zeros((1, 6, 4)), logits.reshape(1, 6), deltas.reshape(1, 6, 4))
    maps = rpn_loss(labels, np.zeros((1, 6, 4)), logits, deltas)
    assert float(maps["loss"]) == pytest.approx(float(flat["loss"]))


# ---------------------------------------------------------------------- head, gradient


def test_head_shapes_and_gradient_reaches_every_weight():
    head = RPNHead(num_anchors=2, filters=8)
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    anchors = generate_anchors(8, 8, 16, scales=(32, 48), ratios=(1,))
    gts, counts, shapes = hand_batch()
    targets = rpn_targets(anchors, gts, counts, shapes, seed=(1, 1))
    with tf.GradientTape() as tape:
        objectness, deltas = head(features)
        loss = rpn_loss(targets["labels"], targets["box_targets"], objectness, deltas)["loss"]
    assert objectness.shape == (2, 8, 8, 2) and deltas.shape == (2, 8, 8, 8)
    flat_obj, flat_deltas = flatten_rpn_outputs(objectness, deltas)
    assert flat_obj.shape == (2, 128) and flat_deltas.shape == (2, 128, 4)
    np.testing.assert_array_equal(flat_deltas[0, 2 * (3 * 8 + 5) + 1], deltas[0, 3, 5, 4:8])
    grads = tape.gradient(loss, head.trainable_weights)
    assert len(grads) == 6
    for weight, grad in zip(head.trainable_weights, grads):
        assert grad is not None, weight.path
        grad = grad.numpy()
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0, weight.path


def test_head_arguments_are_checked_and_initializer_kept():
    with pytest.raises(ValueError, match="num_anchors"):
        RPNHead(num_anchors=0)
    with pytest.raises(ValueError, match="kernel_initializer"):
        RPNHead(kernel_initializer="no_such_initializer")
    head = RPNHead(num_anchors=2, filters=4, kernel_initializer="zeros")
    clone = RPNHead.from_config(head.get_config())
    clone(np.ones((1, 3, 3, 2), np.float32))
    assert all((w.numpy() == 0).all() for w in clone.weights)
    paper = RPNHead(num_anchors=2, filters=4)
    paper(np.ones((1, 3, 3, 2), np.float32))
    assert 0.005 < float(np.std(paper.conv.kernel.numpy())) < 0.02


def test_targets_in_a_graph_with_dynamic_shapes():
    fn = tf.function(
        lambda a, g, n, s: rpn_targets(a, g, n, s, seed=(3, 4))["labels"],
        input_signature=[
            tf.TensorSpec([None, 4]),
            tf.TensorSpec([None, None, 4]),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, 2], tf.int32),
        ],
    )
    gts, counts, shapes = hand_batch()
    got = fn(small_anchors(), gts, counts, shapes).numpy()
    eager = rpn_targets(small_anchors(), gts, counts, shapes, seed=(3, 4))["labels"].numpy()
    np.testing.assert_array_equal(got, eager)


# -------------------------------------------------------------------- proposal layer


def proposal_inputs(seed=0, height=8, width=10, anchors=9):
    rng = np.random.default_rng(seed)
    objectness = rng.normal(0, 2, (2, height, width, anchors)).astype(np.float32)
    deltas = rng.normal(0, 0.2, (2, height, width, 4 * anchors)).astype(np.float32)
    shapes = np.array([[128, 160], [100, 150]], np.int32)
    return objectness, deltas, shapes


LAYER_ARGS = {"stride": 16, "scales": (32, 64, 128), "ratios": (0.5, 1, 2)}


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("with_scale", [False, True])
def test_proposals_match_the_numpy_reference(training, with_scale):
    objectness, deltas, shapes = proposal_inputs()
    scale = np.array([1.0, 2.5], np.float32)
    layer = ProposalLayer(
        **LAYER_ARGS,
        train_pre_nms_top_n=400,
        train_post_nms_top_n=120,
        test_pre_nms_top_n=200,
        test_post_nms_top_n=60,
        min_size=8,
    )
    inputs = [objectness, deltas, shapes] + ([scale] if with_scale else [])
    boxes, scores, counts = (t.numpy() for t in layer(inputs, training=training))
    pre, post = (400, 120) if training else (200, 60)
    assert boxes.shape == (2, post, 4) and scores.shape == (2, post) and counts.shape == (2,)
    anchors = reference_anchors(8, 10, **LAYER_ARGS)
    for b in range(2):
        want_boxes, want_scores = reference_proposals(
            objectness[b].reshape(-1),
            deltas[b].reshape(-1, 4),
            anchors,
            shapes[b],
            scale[b] if with_scale else 1.0,
            pre,
            post,
            0.7,
            8,
        )
        n = counts[b]
        assert n == len(want_boxes), f"image {b}: {n} proposals, expected {len(want_boxes)}"
        np.testing.assert_allclose(boxes[b, :n], want_boxes, atol=2e-3, err_msg=f"image {b}")
        np.testing.assert_allclose(scores[b, :n], want_scores, atol=1e-5)
        assert (boxes[b, n:] == 0).all() and (scores[b, n:] == 0).all()
    # NMS did something, and the post-NMS cut applies (image 0 fills it in training).
    assert (counts < pre).all()


def test_tied_scores_keep_the_anchor_order():
    # Equal logits everywhere (all scores tie) and zero deltas: the boxes are the clipped
    # anchors, ranked by anchor index as the stable reference sort does.
    objectness, deltas, shapes = proposal_inputs()
    objectness = np.zeros_like(objectness)
    deltas = np.zeros_like(deltas)
    layer = ProposalLayer(**LAYER_ARGS, test_post_nms_top_n=80, min_size=8)
    boxes, scores, counts = (t.numpy() for t in layer([objectness, deltas, shapes]))
    anchors = reference_anchors(8, 10, **LAYER_ARGS)
    for b in range(2):
        want, _ = reference_proposals(
            objectness[b].reshape(-1),
            deltas[b].reshape(-1, 4),
            anchors,
            shapes[b],
            1.0,
            6000,
            80,
            0.7,
            8,
        )
        assert counts[b] == len(want)
        np.testing.assert_allclose(boxes[b, : counts[b]], want, atol=1e-3)
        np.testing.assert_allclose(scores[b, : counts[b]], 0.5)


def test_proposals_drop_small_boxes_and_stay_inside():
    objectness, deltas, shapes = proposal_inputs(1)
    layer = ProposalLayer(**LAYER_ARGS, min_size=60, test_post_nms_top_n=500)
    boxes, _, counts = layer([objectness, deltas, shapes])
    boxes, counts = boxes.numpy(), counts.numpy()
    for b in range(2):
        kept = boxes[b, : counts[b]]
        assert len(kept) > 0
        assert (kept[:, 2] - kept[:, 0] + 1 >= 60 - 1e-3).all()
        assert (kept[:, 3] - kept[:, 1] + 1 >= 60 - 1e-3).all()
        assert (kept >= 0).all()
        assert (kept[:, 2] <= shapes[b, 0] - 1).all() and (kept[:, 3] <= shapes[b, 1] - 1).all()


def test_proposal_layer_in_a_graph_with_dynamic_shapes():
    layer = ProposalLayer(**LAYER_ARGS, test_post_nms_top_n=30)
    fn = tf.function(
        lambda o, d, s: layer([o, d, s]),
        input_signature=[
            tf.TensorSpec([None, None, None, 9]),
            tf.TensorSpec([None, None, None, 36]),
            tf.TensorSpec([None, 2], tf.int32),
        ],
    )
    objectness, deltas, shapes = proposal_inputs(2, 5, 7)
    got = fn(objectness, deltas, shapes)
    eager = layer([objectness, deltas, shapes])
    for g, e in zip(got, eager):
        np.testing.assert_allclose(g.numpy(), e.numpy())


def test_functional_model_switches_to_the_training_lengths():
    inputs = [keras.Input((None, None, 9)), keras.Input((None, None, 36))]
    shapes = keras.Input((2,), dtype="int32")
    layer = ProposalLayer(**LAYER_ARGS, train_post_nms_top_n=50, test_post_nms_top_n=20)
    model = keras.Model([*inputs, shapes], layer([*inputs, shapes]))
    objectness, deltas, image_shape = proposal_inputs()
    assert model([objectness, deltas, image_shape])[0].shape == (2, 20, 4)
    assert model([objectness, deltas, image_shape], training=True)[0].shape == (2, 50, 4)


def test_proposal_layer_checks_its_arguments_and_inputs():
    with pytest.raises(ValueError, match="nms_iou"):
        ProposalLayer(nms_iou=1.5)
    with pytest.raises(ValueError, match="test_post_nms_top_n"):
        ProposalLayer(test_post_nms_top_n=0)
    objectness, deltas, shapes = proposal_inputs()
    with pytest.raises(ValueError, match="objectness"):
        ProposalLayer(scales=(32,), ratios=(1,))([objectness, deltas, shapes])
    with pytest.raises(ValueError, match="inputs"):
        ProposalLayer()([objectness, deltas])


def test_proposal_layer_config_keeps_the_settings():
    layer = ProposalLayer(**LAYER_ARGS, train_post_nms_top_n=77, min_size=4)
    clone = ProposalLayer.from_config(layer.get_config())
    assert clone.train_post_nms_top_n == 77 and clone.min_size == 4.0
    assert clone.scales == (32.0, 64.0, 128.0)
    assert keras.saving.get_registered_name(ProposalLayer) == "keras_dense>ProposalLayer"
