"""Boundary IoU (Cheng, Girshick, Dollár, Berg & Kirillov, CVPR 2021) for semantic segmentation.

mIoU counts every pixel of a region, so on large regions it barely sees the quality of their
edges. Boundary IoU compares only the pixels near the contours: for a binary mask M, its
boundary band M_d is the set of pixels of M within d pixels of M's contour (pixels outside
the image count as outside M); then

    Boundary IoU(G, P) = |G_d ∩ P_d| / |G_d ∪ P_d|

with d = `dilation_ratio` (2 %) of the image diagonal, as in the paper. Here, as for mIoU,
each class's intersections and unions are summed over the data set before dividing, and the
mean is over the classes with a non-empty union. The band is the mask minus its erosion by a
3 x 3 square d times (chessboard distance, as the reference implementation); pixels of the
ignore label count in neither mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

DILATION_RATIO = 0.02


def band_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """d: `dilation_ratio` of the image diagonal, rounded, at least 1 pixel."""
    return max(1, int(round(dilation_ratio * np.hypot(height, width))))


def boundary_band(mask: np.ndarray, distance: int) -> np.ndarray:
    """(H, W) bool: the pixels of `mask` within `distance` pixels (chessboard) of its contour."""
    mask = np.asarray(mask, bool)
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=int(distance))[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def boundary_counts(
    truth: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    ignore_label: int | None = None,
    dilation_ratio: float = DILATION_RATIO,
) -> np.ndarray:
    """(2, C) int64: per class, the boundary bands' intersection and union on one image.

    Args:
        truth: (H, W) integer label map.
        predicted: (H, W) predicted classes.
        num_classes: C.
        ignore_label: Label whose pixels count in neither mask (None: none).
        dilation_ratio: d as a fraction of the image diagonal.

    Raises:
        ValueError: The maps differ in shape.
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape or truth.ndim != 2:
        raise ValueError(
            f"boundary IoU: truth {truth.shape} and prediction {predicted.shape} must be the "
            "same (H, W)"
        )
    distance = band_width(*truth.shape, dilation_ratio)
    valid = np.ones(truth.shape, bool) if ignore_label is None else truth != ignore_label
    counts = np.zeros((2, num_classes), np.int64)
    for c in np.union1d(np.unique(truth[valid]), np.unique(predicted[valid])):
        if not 0 <= c < num_classes:
            continue
        a = boundary_band(truth == c, distance) & valid
        b = boundary_band(predicted == c, distance) & valid
        counts[0, c] = np.count_nonzero(a & b)
        counts[1, c] = np.count_nonzero(a | b)
    return counts


def boundary_scores(counts: np.ndarray, class_names: Sequence[str]) -> dict:
    """`{"boundary_iou": mean, "per_class_boundary_iou": name -> IoU or None}` from summed
    `boundary_counts` (None for a class whose bands are empty everywhere)."""
    intersection, union = np.asarray(counts, np.float64)
    present = union > 0
    iou = np.divide(intersection, union, out=np.zeros_like(union), where=present)
    return {
        "boundary_iou": float(iou[present].mean()) if present.any() else float("nan"),
        "per_class_boundary_iou": {
            name: float(value) if ok else None for name, value, ok in zip(class_names, iou, present)
        },
    }
