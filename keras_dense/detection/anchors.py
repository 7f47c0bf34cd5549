"""Anchor boxes of the Region Proposal Network (Ren et al., Faster R-CNN, 2015, Sec. 3.1.1).

Conventions (those of `keras_dense.detection.boxes`):

- Boxes are `[ymin, xmin, ymax, xmax]` in input-image pixels with inclusive ends, so a box's
  width is `xmax - xmin + 1`; its centre is `xmin + width / 2` (the centre of the covered
  pixel range taken as a continuous interval, as `decode_boxes` and `encode_boxes` use it).
- Feature cell `(i, j)` of a map at `stride` covers the pixels `stride * i ...
  stride * i + stride - 1` (rows) and likewise for columns; its anchors are centred on that
  block's centre, `(stride * (i + 0.5), stride * (j + 0.5))`. For stride 16 the 16 x 16
  anchor of cell (0, 0) is `[0, 0, 15, 15]`, py-faster-rcnn's base anchor.
- `ratio` is height / width (py-faster-rcnn's meaning: ratio 2 is a tall box). Each scale
  keeps its area `scale**2`: `height = scale * sqrt(ratio)`, `width = scale / sqrt(ratio)`.
  Unlike py-faster-rcnn, the sizes are not rounded to whole pixels (its 0.5-ratio anchor at
  scale 128 is 184 x 96; here it is 181.02 x 90.51).
- Order: cell-major in row-major order (row `i`, then column `j`), then the A = len(ratios) *
  len(scales) anchors of the cell, ratio-major (`a = ratio_index * len(scales) +
  scale_index`, py-faster-rcnn's order). Anchor `(i * W + j) * A + a` thus matches entry
  `[i, j, a]` of an (H, W, A) objectness map reshaped to (H * W * A,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

DEFAULT_SCALES: tuple[float, ...] = (128.0, 256.0, 512.0)
DEFAULT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)


def _positive_numbers(values, name: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except TypeError as error:
        raise ValueError(f"{name}={values!r}: expected a sequence of positive numbers") from error
    if not numbers or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise ValueError(f"{name}={values!r}: expected a non-empty sequence of positive numbers")
    return numbers


def anchor_sizes(
    scales: Sequence[float] = DEFAULT_SCALES, ratios: Sequence[float] = DEFAULT_RATIOS
) -> np.ndarray:
    """Heights and widths of the anchors of one cell.

    Args:
        scales: Anchor sides at ratio 1, in pixels (the square root of the area).
        ratios: Height / width ratios.

    Returns:
        (A, 2) float64 `(height, width)` with A = len(ratios) * len(scales), ratio-major.

    Raises:
        ValueError: `scales` or `ratios` is empty or holds a non-positive number.
    """
    scales = _positive_numbers(scales, "scales")
    ratios = _positive_numbers(ratios, "ratios")
    return np.array(
        [(s * math.sqrt(r), s / math.sqrt(r)) for r in ratios for s in scales], np.float64
    )


def num_anchors(
    scales: Sequence[float] = DEFAULT_SCALES, ratios: Sequence[float] = DEFAULT_RATIOS
) -> int:
    """Anchors per feature cell, A = len(scales) * len(ratios)."""
    return len(_positive_numbers(scales, "scales")) * len(_positive_numbers(ratios, "ratios"))


def generate_anchors(
    feature_height,
    feature_width,
    stride: float = 16,
    scales: Sequence[float] = DEFAULT_SCALES,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> tf.Tensor:
    """All anchors of a feature map, in input-image pixels (see the module docstring).

    Args:
        feature_height: Rows H of the feature map: an int or a scalar int tensor (dynamic
            shapes inside `tf.function` work).
        feature_width: Columns W of the feature map, likewise.
        stride: Input pixels per feature cell (16 for VGG16 conv5_3).
        scales: Anchor sides at ratio 1, in pixels ((128, 256, 512)).
        ratios: Height / width ratios ((0.5, 1, 2)).

    Returns:
        (H * W * A, 4) float32 anchors `[ymin, xmin, ymax, xmax]`, inclusive pixels, in
        cell-major, then ratio-major, then scale order.

    Raises:
        ValueError: A non-positive `stride`, or bad `scales` / `ratios`.
    """
    if isinstance(stride, bool) or not (isinstance(stride, (int, float)) and stride > 0):
        raise ValueError(f"stride={stride!r}: expected a positive number")
    sizes = tf.constant(anchor_sizes(scales, ratios), tf.float32)  # (A, 2)
    half = 0.5 * tf.concat([-sizes, sizes], axis=-1) + [0.0, 0.0, -1.0, -1.0]  # (A, 4)
    stride = float(stride)
    rows = (tf.range(feature_height, dtype=tf.float32) + 0.5) * stride
    cols = (tf.range(feature_width, dtype=tf.float32) + 0.5) * stride
    cy, cx = tf.meshgrid(rows, cols, indexing="ij")  # (H, W)
    centres = tf.stack([cy, cx, cy, cx], axis=-1)  # (H, W, 4)
    anchors = centres[:, :, None, :] + half[None, None, :, :]  # (H, W, A, 4)
    return tf.reshape(anchors, [-1, 4])


# Feature Pyramid Network (Lin et al., 2017): one anchor size per level P2 ... P6.
FPN_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)
FPN_ANCHOR_SIZES: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)


def pyramid_anchors(
    shapes: Sequence,
    strides: Sequence[float] = FPN_STRIDES,
    sizes: Sequence[float] = FPN_ANCHOR_SIZES,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> tf.Tensor:
    """The anchors of every level of a feature pyramid, concatenated level by level.

    Level `l` has one anchor size, `sizes[l]`, at each ratio, on the map of `strides[l]`
    (`generate_anchors(h_l, w_l, strides[l], (sizes[l],), ratios)`). The order, level-major
    and then `generate_anchors`' order inside a level, is that of the RPN outputs of each
    level flattened (`flatten_rpn_outputs`) and concatenated in the same level order.

    Args:
        shapes: One `(height, width)` per level: ints or scalar int tensors.
        strides: Input pixels per cell of each level ((4, 8, 16, 32, 64): P2 ... P6).
        sizes: The anchor side at ratio 1 of each level ((32, 64, 128, 256, 512)).
        ratios: Height / width ratios, shared by the levels ((0.5, 1, 2)).

    Returns:
        (sum_l H_l * W_l * len(ratios), 4) float32 anchors, yxyx inclusive pixels.

    Raises:
        ValueError: Levels, strides and sizes of different lengths, or bad values.
    """
    sizes = _positive_numbers(sizes, "sizes")
    strides = _positive_numbers(strides, "strides")
    if not len(shapes) == len(strides) == len(sizes):
        raise ValueError(
            f"shapes, strides and sizes: expected one entry per level each, got "
            f"{len(shapes)}, {len(strides)} and {len(sizes)}"
        )
    return tf.concat(
        [
            generate_anchors(shape[0], shape[1], stride, (size,), ratios)
            for shape, stride, size in zip(shapes, strides, sizes)
        ],
        axis=0,
    )
