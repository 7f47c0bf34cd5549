"""`keras.layers.TimeDistributed` with bounded memory: the inner layer runs chunk by chunk.

R-CNN runs a whole VGG16 on every warped region: for 2000 regions of 224 x 224 the first
convolution alone would hold 2000 x 224 x 224 x 64 floats (26 GB). `ChunkedTimeDistributed`
flattens the two leading axes `(B, R)` into `N = B * R` items and feeds them to the wrapped
layer in `ceil(N / chunk_size)` chunks of equal size (at most `chunk_size`, the last padded
with zeros), one after another inside the graph (`tf.map_fn`, `parallel_iterations=1`), so
the peak activation memory is that of one chunk. The gradient flows through the loop as
usual (training keeps every chunk's activations for the backward pass, as without chunks).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_dense")
class ChunkedTimeDistributed(keras.layers.Wrapper):
    """Applies `layer` to every `(b, r)` item of a `(B, R, ...)` input, in chunks.

    Output: `(B, R, ...)` where `...` is the wrapped layer's output shape for one item.

    Args:
        layer: The `keras.layers.Layer` (or functional model) applied to `(n, ...)` batches.
        chunk_size: Largest number of items per call of `layer`; None runs all `B * R` items
            in one call (the same as `keras.layers.TimeDistributed`, without the loop).
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(self, layer, chunk_size: int | None = None, **kwargs):
        super().__init__(layer, **kwargs)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size={chunk_size!r}: expected None or a positive int")
        self.chunk_size = chunk_size

    @staticmethod
    def _item_shape(input_shape):
        if len(input_shape) < 3:
            raise ValueError(
                f"ChunkedTimeDistributed: expected an input (B, R, ...) of rank >= 3, got "
                f"shape {tuple(input_shape)}"
            )
        return (None, *input_shape[2:])

    def build(self, input_shape):
        super().build(self._item_shape(input_shape))

    def compute_output_shape(self, input_shape):
        item = self.layer.compute_output_shape(self._item_shape(input_shape))
        return (input_shape[0], input_shape[1], *item[1:])

    def compute_output_spec(self, inputs, training=None):
        shape = self.compute_output_shape(inputs.shape)
        item = self.layer.compute_output_spec(
            keras.KerasTensor(self._item_shape(inputs.shape), dtype=inputs.dtype)
        )
        return keras.KerasTensor(shape, dtype=item.dtype)

    def _apply(self, items, training):
        if getattr(self.layer, "_call_has_training_arg", False):
            return self.layer(items, training=training)
        return self.layer(items)

    def call(self, inputs, training=None):
        shape = tf.shape(inputs)
        leading, trailing = shape[:2], shape[2:]
        count = leading[0] * leading[1]
        items = tf.reshape(inputs, tf.concat([[count], trailing], 0))
        item_shape = self._item_shape(inputs.shape)
        if self.chunk_size is None:
            out = self._apply(items, training)
        else:
            chunks = tf.maximum((count + self.chunk_size - 1) // self.chunk_size, 1)
            size = tf.maximum((count + chunks - 1) // chunks, 1)
            padding = chunks * size - count
            rank = len(inputs.shape)
            pads = tf.concat([[[0, padding]], tf.zeros([rank - 2, 2], tf.int32)], 0)
            padded = tf.pad(items, pads)
            grouped = tf.reshape(padded, tf.concat([[chunks, size], trailing], 0))
            spec = self.layer.compute_output_spec(keras.KerasTensor(item_shape, dtype=inputs.dtype))
            out = tf.map_fn(
                lambda chunk: self._apply(tf.ensure_shape(chunk, item_shape), training),
                grouped,
                fn_output_signature=tf.TensorSpec((None, *spec.shape[1:]), spec.dtype),
                parallel_iterations=1,
            )
            out_trailing = tf.shape(out)[2:]
            out = tf.reshape(out, tf.concat([[chunks * size], out_trailing], 0))[:count]
        out = tf.reshape(out, tf.concat([leading, tf.shape(out)[1:]], 0))
        return tf.ensure_shape(out, [None, None, *self.compute_output_shape(inputs.shape)[2:]])

    def get_config(self):
        config = super().get_config()
        config["chunk_size"] = self.chunk_size
        return config
