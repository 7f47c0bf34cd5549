"""Atrous Spatial Pyramid Pooling (ASPP), the context module of DeepLabv3 / DeepLabv3+.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (2017), Sec. 3.3,
and "Encoder-Decoder with Atrous Separable Convolution" (ECCV 2018). Five parallel branches
look at the same feature map with different fields of view:

- a 1x1 convolution,
- three 3x3 atrous convolutions with rates `atrous_rates` (6, 12, 18 at output stride 16),
- image-level features: global average pooling, a 1x1 convolution, and upsampling back to the
  feature map's size (read at run time, so any input size works).

Every branch has `filters` channels followed by batch normalisation and ReLU. The branches are
concatenated and projected by a 1x1 convolution (BN, ReLU) and dropout (0.1 in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

# Batch-norm epsilon of the reference DeepLab implementation.
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="keras_dense")
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling.

    Input `(B, h, w, C)`, output `(B, h, w, filters)` for any `h`, `w`.

    Args:
        filters: Channels of every branch and of the projection (256 in the paper).
        atrous_rates: Dilation rates of the three 3x3 branches.
        dropout: Dropout rate after the projection (training only).
        kernel_initializer: Initializer of the convolution kernels.
        **kwargs: Standard layer keyword arguments (e.g. `name="aspp"`).
    """

    def __init__(
        self,
        filters: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        kernel_initializer: str | dict = "he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(filters) < 1:
            raise ValueError(f"filters={filters!r}: expected a positive integer")
        rates = tuple(int(r) for r in atrous_rates)
        if len(rates) != 3 or min(rates) < 1:
            raise ValueError(
                f"atrous_rates={atrous_rates!r}: expected three positive integer dilation rates"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")
        self.filters = int(filters)
        self.atrous_rates = rates
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ASPP needs a known number of input channels")
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        # (name, kernel size, dilation rate). Index 0: the 1x1 branch, 1-3: the atrous
        # branches, 4: the image-pooling branch, 5: the projection of the concatenation.
        specs = [("aspp0", 1, 1)]
        specs += [(f"aspp{i}", 3, rate) for i, rate in enumerate(self.atrous_rates, 1)]
        specs += [("image_pooling", 1, 1), ("concat_projection", 1, 1)]
        self.convs = []
        self.norms = []
        for name, kernel_size, rate in specs:
            self.convs.append(
                keras.layers.Conv2D(
                    self.filters,
                    kernel_size,
                    padding="same",
                    dilation_rate=rate,
                    use_bias=False,
                    kernel_initializer=self.kernel_initializer,
                    dtype=self.dtype_policy,
                    name=f"{name}_conv",
                )
            )
            self.norms.append(
                keras.layers.BatchNormalization(
                    epsilon=BN_EPSILON, dtype=self.dtype_policy, name=f"{name}_bn"
                )
            )
        self.projection_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="concat_projection_dropout"
        )

        in_shapes = [(batch, height, width, channels)] * 4
        in_shapes += [(batch, 1, 1, channels), (batch, height, width, 5 * self.filters)]
        for conv, norm, shape in zip(self.convs, self.norms, in_shapes):
            conv.build(shape)
            norm.build(shape[:3] + (self.filters,))
        self.built = True

    def _conv_bn_relu(self, index: int, x, training):
        return ops.relu(self.norms[index](self.convs[index](x), training=training))

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        branches = [self._conv_bn_relu(i, inputs, training) for i in range(4)]

        # Image-level features: the mean over the feature map, a 1x1 conv, then upsampled back
        # to the run-time (h, w). Bilinear upsampling of a 1x1 map is a broadcast.
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)
        pooled = self._conv_bn_relu(4, pooled, training)
        branches.append(ops.broadcast_to(pooled, (shape[0], shape[1], shape[2], self.filters)))

        x = ops.concatenate(branches, axis=-1)
        x = self._conv_bn_relu(5, x, training)
        return self.projection_dropout(x, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[2], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "atrous_rates": list(self.atrous_rates),
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
