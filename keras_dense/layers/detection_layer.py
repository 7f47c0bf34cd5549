"""The detection step of a two-stage detector as a layer, so that it can sit inside a graph.

Mask R-CNN's inference runs its mask branch on the final detections ("the mask branch is
applied to the highest scoring 100 detection boxes", He et al. 2017, Sec. 3.1), so the
detection step (`keras_dense.detection.postprocess_detections`: softmax, per-class box
decoding, clipping, per-class NMS, top `max_detections`) has to be part of its functional
graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_dense.detection.boxes import BOX_STDS
from keras_dense.detection.detect import postprocess_detections


@keras.saving.register_keras_serializable(package="keras_dense")
class DetectionLayer(keras.layers.Layer):
    """Padded, NMS-filtered detections from the box head's outputs.

    Inputs: `[cls_score (B, P, K + 1), bbox_pred (B, P, 4 (K + 1)), proposals (B, P, 4),
    image_shape (B, 2), num_proposals (B,)]`.

    Outputs: `[boxes (B, D, 4) float32 yxyx pixels, scores (B, D) float32, classes (B, D)
    int32 1-based (0 in padding), num_detections (B,) int32]`, D = `max_detections`; rows
    past `num_detections` are zeros. Float32 under any dtype policy (inputs are not
    autocast), as pixel coordinates need it. No gradient is meant to flow through it.

    Args:
        score_threshold: Minimum class probability kept (0.05).
        nms_iou: Per-class NMS IoU threshold (0.5, Mask R-CNN's; Fast R-CNN used 0.3).
        max_detections: Detections per image (100).
        box_stds: Standard deviations the box targets were normalised with.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        box_stds: Sequence[float] = BOX_STDS,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if isinstance(max_detections, bool) or not isinstance(max_detections, int):
            raise ValueError(f"max_detections={max_detections!r}: expected a positive int")
        if max_detections < 1:
            raise ValueError(f"max_detections={max_detections!r}: expected a positive int")
        if not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou={nms_iou!r}: expected a number in [0, 1]")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold={score_threshold!r}: expected a number in [0, 1]")
        if len(box_stds) != 4:
            raise ValueError(f"box_stds={box_stds!r}: expected 4 numbers")
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = max_detections
        self.box_stds = tuple(float(s) for s in box_stds)

    def call(self, inputs):
        cls_score, bbox_pred, proposals, image_shape, num_proposals = inputs
        out = postprocess_detections(
            cls_score,
            bbox_pred,
            proposals,
            image_shape,
            num_proposals=num_proposals,
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            box_stds=self.box_stds,
        )
        return [out["boxes"], out["scores"], out["classes"], out["num_detections"]]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        count = self.max_detections
        return [(batch, count, 4), (batch, count), (batch, count), (batch,)]

    def compute_output_spec(self, inputs):
        shapes = self.compute_output_shape([tuple(x.shape) for x in inputs])
        dtypes = ("float32", "float32", "int32", "int32")
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "score_threshold": self.score_threshold,
                "nms_iou": self.nms_iou,
                "max_detections": self.max_detections,
                "box_stds": list(self.box_stds),
            }
        )
        return config
