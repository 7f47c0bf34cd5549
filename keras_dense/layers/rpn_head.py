"""The Region Proposal Network head (Ren et al., Faster R-CNN, 2015, Sec. 3.1).

A 3 x 3 convolution (512 channels for VGG16, ReLU) slides over the shared feature map; two
sibling 1 x 1 convolutions give, for each of the A anchors of every cell, one objectness
logit (`cls`) and four box deltas `(dx, dy, dw, dh)` (`reg`). The objectness is a single
logit per anchor read through a sigmoid (probability that the anchor holds an object);
py-faster-rcnn's 2A-way softmax over (background, object) pairs is the same model, since a
two-way softmax depends only on the difference of its logits.

Channel layout: objectness channel `a` and delta channels `4a ... 4a + 3` belong to anchor
`a` of the cell, in the order of `keras_dense.detection.anchors.generate_anchors`, so
`flatten_rpn_outputs` lines them up with the (H * W * A, 4) anchors.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dense")
class RPNHead(keras.layers.Layer):
    """The RPN's shared 3 x 3 conv + ReLU and its objectness / box-delta 1 x 1 convs.

    Input: (B, H, W, C) feature map. Outputs: `[objectness (B, H, W, A), box_deltas
    (B, H, W, 4A)]`, objectness as logits. The weights start as in the paper: zero-mean
    Gaussians with standard deviation 0.01, zero biases.

    Args:
        num_anchors: Anchors per cell A (9: 3 scales x 3 ratios).
        filters: Channels of the 3 x 3 conv (512 for VGG16, 256 for ZF).
        kernel_initializer: Initialiser of the three kernels; None for the paper's
            `RandomNormal(stddev=0.01)`.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        num_anchors: int = 9,
        filters: int = 512,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("num_anchors", num_anchors), ("filters", filters)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        self.num_anchors = num_anchors
        self.filters = filters
        if kernel_initializer is None:
            initializer = keras.initializers.RandomNormal(stddev=0.01)
        else:
            try:
                initializer = keras.initializers.get(kernel_initializer)
            except ValueError as error:
                raise ValueError(
                    f"kernel_initializer={kernel_initializer!r}: expected None or a Keras "
                    "initializer"
                ) from error
        self.kernel_initializer = (
            None if kernel_initializer is None else keras.initializers.serialize(initializer)
        )

        def conv(units, size, name, activation=None):
            return keras.layers.Conv2D(
                units,
                size,
                padding="same",
                activation=activation,
                kernel_initializer=initializer,
                dtype=self.dtype_policy,
                name=name,
            )

        self.conv = conv(filters, 3, "rpn_conv", "relu")
        self.objectness = conv(num_anchors, 1, "rpn_cls_score")
        self.box_deltas = conv(4 * num_anchors, 1, "rpn_bbox_pred")

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError("RPNHead: the feature map needs a known number of channels")
        self.conv.build(input_shape)
        hidden = (*input_shape[:-1], self.filters)
        self.objectness.build(hidden)
        self.box_deltas.build(hidden)

    def call(self, inputs):
        hidden = self.conv(inputs)
        return [self.objectness(hidden), self.box_deltas(hidden)]

    def compute_output_shape(self, input_shape):
        leading = tuple(input_shape[:-1])
        return [(*leading, self.num_anchors), (*leading, 4 * self.num_anchors)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_anchors": self.num_anchors,
                "filters": self.filters,
                "kernel_initializer": self.kernel_initializer,
            }
        )
        return config


def flatten_rpn_outputs(objectness, box_deltas):
    """Reshapes the head's maps to one row per anchor, in `generate_anchors` order.

    Args:
        objectness: (B, H, W, A) logits.
        box_deltas: (B, H, W, 4A) deltas.

    Returns:
        `(objectness (B, H * W * A), box_deltas (B, H * W * A, 4))`.
    """
    batch = ops.shape(objectness)[0]
    return ops.reshape(objectness, (batch, -1)), ops.reshape(box_deltas, (batch, -1, 4))
