"""Max pooling that remembers where each maximum was ("switches"), and the matching unpooling.

These are the two layers of the deconvolution network of Noh, Hong and Han (ICCV 2015):
`MaxPoolingWithArgmax2D` returns the pooled map together with the location of every maximum,
and `MaxUnpooling2D` puts each pooled value back at that location, with zeros everywhere else.

Switch encoding (the one of `tf.nn.max_pool_with_argmax(..., include_batch_in_index=False)`):
for an input of shape `(B, H, W, C)`, the switch of a pooled value of image `b` and channel `c`
whose maximum was at row `y`, column `x` is the flat per-image index `(y * W + x) * C + c`.
The batch index is not included, so switches do not depend on the batch size.

Ties: when several positions of a window hold the maximum, the first one in row-major order
(top row first, then left to right) is the switch. Windows that overlap the "same" padding at
the bottom/right border only consider real pixels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_PADDINGS = ("same", "valid")


def _pair(value, argument: str) -> tuple[int, int]:
    """Normalises an int or a pair of ints to a pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{argument}={value!r}: expected a positive int or a pair of them")
    return pair


def _check_padding(padding: str) -> str:
    padding = str(padding).lower()
    if padding not in _PADDINGS:
        raise ValueError(f"padding={padding!r}: expected one of {_PADDINGS}")
    return padding


def pooled_size(size: int | None, pool: int, stride: int, padding: str) -> int | None:
    """Output length of a pooling along one axis (`None` stays `None`).

    Args:
        size: Input length.
        pool: Window length.
        stride: Stride.
        padding: `"same"` (ceil(size / stride), as Caffe for 2x2/2) or `"valid"`.

    Returns:
        The pooled length.
    """
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return (size - pool) // stride + 1


def _in_xla_context() -> bool:
    """Whether the graph being traced is compiled by XLA (`jit_compile=True`).

    `tf.nn.max_pool_with_argmax` has no XLA kernel; outside XLA it is the fastest form
    (about 2x less CPU than the reshape form, which XLA in turn compiles to less than either).
    """
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow without the helper: always portable
        return True
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def _static_or_dynamic(tensor) -> list:
    """Shape of `tensor` as a list, with Python ints where static and scalars elsewhere."""
    dynamic = tf.shape(tensor)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(tensor.shape)]


