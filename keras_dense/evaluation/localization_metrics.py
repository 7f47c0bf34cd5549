"""Metrics of weakly supervised localisation and multi-label classification (NumPy).

- `pointing_game`: is each present class's predicted point on (or within a tolerance of) an
  object of that class? (Oquab et al., CVPR 2015, with 18 px at VOC's ~500-px scale.)
- `corloc`: the fraction of (image, present class) pairs whose predicted box overlaps a
  ground-truth box of the class with IoU >= 0.5 (Deselaers et al.'s correct localisation).
- `multilabel_average_precision`: per-class average precision of image scores.

Points are `(y, x)` pixel indices and boxes `[ymin, xmin, ymax, xmax]` with inclusive ends,
as in `keras_dense.localization` and `keras_dense.detection.boxes` (IoU with +1 in widths).
Ground-truth boxes come one dict per image, `{"boxes": (m, 4), "labels": (m,)}`, as for
`voc_detection_map`; note that `keras_dense.data` stores VOC boxes with `xmax` one past the
last pixel, one pixel wider than this convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def _class_ids(class_ids, num_classes: int) -> np.ndarray:
    if class_ids is None:
        return np.arange(num_classes)
    ids = np.asarray(class_ids).reshape(-1).astype(np.int64)
    if ids.size != num_classes:
        raise ValueError(
            f"class_ids: expected one ground-truth id per class ({num_classes}), got {ids.size}"
        )
    return ids


def _box_lists(ground_truth: Sequence[dict], num_images: int, what: str):
    if len(ground_truth) != num_images:
        raise ValueError(
            f"{what}: expected one entry per image ({num_images}), got {len(ground_truth)}"
        )
    result = []
    for item in ground_truth:
        try:
            boxes = np.asarray(item["boxes"], np.float64).reshape(-1, 4)
            labels = np.asarray(item["labels"]).reshape(-1).astype(np.int64)
        except (KeyError, TypeError, IndexError):
            raise ValueError(
                f"{what}: expected dicts with 'boxes' (m, 4) and 'labels' (m,), got {item!r}"
            ) from None
        if len(boxes) != len(labels):
            raise ValueError(f"{what}: {len(boxes)} boxes but {len(labels)} labels in an image")
        if not np.isfinite(boxes).all():
            raise ValueError(f"{what}: box coordinates must be finite, got {boxes.tolist()}")
        result.append((boxes, labels))
    return result


def _summary(hits: np.ndarray, counts: np.ndarray, name: str) -> dict:
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    total = int(counts.sum())
    return {
        name: float(hits.sum() / total) if total else float("nan"),
        "per_class": per_class,
        f"mean_class_{name}": float(np.nanmean(per_class)) if total else float("nan"),
        "hits": hits.astype(np.int64),
        "counts": counts.astype(np.int64),
    }


def _inclusive_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) -> (n, m) IoU of inclusive-pixel boxes."""
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    inter_h = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0
    inter_w = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0
    inter = np.maximum(inter_h, 0.0) * np.maximum(inter_w, 0.0)
    area_a = np.maximum(a[..., 2] - a[..., 0] + 1, 0) * np.maximum(a[..., 3] - a[..., 1] + 1, 0)
    area_b = np.maximum(b[..., 2] - b[..., 0] + 1, 0) * np.maximum(b[..., 3] - b[..., 1] + 1, 0)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pointing_game(
    points,
    ground_truth,
    tolerance: float = 0,
    class_ids: Sequence[int] | None = None,
) -> dict:
    """The pointing game: a hit when a class's point lies on an object of that class.

    Only the classes present in an image (in its mask, or among its box labels) count; each
    such (image, class) pair is one trial. A point is a hit when its Euclidean distance to the
    nearest pixel of the class is at most `tolerance` (0: on the object). For masks the
    distance comes from OpenCV's exact distance transform, one per present class; for boxes
    it is the distance to the nearest box of the class (0 inside it), vectorised over boxes.
    A point outside the image is a miss. Oquab et al. use `tolerance=18` for VOC.

    Args:
        points: int `(N, C, 2)` points `(y, x)`, one per image and class
            (`keras_dense.localization.points_from_maps`).
        ground_truth: Either masks `(N, H, W)` of ground-truth ids (other values, such as
            background or 255, are ignored), or one dict per image `{"boxes": (m, 4),
            "labels": (m,)}` with inclusive-pixel yxyx boxes.
        tolerance: Distance in pixels within which a point still hits (>= 0).
        class_ids: The ground-truth id of each of the `C` classes; `None` means class `c`
            has id `c`. (VOC masks number the objects from 1: pass `range(1, 21)`.)

    Returns:
        A dict: `"accuracy"` (hits over all trials), `"per_class"` `(C,)` accuracies (NaN for
        a class that is never present), `"mean_class_accuracy"` (their mean over present
        classes), `"hits"` and `"counts"` `(C,)`.

    Raises:
        ValueError: Shapes disagree, or `tolerance` is negative.
    """
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must be (images, classes, 2) (y, x), got {points.shape}")
    if not float(tolerance) >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    num_images, num_classes, _ = points.shape
    ids = _class_ids(class_ids, num_classes)
    hits = np.zeros(num_classes, np.int64)
    counts = np.zeros(num_classes, np.int64)
    points = points.astype(np.int64)

    if isinstance(ground_truth, np.ndarray) and ground_truth.ndim == 3:
        masks = ground_truth
        if len(masks) != num_images:
            raise ValueError(
                f"ground_truth: expected {num_images} masks (one per image), got {len(masks)}"
            )
        height, width = masks.shape[1:]
        y, x = points[..., 0], points[..., 1]
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        yc, xc = np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)
        for n in range(num_images):
            present = np.isin(ids, np.unique(masks[n]))
            counts += present
            for c in np.nonzero(present & inside[n])[0]:
                on_class = masks[n] == ids[c]
                if tolerance == 0:
                    hit = on_class[yc[n, c], xc[n, c]]
                else:
                    distance = cv2.distanceTransform(
                        (~on_class).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
                    )
                    hit = distance[yc[n, c], xc[n, c]] <= tolerance
                hits[c] += bool(hit)
        return _summary(hits, counts, "accuracy")

    for n, (boxes, labels) in enumerate(_box_lists(ground_truth, num_images, "ground_truth")):
        y = points[n, :, 0:1].astype(np.float64)  # (C, 1)
        x = points[n, :, 1:2].astype(np.float64)
        dy = np.maximum(np.maximum(boxes[None, :, 0] - y, y - boxes[None, :, 2]), 0.0)
        dx = np.maximum(np.maximum(boxes[None, :, 1] - x, x - boxes[None, :, 3]), 0.0)
        of_class = labels[None, :] == ids[:, None]  # (C, m)
        distance = np.where(of_class, np.hypot(dy, dx), np.inf).min(axis=1, initial=np.inf)
        present = of_class.any(axis=1)
        counts += present
        hits += present & (distance <= tolerance)
    return _summary(hits, counts, "accuracy")


