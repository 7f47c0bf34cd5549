"""Augmentations that keep an image and its label mask aligned pixel for pixel.

Colour jitter (`random_color_affine`) is one affine map of the RGB values, which the pipeline
fuses with the input normalisation into a single matrix product.

`scale_crop_flip` does random scaling, cropping (with padding) and horizontal flipping in a
single resampling: one `tf.image.crop_and_resize` call per tensor samples the crop directly
from the source image, so the cost depends on the crop size, not on the scaled image size. The
image (bilinear) and the mask (nearest) are sampled at the very same positions, and positions
outside the image take the padding value (`pad_value` for the image, the ignore label for
the mask). All randomness is stateless and comes from a per-example seed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _uniform(seed: tf.Tensor, salt: int, minval=0.0, maxval=1.0, dtype=tf.float32):
    return tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(seed, salt), minval, maxval, dtype=dtype
    )


def scale_crop_flip(
    image: tf.Tensor,
    mask: tf.Tensor,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    flip: bool,
    ignore_label: int,
    seed: tf.Tensor,
    pad_value: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, random crop with padding and random horizontal flip, jointly.

    The scaled image is `round(H*s) x round(W*s)`; it sits at the top-left of a canvas at
    least as large as the crop, and the crop's offset in that canvas is uniform. Scaling maps
    the corners of the image onto the corners of the scaled image (align-corners).

    Args:
        image: (H, W, C) image, uint8 or float.
        mask: (H, W) class ids, uint8 or float (uint8 avoids a cast of the whole mask).
        crop_size: `(height, width)` of the output.
        scale_range: `(min, max)` of the uniform random scale.
        flip: Whether to flip horizontally with probability 1/2.
        ignore_label: Mask value of padded pixels.
        seed: int32/int64 shape-(2,) stateless seed.
        pad_value: Image value of padded pixels (e.g. -1 to mark them in a uint8 image).

    Returns:
        `(image (ch, cw, C) float32, mask (ch, cw) int32)`.
    """
    seed = tf.cast(seed, tf.int64)
    crop_h, crop_w = crop_size
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    scale = _uniform(seed, 1, scale_range[0], scale_range[1])
    sh = tf.maximum(tf.round(h * scale), 2.0)
    sw = tf.maximum(tf.round(w * scale), 2.0)
    max_oy = tf.maximum(sh, crop_h) - crop_h
    max_ox = tf.maximum(sw, crop_w) - crop_w
    oy = tf.floor(_uniform(seed, 2) * (max_oy + 1.0))
    ox = tf.floor(_uniform(seed, 3) * (max_ox + 1.0))
    # Align-corners mapping of scaled pixel k to source pixel k*(h-1)/(sh-1), shrunk by 1e-6
    # so that the last scaled row lands inside the image despite float rounding.
    fy = (h - 1.0) / (sh - 1.0) * (1.0 - 1e-6)
    fx = (w - 1.0) / (sw - 1.0) * (1.0 - 1e-6)
    denom_h = tf.maximum(h - 1.0, 1.0)
    denom_w = tf.maximum(w - 1.0, 1.0)
    y1 = oy * fy / denom_h
    y2 = (oy + crop_h - 1.0) * fy / denom_h
    x1 = ox * fx / denom_w
    x2 = (ox + crop_w - 1.0) * fx / denom_w
    if flip:
        do_flip = _uniform(seed, 4) < 0.5
        x1, x2 = tf.where(do_flip, x2, x1), tf.where(do_flip, x1, x2)
    boxes = tf.stack([y1, x1, y2, x2])[None]
    size = tf.constant([crop_h, crop_w])
    index = tf.zeros([1], tf.int32)
    out_image = tf.image.crop_and_resize(image[None], boxes, index, size, "bilinear", pad_value)[0]
    out_mask = tf.image.crop_and_resize(
        mask[None, :, :, None], boxes, index, size, "nearest", float(ignore_label)
    )[0, :, :, 0]
    return out_image, tf.cast(out_mask, tf.int32)


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
