"""NumPy references for Mask R-CNN's mask geometry and loss, written from the definitions
(per-sample loops, no TensorFlow)."""

from __future__ import annotations

import numpy as np


def bilinear(grid: np.ndarray, row: float, col: float) -> float:
    """Bilinear interpolation of `grid` at (row, col), pixel centres at integer positions."""
    h, w = grid.shape
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    fr, fc = row - r0, col - c0
    total = 0.0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, c = min(max(r0 + dr, 0), h - 1), min(max(c0 + dc, 0), w - 1)
            total += wr * wc * grid[r, c]
    return total


def crop_mask(mask: np.ndarray, box, size: int, threshold=0.5) -> np.ndarray:
    """The `size x size` target of one box: cell centres sampled bilinearly in `mask`.

    The box `[y0, x0, y1, x1]` is continuous (pixel i covers [i, i + 1)); cell (i, j) has its
    centre at (y0 + (i + 0.5) h / size, x0 + (j + 0.5) w / size), i.e. row/column of the mask
    minus 0.5. The mask is extended by one replicated pixel; further out it is 0.
    """
    y0, x0, y1, x1 = [float(v) for v in box]
    h, w = mask.shape
    out = np.zeros((size, size))
    for i in range(size):
        row = y0 + (i + 0.5) * (y1 - y0) / size - 0.5
        for j in range(size):
            col = x0 + (j + 0.5) * (x1 - x0) / size - 0.5
            if -1.0 <= row <= h and -1.0 <= col <= w:
                out[i, j] = bilinear(mask.astype(np.float64), row, col)
    return (out >= threshold).astype(np.float64) if threshold is not None else out


def paste_mask(grid: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """One box-relative `M x M` grid pasted into an `height x width` image.

    Pixel (r, c) has its centre at continuous (r + 0.5, c + 0.5), i.e. at grid position
    ((r + 0.5 - y0) M / h - 0.5, ...); the grid is bilinearly interpolated with one cell of
    zeros around it, and is 0 beyond that cell.
    """
    m = grid.shape[0]
    padded = np.zeros((m + 2, m + 2))
    padded[1:-1, 1:-1] = grid
    y0, x0, y1, x1 = [float(v) for v in box]
    out = np.zeros((height, width))
    for r in range(height):
        gr = (r + 0.5 - y0) * m / (y1 - y0) - 0.5 + 1.0
        for c in range(width):
            gc = (c + 0.5 - x0) * m / (x1 - x0) - 0.5 + 1.0
            if 0.0 <= gr <= m + 1 and 0.0 <= gc <= m + 1:
                out[r, c] = bilinear(padded, gr, gc)
    return out


def mask_loss(labels, targets, logits) -> float:
    """He et al.'s L_mask: mean per-pixel sigmoid cross-entropy of the positive RoIs, on the
    mask channel of each RoI's class (channel k - 1 for class k)."""
    total, count = 0.0, 0
    b, r = labels.shape
    for i in range(b):
        for j in range(r):
            k = int(labels[i, j])
            if k <= 0:
                continue
            z = logits[i, j, :, :, k - 1].astype(np.float64)
            t = targets[i, j].astype(np.float64)
            p = 1.0 / (1.0 + np.exp(-z))
            total += float(np.sum(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
            count += z.size
    return total / count if count else 0.0
