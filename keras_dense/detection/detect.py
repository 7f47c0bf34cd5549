"""Fast / Faster R-CNN inference: class scores and box deltas to padded, NMS-filtered detections."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_dense.detection.boxes import BOX_STDS, clip_boxes, decode_boxes
from keras_dense.utils.graph_inference import run_inference


def postprocess_detections(
    cls_score,
    bbox_pred,
    proposals,
    image_shape,
    num_proposals=None,
    score_threshold: float = 0.05,
    nms_iou: float = 0.3,
    max_detections: int = 100,
    box_stds: Sequence[float] = BOX_STDS,
) -> dict[str, tf.Tensor]:
    """Decodes, clips and runs per-class NMS on the two heads' outputs (Fast R-CNN test).

    Args:
        cls_score: (B, P, K + 1) class logits, background first.
        bbox_pred: (B, P, 4 (K + 1)) normalised `(dx, dy, dw, dh)` per class.
        proposals: (B, P, 4) the RoIs, yxyx pixels.
        image_shape: (B, 2) int valid (height, width) of each image; boxes are clipped to it.
        num_proposals: Optional (B,) number of valid proposals (the rest is padding).
        score_threshold: Detections scoring below it are dropped (0.05).
        nms_iou: IoU above which a lower-scoring box of the same class is suppressed (0.3).
        max_detections: Detections kept per image (100), also the padded length.
        box_stds: Standard deviations used when encoding the box targets.

    Returns:
        A dict with `"boxes"` (B, max_detections, 4) yxyx pixels, `"scores"`
        (B, max_detections), `"classes"` (B, max_detections) int32 1-based (0 in padding) and
        `"num_detections"` (B,) int32. Rows past `num_detections` are zeros.
    """
    if not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections={max_detections!r}: expected a positive int")
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"nms_iou={nms_iou!r}: expected a number in [0, 1]")
    cls_score = tf.cast(cls_score, tf.float32)
    proposals = tf.cast(proposals, tf.float32)
    shape = tf.shape(cls_score)
    batch, count, classes = shape[0], shape[1], shape[2]
    probs = tf.nn.softmax(cls_score, axis=-1)[..., 1:]  # (B, P, K)
    deltas = tf.reshape(tf.cast(bbox_pred, tf.float32), [batch, count, classes, 4])[:, :, 1:]
    boxes = decode_boxes(deltas, proposals[:, :, None, :], box_stds)  # (B, P, K, 4)
    image_shape = tf.cast(tf.convert_to_tensor(image_shape), tf.float32)
    boxes = clip_boxes(boxes, image_shape[:, None, None, :])
    if num_proposals is not None:
        valid = tf.range(count)[None, :] < tf.cast(num_proposals, tf.int32)[:, None]
        probs = tf.where(valid[..., None], probs, 0.0)
    nmsed = tf.image.combined_non_max_suppression(
        boxes,
        probs,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=nms_iou,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )
    num = nmsed.valid_detections
    kept = tf.range(max_detections)[None, :] < num[:, None]
    return {
        "boxes": nmsed.nmsed_boxes,
        "scores": nmsed.nmsed_scores,
        "classes": tf.where(kept, tf.cast(nmsed.nmsed_classes, tf.int32) + 1, 0),
        "num_detections": num,
    }


def proposes_regions(model) -> bool:
    """Whether `model` proposes its own regions (Faster R-CNN) instead of taking them."""
    return bool(getattr(model, "proposes_regions", False))


def detect(
    model,
    images,
    proposals=None,
    score_threshold: float = 0.05,
    nms_iou: float = 0.3,
    max_detections: int = 100,
    image_shape=None,
    num_proposals=None,
    box_stds: Sequence[float] | None = None,
    scale=None,
) -> dict[str, tf.Tensor]:
    """Runs a Fast or Faster R-CNN model and returns padded detections.

    The steps of Fast R-CNN's test: class probabilities by softmax; per-class boxes decoded
    from each proposal; clipping to the image; per-class NMS at `nms_iou`
    (`tf.image.combined_non_max_suppression`, batched; its IoU uses exclusive box extents);
    at most `max_detections` boxes over all classes. A Faster R-CNN model
    (`keras_dense.apps.faster_rcnn`) proposes its own regions: call it without `proposals`.
    Called eagerly, the model runs as a graph traced once per model
    (`keras_dense.utils.graph_inference`).

    Args:
        model: A Fast R-CNN model mapping `[images, rois]` to `[cls_score, bbox_pred]`
            (e.g. `keras_dense.apps.fast_rcnn(...)`), or a Faster R-CNN model (a model with
            `proposes_regions = True`, inputs `[images, image_shape, scale]` and the outputs
            `cls_score`, `bbox_pred`, `proposals`, `num_proposals`).
        images: (B, H, W, 3) images, preprocessed as the model expects.
        proposals: (B, P, 4) proposals in the pixels of `images`, yxyx: required by Fast
            R-CNN, None for Faster R-CNN.
        score_threshold: Minimum class probability kept (0.05).
        nms_iou: NMS IoU threshold (0.3).
        max_detections: Detections per image (100).
        image_shape: Optional (B, 2) valid (height, width) of each (padded) image; the full
            image size by default.
        num_proposals: Optional (B,) number of valid proposals (Fast R-CNN).
        box_stds: Standard deviations of the box targets; None takes the model's own
            `box_stds` (the variances its head was trained with), else (0.1, 0.1, 0.2, 0.2).
        scale: Optional (B,) resize factors of the images (Faster R-CNN: they scale the
            proposals' minimum size); 1 by default.

    Returns:
        A dict with `"boxes"` (B, max_detections, 4) pixels yxyx, `"scores"`, `"classes"`
        (1-based, 0 for padding) and `"num_detections"`, see `postprocess_detections`.

    Raises:
        ValueError: `proposals` missing for a Fast R-CNN model, or given to a Faster R-CNN
            model.
    """
    if box_stds is None:
        box_stds = getattr(model, "box_stds", BOX_STDS)
    images = tf.convert_to_tensor(images, tf.float32)
    if image_shape is None:
        size = tf.shape(images)[1:3]
        image_shape = tf.tile(size[None, :], [tf.shape(images)[0], 1])
    if proposes_regions(model):
        if proposals is not None:
            raise ValueError(
                f"proposals: model {model.name!r} proposes its own regions (Faster R-CNN); "
                "call detect(model, images) without proposals"
            )
        if scale is None:
            scale = tf.ones([tf.shape(images)[0]], tf.float32)
        shape = tf.cast(image_shape, tf.float32)
        outputs = run_inference(model, [images, shape, tf.cast(scale, tf.float32)])
        cls_score, bbox_pred = outputs["cls_score"], outputs["bbox_pred"]
        proposals, num_proposals = outputs["proposals"], outputs["num_proposals"]
    else:
        if proposals is None:
            raise ValueError(
                f"proposals: model {getattr(model, 'name', model)!r} scores external region "
                "proposals (Fast R-CNN); pass proposals (B, P, 4) yxyx pixels, e.g. from "
                "keras_dense.detection.selective_search"
            )
        proposals = tf.convert_to_tensor(proposals, tf.float32)
        cls_score, bbox_pred = run_inference(model, [images, proposals])
    return postprocess_detections(
        cls_score,
        bbox_pred,
        proposals,
        image_shape,
        num_proposals=num_proposals,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        max_detections=max_detections,
        box_stds=box_stds,
    )


def unpad_detections(detections: dict, scale=None) -> list[dict]:
    """Turns padded `detect` outputs into one NumPy dict per image (for `voc_detection_map`).

    Args:
        detections: The dict returned by `detect` / `postprocess_detections`.
        scale: Optional (B,) resize factors of the images (the pipeline's `"scale"`); boxes
            are divided by them to return to original image pixels.

    Returns:
        A list of B dicts with `"boxes"` (n, 4), `"scores"` (n,) and `"labels"` (n,) int.
    """
    boxes = np.asarray(detections["boxes"], np.float32)
    scores = np.asarray(detections["scores"], np.float32)
    classes = np.asarray(detections["classes"])
    counts = np.asarray(detections["num_detections"])
    factors = np.ones(len(counts), np.float32) if scale is None else np.asarray(scale)
    return [
        {
            "boxes": boxes[b, : counts[b]] / factors[b],
            "scores": scores[b, : counts[b]],
            "labels": classes[b, : counts[b]].astype(np.int64),
        }
        for b in range(len(counts))
    ]
