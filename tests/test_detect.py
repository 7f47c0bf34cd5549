"""detect(): decode, clip and per-class NMS against a NumPy greedy reference."""

from __future__ import annotations

import numpy as np

from keras_dense.detection import detect, unpad_detections


class FixedHeads:
    """Stands in for a model: returns given head outputs whatever the inputs."""

    def __init__(self, cls_score, bbox_pred):
        self.outputs = (cls_score, bbox_pred)
        self.calls = []

    def __call__(self, inputs, training=False):
        self.calls.append(training)
        return self.outputs


def reference_decode(deltas, box, stds=(0.1, 0.1, 0.2, 0.2)):
    """Fast R-CNN's bbox_transform_inv (inclusive widths), stds (0.1, 0.1, 0.2, 0.2)."""
    dx, dy, dw, dh = deltas * np.array(stds)
    h, w = box[2] - box[0] + 1, box[3] - box[1] + 1
    cy, cx = box[0] + 0.5 * h, box[1] + 0.5 * w
    cy, cx, h, w = cy + dy * h, cx + dx * w, h * np.exp(dh), w * np.exp(dw)
    return np.array([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h - 1, cx + 0.5 * w - 1])


def exclusive_iou(a, b):
    """The IoU TensorFlow's NMS uses (no +1)."""
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_detect(logits, deltas, proposals, shape, num, thr, nms_iou, max_det):
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    found = []
    for k in range(1, logits.shape[-1]):
        cand = []
        for p in range(num):
            if probs[p, k] < thr:
                continue
            box = reference_decode(deltas[p, 4 * k : 4 * k + 4], proposals[p])
            box = np.clip(box, 0, [shape[0] - 1, shape[1] - 1] * 2)
            cand.append((probs[p, k], box))
        cand.sort(key=lambda c: -c[0])
        kept = []
        for score, box in cand:  # greedy NMS
            if all(exclusive_iou(box, other) <= nms_iou for _, other in kept):
                kept.append((score, box))
        found += [(score, box, k) for score, box in kept]
    found.sort(key=lambda c: -c[0])
    return found[:max_det]


def test_detect_matches_greedy_nms_reference():
    rng = np.random.default_rng(0)
    batch, count, classes = 2, 40, 3
    centres = rng.uniform(10, 90, (batch, 4, 2))  # clustered proposals: NMS has work to do
    pick = rng.integers(0, 4, (batch, count))
    centre = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(
        0, 4, (batch, count, 2)
    )
    size = rng.uniform(15, 40, (batch, count, 2))
    proposals = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
    logits = rng.normal(0, 2, (batch, count, classes + 1)).astype(np.float32)
    deltas = rng.normal(0, 1, (batch, count, 4 * (classes + 1))).astype(np.float32)
    image_shape = np.array([[100, 90], [80, 100]], np.int32)
    num = np.array([40, 25], np.int32)
    model = FixedHeads(logits, deltas)
    out = detect(
        model,
        np.zeros((batch, 100, 100, 3), np.float32),
        proposals,
        score_threshold=0.2,
        nms_iou=0.3,
        max_detections=12,
        image_shape=image_shape,
        num_proposals=num,
    )
    out = {k: np.asarray(v) for k, v in out.items()}
    assert model.calls == [False]
    assert out["boxes"].shape == (2, 12, 4) and out["classes"].dtype == np.int32
    for b in range(batch):
        expected = reference_detect(
            logits[b], deltas[b], proposals[b], image_shape[b], num[b], 0.2, 0.3, 12
        )
        n = int(out["num_detections"][b])
        assert n == len(expected) and n > 0
        # NMS really removed boxes, and the cap of 12 was reached in image 0.
        args = (logits[b], deltas[b], proposals[b], image_shape[b], num[b], 0.2)
        assert len(reference_detect(*args, 0.3, 1000)) < len(reference_detect(*args, 1.0, 1000))
        assert b == 1 or len(reference_detect(*args, 0.3, 1000)) > 12
        np.testing.assert_allclose(out["scores"][b, :n], [e[0] for e in expected], atol=1e-5)
        np.testing.assert_allclose(out["boxes"][b, :n], [e[1] for e in expected], atol=1e-3)
        np.testing.assert_array_equal(out["classes"][b, :n], [e[2] for e in expected])
        assert (out["classes"][b, n:] == 0).all() and (out["scores"][b, n:] == 0).all()


def test_unpad_detections_slices_and_rescales():
    padded = {
        "boxes": np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4),
        "scores": np.array([[0.9, 0.5, 0.0], [0.7, 0.0, 0.0]], np.float32),
        "classes": np.array([[2, 1, 0], [3, 0, 0]], np.int32),
        "num_detections": np.array([2, 1], np.int32),
    }
    images = unpad_detections(padded, scale=np.array([2.0, 0.5], np.float32))
    assert [len(d["scores"]) for d in images] == [2, 1]
    np.testing.assert_array_equal(images[0]["boxes"], padded["boxes"][0, :2] / 2.0)
    np.testing.assert_array_equal(images[1]["boxes"], padded["boxes"][1, :1] / 0.5)
    np.testing.assert_array_equal(images[0]["labels"], [2, 1])


def test_detect_decodes_with_the_models_own_box_stds():
    # A model trained with other target variances (`box_stds` of FastRCNN / FasterRCNN) must
    # be decoded with them, unless detect is given its own.
    stds = (0.2, 0.3, 0.4, 0.5)
    proposals = np.array([[[10.0, 20.0, 49.0, 69.0]]], np.float32)
    logits = np.array([[[0.0, 5.0]]], np.float32)
    deltas = np.array([[[0.0, 0.0, 0.0, 0.0, 0.5, -0.5, 0.4, -0.3]]], np.float32)
    model = FixedHeads(logits, deltas)
    model.box_stds = stds
    images = np.zeros((1, 100, 100, 3), np.float32)
    for given, used in ((None, stds), ((1, 1, 1, 1), (1, 1, 1, 1))):
        out = detect(model, images, proposals, score_threshold=0.1, box_stds=given)
        expected = reference_decode(deltas[0, 0, 4:], proposals[0, 0], used)
        assert int(out["num_detections"][0]) == 1
        # detect clips to the 100 x 100 image.
        np.testing.assert_allclose(out["boxes"][0, 0], np.clip(expected, 0, 99), atol=1e-3)
