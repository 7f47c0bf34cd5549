"""Brute-force references for the detection tests."""

from __future__ import annotations

import math

import numpy as np


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


def reference_proposals(scores, deltas, anchors, image_hw, scale, pre, post, nms, min_size):
    """One image: sigmoid, decode, clip, min-size filter, sort, greedy NMS, top-N."""
    height, width = image_hw
    boxes = []
    for (dx, dy, dw, dh), (y0, x0, y1, x1) in zip(deltas, anchors):
        wa, ha = x1 - x0 + 1, y1 - y0 + 1
        cxa, cya = x0 + wa / 2, y0 + ha / 2
        cx, cy = cxa + dx * wa, cya + dy * ha
        w, h = wa * math.exp(dw), ha * math.exp(dh)
        box = [cy - h / 2, cx - w / 2, cy + h / 2 - 1, cx + w / 2 - 1]
        box = [
            min(max(box[0], 0), height - 1),
            min(max(box[1], 0), width - 1),
            min(max(box[2], 0), height - 1),
            min(max(box[3], 0), width - 1),
        ]
        boxes.append(box)
    probs = 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    keep = [
        n
        for n, b in enumerate(boxes)
        if b[2] - b[0] + 1 >= min_size * scale and b[3] - b[1] + 1 >= min_size * scale
    ]
    keep.sort(key=lambda n: -probs[n])
    keep = keep[:pre]
    chosen = []
    for n in keep:
        if all(inclusive_iou(boxes[n], boxes[m]) <= nms for m in chosen):
            chosen.append(n)
        if len(chosen) == post:
            break
    return np.array([boxes[n] for n in chosen]).reshape(-1, 4), probs[chosen]
