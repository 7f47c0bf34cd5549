"""In-graph RoI sampling: fractions, IoU thresholds, padding and targets."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_dense.detection import decode_boxes, sample_rois

from detection_reference import inclusive_iou


def shifted(box, dx):
    return [box[0], box[1] + dx, box[2], box[3] + dx]


GT = [[10.0, 10.0, 49.0, 49.0], [100.0, 100.0, 139.0, 159.0], [60.0, 0.0, 90.0, 30.0]]
MARKER = [500.0, 500.0, 510.0, 510.0]


def make_batch():
    """Image 0: plenty of fg and bg; image 1: few candidates. Known IoUs by construction."""
    proposals = np.zeros((2, 120, 4), np.float32)
    # Image 0: shifts of gt 0 and gt 1 (IoU (s - d) / (s + d) for size s and shift d), giving
    # 14 + 11 fg and 19 + 14 + 19 bg candidates, far-away boxes (IoU 0), then padding rows
    # that would be perfect matches.
    rows = [shifted(GT[0], d) for d in range(0, 40, 1)]
    rows += [shifted(GT[1], d) for d in range(0, 60, 2)]
    rows += [[GT[1][0] + d, GT[1][1], GT[1][2] + d, GT[1][3]] for d in range(14, 33)]
    rows += [[300.0 + i, 300.0, 320.0 + i, 320.0] for i in range(20)]
    proposals[0, : len(rows)] = rows
    proposals[0, len(rows) :] = GT[0]  # padding (beyond num_proposals): must never be used
    # Image 1: 2 fg-ish (IoU ~0.9 and 0.52), 3 bg (IoU in [0.1, 0.5)), 1 at IoU < 0.1.
    rows1 = [shifted(GT[0], 2), shifted(GT[0], 12), shifted(GT[0], 15), shifted(GT[0], 25)]
    rows1 += [shifted(GT[0], 33), shifted(GT[0], 37)]
    proposals[1, : len(rows1)] = rows1
    proposals[1, len(rows1) :] = MARKER
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, :3] = GT
    boxes[1, :2] = [GT[0], GT[2]]
    labels = np.array([[3, 1, 2, 0], [2, 1, 0, 0]], np.int32)
    difficult = np.array([[False, False, True, False], [False, True, False, False]])
    return {
        "proposals": proposals,
        "num_proposals": np.array([len(rows), len(rows1)], np.int32),
        "boxes": boxes,
        "labels": labels,
        "num_boxes": np.array([3, 2], np.int32),
        "difficult": difficult,
    }


def run(batch, seed=(1, 2), **kwargs):
    out = sample_rois(
        batch["proposals"],
        batch["num_proposals"],
        batch["boxes"],
        batch["labels"],
        batch["num_boxes"],
        gt_difficult=batch["difficult"],
        seed=seed,
        **kwargs,
    )
    return {k: v.numpy() for k, v in out.items()}


def check_image(out, batch, image, expect_fg, expect_bg):
    labels = out["labels"][image]
    rois = out["rois"][image]
    gts = [
        (batch["boxes"][image, g], batch["labels"][image, g])
        for g in range(batch["num_boxes"][image])
        if not batch["difficult"][image, g]
    ]
    valid_props = batch["proposals"][image, : batch["num_proposals"][image]].tolist()
    candidates = valid_props + [g.tolist() for g, _ in gts]
    fg = labels > 0
    bg = labels == 0
    assert fg.sum() == expect_fg and bg.sum() == expect_bg
    assert (labels[fg.sum() + bg.sum() :] == -1).all()  # padding at the end
    matched = out["matched_gt"][image]
    for roi, label, target, index in zip(rois, labels, out["box_targets"][image], matched):
        if label <= 0:
            assert index == -1
        if label < 0:
            np.testing.assert_array_equal(roi, 0.0)
            continue
        assert roi.tolist() in candidates  # never a padded proposal or a difficult box
        ious = [inclusive_iou(roi, g) for g, _ in gts]
        best = int(np.argmax(ious))
        if label > 0:
            assert ious[best] >= 0.5 and label == gts[best][1]
            # The matched row is the best-overlapping (non-difficult) ground-truth box.
            assert 0 <= index < batch["num_boxes"][image] and not batch["difficult"][image, index]
            np.testing.assert_array_equal(batch["boxes"][image, index], gts[best][0])
            back = np.asarray(decode_boxes(target[None], roi[None]))[0]
            np.testing.assert_allclose(back, gts[best][0], atol=1e-3)
        else:
            assert 0.1 <= ious[best] < 0.5
            np.testing.assert_array_equal(target, 0.0)


def test_fractions_thresholds_and_padding():
    batch = make_batch()
    out = run(batch)
    assert out["rois"].shape == (2, 64, 4) and out["labels"].dtype == np.int32
    # Image 0: far more fg than 16 and more bg than 48: exactly 25% foreground.
    check_image(out, batch, 0, expect_fg=16, expect_bg=48)
    # Image 1 (gt 1 is difficult, so only gt 0 counts): fg = the gt itself + shifts 2, 12;
    # bg = shifts 15, 25 (IoU 0.45, 0.23); shift 33 has IoU 0.09 < 0.1 and 37 even less.
    ious = [inclusive_iou(shifted(GT[0], d), GT[0]) for d in (2, 12, 15, 25, 33)]
    assert ious[1] >= 0.5 > ious[2] and ious[3] >= 0.1 > ious[4]
    check_image(out, batch, 1, expect_fg=3, expect_bg=2)


def test_rois_per_image_and_fraction_options():
    batch = make_batch()
    out = run(batch, rois_per_image=32, fg_fraction=0.5)
    check_image(out, batch, 0, expect_fg=16, expect_bg=16)
    out = run(batch, rois_per_image=8, fg_fraction=0.25)
    check_image(out, batch, 0, expect_fg=2, expect_bg=6)


def test_sampling_is_random_but_seedable():
    batch = make_batch()
    a, b, c = run(batch, seed=(1, 2)), run(batch, seed=(1, 2)), run(batch, seed=(7, 9))
    np.testing.assert_array_equal(a["rois"], b["rois"])
    assert not np.array_equal(a["rois"][0], c["rois"][0])
    unseeded = [run(batch, seed=None)["rois"][0] for _ in range(2)]
    assert not np.array_equal(unseeded[0], unseeded[1])


def test_in_tf_function_with_dynamic_shapes():
    batch = make_batch()
    spec = {
        "proposals": tf.TensorSpec([None, None, 4]),
        "num_proposals": tf.TensorSpec([None], tf.int32),
        "boxes": tf.TensorSpec([None, None, 4]),
        "labels": tf.TensorSpec([None, None], tf.int32),
        "num_boxes": tf.TensorSpec([None], tf.int32),
        "difficult": tf.TensorSpec([None, None], tf.bool),
    }

    @tf.function(input_signature=[spec])
    def sample(b):
        return sample_rois(
            b["proposals"],
            b["num_proposals"],
            b["boxes"],
            b["labels"],
            b["num_boxes"],
            gt_difficult=b["difficult"],
            seed=(3, 4),
        )

    out = {k: v.numpy() for k, v in sample(batch).items()}
    check_image(out, batch, 0, expect_fg=16, expect_bg=48)
    # Fewer candidates than rois_per_image and no ground truth at all: all padding.
    tiny = dict(batch, proposals=batch["proposals"][:, :3], num_boxes=np.array([0, 0], np.int32))
    out = {k: v.numpy() for k, v in sample(tiny).items()}
    assert out["labels"].shape == (2, 64) and (out["labels"] == -1).all()
