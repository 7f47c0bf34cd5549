"""Augmentations that keep an image and its label mask aligned pixel for pixel.

`scale_crop_flip` does random scaling, cropping (with padding) and horizontal flipping in a
single resampling: one `tf.image.crop_and_resize` call per tensor samples the crop directly
from the source image, so the cost depends on the crop size, not on the scaled image size. The
image (bilinear) and the mask (nearest) are sampled at the very same positions, and positions
outside the image take the padding value (0 for the mean-centred image, the ignore label for
the mask). All randomness is stateless and comes from a per-example seed.
"""

from __future__ import annotations

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
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, random crop with padding and random horizontal flip, jointly.

    The scaled image is `round(H*s) x round(W*s)`; it sits at the top-left of a canvas at
    least as large as the crop, and the crop's offset in that canvas is uniform. Scaling maps
    the corners of the image onto the corners of the scaled image (align-corners).

    Args:
        image: (H, W, C) float32 image (mean-centred, so 0 is the right padding value).
        mask: (H, W) integer class ids.
        crop_size: `(height, width)` of the output.
        scale_range: `(min, max)` of the uniform random scale.
        flip: Whether to flip horizontally with probability 1/2.
        ignore_label: Mask value of padded pixels.
        seed: int32/int64 shape-(2,) stateless seed.

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
    out_image = tf.image.crop_and_resize(image[None], boxes, index, size, "bilinear", 0.0)[0]
    mask_f = tf.cast(mask[None, :, :, None], tf.float32)
    out_mask = tf.image.crop_and_resize(mask_f, boxes, index, size, "nearest", float(ignore_label))[
        0, :, :, 0
    ]
    return out_image, tf.cast(out_mask, tf.int32)


def photometric_jitter(centred: tf.Tensor, mean: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue on a mean-centred RGB image.

    Args:
        centred: (H, W, 3) float32 image minus `mean` (0-255 scale).
        mean: (3,) mean pixel that was subtracted.
        seed: shape-(2,) stateless seed.

    Returns:
        The jittered image, still mean-centred.
    """
    seed = tf.cast(seed, tf.int64)
    fold = tf.random.experimental.stateless_fold_in
    image = (centred + mean) / 255.0
    image = tf.image.stateless_random_brightness(image, 0.125, fold(seed, 11))
    image = tf.image.stateless_random_contrast(image, 0.75, 1.25, fold(seed, 12))
    if image.shape[-1] == 3:
        image = tf.image.stateless_random_saturation(image, 0.75, 1.25, fold(seed, 13))
        image = tf.image.stateless_random_hue(image, 0.04, fold(seed, 14))
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0 - mean
