"""Sliced detection: a detector run on overlapping tiles of a large image, merged back.

Small objects in large images (seed 004's "huge pictures ... ultra-high resolution") vanish
when the whole image is shrunk to the detector's input size. `detect_sliced` runs a detector
on overlapping tiles at full resolution instead, plus optionally on the whole image shrunk
to one tile (for the objects larger than a tile), and merges:

1. tile detections are shifted back into image pixels;
2. a detection touching an interior edge of its tile (an edge that is not the image border)
   is cut by the tile: it is dropped when another tile holds the box whole, away from that
   tile's own interior edges (with an overlap at least the object's size, one always does);
3. the rest are merged (an object whole in two tiles, or found in a tile and in the whole
   image, is kept once, at its best score), by one of:
   - `"nms"`: class-wise non-maximum suppression, which keeps the best box of each group;
   - `"greedy"`: greedy matching by IoU (the "greedy non-maximum merging" of SAHI, Akyon et
     al. 2022): best first, each detection takes the unmatched detections of its class that
     overlap it by more than the IoU, and the group becomes the box enclosing them all.
     Pieces of one object seen in several tiles (none of them whole) join into one box when
     they overlap the best piece by more than the IoU: a piece cut by a tile covers little of
     a large object, so joining them needs an IoU threshold well below NMS's usual 0.5
     (`nms_iou`; `--merge-iou` on the command line).

The detector is any function from an (h, w, 3) uint8 RGB tile to `{"boxes": (n, 4) yxyx
pixels of the tile, "scores": (n,), "labels": (n,)}`, e.g. a model through
`keras_dense.prediction.detect_objects` (`keras_dense.prediction.detect_objects_sliced` does
that with a model and its card). Tiles go to the detector one at a time, so memory is bounded
by the tile, not the image; or, with `batch_detector`, `batch_size` tiles per call (all tiles
of an image have one shape), which changes the speed, not the detections.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import tensorflow as tf

Detections = dict[str, np.ndarray]


def tile_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles of `tile` pixels every `stride` along `length`, the last one
    flush with the end (one tile at 0 when `length <= tile`)."""
    if length <= tile:
        return np.zeros(1, np.int64)
    starts = np.arange(0, length - tile, stride, dtype=np.int64)
    return np.append(starts, length - tile)


def slice_windows(height: int, width: int, tile: int, overlap: float) -> np.ndarray:
    """(n, 4) `[y0, x0, y1, x1]` tiles covering the image, row-major, adjacent ones
    overlapping by at least `overlap` of a tile."""
    stride = max(1, int(np.floor(tile * (1.0 - overlap))))
    ys = tile_starts(height, tile, stride)
    xs = tile_starts(width, tile, stride)
    y0, x0 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    return np.stack([y0, x0, np.minimum(y0 + tile, height), np.minimum(x0 + tile, width)], 1)


def _check(tile, overlap, edge_margin, nms_iou) -> None:
    if not isinstance(tile, (int, np.integer)) or tile < 16:
        raise ValueError(f"--slice {tile!r}: expected a tile size of at least 16 pixels")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap {overlap!r}: expected a fraction of the tile in [0, 1)")
    if edge_margin < 0:
        raise ValueError(f"edge_margin={edge_margin!r}: expected a number of pixels >= 0")
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"nms_iou={nms_iou!r} (--merge-iou): expected a number in [0, 1]")


def _interior_edges(windows: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 4) whether each tile's top, left, bottom, right edge lies inside the image."""
    return np.stack(
        [windows[:, 0] > 0, windows[:, 1] > 0, windows[:, 2] < height, windows[:, 3] < width], 1
    )


def _touches(boxes: np.ndarray, windows: np.ndarray, interior: np.ndarray, margin: float):
    """(n, m) whether box i reaches (within `margin`) an interior edge of window j.

    Box ends may be exclusive (`y1 = last row + 1`) or inclusive (detectors clip to the last
    pixel, `y1 = last row`): the far edges allow one more pixel for the latter."""
    b = boxes[:, None, :]
    w = windows[None].astype(np.float32)
    sides = np.stack(
        [
            b[..., 0] <= w[..., 0] + margin,
            b[..., 1] <= w[..., 1] + margin,
            b[..., 2] >= w[..., 2] - 1.0 - margin,
            b[..., 3] >= w[..., 3] - 1.0 - margin,
        ],
        -1,
    )
    return np.any(sides & interior[None], -1)


