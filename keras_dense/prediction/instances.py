"""Instance segmentation of one image with a Mask R-CNN model, in the image's pixels."""

from __future__ import annotations

import keras
import numpy as np

from keras_dense.detection.mask_paste import paste_masks
from keras_dense.prediction.inference import fast_rcnn_resize
from keras_dense.utils.graph_inference import run_inference
from keras_dense.utils.normalization import normalize


def segment_instances(
    model: keras.Model,
    image: np.ndarray,
    card: dict,
    score_threshold: float = 0.05,
) -> dict:
    """Mask R-CNN detections and instance masks of one RGB image.

    The image is resized as in training (the card's `min_size` / `max_size`), normalised and
    run through the model (whose in-graph detection step keeps its own score threshold and
    NMS); boxes are mapped back to the image's pixels and each detection's box-relative mask
    is pasted at the image's size (`paste_masks`) and cut at 0.5.

    Args:
        model: A `keras_dense.apps.mask_rcnn` model.
        image: (H, W, 3) uint8 RGB.
        card: The model card (`min_size`, `max_size`, `normalization`).
        score_threshold: Detections scoring below it are dropped.

    Returns:
        `{"boxes": (n, 4) yxyx pixels, "scores": (n,), "labels": (n,) 1-based,
        "masks": (n, H, W) bool}`, best score first.
    """
    height, width = image.shape[:2]
    resized, scale = fast_rcnn_resize(image, card.get("min_size", 800), card.get("max_size", 1333))
    x = np.asarray(normalize(resized, card.get("normalization")), np.float32)
    shape = np.array([resized.shape[:2]], np.float32)
    out = run_inference(model, [x[None], shape, np.array([scale], np.float32)])
    count = int(np.asarray(out["num_detections"])[0])
    scores = np.asarray(out["detection_scores"])[0, :count]
    keep = scores >= score_threshold
    factors = np.array(resized.shape[:2], np.float32) / np.array([height, width], np.float32)
    boxes = np.asarray(out["detection_boxes"])[0, :count][keep] / np.tile(factors, 2)
    grids = np.asarray(out["detection_masks"])[0, :count][keep]
    if len(boxes):
        masks = np.asarray(paste_masks(grids[None], boxes[None], (height, width)))[0] >= 0.5
    else:
        masks = np.zeros((0, height, width), bool)
    return {
        "boxes": boxes.astype(np.float32),
        "scores": scores[keep],
        "labels": np.asarray(out["detection_classes"])[0, :count][keep].astype(np.int64),
        "masks": masks,
    }


def segment_instances_sliced(
    model: keras.Model,
    image: np.ndarray,
    card: dict,
    tile: int = 512,
    overlap: float = 0.2,
    full_image: bool = True,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    merge: str = "nms",
    max_detections: int = 100,
) -> dict:
    """`segment_instances` on overlapping tiles of a large image, merged back
    (`keras_dense.detection.detect_sliced`): boxes and masks go back into the image's pixels,
    a detection cut by a tile is dropped where another tile holds it whole, and the merge
    keeps one mask per object (with `merge="greedy"`, the union of its group's masks).

    One tile at a time. Memory holds every tile detection's mask cut to its box, and the
    (n, H, W) masks returned: at most `max_detections` (100, COCO's count per image) of the
    best after merging.

    Returns:
        `{"boxes", "scores", "labels", "masks": (n, H, W) bool}`, best score first.
    """
    from keras_dense.detection import detect_sliced

    return detect_sliced(
        lambda rgb: segment_instances(model, rgb, card, score_threshold=score_threshold),
        image,
        tile=tile,
        overlap=overlap,
        full_image=full_image,
        nms_iou=nms_iou,
        merge=merge,
        max_detections=max_detections,
    )
