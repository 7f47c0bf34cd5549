"""Region proposals by selective search (Uijlings et al., 2013), as used by (Fast) R-CNN."""

from __future__ import annotations

import ctypes
import sys

import numpy as np


def _seed_c_rand(seed: int) -> bool:
    """Seeds C's `rand()`, which OpenCV's selective search uses to rank its boxes."""
    if sys.platform.startswith("win"):
        return False
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))
    except (OSError, AttributeError):
        return False
    return True


# Proposals per image selective search returns at most (Fast R-CNN's ~2000).
DEFAULT_MAX_BOXES = 2000


def selective_search(
    image: np.ndarray,
    max_boxes: int = DEFAULT_MAX_BOXES,
    mode: str = "fast",
    max_side: int | None = 500,
    min_size: int = 0,
    num_threads: int | None = None,
    seed: int | None = 1,
) -> np.ndarray:
    """Selective-search proposals of one image through OpenCV's `cv2.ximgproc.segmentation`.

    Args:
        image: (H, W, 3) uint8 RGB image.
        max_boxes: Most proposals returned, in OpenCV's ranking order (2000 as in Fast R-CNN).
        mode: `"fast"` (`switchToSelectiveSearchFast`, R-CNN's setting) or `"quality"`.
        max_side: When the longer side of the image exceeds it, the search runs on a copy
            downscaled to that size (much faster, slightly coarser boxes) and the boxes are
            mapped back. `None` always uses the full resolution.
        min_size: Boxes whose height or width (in original pixels) is below it are dropped.
        num_threads: Optional OpenCV thread count (`cv2.setNumThreads`) used for the search.
        seed: OpenCV ranks the boxes with random numbers from C's `rand()` (as the original
            selective search does), so the order, and which boxes survive `max_boxes`, varies
            between calls. With a seed, `rand()` is seeded first (POSIX C libraries only) and
            the result is reproducible, unless other threads call `rand()` at the same time.
            `None` leaves `rand()` alone.

    Returns:
        (n, 4) float32 boxes `[ymin, xmin, ymax, xmax]` in pixels of `image`, inclusive,
        n <= max_boxes, duplicates removed.

    Raises:
        ValueError: Bad image or arguments.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
    if mode not in ("fast", "quality"):
        raise ValueError(f"mode={mode!r}: expected 'fast' or 'quality'")
    if not isinstance(max_boxes, int) or max_boxes < 1:
        raise ValueError(f"max_boxes={max_boxes!r}: expected a positive int")
    if max_side is not None and max_side < 16:
        raise ValueError(f"max_side={max_side!r}: expected None or an int >= 16")
    height, width = image.shape[:2]
    work = np.ascontiguousarray(image[..., ::-1].astype(np.uint8))  # OpenCV wants BGR
    if max_side is not None and max(height, width) > max_side:
        factor = max_side / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        work = cv2.resize(work, size, interpolation=cv2.INTER_AREA)
    previous_threads = cv2.getNumThreads()
    if num_threads is not None:
        cv2.setNumThreads(num_threads)
    try:
        if seed is not None:
            _seed_c_rand(seed)
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(work)
        if mode == "fast":
            search.switchToSelectiveSearchFast()
        else:
            search.switchToSelectiveSearchQuality()
        rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)  # x, y, w, h
    finally:
        cv2.setNumThreads(previous_threads)
    x, y, w, h = rects.T
    sy = work.shape[0] / height
    sx = work.shape[1] / width
    boxes = np.stack([y / sy, x / sx, (y + h) / sy - 1.0, (x + w) / sx - 1.0], axis=1)
    boxes = np.round(boxes)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, height - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, width - 1)
    keep = (boxes[:, 2] - boxes[:, 0] + 1 >= min_size) & (boxes[:, 3] - boxes[:, 1] + 1 >= min_size)
    boxes = boxes[keep]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)][:max_boxes]
    return boxes.astype(np.float32)
