"""One image's detection score, to rank the images of an evaluation (the report's gallery)."""

from __future__ import annotations

import numpy as np

from keras_dense.detection.boxes import iou_matrix

# Detections at or above this score count for the image's F1 (and are drawn in the gallery).
GALLERY_SCORE_THRESHOLD = 0.5


def image_f1(
    found: dict,
    truth: dict,
    score_threshold: float = GALLERY_SCORE_THRESHOLD,
    iou_threshold: float = 0.5,
) -> float:
    """F1 of one image's confident detections against its ground truth.

    Detections scoring at least `score_threshold` are matched greedily, best score first, to
    the unmatched ground-truth box of their class with the highest IoU, when that IoU is at
    least `iou_threshold`. Difficult boxes are left out, and so is a detection whose best
    box is difficult (as in VOC mAP).

    Args:
        found: `{"boxes" (n, 4), "scores" (n,), "labels" (n,)}`.
        truth: `{"boxes" (m, 4), "labels" (m,), optionally "difficult" (m,)}`.
        score_threshold: Lowest score of a detection that counts.
        iou_threshold: Lowest IoU of a match.

    Returns:
        2 TP / (2 TP + FP + FN); 1.0 for an image with nothing to find and nothing found.
    """
    scores = np.asarray(found["scores"], np.float64).reshape(-1)
    keep = np.nonzero(scores >= score_threshold)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    boxes = np.asarray(found["boxes"], np.float64).reshape(-1, 4)[keep]
    labels = np.asarray(found["labels"]).reshape(-1)[keep]
    gt_boxes = np.asarray(truth["boxes"], np.float64).reshape(-1, 4)
    gt_labels = np.asarray(truth["labels"]).reshape(-1)
    difficult = truth.get("difficult")
    difficult = np.zeros(len(gt_labels), bool) if difficult is None else np.asarray(difficult)
    difficult = difficult.reshape(-1).astype(bool)
    iou = np.asarray(iou_matrix(boxes, gt_boxes), np.float64).reshape(len(boxes), len(gt_boxes))
    iou = np.where(labels[:, None] == gt_labels[None, :], iou, -1.0)  # other classes never match
    free = np.ones(len(gt_labels), bool)
    tp = fp = 0
    for row in iou:  # greedy in score order: at most the image's confident detections
        candidates = np.where(free | difficult, row, -1.0)
        best = int(np.argmax(candidates)) if len(candidates) else -1
        if best < 0 or candidates[best] < iou_threshold:
            fp += 1
        elif not difficult[best]:
            tp += 1
            free[best] = False
    positives = int(np.sum(~difficult))
    fn = positives - tp
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)
