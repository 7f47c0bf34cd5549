"""Object detection pieces of Fast / Faster R-CNN: boxes, anchors, RoI sampling, RPN targets,
losses, proposals and inference."""

from keras_dense.detection.anchors import (
    anchor_sizes,
    generate_anchors,
    num_anchors,
    pyramid_anchors,
)
from keras_dense.detection.boxes import (
    BOX_STDS,
    box_area,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    iou_matrix,
)
from keras_dense.detection.detect import (
    detect,
    postprocess_detections,
    proposes_regions,
    unpad_detections,
)
from keras_dense.detection.losses import fast_rcnn_loss, mask_loss, smooth_l1
from keras_dense.detection.mask_paste import paste_masks
from keras_dense.detection.mask_targets import mask_targets
from keras_dense.detection.proposals import selective_search
from keras_dense.detection.rpn_targets import (
    inside_image,
    match_anchors,
    rpn_loss,
    rpn_targets,
    sample_anchors,
)
from keras_dense.detection.sampling import random_true_indices, sample_rois
from keras_dense.detection.sliced import class_nms, detect_sliced, greedy_merge, slice_windows

__all__ = [
    "BOX_STDS",
    "anchor_sizes",
    "box_area",
    "class_nms",
    "clip_boxes",
    "decode_boxes",
    "detect",
    "detect_sliced",
    "encode_boxes",
    "fast_rcnn_loss",
    "generate_anchors",
    "greedy_merge",
    "inside_image",
    "iou_matrix",
    "mask_loss",
    "mask_targets",
    "match_anchors",
    "num_anchors",
    "paste_masks",
    "postprocess_detections",
    "proposes_regions",
    "pyramid_anchors",
    "random_true_indices",
    "rpn_loss",
    "rpn_targets",
    "sample_anchors",
    "sample_rois",
    "selective_search",
    "slice_windows",
    "smooth_l1",
    "unpad_detections",
]
