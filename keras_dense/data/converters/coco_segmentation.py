"""Checking and rasterising a COCO `segmentation` (polygons, RLE, uncompressed RLE).

pycocotools trusts its input: a NaN or huge polygon vertex crashes the process (a segmentation
fault or an allocation of gigabytes), an odd number of coordinates drops the last one, a
polygon of 4 numbers is read as a box, and RLE counts that do not add up to the image decode
memory beyond the mask. Each of these is a `ValueError` with the reason here, before
pycocotools sees the data. Vertices a little outside the image (a vertex dragged past the
canvas edge) are clipped, as the rasteriser clips them; far outside they are refused
(`outside_margin`).
"""

from __future__ import annotations

import math

import numpy as np


def outside_margin(size: int) -> float:
    """How far (pixels) a vertex or box edge may lie outside an image side of `size` pixels.

    Such coordinates are clipped to the image. Several annotation tools let a vertex be dragged
    past the canvas edge and save it as it is (LabelMe before its clamping, X-AnyLabeling,
    RectLabel's "allow outside the image", DIVE), and COCO files converted from them keep it: a
    few pixels out on small images, tens on large photos drawn zoomed out, so the margin grows
    with the image: half its side, at least 8 px. Beyond that a coordinate is
    another coordinate system or a corrupt value (a vertex at 1e9 made pycocotools allocate
    gigabytes), not an overshoot; within it, the polygon spans at most twice the image per
    side, which bounds the rasteriser's work. (An image whose size differs from the JSON's
    `width`/`height` is refused before, so a rescaled annotation cannot hide in the margin.)

    Args:
        size: The image's width (for x) or height (for y).

    Returns:
        `max(8, size / 2)`.
    """
    return max(8.0, 0.5 * size)


def has_segmentation(annotation: dict) -> bool:
    """Whether an annotation carries a segmentation (`[]`, as box exports write, does not)."""
    return annotation.get("segmentation") not in (None, [], {})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _polygons(segmentation: list, height: int, width: int) -> list[list[float]]:
    if not all(isinstance(p, list) for p in segmentation):
        raise ValueError(
            "field 'segmentation' is a list of numbers: expected a list of polygons "
            "[[x1, y1, x2, y2, ...], ...]"
        )
    polygons = []
    for k, polygon in enumerate(segmentation):
        bad = next((v for v in polygon if not _is_number(v)), None)
        if bad is not None:
            raise ValueError(f"polygon {k} holds {bad!r}: expected numbers")
        values = np.asarray(polygon, np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"polygon {k} has a non-finite coordinate ({polygon})")
        if len(values) % 2:
            raise ValueError(f"polygon {k} has {len(values)} numbers: expected x, y pairs")
        if len(values) < 6:
            raise ValueError(f"polygon {k} has {len(values) // 2} points: expected at least 3")
        for axis, coords, size in (("x", values[0::2], width), ("y", values[1::2], height)):
            margin = outside_margin(size)
            outside = (coords < -margin) | (coords > size + margin)
            if outside.any():
                raise ValueError(
                    f"polygon {k} has {axis} = {coords[outside][0]:g}, outside the "
                    f"{width}x{height} image by more than the {margin:g} px that are clipped"
                )
        polygons.append(values.tolist())
    return polygons


def _compressed_counts(counts: str) -> list[int]:
    """The run lengths of a compressed RLE string (pycocotools' `rleFrString`, in Python)."""
    data = counts.encode("ascii", "replace")
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data) or not 48 <= data[p] < 48 + 64:
                raise ValueError("the RLE counts string is malformed")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _rle(segmentation: dict, height: int, width: int) -> dict:
    """The RLE object pycocotools decodes, after checking its size and run lengths."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not isinstance(size, (list, tuple)) or [*size] != [height, width]:
        raise ValueError(f"RLE size {size} is not the image's [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("RLE counts must be non-negative integers")
        runs = counts
    elif isinstance(counts, str):
        runs = _compressed_counts(counts)
        if any(r < 0 for r in runs):
            raise ValueError("the RLE counts string decodes to a negative run length")
    else:
        raise ValueError(f"RLE counts is {type(counts).__name__}: expected a list or a string")
    if sum(runs) != height * width:
        raise ValueError(
            f"RLE counts add up to {sum(runs)} pixels, the image has {height * width} "
            f"({height}x{width})"
        )
    if isinstance(counts, list):
        from pycocotools import mask as mask_utils

        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii")}


def rasterise(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) bool pixels of a checked COCO `segmentation`.

    Args:
        segmentation: Polygons `[[x1, y1, ...], ...]`, an RLE `{"size", "counts": str}` or an
            uncompressed RLE `{"size", "counts": [...]}`.
        height: The image height.
        width: The image width.

    Returns:
        The mask.

    Raises:
        ValueError: The segmentation is malformed (the reason names the polygon or field).
        ImportError: pycocotools is not installed.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # pragma: no cover - optional dependency
        raise ImportError(
            "COCO segmentations need pycocotools: pip install 'keras-dense[coco]'"
        ) from None
    if isinstance(segmentation, list):
        polygons = _polygons(segmentation, height, width)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        rle = _rle(segmentation, height, width)
    else:
        raise ValueError(
            f"field 'segmentation' is {type(segmentation).__name__}: expected a list of "
            "polygons or an RLE object"
        )
    return mask_utils.decode(rle).astype(bool)


def mask_box_problem(region: np.ndarray, bbox: list) -> str | None:
    """Why a rasterised segmentation does not belong to its `bbox`, or None when it does.

    A mask must cover some pixel (unless its box is under 4 px²), and at least half of its
    pixels must lie in the box grown by one pixel: COCO boxes are the tight boxes of their
    segmentations, so anything else is a segmentation of another object or coordinate system.
    """
    x, y, w, h = bbox
    pixels = int(region.sum())
    if pixels == 0:
        if w * h < 4:
            return None
        return (
            f"field 'segmentation' covers no pixel of the image while the bbox {bbox} "
            f"covers {w * h:g} px²"
        )
    y0, x0 = max(math.floor(y) - 1, 0), max(math.floor(x) - 1, 0)
    inside = int(region[y0 : math.ceil(y + h) + 1, x0 : math.ceil(x + w) + 1].sum())
    if 2 * inside < pixels:
        return (
            f"{pixels - inside} of the {pixels} pixels of field 'segmentation' lie outside its "
            f"bbox {bbox} (x, y, width, height)"
        )
    return None