class _PoolingWindowLayer(keras.layers.Layer):
    """Base of the two layers below: a pooling window (`pool_size`, `strides`, `padding`).

    Args:
        pool_size: Window size, an int or `(height, width)`.
        strides: Stride, an int or a pair; `None` means `pool_size`.
        padding: `"same"` or `"valid"`.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "same",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")
        self.padding = _check_padding(padding)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_dense")
class MaxPoolingWithArgmax2D(_PoolingWindowLayer):
    """2D max pooling that also returns the switches (argmax locations).

    Returns `[pooled, switches]`: `pooled` as `keras.layers.MaxPooling2D` computes it and
    `switches`, int64 of the same shape, holding the flat per-image index
    `(y * W + x) * C + c` of each maximum (see the module docstring for ties). Channels-last
    only. Gradients flow to the input through `pooled`; `switches` are not differentiable.

    Args:
        pool_size: Window size, an int or `(height, width)`.
        strides: Stride, an int or a pair; `None` means `pool_size`.
        padding: `"same"` (default: odd sizes are rounded up, the last window is partial, as
            Caffe's pooling does for 2x2/2) or `"valid"`.
        **kwargs: Standard layer keyword arguments.
    """

    def call(self, inputs):
        if self.pool_size == self.strides and _in_xla_context():
            return self._tiled(inputs)
        pooled, switches = tf.nn.max_pool_with_argmax(
            inputs,
            ksize=(1, *self.pool_size, 1),
            strides=(1, *self.strides, 1),
            padding=self.padding.upper(),
            output_dtype=tf.int64,
            include_batch_in_index=False,
        )
        return [pooled, tf.stop_gradient(switches)]

    def _tiled(self, inputs):
        """Non-overlapping windows (pool == stride, e.g. 2x2/2) from reshapes, max and gather.

        Same outputs and switches as `tf.nn.max_pool_with_argmax`, which XLA cannot compile
        (`jit_compile=True`; this form is used there); the gradient goes to the switch alone,
        as max pooling's.
        """
        (ph, pw), k = self.pool_size, self.pool_size[0] * self.pool_size[1]
        batch, height, width, channels = _static_or_dynamic(inputs)
        if self.padding == "same":
            out_h, out_w = -(-height // ph), -(-width // pw)
            # Real pixels win over the padding; a window's first position is always real.
            lowest = tf.constant(float("-inf"), inputs.dtype)
            padded = tf.pad(
                inputs,
                [[0, 0], [0, out_h * ph - height], [0, out_w * pw - width], [0, 0]],
                constant_values=lowest,
            )
        else:
            out_h, out_w = height // ph, width // pw
            padded = inputs[:, : out_h * ph, : out_w * pw]
        windows = tf.reshape(padded, [batch, out_h, ph, out_w, pw, channels])
        windows = tf.reshape(
            tf.transpose(windows, [0, 1, 3, 5, 2, 4]), [batch, out_h, out_w, channels, k]
        )
        largest = tf.reduce_max(windows, axis=-1, keepdims=True)
        position = tf.range(k, dtype=tf.int32)
        # The first maximum in row-major window order (tf.argmax does not promise it).
        first = tf.reduce_min(tf.where(windows == largest, position, k), axis=-1)
        first = tf.minimum(first, k - 1)  # NaN windows
        pooled = tf.gather(windows, first[..., None], axis=-1, batch_dims=4)[..., 0]
        rows = tf.range(out_h, dtype=tf.int64)[None, :, None, None] * ph
        cols = tf.range(out_w, dtype=tf.int64)[None, None, :, None] * pw
        y = rows + tf.cast(first // pw, tf.int64)
        x = cols + tf.cast(first % pw, tf.int64)
        channel = tf.range(tf.cast(channels, tf.int64), dtype=tf.int64)
        switches = (y * tf.cast(width, tf.int64) + x) * tf.cast(channels, tf.int64) + channel
        return [pooled, tf.stop_gradient(switches)]

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        shape = (
            batch,
            pooled_size(height, self.pool_size[0], self.strides[0], self.padding),
            pooled_size(width, self.pool_size[1], self.strides[1], self.padding),
            channels,
        )
        return [shape, shape]

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)[0]
        return [
            keras.KerasTensor(shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype="int64"),
        ]


@keras.saving.register_keras_serializable(package="keras_dense")
class MaxUnpooling2D(_PoolingWindowLayer):
    """Places each pooled value at the position of its maximum, zeros elsewhere.

    Inputs are `[values, switches]` or `[values, switches, reference]`:
    - `values` `(B, h, w, C)`: the maps to unpool (e.g. the output of a deconvolution whose
      shape matches the pooled map).
    - `switches` `(B, h, w, C)` int: from `MaxPoolingWithArgmax2D`, indices into the
      unpooled `(H, W, C)` map of each image.
    - `reference` (optional) `(B, H, W, ...)`: any tensor with the spatial size of the map
      that was pooled, typically the pooling's own input. Only its shape is read. Pass it
      whenever that size may be odd: the switches are flat indices, so they can only be
      decoded with the exact original width.

    Without `reference` the output size is what the pooling's inverse gives for an exactly
    divisible input: `h * stride` for `"same"` and `(h - 1) * stride + pool` for `"valid"`.

    The unpooling is a single vectorised scatter (`tf.scatter_nd`). If two values share a
    switch (only possible with overlapping windows) they are summed, which is also the
    gradient of max pooling. The gradient w.r.t. `values` is the upstream gradient gathered
    at the switches; `switches` and `reference` get none.

    Args:
        pool_size: Window size of the pooling being inverted.
        strides: Its stride; `None` means `pool_size`.
        padding: Its padding, `"same"` or `"valid"`.
        **kwargs: Standard layer keyword arguments.
    """

    def _unpooled_size(self, size, axis: int):
        if size is None:
            return None
        if self.padding == "same":
            return size * self.strides[axis]
        return (size - 1) * self.strides[axis] + self.pool_size[axis]

    def call(self, inputs):
        if len(inputs) not in (2, 3):
            raise ValueError(
                f"{self.name} expects inputs [values, switches] or [values, switches, "
                f"reference], got {len(inputs)} tensors"
            )
        values, switches = inputs[0], inputs[1]
        batch, height, width, channels = _static_or_dynamic(values)
        if len(inputs) == 3:
            ref_shape = _static_or_dynamic(inputs[2])
            out_height, out_width = ref_shape[1], ref_shape[2]
        else:
            out_height = self._unpooled_size(height, 0)
            out_width = self._unpooled_size(width, 1)
        image_size = tf.cast(out_height * out_width * channels, tf.int64)
        batch_offsets = tf.range(tf.cast(batch, tf.int64), dtype=tf.int64) * image_size
        indices = tf.cast(switches, tf.int64) + tf.reshape(batch_offsets, (-1, 1, 1, 1))
        flat = tf.scatter_nd(
            tf.reshape(indices, (-1, 1)),
            tf.reshape(values, (-1,)),
            shape=tf.reshape(tf.cast(batch, tf.int64) * image_size, (1,)),
        )
        return tf.reshape(flat, [batch, out_height, out_width, channels])

    def compute_output_shape(self, input_shapes):
        values_shape = input_shapes[0]
        if len(input_shapes) == 3:
            height, width = input_shapes[2][1], input_shapes[2][2]
        else:
            height = self._unpooled_size(values_shape[1], 0)
            width = self._unpooled_size(values_shape[2], 1)
        return (values_shape[0], height, width, values_shape[3])
