"""Mask R-CNN's mask branch (He et al. 2017, Fig. 4, the "C4"/FPN-style head).

Per RoI, on its RoIAlign features (14 x 14 in the paper): `num_convs` 3 x 3 convolutions of
`filters` channels with ReLU, a 2 x 2 stride-2 transposed convolution (`filters`, ReLU) to
28 x 28, and a 1 x 1 convolution to one mask logit map per class ("we predict a binary mask
for each class independently", the sigmoid being applied by the loss or at inference).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dense")
class MaskHead(keras.layers.Layer):
    """The mask branch applied to every RoI of a batch at once.

    Input: RoI features (B, R, P, P, C) from `RoIPooling(mode="align")`; R may be dynamic.
    Output: (B, R, 2P, 2P, num_classes) mask logits, channel `k - 1` for class `k`
    (background has no mask).

    The RoIs are folded into the batch axis, so the convolutions are ordinary `Conv2D`
    layers (weights `mask_conv1` ... `mask_convN`, `mask_deconv`, `mask_logits`).

    Args:
        num_classes: Object classes K (without background).
        filters: Channels of the convolutions (256).
        num_convs: 3 x 3 convolutions before the upsampling (4).
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(self, num_classes: int, filters: int = 256, num_convs: int = 4, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_classes", num_classes), ("filters", filters)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"num_convs={num_convs!r}: expected an int >= 0")
        self.num_classes = num_classes
        self.filters = filters
        self.num_convs = num_convs
        init = keras.initializers.HeNormal()
        common = {"dtype": self.dtype_policy, "kernel_initializer": init}
        self.convs = [
            keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"mask_conv{i + 1}", **common
            )
            for i in range(num_convs)
        ]
        self.deconv = keras.layers.Conv2DTranspose(
            filters, 2, strides=2, activation="relu", name="mask_deconv", **common
        )
        self.predictor = keras.layers.Conv2D(
            num_classes,
            1,
            name="mask_logits",
            dtype=self.dtype_policy,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        )

    def build(self, input_shape):
        pool_h, pool_w, channels = input_shape[2], input_shape[3], input_shape[4]
        shape = (None, pool_h, pool_w, channels)
        for conv in self.convs:
            conv.build(shape)
            shape = (None, pool_h, pool_w, self.filters)
        self.deconv.build(shape)
        up = (None, 2 * pool_h, 2 * pool_w, self.filters)
        self.predictor.build(up)

    def call(self, inputs):
        shape = ops.shape(inputs)
        x = ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))
        for conv in self.convs:
            x = conv(x)
        x = self.predictor(self.deconv(x))
        return ops.reshape(x, (shape[0], shape[1], 2 * shape[2], 2 * shape[3], self.num_classes))

    def compute_output_shape(self, input_shape):
        pool_h, pool_w = input_shape[2], input_shape[3]
        return (
            input_shape[0],
            input_shape[1],
            None if pool_h is None else 2 * pool_h,
            None if pool_w is None else 2 * pool_w,
            self.num_classes,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "filters": self.filters, "num_convs": self.num_convs}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_dense")
class ClassMasks(keras.layers.Layer):
    """Each detection's mask probabilities: the sigmoid of its class's channel.

    At test time Mask R-CNN uses "the k-th mask, where k is the predicted class by the
    classification branch" (He et al. 2017, Sec. 3.1).

    Inputs: `[mask_logits (B, D, M, M, K), classes (B, D) int 1-based (0: no detection)]`.
    Output: (B, D, M, M) probabilities, 0 for class 0.

    Args:
        **kwargs: Standard layer keyword arguments.
    """

    def call(self, inputs):
        logits, classes = inputs
        classes = ops.cast(classes, "int32")
        channel = ops.maximum(classes - 1, 0)[:, :, None, None, None]
        chosen = ops.take_along_axis(logits, channel, axis=-1)[..., 0]
        valid = ops.cast(classes > 0, chosen.dtype)[:, :, None, None]
        return ops.sigmoid(chosen) * valid

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:4])
