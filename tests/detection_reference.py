"""Brute-force references for the detection tests."""

from __future__ import annotations


def inclusive_iou(a, b) -> float:
    """IoU of two yxyx boxes with inclusive pixel ends (+1), as Fast R-CNN's bbox_overlaps."""
    ih = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iw = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ih <= 0 or iw <= 0:
        return 0.0
    inter = ih * iw
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)
