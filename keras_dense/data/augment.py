"""Augmentations that keep an image and its label mask aligned pixel for pixel.

Colour jitter (`random_color_affine`) is one affine map of the RGB values, which the pipeline
fuses with the input normalisation into a single matrix product.

Random scaling, cropping (with padding) and horizontal flipping are one resampling, planned
before the image is decoded:

1. `plan_crop` draws the scale, the crop offset and the flip from the image's size alone (a
   JPEG/PNG header gives it) and works out which source pixels the crop reads. The scale is
   a multiple of 1/16 (`SCALE_STEP`), so that the resampling of a window is exactly the
   resampling of the whole image restricted to that window.
2. The caller decodes only that window (`tf.image.decode_and_crop_jpeg`), and when the scale
   is at most 1/2 lets libjpeg downscale in the DCT domain by `ratio` = 2, 4 or 8 (decoded
   pixel j then covers source pixels `j*ratio ... j*ratio + ratio - 1`).
3. `resample_window` resizes the window (bilinear, half-pixel centres, as `tf.image.resize`)
   and samples the full-size mask (nearest) at the very same source positions: output pixel
   k of the scaled image is centred on source position `(k + 0.5) / scale - 0.5`, in either
   tensor. Scaled pixels outside the image are padding: 0 in the image (after the optional
   affine colour map, applied to the window before resizing) and `ignore_label` in the mask.

All randomness is stateless and comes from a per-example seed.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

# Scales are multiples of 1 / SCALE_STEP.
SCALE_STEP = 16
# DCT-domain downscaling factors libjpeg offers (besides 1).
DCT_RATIOS = (8, 4, 2)


def _uniform(seed: tf.Tensor, salt: int, minval=0.0, maxval=1.0, dtype=tf.float32):
    return tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(seed, salt), minval, maxval, dtype=dtype
    )


class AxisPlan(NamedTuple):
    """The resampling along one axis (all int32 scalar tensors).

    With scale `s = steps / SCALE_STEP`, the scaled image has `size` valid pixels
    (`round(source_size * s)`), of which the crop shows `count` from `offset` on, followed by
    padding. The decoded window starts at `start` (decoded pixels) and holds `rows` pixels of
    the image; it is extended (edge pixels repeated) to `length` and resized to `out_length`,
    of which the crop takes `count` pixels from `skip` on.
    """

    size: tf.Tensor
    offset: tf.Tensor
    count: tf.Tensor
    start: tf.Tensor
    rows: tf.Tensor
    length: tf.Tensor
    out_length: tf.Tensor
    skip: tf.Tensor


class CropPlan(NamedTuple):
    """Where a random scale/crop/flip samples the source image.

    Attributes:
        steps: int32 scale numerator: the scale is `steps / SCALE_STEP`.
        ratio: int32 DCT downscale factor to decode with (1, 2, 4 or 8).
        do_flip: bool, whether the crop is mirrored.
        y: `AxisPlan` of the rows (in decoded pixels).
        x: `AxisPlan` of the columns (in decoded pixels).
    """

    steps: tf.Tensor
    ratio: tf.Tensor
    do_flip: tf.Tensor
    y: AxisPlan
    x: AxisPlan

    def window(self) -> tf.Tensor:
        """int32 `[top, left, rows, cols]` to decode (`decode_and_crop_jpeg`'s crop_window)."""
        return tf.stack([self.y.start, self.x.start, self.y.rows, self.x.rows])


def _axis(size: tf.Tensor, steps: tf.Tensor, ratio: tf.Tensor, crop: int, u: tf.Tensor) -> AxisPlan:
    """Plans one axis: `size` source pixels at scale steps/SCALE_STEP, decoded at 1/ratio."""
    q = SCALE_STEP
    # Scaled pixel k is valid when its centre (k + 0.5) q / steps - 0.5 lies in [-0.5,
    # size - 0.5], i.e. (2k + 1) q <= 2 size steps.
    scaled = tf.maximum((2 * size * steps + q) // (2 * q), 1)
    max_offset = tf.maximum(scaled, crop) - crop
    offset = tf.minimum(
        tf.cast(tf.floor(u * tf.cast(max_offset + 1, tf.float32)), tf.int32), max_offset
    )
    count = tf.minimum(crop, scaled - offset)
    # In decoded pixels (1/ratio of the source) the scale is steps * ratio / q.
    num = steps * ratio
    decoded = (size + ratio - 1) // ratio
    first = tf.cast(offset, tf.float32)
    last = tf.cast(offset + count - 1, tf.float32)
    scale = tf.cast(num, tf.float32) / q
    lo = tf.cast(tf.floor((first + 0.5) / scale - 0.5), tf.int32)
    hi = tf.cast(tf.floor((last + 0.5) / scale - 0.5), tf.int32) + 2
    # Windows start on multiples of q decoded pixels, where an edge of a scaled pixel falls
    # (start * num / q is whole), and are a multiple of q long: resizing the window by
    # num / q then samples exactly the positions that resizing the whole image would.
    start = tf.minimum(tf.maximum(lo, 0) // q * q, (decoded - 1) // q * q)
    length = tf.maximum((hi - start + q - 1) // q * q, q)
    rows = tf.minimum(length, decoded - start)
    out_length = length * num // q
    skip = offset - start * num // q
    return AxisPlan(scaled, offset, count, start, rows, length, out_length, skip)


def plan_crop(
    height: tf.Tensor,
    width: tf.Tensor,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    flip: bool,
    seed: tf.Tensor,
    max_ratio: int | tf.Tensor = 1,
) -> CropPlan:
    """Draws a random scale, crop offset and flip for an image of the given size.

    The scale is uniform in `scale_range`, rounded to a multiple of 1/16. The scaled image
    (`round(H*s) x round(W*s)` valid pixels) sits at the top-left of a canvas at least as
    large as the crop, and the crop's offset in that canvas is uniform.

    Args:
        height: Source image height (int scalar tensor).
        width: Source image width.
        crop_size: `(height, width)` of the output.
        scale_range: `(min, max)` of the uniform random scale.
        flip: Whether to flip horizontally with probability 1/2.
        seed: int32/int64 shape-(2,) stateless seed.
        max_ratio: Largest DCT downscale factor allowed (1 for PNG or to decode in full).

    Returns:
        The `CropPlan`.
    """
    seed = tf.cast(seed, tf.int64)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    scale = _uniform(seed, 1, scale_range[0], scale_range[1])
    steps = tf.maximum(tf.cast(tf.round(scale * SCALE_STEP), tf.int32), 1)
    ratio = tf.constant(1, tf.int32)
    for r in reversed(DCT_RATIOS):  # 2, 4, 8: the largest r with scale <= 1/r wins.
        ratio = tf.where((steps * r <= SCALE_STEP) & (r <= max_ratio), tf.constant(r), ratio)
    do_flip = _uniform(seed, 4) < 0.5 if flip else tf.constant(False)
    y = _axis(height, steps, ratio, crop_size[0], _uniform(seed, 2))
    x = _axis(width, steps, ratio, crop_size[1], _uniform(seed, 3))
    return CropPlan(steps, ratio, do_flip, y, x)


def _extend(window: tf.Tensor, length: tf.Tensor, axis: int) -> tf.Tensor:
    """Repeats the last row (axis 0) or column (axis 1) until the axis has `length` pixels."""
    missing = length - tf.shape(window)[axis]
    edge = window[-1:] if axis == 0 else window[:, -1:]
    return tf.cond(
        missing > 0,
        lambda: tf.concat([window, tf.repeat(edge, tf.maximum(missing, 0), axis=axis)], axis),
        lambda: window,
    )


def _nearest(axis: AxisPlan, steps: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Source indices of the shown scaled pixels: round(centre) = floor((2k+1) q / (2 steps))."""
    k = axis.offset + tf.range(axis.count)
    return tf.minimum((2 * k + 1) * SCALE_STEP // (2 * steps), size - 1)


def resample_window(
    image_window: tf.Tensor,
    mask: tf.Tensor,
    plan: CropPlan,
    crop_size: tuple[int, int],
    ignore_label: int,
    colour_map: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples the planned crop from a decoded window and from the full-size mask.

    Args:
        image_window: (rows, cols, C) uint8/float pixels of `plan.window()`.
        mask: (H, W) class ids of the whole image, uint8.
        plan: From `plan_crop` (for an image of the mask's size).
        crop_size: `(height, width)` of the output.
        ignore_label: Mask value of padded pixels.
        colour_map: Optional per-pixel affine map on (rows, cols, C) float32 pixels (colour
            jitter, normalisation). It commutes with bilinear resizing (the weights sum to 1),
            so it is applied to the window or to the shown crop, whichever is smaller.

    Returns:
        `(image (ch, cw, C) float32 with padding 0, mask (ch, cw) int32 with padding
        ignore_label)`.
    """
    crop_h, crop_w = crop_size
    channels = image_window.shape[-1]
    y, x = plan.y, plan.x
    # Padding goes after the shown pixels: below, and right (left when mirrored).
    pad_w = crop_w - x.count
    pad_x = tf.where(plan.do_flip, tf.stack([pad_w, 0]), tf.stack([0, pad_w]))
    pad = tf.stack([tf.stack([0, crop_h - y.count]), pad_x])

    # The mask: nearest source pixel of every shown scaled pixel (rows, then columns).
    shape = tf.shape(mask)
    cols = _nearest(x, plan.steps, shape[1])
    cols = tf.where(plan.do_flip, cols[::-1], cols)
    rows = tf.gather(mask, _nearest(y, plan.steps, shape[0]))
    out_mask = tf.transpose(tf.gather(tf.transpose(rows), cols))
    out_mask = tf.pad(out_mask, pad, constant_values=ignore_label)

    def colour(pixels):
        return pixels if colour_map is None else colour_map(pixels)

    pixels = tf.cast(image_window, tf.float32)
    # The colour map goes wherever there are fewer pixels: on the window or on the crop.
    colour_first = y.length * x.length <= y.count * x.count
    pixels = tf.cond(colour_first, lambda: colour(pixels), lambda: pixels)
    pixels = _extend(_extend(pixels, y.length, 0), x.length, 1)
    resized = tf.raw_ops.ResizeBilinear(
        images=pixels[None],
        size=tf.stack([y.out_length, x.out_length]),
        align_corners=False,
        half_pixel_centers=True,
    )[0]
    shown = resized[y.skip : y.skip + y.count, x.skip : x.skip + x.count]
    shown = tf.cond(colour_first, lambda: shown, lambda: colour(shown))
    shown = tf.cond(plan.do_flip, lambda: tf.reverse(shown, [1]), lambda: shown)
    out_image = tf.pad(shown, tf.concat([pad, [[0, 0]]], 0))
    out_image = tf.ensure_shape(out_image, [crop_h, crop_w, channels])
    out_mask = tf.ensure_shape(tf.cast(out_mask, tf.int32), [crop_h, crop_w])
    return out_image, out_mask


# RGB -> YIQ; a hue shift is a rotation of the (I, Q) plane, so it is linear in RGB.
# NumPy, not tf.constant: creating tensors at import time would initialise TensorFlow's eager
# context before a user (or the trainer) configures a multi-worker strategy.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def color_affine(
    brightness_shift: tf.Tensor,
    contrast: tf.Tensor,
    saturation: tf.Tensor,
    hue_turns: tf.Tensor,
    mean_grey: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The affine colour map `x @ A + c` of given jitter parameters (0-255 RGB row vectors).

    Applied in this order: brightness `y = x + shift`; contrast about the brightened mean grey
    `y = k (x - m) + m + shift`; saturation `z = s y + (1 - s) luma(y)`; hue rotation of the
    (I, Q) chroma plane of YIQ by `hue_turns` full turns.

    Args:
        brightness_shift: Added to every channel (0-255 scale).
        contrast: Contrast factor k.
        saturation: Saturation factor s.
        hue_turns: Hue rotation as a fraction of a full turn.
        mean_grey: Mean grey level m of the image.

    Returns:
        `(A (3, 3), c (3,))`.
    """
    eye = tf.eye(3)
    luma = tf.constant(_LUMA)
    sat = saturation * eye + (1.0 - saturation) * luma[:, None] * tf.ones([1, 3])
    theta = hue_turns * 2.0 * 3.141592653589793
    cos, sin = tf.cos(theta), tf.sin(theta)
    rotation = tf.stack([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    hue_map = tf.transpose(tf.constant(_YIQ_TO_RGB) @ rotation @ tf.constant(_RGB_TO_YIQ))
    colour = sat @ hue_map
    matrix = contrast * colour
    offset = ((1.0 - contrast) * mean_grey + brightness_shift) * tf.reduce_sum(colour, axis=0)
    return matrix, offset


def random_color_affine(
    seed: tf.Tensor,
    mean_grey: tf.Tensor,
    brightness: float = 0.125,
    contrast: tuple[float, float] = (0.75, 1.25),
    saturation: tuple[float, float] = (0.75, 1.25),
    hue: float = 0.04,
) -> tuple[tf.Tensor, tf.Tensor]:
    """A random photometric jitter expressed as one affine colour map `x @ A + c`.

    Brightness (shift by up to `brightness`·255), contrast (scale about the image's mean grey),
    saturation (blend with the luma) and hue (rotation by up to `hue`·2π in YIQ space) are all
    affine in RGB, so together they are one 3x3 matrix and an offset: one pass over the
    pixels instead of four, and no RGB <-> HSV round trips.

    Args:
        seed: shape-(2,) stateless seed.
        mean_grey: Scalar mean grey level of the image (0-255).
        brightness: Maximum brightness shift, as a fraction of 255.
        contrast: Range of the contrast factor.
        saturation: Range of the saturation factor.
        hue: Maximum hue rotation, as a fraction of a full turn.

    Returns:
        `(A (3, 3), c (3,))` acting on row vectors of 0-255 RGB values.
    """
    seed = tf.cast(seed, tf.int64)
    return color_affine(
        _uniform(seed, 11, -brightness, brightness) * 255.0,
        _uniform(seed, 12, contrast[0], contrast[1]),
        _uniform(seed, 13, saturation[0], saturation[1]),
        _uniform(seed, 14, -hue, hue),
        mean_grey,
    )
