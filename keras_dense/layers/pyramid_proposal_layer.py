"""The proposal layer of an RPN on a feature pyramid (FPN, Lin et al. 2017, Sec. 4.1).

The shared RPN head runs on every level P2 ... P6; each level has anchors of one size (32 ...
512 px) at every ratio (`keras_dense.detection.pyramid_anchors`). The proposals of all levels
are gathered first (the levels' outputs flattened and concatenated in level order, which is
the anchors' order), then go through `ProposalLayer`'s steps once: decode, clip, minimum
size, the `pre_nms_top_n` best over all levels, NMS, the `post_nms_top_n` best.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_dense.detection.anchors import (
    DEFAULT_RATIOS,
    FPN_ANCHOR_SIZES,
    FPN_STRIDES,
    pyramid_anchors,
)
from keras_dense.layers.proposal_layer import ProposalLayer, propose_on_anchors


@keras.saving.register_keras_serializable(package="keras_dense")
class PyramidProposalLayer(ProposalLayer):
    """`ProposalLayer` over the levels of a feature pyramid (module docstring).

    Inputs: `[objectness_1, ..., objectness_L, box_deltas_1, ..., box_deltas_L, image_shape]`
    and optionally `scale` last: the RPN head's outputs on each level, (B, H_l, W_l, A) and
    (B, H_l, W_l, 4A) with A = len(ratios), in the order of `strides`. Outputs as
    `ProposalLayer`'s.

    Args:
        strides: Input pixels per cell of each level ((4, 8, 16, 32, 64): P2 ... P6).
        sizes: Anchor side at ratio 1 of each level ((32, 64, 128, 256, 512)).
        ratios: Anchor height / width ratios ((0.5, 1, 2)).
        **kwargs: `ProposalLayer`'s counts, `nms_iou`, `min_size`, `box_stds` and the
            standard layer keyword arguments.
    """

    def __init__(
        self,
        strides: Sequence[int] = FPN_STRIDES,
        sizes: Sequence[float] = FPN_ANCHOR_SIZES,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        **kwargs,
    ):
        kwargs.pop("stride", None)
        kwargs.pop("scales", None)
        strides = tuple(strides)
        sizes = tuple(float(s) for s in sizes)
        if not strides or len(strides) != len(sizes):
            raise ValueError(
                f"strides={list(strides)!r}, sizes={list(sizes)!r}: expected one anchor size "
                "per pyramid level"
            )
        for stride in strides:
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
                raise ValueError(f"strides={list(strides)!r}: expected positive ints")
        # ProposalLayer checks the counts, ratios and the sizes (as one-size "scales").
        super().__init__(stride=strides[0], scales=sizes, ratios=ratios, **kwargs)
        self.num_anchors = len(self.ratios)
        self.strides = strides
        self.sizes = sizes

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def _split(self, inputs):
        levels = self.num_levels
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (
            2 * levels + 1,
            2 * levels + 2,
        ):
            got = f"{len(inputs)} inputs" if isinstance(inputs, (list, tuple)) else inputs
            raise ValueError(
                f"PyramidProposalLayer inputs: expected {levels} objectness maps, {levels} "
                f"box-delta maps, image_shape and optionally scale, got {got}"
            )
        objectness = list(inputs[:levels])
        deltas = list(inputs[levels : 2 * levels])
        rest = list(inputs[2 * levels :])
        return objectness, deltas, rest[0], rest[1] if len(rest) == 2 else None

    def build(self, input_shape):
        objectness, deltas, *_ = self._split(input_shape)
        for stride, o, d in zip(self.strides, objectness, deltas):
            if o[-1] not in (None, self.num_anchors) or d[-1] not in (None, 4 * self.num_anchors):
                raise ValueError(
                    f"level at stride {stride}: expected objectness with {self.num_anchors} "
                    f"channels (len(ratios)) and box deltas with {4 * self.num_anchors}, got "
                    f"shapes {tuple(o)} and {tuple(d)}"
                )

    def anchors(self, objectness_maps) -> tf.Tensor:
        """The concatenated anchors of the levels, for their objectness maps (B, H_l, W_l, A)."""
        shapes = [tf.shape(o)[1:3] for o in objectness_maps]
        return pyramid_anchors(shapes, self.strides, self.sizes, self.ratios)

    def call(self, inputs, training=None):
        objectness, deltas, image_shape, scale = self._split(inputs)
        batch = tf.shape(objectness[0])[0]
        pre, post = (
            (self.train_pre_nms_top_n, self.train_post_nms_top_n)
            if training
            else (self.test_pre_nms_top_n, self.test_post_nms_top_n)
        )
        return propose_on_anchors(
            tf.concat([tf.reshape(tf.cast(o, tf.float32), [batch, -1]) for o in objectness], 1),
            tf.concat([tf.reshape(tf.cast(d, tf.float32), [batch, -1, 4]) for d in deltas], 1),
            self.anchors(objectness),
            image_shape,
            scale,
            pre_nms_top_n=pre,
            post_nms_top_n=post,
            nms_iou=self.nms_iou,
            min_size=self.min_size,
            box_stds=self.box_stds,
        )

    def compute_output_shape(self, input_shape):
        batch = self._split(input_shape)[0][0][0]
        count = self.test_post_nms_top_n
        return [(batch, count, 4), (batch, count), (batch,)]

    def compute_output_spec(self, inputs, training=None):
        objectness = self._split(inputs)[0]
        shapes = self.compute_output_shape([tuple(x.shape) for x in objectness] * 2 + [None])
        dtypes = ("float32", "float32", "int32")
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]

    def get_config(self):
        config = super().get_config()
        del config["stride"], config["scales"]
        config.update({"strides": list(self.strides), "sizes": list(self.sizes)})
        return config
