"""Boxes from class maps: the largest region above a fraction of each map's maximum.

This is the CAM paper's localisation. Boxes are `[ymin, xmin, ymax, xmax]` in pixels with
inclusive ends, the convention of `keras_dense.detection.boxes` (a one-pixel region is the box
`[y, x, y, x]`).
"""

from __future__ import annotations

import cv2
import numpy as np

from keras_dense.localization.arrays import as_maps
from keras_dense.localization.points import points_from_maps


def boxes_from_maps(maps, threshold: float = 0.2) -> np.ndarray:
    """Boxes of the largest region of each class map above `threshold` times its maximum.

    As in the CAM paper: the pixels with `map >= threshold * max(map)` are split into
    8-connected regions (OpenCV's `connectedComponentsWithStats`, one call per map) and the
    box of the region with the most pixels is kept (the first one found on ties). A map whose
    maximum is not positive has no such region; its box is the single pixel of its maximum.

    Args:
        maps: `(B, H, W, C)` class maps (e.g. `class_maps(..., upsample=True)`).
        threshold: The fraction of the maximum, in [0, 1] (0.2 in the CAM paper).

    Returns:
        int64 `(B, C, 4)` boxes `[ymin, xmin, ymax, xmax]`, inclusive pixel indices (the
        convention of `keras_dense.detection.boxes`).

    Raises:
        ValueError: `threshold` is not in [0, 1].
    """
    if isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    maps = as_maps(maps).astype(np.float64)
    peaks = points_from_maps(maps)
    boxes = np.concatenate([peaks, peaks], axis=-1)  # single-pixel fallback
    top = maps.max(axis=(1, 2))  # (B, C)
    for i, j in zip(*np.nonzero(top > 0)):
        mask = (maps[i, :, :, j] >= threshold * top[i, j]).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count < 2:
            continue
        label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, width, height = (int(v) for v in stats[label, :4])
        boxes[i, j] = (y, x, y + height - 1, x + width - 1)
    return boxes.astype(np.int64)
