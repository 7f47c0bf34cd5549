"""Layers that bring one feature map to the spatial size of another."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dense")
class ResizeToMatch(keras.layers.Layer):
    """Resizes `inputs[0]` to the height and width of `inputs[1]`.

    The target size is read from the reference tensor at run time, so the layer
    works for dynamic input sizes (unlike `keras.layers.Resizing`).

    Args:
        interpolation: Interpolation passed to `keras.ops.image.resize`.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        static = reference.shape[1:3]
        if None not in static:
            return ops.image.resize(
                x, tuple(static), interpolation=self.interpolation, data_format="channels_last"
            )
        # A size known only at run time: keras.ops.image.resize compares the size with 0 in
        # Python (Keras 3.15), which fails on a symbolic size inside tf.function; the job is
        # TensorFlow's here (same half-pixel sampling).
        size = tf.shape(reference)[1:3]
        resized = tf.image.resize(x, size, method=self.interpolation)
        return tf.cast(resized, x.dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"interpolation": self.interpolation})
        return config


@keras.saving.register_keras_serializable(package="keras_dense")
class CropToMatch(keras.layers.Layer):
    """Crops `inputs[0]` to the height and width of `inputs[1]`.

    Args:
        offset: `(top, left)` offset of the crop, or `"center"` to centre it.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(self, offset: tuple[int, int] | str = "center", **kwargs):
        super().__init__(**kwargs)
        if offset != "center":
            offset = (int(offset[0]), int(offset[1]))
        self.offset = offset

    def call(self, inputs):
        x, reference = inputs
        x_shape = ops.shape(x)
        ref_shape = ops.shape(reference)
        if self.offset == "center":
            top = (x_shape[1] - ref_shape[1]) // 2
            left = (x_shape[2] - ref_shape[2]) // 2
        else:
            top, left = self.offset
        return ops.slice(x, (0, top, left, 0), (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3]))

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"offset": self.offset})
        return config
