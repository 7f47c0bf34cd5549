"""The Feature Pyramid Network's top-down pathway (Lin et al., CVPR 2017, Sec. 3).

From the last feature maps of the backbone's stages `C2 ... C5` (strides 4 ... 32):

1. a lateral 1 x 1 convolution brings every `C_k` to `channels` (256);
2. top-down, from the coarsest: `M5 = lateral(C5)`, `M_k = lateral(C_k) + up(M_{k+1})`,
   `up` the x 2 nearest-neighbour upsampling (cell `i` of the finer map reads cell `i // 2`),
   cut to `C_k`'s size, or extended by repeating its last row / column when a "valid"
   pooling (VGG16's) rounded the coarser size down;
3. a 3 x 3 convolution on every merged map gives `P_k` ("to reduce the aliasing effect of
   upsampling"), no non-linearity, as the paper;
4. `P6`, for the RPN's largest anchors only, subsamples `P5` by a max pooling with a 1 x 1
   window and stride 2 (`P5[:, ::2, ::2]`).

Layer names inside the layer: `fpn_lateral{k}` and `fpn_output{k}`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

MIN_LEVEL = 2


def upsample_to(coarse: tf.Tensor, fine: tf.Tensor) -> tf.Tensor:
    """`coarse` upsampled x 2 by nearest neighbour to `fine`'s height and width.

    Cell `i` of the result is cell `i // 2` of `coarse`; a result one cell short (the coarse
    size was rounded down) repeats its last row or column.
    """
    up = tf.repeat(tf.repeat(coarse, 2, axis=1), 2, axis=2)
    size = tf.shape(fine)[1:3]
    up = up[:, : size[0], : size[1], :]
    short = tf.maximum(size - tf.shape(up)[1:3], 0)
    return tf.pad(up, [[0, 0], [0, short[0]], [0, short[1]], [0, 0]], mode="SYMMETRIC")


@keras.saving.register_keras_serializable(package="keras_dense")
class FeaturePyramid(keras.layers.Layer):
    """`[C2, ..., C5] -> [P2, ..., P5, P6]` (module docstring).

    Inputs: a list of `num_levels` feature maps (B, H_k, W_k, C_k), finest first, each at
    half the resolution of the previous (up to rounding). Outputs: `num_levels + 1` maps
    (B, H_k, W_k, channels), the last one `P6` at half of `P5`'s size (rounded up).

    Args:
        channels: Channels of every pyramid level (256).
        num_levels: Backbone maps taken (4: C2 ... C5).
        kernel_initializer: Initialiser of the convolutions ("he_uniform").
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        channels: int = 256,
        num_levels: int = 4,
        kernel_initializer="he_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("channels", channels), ("num_levels", num_levels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        try:
            initializer = keras.initializers.get(kernel_initializer)
        except ValueError as error:
            raise ValueError(
                f"kernel_initializer={kernel_initializer!r}: expected a Keras initializer"
            ) from error
        self.channels = channels
        self.num_levels = num_levels
        self.kernel_initializer = keras.initializers.serialize(initializer)
        levels = range(MIN_LEVEL, MIN_LEVEL + num_levels)

        def conv(size, name):
            return keras.layers.Conv2D(
                channels,
                size,
                padding="same",
                kernel_initializer=keras.initializers.get(self.kernel_initializer),
                dtype=self.dtype_policy,
                name=name,
            )

        self.laterals = [conv(1, f"fpn_lateral{k}") for k in levels]
        self.smoothing = [conv(3, f"fpn_output{k}") for k in levels]

    def _check(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != self.num_levels:
            got = len(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape
            raise ValueError(
                f"FeaturePyramid inputs: expected a list of {self.num_levels} feature maps "
                f"(C{MIN_LEVEL} ... C{MIN_LEVEL + self.num_levels - 1}), got {got}"
            )

    def build(self, input_shape):
        self._check(input_shape)
        for shape, lateral, output in zip(input_shape, self.laterals, self.smoothing):
            if shape[-1] is None:
                raise ValueError("FeaturePyramid: every feature map needs a known channel count")
            lateral.build(shape)
            output.build((*shape[:-1], self.channels))

    def call(self, inputs):
        self._check(inputs)
        merged = [None] * self.num_levels
        for k in reversed(range(self.num_levels)):
            lateral = self.laterals[k](inputs[k])
            if k + 1 < self.num_levels:
                lateral = lateral + tf.cast(upsample_to(merged[k + 1], lateral), lateral.dtype)
            merged[k] = lateral
        pyramid = [conv(m) for conv, m in zip(self.smoothing, merged)]
        pyramid.append(pyramid[-1][:, ::2, ::2, :])  # max pooling, 1 x 1 window, stride 2
        return pyramid

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        shapes = [(*shape[:-1], self.channels) for shape in input_shape]
        batch, height, width, _ = shapes[-1]
        half = [None if s is None else (s + 1) // 2 for s in (height, width)]
        return [*shapes, (batch, *half, self.channels)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "num_levels": self.num_levels,
                "kernel_initializer": self.kernel_initializer,
            }
        )
        return config
