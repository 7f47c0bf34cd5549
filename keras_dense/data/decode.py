"""The one image decode of the project: JPEG or PNG bytes to uint8 pixels, with stock ops.

Training, evaluation, read-back, detection and serving must see the same pixels for the same
bytes. `tf.io.decode_image` decodes JPEG with the fast (inexact) DCT, about one grey level
away from what OpenCV, PIL and the serving signature produce, so JPEG is decoded here with
the accurate integer DCT (`JPEG_DCT_METHOD`) everywhere.
"""

from __future__ import annotations

import tensorflow as tf

# libjpeg's JDCT_ISLOW: what OpenCV and PIL use, and what the serving signature uses.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(data: tf.Tensor) -> tf.Tensor:
    """Whether encoded bytes start with the PNG signature (scalar bool tensor)."""
    return tf.equal(tf.strings.substr(data, 0, 8), PNG_MAGIC)


def decode_image(data: tf.Tensor, channels: int = 3) -> tf.Tensor:
    """Decodes PNG (by its signature bytes) or otherwise JPEG bytes.

    Args:
        data: Scalar tf.string, the encoded file.
        channels: 1 (grey) or 3 (RGB).

    Returns:
        (H, W, channels) uint8 image.
    """
    image = tf.cond(
        is_png(data),
        lambda: tf.io.decode_png(data, channels=channels),
        lambda: tf.io.decode_jpeg(data, channels=channels, dct_method=JPEG_DCT_METHOD),
    )
    image.set_shape([None, None, channels])
    return image


def image_size(data: tf.Tensor) -> tf.Tensor:
    """`(height, width)` int32 from the header of PNG or JPEG bytes, without decoding.

    Args:
        data: Scalar tf.string, the encoded file.

    Returns:
        Shape-(2,) int32 tensor.
    """

    def png_size():
        # IHDR: width and height as big-endian uint32 at bytes 16-23.
        header = tf.strings.substr(data, 16, 8)
        width_height = tf.ensure_shape(tf.io.decode_raw(header, tf.int32, False), [2])
        return tf.stack([width_height[1], width_height[0]])

    return tf.cond(is_png(data), png_size, lambda: tf.io.extract_jpeg_shape(data)[:2])
