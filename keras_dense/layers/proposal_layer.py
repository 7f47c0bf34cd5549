"""The RPN's proposal layer (Faster R-CNN, Sec. 3.1; py-faster-rcnn's `proposal_layer`).

Batched and in graph, no loop over images. Per image:

1. objectness logits -> scores by sigmoid; deltas decoded onto the anchors with
   `keras_dense.detection.decode_boxes` (`box_stds`, (1, 1, 1, 1) as RPN targets use);
2. boxes clipped to the image's valid `image_shape` (`clip_boxes`);
3. boxes whose height or width (`ymax - ymin + 1`) is below `min_size * scale` are dropped
   (`scale`: the optional per-image resize factor of the pipeline, 1 otherwise);
4. the `pre_nms_top_n` best-scoring remaining boxes are kept (12000 training / 6000 test);
5. greedy NMS at IoU `nms_iou` (0.7) with the inclusive-pixel IoU of
   `keras_dense.detection.iou_matrix` (a box is suppressed when its IoU with a kept,
   higher-scoring box exceeds `nms_iou`), through one batched
   `tf.image.combined_non_max_suppression` (its IoU uses exclusive extents, so it is given
   boxes with `ymax + 1`, `xmax + 1`, which makes the two IoUs identical). Ties in score
   are broken by anchor index (NMS ranks the boxes by their top-N position, not by score);
6. the first `post_nms_top_n` survivors (2000 training / 300 test), best first.

The outputs are padded to `post_nms_top_n` rows: `[proposals (B, N, 4)` yxyx inclusive
pixels, `scores (B, N)`, `num_proposals (B,)` int32`]`; rows past `num_proposals` are zeros.
They are float32 under any dtype policy (inputs are not autocast): pixel coordinates up to
1000 would lose whole pixels in bfloat16. No gradient flows through the proposals (they are
treated as constants, as in the paper's approximate joint training).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_dense.detection.anchors import (
    DEFAULT_RATIOS,
    DEFAULT_SCALES,
    generate_anchors,
    num_anchors,
)
from keras_dense.detection.boxes import clip_boxes, decode_boxes
from keras_dense.detection.rpn_targets import RPN_BOX_STDS


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive int")
    return value


def propose(
    objectness,
    box_deltas,
    image_shape,
    scale=None,
    stride: float = 16,
    scales: Sequence[float] = DEFAULT_SCALES,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    pre_nms_top_n: int = 6000,
    post_nms_top_n: int = 300,
    nms_iou: float = 0.7,
    min_size: float = 16.0,
    box_stds: Sequence[float] = RPN_BOX_STDS,
) -> list[tf.Tensor]:
    """Proposals of a batch from the RPN head's outputs (steps 1-6 of the module docstring).

    Args:
        objectness: (B, H, W, A) objectness logits.
        box_deltas: (B, H, W, 4A) `(dx, dy, dw, dh)` per anchor.
        image_shape: (B, 2) valid (height, width) of each image in input pixels.
        scale: Optional (B,) resize factor of each image (scales `min_size`).
        stride: Input pixels per feature cell.
        scales: Anchor scales in pixels.
        ratios: Anchor height / width ratios.
        pre_nms_top_n: Boxes kept before NMS.
        post_nms_top_n: Boxes kept after NMS (the padded output length).
        nms_iou: NMS IoU threshold.
        min_size: Smallest proposal side, in pixels of the original image.
        box_stds: Standard deviations the deltas were normalised with.

    Returns:
        `[proposals (B, post_nms_top_n, 4), scores (B, post_nms_top_n), num_proposals (B,)]`.
    """
    shape = tf.shape(objectness)
    anchors = generate_anchors(shape[1], shape[2], stride, scales, ratios)  # (N, 4)
    return propose_on_anchors(
        objectness,
        box_deltas,
        anchors,
        image_shape,
        scale,
        pre_nms_top_n=pre_nms_top_n,
        post_nms_top_n=post_nms_top_n,
        nms_iou=nms_iou,
        min_size=min_size,
        box_stds=box_stds,
    )


def propose_on_anchors(
    objectness,
    box_deltas,
    anchors,
    image_shape,
    scale=None,
    pre_nms_top_n: int = 6000,
    post_nms_top_n: int = 300,
    nms_iou: float = 0.7,
    min_size: float = 16.0,
    box_stds: Sequence[float] = RPN_BOX_STDS,
) -> list[tf.Tensor]:
    """`propose` on given anchors (a feature pyramid's, concatenated over its levels).

    Args:
        objectness: (B, N) logits, or (B, H, W, A) in anchor order.
        box_deltas: (B, N, 4) deltas, or (B, H, W, 4A).
        anchors: (N, 4) anchors, yxyx inclusive pixels.
        image_shape, scale, pre_nms_top_n, post_nms_top_n, nms_iou, min_size, box_stds:
            As for `propose`.

    Returns:
        `[proposals (B, post_nms_top_n, 4), scores (B, post_nms_top_n), num_proposals (B,)]`.
    """
    logits = tf.cast(objectness, tf.float32)
    batch = tf.shape(logits)[0]
    scores = tf.sigmoid(tf.reshape(logits, [batch, -1]))
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [batch, -1, 4])
    size = tf.cast(image_shape, tf.float32)  # (B, 2)
    boxes = clip_boxes(decode_boxes(deltas, anchors[None], box_stds), size[:, None, :])

    smallest = tf.fill([batch], float(min_size))
    if scale is not None:
        smallest = smallest * tf.reshape(tf.cast(scale, tf.float32), [batch])
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    big_enough = (ymax - ymin + 1.0 >= smallest[:, None]) & (xmax - xmin + 1.0 >= smallest[:, None])
    ranked = tf.where(big_enough, scores, -1.0)  # sigmoid scores are >= 0

    k = tf.minimum(pre_nms_top_n, tf.shape(ranked)[1])
    top_scores, top_index = tf.math.top_k(ranked, k=k)  # best first, ties by anchor index
    top_boxes = tf.gather(boxes, top_index, batch_dims=1)
    # NMS sees the rank (k for the best box ... 1) instead of the score: tied scores, common
    # near sigmoid saturation, keep top_k's order, and the kept ranks give back the exact
    # boxes and scores. Boxes too small to keep get rank 0, below the score threshold.
    ranks = tf.cast(k - tf.range(k), tf.float32)[None, :]
    ranks = tf.where(top_scores >= 0.0, ranks, 0.0)
    exclusive = top_boxes + [0.0, 0.0, 1.0, 1.0]
    nmsed = tf.image.combined_non_max_suppression(
        exclusive[:, :, None, :],
        ranks[:, :, None],
        max_output_size_per_class=post_nms_top_n,
        max_total_size=post_nms_top_n,
        iou_threshold=nms_iou,
        score_threshold=0.5,
        pad_per_class=False,
        clip_boxes=False,
    )
    count = nmsed.valid_detections
    kept = tf.range(post_nms_top_n)[None, :] < count[:, None]
    position = tf.where(kept, k - tf.cast(tf.round(nmsed.nmsed_scores), tf.int32), 0)
    proposals = tf.where(kept[..., None], tf.gather(top_boxes, position, batch_dims=1), 0.0)
    out_scores = tf.where(kept, tf.gather(top_scores, position, batch_dims=1), 0.0)
    return [tf.stop_gradient(proposals), tf.stop_gradient(out_scores), count]


@keras.saving.register_keras_serializable(package="keras_dense")
class ProposalLayer(keras.layers.Layer):
    """Turns the RPN head's outputs into padded, NMS-filtered proposals (module docstring).

    Inputs: `[objectness (B, H, W, A), box_deltas (B, H, W, 4A), image_shape (B, 2)]`, plus
    optionally `scale (B,)` (the pipeline's resize factors; `min_size` is multiplied by
    them). `image_shape` is each image's valid (height, width) in input pixels (the
    pipeline's `"image_shape"`). The anchors follow the feature map's (dynamic) size.

    Outputs: `[proposals (B, N, 4) float32, scores (B, N) float32, num_proposals (B,)
    int32]` with N = `train_post_nms_top_n` when called with `training=True`, else
    `test_post_nms_top_n`. Symbolic shapes (`compute_output_shape`, functional models) use
    the test length, since Keras traces layers in inference mode; the real training output
    has its own length, which RoI pooling and the sampling take as it comes.

    Args:
        stride: Input pixels per feature cell (16).
        scales: Anchor scales in pixels ((128, 256, 512)).
        ratios: Anchor height / width ratios ((0.5, 1, 2)).
        train_pre_nms_top_n: Boxes kept before NMS in training (12000).
        train_post_nms_top_n: Boxes kept after NMS in training (2000).
        test_pre_nms_top_n: Boxes kept before NMS at test (6000).
        test_post_nms_top_n: Boxes kept after NMS at test (300).
        nms_iou: NMS IoU threshold (0.7).
        min_size: Smallest proposal side in original-image pixels (16).
        box_stds: Standard deviations of the deltas ((1, 1, 1, 1)).
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        stride: float = 16,
        scales: Sequence[float] = DEFAULT_SCALES,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        train_pre_nms_top_n: int = 12000,
        train_post_nms_top_n: int = 2000,
        test_pre_nms_top_n: int = 6000,
        test_post_nms_top_n: int = 300,
        nms_iou: float = 0.7,
        min_size: float = 16.0,
        box_stds: Sequence[float] = RPN_BOX_STDS,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if isinstance(stride, bool) or not (isinstance(stride, (int, float)) and stride > 0):
            raise ValueError(f"stride={stride!r}: expected a positive number")
        self.num_anchors = num_anchors(scales, ratios)  # checks scales and ratios
        counts = {
            "train_pre_nms_top_n": train_pre_nms_top_n,
            "train_post_nms_top_n": train_post_nms_top_n,
            "test_pre_nms_top_n": test_pre_nms_top_n,
            "test_post_nms_top_n": test_post_nms_top_n,
        }
        for name, value in counts.items():
            _positive_int(value, name)
        if isinstance(nms_iou, bool) or not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou={nms_iou!r}: expected a number in [0, 1]")
        if isinstance(min_size, bool) or not min_size >= 0:
            raise ValueError(f"min_size={min_size!r}: expected a number >= 0")
        if len(box_stds) != 4:
            raise ValueError(f"box_stds={box_stds!r}: expected 4 numbers")
        self.stride = stride
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self.train_pre_nms_top_n = train_pre_nms_top_n
        self.train_post_nms_top_n = train_post_nms_top_n
        self.test_pre_nms_top_n = test_pre_nms_top_n
        self.test_post_nms_top_n = test_post_nms_top_n
        self.nms_iou = float(nms_iou)
        self.min_size = float(min_size)
        self.box_stds = tuple(float(s) for s in box_stds)

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (3, 4):
            raise ValueError(
                "ProposalLayer inputs: expected [objectness, box_deltas, image_shape] or "
                f"[objectness, box_deltas, image_shape, scale], got {type(inputs).__name__}"
                + (f" of {len(inputs)}" if isinstance(inputs, (list, tuple)) else "")
            )
        return (*inputs, None) if len(inputs) == 3 else tuple(inputs)

    def build(self, input_shape):
        objectness, deltas, *_ = self._split(input_shape)
        if objectness[-1] is not None and objectness[-1] != self.num_anchors:
            raise ValueError(
                f"objectness: expected {self.num_anchors} channels (len(scales) * "
                f"len(ratios)), got shape {tuple(objectness)}"
            )
        if deltas[-1] is not None and deltas[-1] != 4 * self.num_anchors:
            raise ValueError(
                f"box_deltas: expected {4 * self.num_anchors} channels, got {tuple(deltas)}"
            )

    def call(self, inputs, training=None):
        objectness, deltas, image_shape, scale = self._split(inputs)
        pre, post = (
            (self.train_pre_nms_top_n, self.train_post_nms_top_n)
            if training
            else (self.test_pre_nms_top_n, self.test_post_nms_top_n)
        )
        return propose(
            objectness,
            deltas,
            image_shape,
            scale,
            stride=self.stride,
            scales=self.scales,
            ratios=self.ratios,
            pre_nms_top_n=pre,
            post_nms_top_n=post,
            nms_iou=self.nms_iou,
            min_size=self.min_size,
            box_stds=self.box_stds,
        )

    def compute_output_shape(self, input_shape):
        batch = self._split(input_shape)[0][0]
        count = self.test_post_nms_top_n
        return [(batch, count, 4), (batch, count), (batch,)]

    def compute_output_spec(self, inputs, training=None):
        shapes = self.compute_output_shape(
            [tuple(x.shape) for x in self._split(inputs) if x is not None]
        )
        dtypes = ("float32", "float32", "int32")
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "stride": self.stride,
                "scales": list(self.scales),
                "ratios": list(self.ratios),
                "train_pre_nms_top_n": self.train_pre_nms_top_n,
                "train_post_nms_top_n": self.train_post_nms_top_n,
                "test_pre_nms_top_n": self.test_pre_nms_top_n,
                "test_post_nms_top_n": self.test_post_nms_top_n,
                "nms_iou": self.nms_iou,
                "min_size": self.min_size,
                "box_stds": list(self.box_stds),
            }
        )
        return config
