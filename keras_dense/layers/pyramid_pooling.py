"""The pyramid pooling module of PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017).

The feature map is average-pooled into `b x b` grids for each bin count `b` (1, 2, 3, 6 in the
paper), each pooled map is reduced by a 1x1 convolution (batch norm, ReLU) to
`channels / len(bins)` channels, bilinearly upsampled back to the feature map's size, and the
results are concatenated with the features: `(B, h, w, C)` to `(B, h, w, C + len(bins) * f)`.

Adaptive average pooling (`adaptive_average_pool2d`) uses the bins of PyTorch's
`adaptive_avg_pool2d`: along an axis of size `n` split into `b` bins, bin `i` averages the cells
`[floor(i n / b), ceil((i + 1) n / b))`. Every bin holds at least one cell, so bin counts larger
than the feature map work too: then neighbouring bins share cells (on a 2-cell axis with 6 bins,
bins 0-2 are cell 0 and bins 3-5 cell 1). The bins are computed from the run-time size, so
the layer takes any input size; pooling is one weighted sum per axis (a `b x n` matrix of bin
weights), computed in float32. The upsampling is bilinear with half-pixel centres (as
`keras_dense.layers.ResizeToMatch`; the paper's Caffe code aligns corners, which differs
only for bins of 2 or more cells).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from keras_dense.layers.aspp import BN_EPSILON


def adaptive_bin_weights(size, bins: int) -> tf.Tensor:
    """The `(bins, size)` float32 matrix whose row `i` averages the cells of bin `i`.

    Args:
        size: The axis length `n` (an int or a scalar int tensor known at run time).
        bins: The number of bins `b`.

    Returns:
        `w[i, k] = 1 / (end_i - start_i)` for `start_i <= k < end_i`, else 0, with
        `start_i = floor(i n / b)` and `end_i = ceil((i + 1) n / b)`.
    """
    size = tf.cast(size, tf.int32)
    index = tf.range(bins, dtype=tf.int32)
    start = (index * size) // bins
    end = -((-(index + 1) * size) // bins)
    cells = tf.range(size, dtype=tf.int32)
    inside = (cells[None, :] >= start[:, None]) & (cells[None, :] < end[:, None])
    counts = tf.cast(end - start, tf.float32)[:, None]
    return tf.cast(inside, tf.float32) / counts


def adaptive_average_pool2d(x, bins: int | tuple[int, int]) -> tf.Tensor:
    """Adaptive average pooling of `(B, H, W, C)` into `(B, bh, bw, C)` (module docstring).

    Args:
        x: Features `(B, H, W, C)`; `H`, `W` may be known only at run time.
        bins: `b` or `(bh, bw)`: the output grid.

    Returns:
        The pooled features, in float32.
    """
    bins_h, bins_w = (bins, bins) if isinstance(bins, int) else bins
    shape = tf.shape(x)
    rows = adaptive_bin_weights(shape[1], bins_h)
    cols = adaptive_bin_weights(shape[2], bins_w)
    return tf.einsum("ih,bhwc,jw->bijc", rows, tf.cast(x, tf.float32), cols)


def _check_bins(bins) -> tuple[int, ...]:
    if isinstance(bins, (int, str)) or not isinstance(bins, Sequence) or not bins:
        raise ValueError(f"bins={bins!r}: expected a non-empty sequence of positive integers")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins):
        raise ValueError(f"bins={bins!r}: expected a non-empty sequence of positive integers")
    return tuple(int(b) for b in bins)


@keras.saving.register_keras_serializable(package="keras_dense")
class PyramidPooling(keras.layers.Layer):
    """PSPNet's pyramid pooling module.

    Input `(B, h, w, C)`, output `(B, h, w, C + len(bins) * filters)`: the input followed by
    one upsampled branch per bin count, for any `h`, `w` (bins larger than the map included).

    Args:
        bins: Grid sizes of the pooled branches ((1, 2, 3, 6) in the paper).
        filters: Channels of each branch's 1x1 convolution; `None` means
            `C // len(bins)` (the paper's reduction to 1/N of the channels).
        kernel_initializer: Initializer of the 1x1 convolution kernels.
        **kwargs: Standard layer keyword arguments (e.g. `name="pyramid_pooling"`).

    Raises:
        ValueError: Bad `bins` or `filters`.
    """

    def __init__(
        self,
        bins: Sequence[int] = (1, 2, 3, 6),
        filters: int | None = None,
        kernel_initializer: str | dict = "he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bins = _check_bins(bins)
        if filters is not None and (
            isinstance(filters, bool) or not isinstance(filters, int) or filters < 1
        ):
            raise ValueError(f"filters={filters!r}: expected None or a positive integer")
        self.filters = filters
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _branch_filters(self, channels: int) -> int:
        if self.filters is not None:
            return self.filters
        if channels < len(self.bins):
            raise ValueError(
                f"PyramidPooling with filters=None: {channels} input channels cannot be "
                f"split over {len(self.bins)} bins; give filters"
            )
        return channels // len(self.bins)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("PyramidPooling needs a known number of input channels")
        filters = self._branch_filters(channels)
        self.convs, self.norms = [], []
        for b in self.bins:
            conv = keras.layers.Conv2D(
                filters,
                1,
                use_bias=False,
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
                name=f"pool{b}_conv",
            )
            norm = keras.layers.BatchNormalization(
                epsilon=BN_EPSILON, dtype=self.dtype_policy, name=f"pool{b}_bn"
            )
            conv.build((input_shape[0], b, b, channels))
            norm.build((input_shape[0], b, b, filters))
            self.convs.append(conv)
            self.norms.append(norm)
        self.built = True

    def call(self, inputs, training=None):
        size = tf.shape(inputs)[1:3]
        branches = [inputs]
        for b, conv, norm in zip(self.bins, self.convs, self.norms):
            pooled = ops.cast(adaptive_average_pool2d(inputs, b), self.compute_dtype)
            pooled = ops.relu(norm(conv(pooled), training=training))
            resized = tf.image.resize(pooled, size, method="bilinear")
            branches.append(ops.cast(resized, self.compute_dtype))
        return ops.concatenate(branches, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1] + len(self.bins) * self._branch_filters(input_shape[-1])
        return (*input_shape[:3], channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bins": list(self.bins),
                "filters": self.filters,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
