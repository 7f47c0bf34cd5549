"""TensorBoard summaries written with TensorFlow's own ops (no `tensorboard` package needed).

`tf.summary.scalar` and `tf.summary.image` live in the `tensorboard` package, which is not a
dependency. The event files written here carry the same plugin metadata, so TensorBoard shows
them as scalars and images.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _metadata(plugin: str, data_class: int) -> bytes:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    metadata.data_class = data_class
    return metadata.SerializeToString()


_SCALAR = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_IMAGES = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def write_scalar(tag: str, value: float, step: int) -> None:
    """Writes a scalar to the default summary writer."""
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=_SCALAR)


def write_images(tag: str, images: np.ndarray, step: int) -> None:
    """Writes (N, H, W, 3) uint8 RGB images to the default summary writer (as PNGs).

    Args:
        tag: Summary tag.
        images: The images.
        step: Global step (the epoch).
    """
    images = np.asarray(images, np.uint8)
    height, width = images.shape[1:3]
    encoded = [tf.io.encode_png(image).numpy() for image in images]
    tensor = tf.constant([str(width).encode(), str(height).encode(), *encoded])
    tf.summary.write(tag, tensor, step=step, metadata=_IMAGES)
