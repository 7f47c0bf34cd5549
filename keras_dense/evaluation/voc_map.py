"""PASCAL VOC detection mAP with the semantics of the official devkit (`VOCevaldet.m`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_boxes(boxes) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _inclusive_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one yxyx box with (n, 4) boxes, +1 pixel widths; 0 without overlap."""
    inter_h = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + 1.0
    inter_w = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + 1.0
    overlap = (inter_h > 0) & (inter_w > 0)
    inter = np.where(overlap, inter_h * inter_w, 0.0)
    area_box = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    area_gts = (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
    union = area_box + area_gts - inter
    return np.where(overlap, inter / np.where(union > 0, union, 1.0), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a precision/recall curve (detections in descending score order).

    Args:
        recall: (n,) cumulative recall.
        precision: (n,) cumulative precision.
        use_07_metric: VOC2007's 11-point interpolated AP (mean over t in {0, 0.1, ..., 1} of
            the best precision at recall >= t) instead of the area under the monotone
            precision envelope (VOC2010 and later).

    Returns:
        The average precision.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        total = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            total += (above.max() if above.size else 0.0) / 11.0
        return float(total)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def named_results(result: dict, class_names) -> tuple[dict, dict]:
    """`voc_detection_map(..., curves=True)`'s AP and curves keyed by class name.

    Returns:
        `({name: AP}, {name: {"label", "recall", "precision"}})`; a class id outside
        `class_names` is named `class_<id>`.
    """

    def name(k: int) -> str:
        return class_names[k - 1] if 0 < k <= len(class_names) else f"class_{k}"

    ap = {name(k): float(v) for k, v in result["ap"].items()}
    curves = {
        name(k): {"label": int(k), "recall": recall.tolist(), "precision": precision.tolist()}
        for k, (recall, precision) in result.get("curves", {}).items()
    }
    return ap, curves


def voc_detection_map(
    detections: Sequence[dict],
    ground_truths: Sequence[dict],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    curves: bool = False,
) -> dict:
    """Mean average precision of detections, as the PASCAL VOC devkit computes it.

    Per class: all detections of the class over the data set are sorted by descending score
    (ties keep input order) and matched greedily; a detection is a true positive when its
    best-overlapping ground-truth box of the class in its image (inclusive pixel IoU, +1 in
    widths and areas) has IoU >= `iou_threshold` and was not matched before; a second match
    of a box is a false positive. When the best box is marked difficult, the detection is
    ignored (neither true nor false positive), and difficult boxes do not count as positives.

    Args:
        detections: One dict per image with `"boxes"` (n, 4) yxyx pixels, `"scores"` (n,)
            and `"labels"` (n,) class ids.
        ground_truths: One dict per image (same order) with `"boxes"` (m, 4), `"labels"` (m,)
            and optionally `"difficult"` (m,) bool.
        iou_threshold: Minimum IoU of a true positive (0.5).
        use_07_metric: 11-point AP of VOC2007 instead of the all-point area (VOC2010+).
        curves: Also return each class's precision-recall curve.

    Returns:
        `{"map": float, "ap": {class_id: float}}` over the classes that have at least one
        non-difficult ground-truth box (the mean is NaN when there is none); with `curves`,
        also `"curves": {class_id: (recall, precision)}`, two (n,) arrays over the class's
        detections in descending score order (ignored ones included, as the devkit).

    Raises:
        ValueError: The two lists differ in length.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"detections and ground_truths: expected one entry per image in both, got "
            f"{len(detections)} and {len(ground_truths)}"
        )
    gts = []
    for gt in ground_truths:
        boxes = _as_boxes(gt["boxes"])
        labels = np.asarray(gt["labels"]).reshape(-1).astype(np.int64)
        difficult = gt.get("difficult")
        if difficult is None:
            difficult = np.zeros(len(labels), bool)
        gts.append((boxes, labels, np.asarray(difficult).reshape(-1).astype(bool)))
    positives: dict[int, int] = {}
    for _, labels, difficult in gts:
        for label in labels[~difficult]:
            positives[int(label)] = positives.get(int(label), 0) + 1

    # Flatten the detections once: image index, score, box, label.
    images, scores, boxes, labels = [], [], [], []
    for index, det in enumerate(detections):
        det_labels = np.asarray(det["labels"]).reshape(-1).astype(np.int64)
        images.append(np.full(len(det_labels), index))
        scores.append(np.asarray(det["scores"], np.float64).reshape(-1))
        boxes.append(_as_boxes(det["boxes"]))
        labels.append(det_labels)
    images = np.concatenate(images) if images else np.zeros(0, np.int64)
    scores = np.concatenate(scores) if scores else np.zeros(0)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    ap, pr_curves = {}, {}
    for class_id in sorted(positives):
        mine = np.nonzero(labels == class_id)[0]
        mine = mine[np.argsort(-scores[mine], kind="stable")]
        matched = {}
        tp = np.zeros(len(mine))
        fp = np.zeros(len(mine))
        for d, det_index in enumerate(mine):
            image = images[det_index]
            gt_boxes, gt_labels, gt_difficult = gts[image]
            of_class = np.nonzero(gt_labels == class_id)[0]
            if of_class.size == 0:
                fp[d] = 1.0
                continue
            overlaps = _inclusive_iou(boxes[det_index], gt_boxes[of_class])
            best = int(np.argmax(overlaps))  # first maximum, as the devkit's strict '>'
            if overlaps[best] < iou_threshold:
                fp[d] = 1.0
                continue
            gt_index = of_class[best]
            if gt_difficult[gt_index]:
                continue
            used = matched.setdefault(image, set())
            if gt_index in used:
                fp[d] = 1.0
            else:
                tp[d] = 1.0
                used.add(gt_index)
        tp = np.cumsum(tp)
        fp = np.cumsum(fp)
        recall = tp / positives[class_id]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[class_id] = average_precision(recall, precision, use_07_metric)
        pr_curves[class_id] = (recall, precision)
    mean = float(np.mean(list(ap.values()))) if ap else float("nan")
    result = {"map": mean, "ap": ap}
    if curves:
        result["curves"] = pr_curves
    return result
