"""COCO box and mask AP (pycocotools) against hand cases whose AP follows from brute-force
IoUs: a true positive counts at the thresholds 0.50:0.05:0.95 its IoU reaches."""

from __future__ import annotations

import numpy as np
import pytest

from keras_dense.evaluation.coco_map import coco_metrics

pytest.importorskip("pycocotools")

THRESHOLDS = np.linspace(0.5, 0.95, 10)
H, W = 48, 64


def box_mask(box) -> np.ndarray:
    y0, x0, y1, x1 = [int(v) for v in box]
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def disk(cy, cx, r) -> np.ndarray:
    rows, cols = np.mgrid[:H, :W] + 0.5
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r


def bounding_box(mask) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


def box_iou(a, b) -> float:
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def mask_iou(a, b) -> float:
    return np.sum(a & b) / np.sum(a | b)


def ground_truth():
    """Three images; classes 1, 2, 3 have one instance each (a disk, a rectangle, a disk)."""
    masks = [disk(20, 20, 10), box_mask([10, 30, 40, 60]), disk(24, 40, 14)]
    return [
        {
            "boxes": np.array([bounding_box(m)], np.float32),
            "labels": np.array([k + 1]),
            "masks": m[None],
        }
        for k, m in enumerate(masks)
    ]


def test_perfect_detections_give_ap_one():
    truths = ground_truth()
    detections = [dict(t, scores=np.array([0.9])) for t in truths]
    result = coco_metrics(detections, truths)
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["AP"] == pytest.approx(1.0)
        assert result[iou_type]["AP50"] == pytest.approx(1.0)
        assert result[iou_type]["AR100"] == pytest.approx(1.0)


def test_shifted_detections_match_brute_force_ious():
    truths = ground_truth()
    shifts = [3, 6, 2]  # pixels along x: different IoUs per class
    detections, box_ious, mask_ious = [], [], []
    for truth, shift in zip(truths, shifts):
        mask = np.roll(truth["masks"][0], shift, axis=1)
        box = truth["boxes"][0] + [0, shift, 0, shift]
        detections.append(
            {
                "boxes": box[None],
                "labels": truth["labels"],
                "scores": np.array([0.8]),
                "masks": mask[None],
            }
        )
        box_ious.append(box_iou(box, truth["boxes"][0]))
        mask_ious.append(mask_iou(mask, truth["masks"][0]))
    # Class 1 also gets a higher-scoring false positive far away: its precision at full
    # recall is 1/2 at every threshold its true positive passes.
    fp_mask = box_mask([36, 50, 46, 62])
    detections[0] = {
        "boxes": np.concatenate([detections[0]["boxes"], [bounding_box(fp_mask)]]),
        "labels": np.array([1, 1]),
        "scores": np.array([0.8, 0.95]),
        "masks": np.stack([detections[0]["masks"][0], fp_mask]),
    }
    precision = [0.5, 1.0, 1.0]
    result = coco_metrics(detections, truths)
    for iou_type, ious in (("bbox", box_ious), ("segm", mask_ious)):
        assert not np.any(np.isclose(np.asarray(ious)[:, None], THRESHOLDS, atol=1e-6))
        ap = np.mean([p * np.mean(iou >= THRESHOLDS) for p, iou in zip(precision, ious)])
        ap50 = np.mean([p * (iou >= 0.5) for p, iou in zip(precision, ious)])
        ap75 = np.mean([p * (iou >= 0.75) for p, iou in zip(precision, ious)])
        assert 0.0 < ap < 1.0
        assert result[iou_type]["AP"] == pytest.approx(ap, abs=1e-6), iou_type
        assert result[iou_type]["AP50"] == pytest.approx(ap50, abs=1e-6), iou_type
        assert result[iou_type]["AP75"] == pytest.approx(ap75, abs=1e-6), iou_type


def test_no_detections_and_bad_input():
    truths = ground_truth()
    empty = [
        {
            "boxes": np.zeros((0, 4)),
            "labels": np.zeros(0),
            "scores": np.zeros(0),
            "masks": np.zeros((0, H, W)),
        }
        for _ in truths
    ]
    assert coco_metrics(empty, truths)["segm"]["AP"] == 0.0
    with pytest.raises(ValueError, match="one entry per image"):
        coco_metrics(empty[:2], truths)
    with pytest.raises(ValueError, match=r"ground_truths\[0\]: no 'masks'"):
        coco_metrics(empty, [{"boxes": t["boxes"], "labels": t["labels"]} for t in truths])
    # Box AP alone needs no masks.
    boxes_only = [{"boxes": t["boxes"], "labels": t["labels"], "scores": [1.0]} for t in truths]
    assert coco_metrics(boxes_only, truths, ("bbox",))["bbox"]["AP"] == pytest.approx(1.0)
