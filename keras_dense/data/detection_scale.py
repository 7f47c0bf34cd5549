"""The Fast R-CNN scale: shorter side to `min_size`, longer side at most `max_size`."""

from __future__ import annotations

import tensorflow as tf

from keras_dense.data.detection_rules import MIN_RESIZED_SIDE


def fast_rcnn_scale(height: tf.Tensor, width: tf.Tensor, min_size: int, max_size: int):
    """The resize factor: shorter side to `min_size`, longer side at most `max_size`.

    An image so elongated that the resize leaves its shorter side below `MIN_RESIZED_SIDE`
    pixels (an 8 x 4000 strip: the detector would see no feature row and return nothing) is
    an error naming its size and, for a batch, its positions; crop or tile such images.

    Args:
        height: Image height(s), a scalar or (N,) tensor.
        width: Image width(s), same shape.
        min_size: Target shorter side.
        max_size: Cap on the longer side.

    Returns:
        The factor(s), float32, shaped like `height`.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = min_size / tf.minimum(h, w)
    scale = tf.minimum(scale, max_size / tf.maximum(h, w))
    shorter = tf.round(tf.minimum(h, w) * scale)
    thin = tf.reshape(shorter < MIN_RESIZED_SIDE, [-1])
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(thin)),
        [
            "image(s) at batch position(s)",
            tf.where(thin)[:, 0],
            "of height",
            tf.boolean_mask(tf.reshape(h, [-1]), thin),
            "and width",
            tf.boolean_mask(tf.reshape(w, [-1]), thin),
            f"are too elongated for the detector: resized (shorter side to {min_size}, longer "
            f"side at most {max_size}) their shorter side falls below the minimum side of "
            f"{MIN_RESIZED_SIDE} px (the feature stride), so nothing could be detected; crop or "
            f"tile them to an aspect ratio of at most {max_size / MIN_RESIZED_SIDE:g}:1",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(scale)