def _inside(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(n, m) whether box i lies within window j."""
    b, w = boxes[:, None, :], windows[None].astype(np.float32)
    return (
        (b[..., 0] >= w[..., 0])
        & (b[..., 1] >= w[..., 1])
        & (b[..., 2] <= w[..., 2])
        & (b[..., 3] <= w[..., 3])
    )


def class_nms(detections: Detections, iou: float, max_detections: int | None = None) -> Detections:
    """Class-wise non-maximum suppression, vectorised: boxes of different classes are moved
    apart (offset by class) so that one NMS pass never lets them suppress each other.

    Returns the kept detections sorted by decreasing score."""
    boxes, scores = detections["boxes"], detections["scores"]
    labels = detections["labels"]
    if len(boxes) == 0:
        return {key: value[:0] for key, value in detections.items()}
    low = float(np.min(boxes))
    span = float(np.max(boxes)) - low + 1.0
    shifted = boxes - low + (labels.astype(np.float32) * span)[:, None]
    limit = len(boxes) if max_detections is None else int(max_detections)
    keep = tf.image.non_max_suppression(shifted, scores, limit, iou_threshold=iou).numpy()
    return {key: value[keep] for key, value in detections.items()}


def _iou_row(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one yxyx box with (n, 4) boxes, in continuous coordinates (as
    `tf.image.non_max_suppression` measures it, so that both merges mean the same IoU)."""
    inter_h = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_w = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_h * inter_w
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_merge(
    detections: Detections, iou: float, max_detections: int | None = None
) -> Detections:
    """Greedy matching by IoU within each class (module docstring, `"greedy"`).

    A detection joins the group of the best-scoring unmatched detection of its class that it
    overlaps by more than `iou` (the IoU `class_nms` suppresses above). The matching is
    sequential by nature (a group's leader must not have joined a better one); each step is
    one vectorised row of IoUs against the still unmatched boxes, so memory stays linear in
    the number of detections.

    Returns:
        The merged detections (enclosing boxes, the leaders' scores and labels), by
        decreasing score.
    """
    boxes = np.asarray(detections["boxes"], np.float64)
    scores, labels = detections["scores"], detections["labels"]
    crop_ids = detections.get("crop_id")
    merged_boxes, merged_scores, merged_labels, groups = [], [], [], []
    for label in np.unique(labels):
        mine = np.nonzero(labels == label)[0]
        mine = mine[np.argsort(-scores[mine], kind="stable")]
        free = np.ones(len(mine), bool)
        for leader in range(len(mine)):
            if not free[leader]:
                continue
            rest = np.nonzero(free)[0]
            group = rest[_iou_row(boxes[mine[leader]], boxes[mine[rest]]) > iou]
            free[group] = False
            free[leader] = False
            chosen = mine[np.append(leader, group)]
            members = boxes[chosen]
            merged_boxes.append(np.r_[members[:, :2].min(0), members[:, 2:].max(0)])
            if crop_ids is not None:
                groups.append(crop_ids[chosen])
            merged_scores.append(scores[mine[leader]])
            merged_labels.append(label)
    if not merged_boxes:
        empty = {key: value[:0] for key, value in detections.items() if key != "crop_id"}
        return {**empty, "crop_groups": []} if crop_ids is not None else empty
    order = np.argsort(-np.asarray(merged_scores), kind="stable")[:max_detections]
    merged = {
        "boxes": np.asarray(merged_boxes, np.float32)[order],
        "scores": np.asarray(merged_scores, np.float32)[order],
        "labels": np.asarray(merged_labels, np.int64)[order],
    }
    if crop_ids is not None:  # which masks each merged detection unites (detect_sliced)
        merged["crop_groups"] = [groups[i] for i in order]
    return merged


MERGES = {"nms": class_nms, "greedy": greedy_merge}


def _as_detections(
    found: dict, offset=(0.0, 0.0), factor=(1.0, 1.0), crops: list | None = None
) -> Detections:
    """`found` as float arrays, boxes divided by the (y, x) `factor` then shifted. With
    `crops`, each detection's mask (`found["masks"]`, in the pixels `found` was given) is cut
    to its box, brought to image pixels, appended to `crops` as `(mask, y0, x0)`, and its
    index kept under `"crop_id"`."""
    raw = np.asarray(found["boxes"], np.float32).reshape(-1, 4)
    boxes = raw / np.asarray([factor[0], factor[1], factor[0], factor[1]], np.float32)
    boxes = boxes + np.asarray([offset[0], offset[1], offset[0], offset[1]], np.float32)
    detections = {
        "boxes": boxes,
        "scores": np.asarray(found["scores"], np.float32).reshape(-1),
        "labels": np.asarray(found["labels"]).reshape(-1).astype(np.int64),
    }
    if crops is not None:
        masks = np.asarray(found["masks"], bool)
        first = len(crops)
        for box, mask in zip(raw, masks):  # a box's mask: one slice (and resize) each
            crops.append(_mask_crop(mask, box, offset, factor))
        detections["crop_id"] = np.arange(first, len(crops), dtype=np.int64)
    return detections


def _mask_crop(mask: np.ndarray, box: np.ndarray, offset, factor) -> tuple[np.ndarray, int, int]:
    """A mask cut to its box (rounded outward), in image pixels: `(crop, y0, x0)`."""
    height, width = mask.shape
    y0, x0 = (max(0, int(np.floor(v))) for v in box[:2])
    y1 = min(height, int(np.ceil(box[2])) + 1)
    x1 = min(width, int(np.ceil(box[3])) + 1)
    crop = mask[y0 : max(y1, y0), x0 : max(x1, x0)]
    if factor != (1.0, 1.0) and crop.size:
        top, left = round(y0 / factor[0]), round(x0 / factor[1])
        size = (max(1, round(x1 / factor[1]) - left), max(1, round(y1 / factor[0]) - top))
        crop = cv2.resize(crop.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT) > 0
        return crop, top + int(offset[0]), left + int(offset[1])
    return crop, y0 + int(offset[0]), x0 + int(offset[1])


def _paste_masks(
    merged: Detections, crops: list, coarse: int, height: int, width: int
) -> np.ndarray:
    """(n, H, W) bool: each merged detection's mask, the union of its members' crops. Crops
    from index `coarse` on come from the shrunk whole image: a group uses them only when no
    tile (full-resolution) member is in it."""
    groups = merged.pop("crop_groups", None)
    if groups is None:
        groups = [[int(i)] for i in merged.pop("crop_id")]
    masks = np.zeros((len(groups), height, width), bool)
    for index, group in enumerate(groups):
        fine = [crop_id for crop_id in group if int(crop_id) < coarse]
        for crop_id in fine or group:
            crop, y0, x0 = crops[int(crop_id)]
            h = max(0, min(crop.shape[0], height - y0))
            w = max(0, min(crop.shape[1], width - x0))
            masks[index, y0 : y0 + h, x0 : x0 + w] |= crop[:h, :w]
    return masks


def _tile_detections(detector, image, windows, batch_detector, batch_size):
    """Yields each window's detections (tile pixels), `batch_size` tiles per call."""
    if batch_size == 1:
        for y0, x0, y1, x1 in windows:
            yield detector(image[y0:y1, x0:x1])
        return
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = np.stack([image[y0:y1, x0:x1] for y0, x0, y1, x1 in chunk])
        found = batch_detector(tiles)
        if len(found) != len(chunk):
            raise ValueError(
                f"batch_detector: expected detections of {len(chunk)} tiles, got {len(found)}"
            )
        yield from found


def slice_settings(tile: int, overlap: float, merge: str, nms_iou: float) -> dict:
    """The sliced-detection settings as an evaluation report records them."""
    return {
        "tile": int(tile),
        "overlap": float(overlap),
        "merge": merge,
        "merge_iou": float(nms_iou),
    }


def detect_sliced(
    detector: Callable[[np.ndarray], dict],
    image: np.ndarray,
    tile: int = 512,
    overlap: float = 0.2,
    full_image: bool = True,
    nms_iou: float = 0.5,
    edge_margin: float = 2.0,
    max_detections: int | None = None,
    merge: str = "nms",
    batch_detector: Callable[[np.ndarray], list[dict]] | None = None,
    batch_size: int = 1,
) -> Detections:
    """Runs `detector` on overlapping tiles of `image` (and the whole image shrunk to a tile).

    Args:
        detector: `(h, w, 3) uint8 RGB -> {"boxes" (n, 4) yxyx, "scores", "labels"}` in the
            pixels of what it is given.
        image: (H, W, 3) uint8 RGB.
        tile: Tile side in pixels (edge tiles are flush with the image, so every tile is
            `tile` pixels unless the image is smaller).
        overlap: Fraction of a tile shared by adjacent tiles; objects up to about
            `overlap * tile` pixels are whole in some tile.
        full_image: Also run the detector on the whole image shrunk to one tile (for objects
            larger than the overlap); skipped when the image fits in one tile.
        nms_iou: IoU above which a lower-scoring detection of the same class is merged away
            (`"nms"`) or into the better one's group (`"greedy"`).
        edge_margin: Pixels from an interior tile edge within which a box counts as cut;
            at least 1 % of the tile is used (a detector that shrinks its input rounds its
            boxes' ends by more than a pixel).
        max_detections: Keep at most this many (by score); None keeps every one.
        merge: `"nms"` (class-wise NMS) or `"greedy"` (greedy matching by IoU into
            enclosing boxes); see the module docstring.
        batch_detector: `(n, h, w, 3) uint8 tiles -> [detections of each]`, the same
            detector over a batch; used for the tiles when `batch_size > 1`.
        batch_size: Tiles per `batch_detector` call (e.g. from a memory budget).

    Returns:
        `{"boxes": (n, 4) yxyx image pixels, "scores": (n,), "labels": (n,)}`, by decreasing
        score; with a detector that returns `"masks"` (n, h, w) bool (Mask R-CNN's
        `segment_instances`), also `"masks"` (n, H, W) bool in image pixels: the kept
        detection's (NMS) or its group's union (greedy), the shrunk whole image's masks only
        where no tile holds the object.

    Raises:
        ValueError: A bad tile size, overlap, margin or IoU (named), or an image that is not
            (H, W, 3).
    """
    _check(tile, overlap, edge_margin, nms_iou)
    if merge not in MERGES:
        raise ValueError(f"--merge {merge!r}: expected one of {sorted(MERGES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    if batch_size < 1 or (batch_size > 1 and batch_detector is None):
        raise ValueError(f"batch_size={batch_size}: expected >= 1, and a batch_detector above 1")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3) RGB, got shape {image.shape}")
    height, width = image.shape[:2]
    windows = slice_windows(height, width, tile, overlap)
    parts, owners = [], []
    crops = None  # with masks: every detection's mask cut to its box, in image pixels
    for index, found in enumerate(
        _tile_detections(detector, image, windows, batch_detector, batch_size)
    ):
        y0, x0 = windows[index, :2]
        if index == 0 and "masks" in found:
            crops = []
        found = _as_detections(found, (float(y0), float(x0)), crops=crops)
        parts.append(found)
        owners.append(np.full(len(found["boxes"]), index))
    tiles = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    owner = np.concatenate(owners)
    if len(windows) > 1 and len(owner):
        interior = _interior_edges(windows, height, width)
        touches = _touches(tiles["boxes"], windows, interior, max(edge_margin, 0.01 * tile))
        cut = touches[np.arange(len(owner)), owner]
        whole_elsewhere = np.any(_inside(tiles["boxes"], windows) & ~touches, axis=1)
        keep = ~(cut & whole_elsewhere)
        tiles = {key: value[keep] for key, value in tiles.items()}
    merged = [tiles]
    coarse = len(crops) if crops is not None else 0  # crops from here on: the whole image's
    if full_image and max(height, width) > tile:
        factor = tile / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # The actual factors after rounding, per axis.
        scale_back = (small.shape[0] / height, small.shape[1] / width)
        merged.append(_as_detections(detector(small), factor=scale_back, crops=crops))
    every = {key: np.concatenate([part[key] for part in merged]) for key in merged[0]}
    result = MERGES[merge](every, nms_iou, max_detections)
    if crops is not None:
        result["masks"] = _paste_masks(result, crops, coarse, height, width)
    return result
