"""Object detection pieces of Fast R-CNN: boxes, RoI sampling, loss, proposals and inference."""

from keras_dense.detection.boxes import (
    BOX_STDS,
    box_area,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    iou_matrix,
)
from keras_dense.detection.detect import detect, postprocess_detections, unpad_detections
from keras_dense.detection.losses import fast_rcnn_loss, smooth_l1
from keras_dense.detection.proposals import selective_search
from keras_dense.detection.sampling import sample_rois

__all__ = [
    "BOX_STDS",
    "box_area",
    "clip_boxes",
    "decode_boxes",
    "detect",
    "encode_boxes",
    "fast_rcnn_loss",
    "iou_matrix",
    "postprocess_detections",
    "sample_rois",
    "selective_search",
    "smooth_l1",
    "unpad_detections",
]