def corloc(
    boxes,
    ground_truth_boxes: Sequence[dict],
    iou_threshold: float = 0.5,
    class_ids: Sequence[int] | None = None,
) -> dict:
    """CorLoc: the share of (image, present class) pairs localised with IoU >= 0.5.

    A pair counts when the image has a ground-truth box of the class; it is correct when the
    predicted box of that class overlaps any of them with IoU >= `iou_threshold` (inclusive
    pixel IoU, as `voc_detection_map`).

    Args:
        boxes: `(N, C, 4)` predicted boxes yxyx, inclusive pixels, one per image and class
            (`keras_dense.localization.boxes_from_maps`).
        ground_truth_boxes: One dict per image `{"boxes": (m, 4), "labels": (m,)}`.
        iou_threshold: The IoU of a correct localisation (0.5).
        class_ids: The ground-truth label of each of the `C` classes; `None` means `c`.

    Returns:
        A dict: `"corloc"` (correct pairs over all pairs), `"per_class"` `(C,)` (NaN for a
        class never present), `"mean_class_corloc"` (their mean), `"hits"`, `"counts"`.

    Raises:
        ValueError: Shapes disagree.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (images, classes, 4) yxyx, got {boxes.shape}")
    num_images, num_classes, _ = boxes.shape
    ids = _class_ids(class_ids, num_classes)
    hits = np.zeros(num_classes, np.int64)
    counts = np.zeros(num_classes, np.int64)
    for n, (gt, labels) in enumerate(
        _box_lists(ground_truth_boxes, num_images, "ground_truth_boxes")
    ):
        of_class = labels[None, :] == ids[:, None]  # (C, m)
        best = np.where(of_class, _inclusive_iou(boxes[n], gt), -1.0).max(axis=1, initial=-1.0)
        present = of_class.any(axis=1)
        counts += present
        hits += present & (best >= iou_threshold)
    return _summary(hits, counts, "corloc")


def multilabel_average_precision(scores, labels) -> dict:
    """Per-class average precision of image-level scores (multi-label classification).

    For each class, the images are ranked by score; AP is the mean, over the positive images,
    of the precision at that image's score (all images scoring at least as high count, so
    tied scores share one precision): the non-interpolated AP (scikit-learn's
    `average_precision_score`), vectorised over classes. A class without positive images has
    no AP: it is excluded from the mean and listed.

    Args:
        scores: `(N, C)` scores (logits or probabilities).
        labels: `(N, C)` 0/1 labels.

    Returns:
        `{"ap": (C,) float (NaN for excluded classes), "map": the mean over the other
        classes (NaN if none), "excluded": [class indices without positives]}`.

    Raises:
        ValueError: The shapes differ, labels are not 0/1, or a score is NaN.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must both be (images, classes), got {scores.shape} and "
            f"{labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(scores).any():
        raise ValueError(
            f"scores: {int(np.isnan(scores).sum())} are not finite (NaN), so images cannot be "
            "ranked: is the model's output finite?"
        )
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked_scores = np.take_along_axis(scores, order, axis=0)
    ranked = np.take_along_axis(labels.astype(np.float64), order, axis=0)
    true_positives = np.cumsum(ranked, axis=0)
    # The last rank of each group of tied scores: every image of the group shares it.
    rows = np.arange(n)[:, None]
    last_of_group = np.ones_like(ranked, bool)
    last_of_group[:-1] = ranked_scores[:-1] != ranked_scores[1:]
    end = np.where(last_of_group, rows, n)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    precision = np.take_along_axis(true_positives, end, axis=0) / (end + 1.0)
    positives = ranked.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(positives > 0, (ranked * precision).sum(axis=0) / positives, np.nan)
    excluded = [int(c) for c in np.nonzero(positives == 0)[0]]
    kept = ap[positives > 0]
    return {
        "ap": ap,
        "map": float(kept.mean()) if kept.size else float("nan"),
        "excluded": excluded,
    }
