"""A layer that undoes an input normalisation, giving back the raw 0-255 RGB image."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_dense.utils.normalization import check_mode, finish, mean_pixel


@keras.saving.register_keras_serializable(package="keras_dense")
class Denormalization(keras.layers.Layer):
    """Inverts `keras_dense.utils.normalization.normalize`: normalised image -> 0-255 RGB.

    Each mode is an affine map per channel (`"caffe"` also reverses RGB to BGR), inverted
    exactly here. Used to feed the raw image to a CRF inside a model whose input is normalised.

    Args:
        normalization: `"caffe"`, `"torch"`, `"tf"` or None (identity).
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(self, normalization: str | None = "caffe", **kwargs):
        super().__init__(**kwargs)
        check_mode(normalization)
        self.normalization = normalization

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("Denormalization needs a known number of channels")
        # normalize(x) = finish(x - mean): finish is linear per channel (with a channel
        # reversal for caffe), so its matrix inverse undoes it exactly.
        matrix = np.asarray(finish(tf.eye(channels), self.normalization), np.float64)
        self._inverse = np.linalg.inv(matrix).astype(np.float32)
        self._mean = mean_pixel(self.normalization, channels).astype(np.float32)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        return tf.einsum("...c,cd->...d", x, self._inverse) + self._mean

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, inputs):
        # Always float32, whatever the dtype policy: the CRF needs exact 0-255 values.
        return keras.KerasTensor(inputs.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"normalization": self.normalization})
        return config
