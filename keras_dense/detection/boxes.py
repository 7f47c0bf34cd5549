"""Box geometry for Fast R-CNN: IoU, (dx, dy, dw, dh) encoding and clipping.

Boxes are `[ymin, xmin, ymax, xmax]` in pixels with inclusive ends, as in Fast R-CNN's Caffe/
Python code: a box's width is `xmax - xmin + 1`. Regression deltas keep Fast R-CNN's order
`(dx, dy, dw, dh)` (the layout of the `bbox_pred` outputs), even though boxes are yxyx.

Note: `keras_dense.data` stores VOC boxes as continuous coordinates (`xmax` one past the last
pixel), so its ground-truth boxes come out one pixel wider than this convention, while
`selective_search` proposals follow it. The model regresses to whatever the ground truth
uses, and evaluation compares like with like, so the effect is a sub-pixel bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

# Fast R-CNN's BBOX_NORMALIZE_STDS: targets are divided by these.
BOX_STDS: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
# Largest dw/dh decoded (Detectron's BBOX_XFORM_CLIP): exp() of it is 62.5x the proposal size.
MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def box_area(boxes):
    """Areas (...,) of inclusive-pixel boxes (..., 4); empty boxes have area 0."""
    ymin, xmin, ymax, xmax = ops.unstack(ops.convert_to_tensor(boxes, "float32"), 4, axis=-1)
    return ops.maximum(ymax - ymin + 1.0, 0.0) * ops.maximum(xmax - xmin + 1.0, 0.0)


def iou_matrix(boxes_a, boxes_b):
    """Pairwise intersection over union of two sets of boxes (inclusive pixel coordinates).

    Args:
        boxes_a: (..., N, 4) boxes `[ymin, xmin, ymax, xmax]`.
        boxes_b: (..., M, 4) boxes with the same leading (batch) dimensions.

    Returns:
        (..., N, M) float32 IoU; 0 where the union is empty.
    """
    a = ops.convert_to_tensor(boxes_a, "float32")
    b = ops.convert_to_tensor(boxes_b, "float32")
    ay0, ax0, ay1, ax1 = [t[..., :, None] for t in ops.unstack(a, 4, axis=-1)]
    by0, bx0, by1, bx1 = [t[..., None, :] for t in ops.unstack(b, 4, axis=-1)]
    inter_h = ops.maximum(ops.minimum(ay1, by1) - ops.maximum(ay0, by0) + 1.0, 0.0)
    inter_w = ops.maximum(ops.minimum(ax1, bx1) - ops.maximum(ax0, bx0) + 1.0, 0.0)
    inter = inter_h * inter_w
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return ops.where(union > 0.0, inter / ops.maximum(union, 1e-12), 0.0)


def _centres(boxes):
    ymin, xmin, ymax, xmax = ops.unstack(boxes, 4, axis=-1)
    height = ymax - ymin + 1.0
    width = xmax - xmin + 1.0
    return ymin + 0.5 * height, xmin + 0.5 * width, height, width


def encode_boxes(boxes, reference, stds: Sequence[float] = BOX_STDS):
    """Regression targets that move `reference` boxes onto `boxes`.

    `dx = (cx - cx_ref) / w_ref`, `dy` likewise, `dw = log(w / w_ref)`, `dh` likewise, each
    divided by its entry of `stds`.

    Args:
        boxes: (..., 4) target boxes, yxyx inclusive pixels.
        reference: (..., 4) reference boxes (RoIs / proposals), same shape.
        stds: Normalising standard deviations of `(dx, dy, dw, dh)`.

    Returns:
        (..., 4) float32 deltas `(dx, dy, dw, dh)`.
    """
    cy, cx, h, w = _centres(ops.convert_to_tensor(boxes, "float32"))
    ry, rx, rh, rw = _centres(ops.convert_to_tensor(reference, "float32"))
    rh = ops.maximum(rh, 1e-6)
    rw = ops.maximum(rw, 1e-6)
    deltas = ops.stack(
        [
            (cx - rx) / rw,
            (cy - ry) / rh,
            ops.log(ops.maximum(w, 1e-6) / rw),
            ops.log(ops.maximum(h, 1e-6) / rh),
        ],
        axis=-1,
    )
    return deltas / ops.convert_to_tensor(list(stds), "float32")


def decode_boxes(deltas, reference, stds: Sequence[float] = BOX_STDS):
    """Applies `(dx, dy, dw, dh)` deltas to reference boxes (the inverse of `encode_boxes`).

    Args:
        deltas: (..., 4) normalised deltas `(dx, dy, dw, dh)`.
        reference: (..., 4) reference boxes yxyx, broadcastable to `deltas`.
        stds: The standard deviations used at encoding.

    Returns:
        (..., 4) float32 boxes yxyx, inclusive pixels (`xmax = cx + w / 2 - 1`, so that
        decoding encoded targets gives the targets back exactly).
    """
    deltas = ops.convert_to_tensor(deltas, "float32") * ops.convert_to_tensor(list(stds), "float32")
    ry, rx, rh, rw = _centres(ops.convert_to_tensor(reference, "float32"))
    dx, dy, dw, dh = ops.unstack(deltas, 4, axis=-1)
    cx = dx * rw + rx
    cy = dy * rh + ry
    w = ops.exp(ops.minimum(dw, MAX_LOG_SCALE)) * rw
    h = ops.exp(ops.minimum(dh, MAX_LOG_SCALE)) * rh
    return ops.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h - 1.0, cx + 0.5 * w - 1.0], axis=-1)


def clip_boxes(boxes, image_shape):
    """Clips boxes to the image: y to `[0, height - 1]`, x to `[0, width - 1]`.

    Args:
        boxes: (..., 4) yxyx pixels.
        image_shape: (height, width) of the image, or a tensor (..., 2) broadcastable to the
            leading dimensions of `boxes` (e.g. (B, 1, 2) for boxes (B, N, 4)).

    Returns:
        (..., 4) float32 clipped boxes.
    """
    boxes = ops.convert_to_tensor(boxes, "float32")
    shape = ops.cast(ops.convert_to_tensor(image_shape), "float32")
    y_max = shape[..., 0] - 1.0
    x_max = shape[..., 1] - 1.0
    ymin, xmin, ymax, xmax = ops.unstack(boxes, 4, axis=-1)
    return ops.stack(
        [
            ops.minimum(ops.maximum(ymin, 0.0), y_max),
            ops.minimum(ops.maximum(xmin, 0.0), x_max),
            ops.minimum(ops.maximum(ymax, 0.0), y_max),
            ops.minimum(ops.maximum(xmax, 0.0), x_max),
        ],
        axis=-1,
    )
