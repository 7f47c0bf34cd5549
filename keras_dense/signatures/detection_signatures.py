"""Serving signatures of a Fast or Faster R-CNN detector: encoded images in, boxes out.

Fast R-CNN scores external region proposals (selective search, computed by the client with
`keras_dense.detection.selective_search`), so `serving_default` takes them with the images:

- `image_bytes`: (N,) JPEG/PNG bytes of any sizes;
- `proposals`: (N, P, 4) float32 `[ymin, xmin, ymax, xmax]` in pixels of each original
  image, padded with anything past `num_proposals`;
- `num_proposals`: (N,) int32 valid rows of `proposals`.

Inside the graph each image is decoded, resized as in training (shorter side to `min_size`,
longer side at most `max_size`, `keras_dense.data.detection_pipeline.fast_rcnn_scale`),
normalised and padded; the proposals are scaled alike; `keras_dense.detection.detect` runs the
model, the softmax, box decoding, clipping and per-class NMS; boxes are mapped back to the
original pixels. Outputs (padded to `max_detections` rows, zeros past `num_detections`):
`detection_boxes` (N, D, 4) yxyx pixels, `detection_scores` (N, D), `detection_classes`
(N, D) int32 (label = class index + 1, 0 in padding) and `num_detections` (N,) int32.

`serving_tensor(images, rois)`: normalised float images and RoIs in their pixels; outputs the
model's raw `cls_score` and `bbox_pred`.

A Faster R-CNN model (`keras_dense.apps.faster_rcnn`, `proposes_regions`) proposes its own
regions: its `serving_default` takes `image_bytes` only (same outputs; each image's resize
factor scales the proposals' minimum size as in training), and its `serving_tensor(images,
image_shape, scale)` returns the model's raw outputs (`cls_score`, `bbox_pred`, `proposals`,
`proposal_scores`, `num_proposals`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.data.detection_pipeline import fast_rcnn_scale
from keras_dense.detection import detect, proposes_regions
from keras_dense.signatures.batch_modes import run_batch
from keras_dense.signatures.detector_io import (
    PROPOSER_TENSOR_SIGNATURE,
    check_resize_sizes,
    detection_specs,
)
from keras_dense.signatures.image_bytes import (
    centred_image,
    decode_batch,
    finish_normalization,
    image_at,
    pad_to,
)

# serving_tensor outputs of a Faster R-CNN model.
FASTER_RCNN_OUTPUTS = ("cls_score", "bbox_pred", "proposals", "proposal_scores", "num_proposals")


def _check_proposals(proposals, num_proposals, count):
    shape = tf.shape(proposals)
    return [
        tf.debugging.Assert(
            tf.logical_and(tf.equal(shape[0], count), tf.equal(tf.shape(num_proposals)[0], count)),
            ["proposals and num_proposals need one row per image; images:", count],
        ),
        tf.debugging.Assert(
            tf.reduce_all((num_proposals >= 0) & (num_proposals <= shape[1])),
            ["num_proposals must be in [0, P], P =", shape[1], "got", num_proposals],
        ),
        tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(proposals)), ["proposals must be finite"]
        ),
    ]


def detection_signatures(
    model: keras.Model,
    normalization: str | None,
    min_size: int = 600,
    max_size: int = 1000,
    score_threshold: float = 0.05,
    nms_iou: float = 0.3,
    max_detections: int = 100,
    batch_mode: str = "per_image",
    max_pixels: int | None = None,
    max_request_pixels: int | None = None,
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """Builds the `serving_default` and `serving_tensor` concrete functions of a detector.

    Args:
        model: A Fast R-CNN model, `[images, rois]` to `[cls_score, bbox_pred]`, or a
            Faster R-CNN model (`proposes_regions`).
        normalization: The model card's normalisation mode.
        min_size: Shorter side after resizing (the training scale, 600).
        max_size: Cap on the longer side (1000).
        score_threshold: Minimum class probability reported.
        nms_iou: Per-class NMS IoU threshold.
        max_detections: Detections per image (padded length of the outputs).
        batch_mode: How mixed-size batches run (`keras_dense.signatures.batch_modes`).
        max_pixels: Largest accepted image (pixels); None for the default limit.
        max_request_pixels: Largest accepted request (pixels summed over its images), checked
            on the headers before any decode; None: no request limit.

    Returns:
        `{"serving_default": ..., "serving_tensor": ...}`.
    """
    check_resize_sizes(min_size, max_size)
    detect_kwargs = {
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "max_detections": max_detections,
    }

    proposing = proposes_regions(model)

    def run(image_bytes, proposals, num_proposals):
        """Decode, resize, normalise, detect, map back; proposals None for Faster R-CNN."""
        pixels, sizes = decode_batch(image_bytes, 3, max_pixels, max_request_pixels)
        count = tf.shape(sizes)[0]
        height = tf.cast(sizes[:, 0], tf.float32)
        width = tf.cast(sizes[:, 1], tf.float32)
        scale = fast_rcnn_scale(height, width, min_size, max_size)
        resized = tf.cast(tf.round(tf.cast(sizes, tf.float32) * scale[:, None]), tf.int32)
        factors = tf.cast(resized, tf.float32) / tf.cast(sizes, tf.float32)  # (N, 2) y, x
        factors = tf.tile(factors, [1, 2])[:, None, :]  # (N, 1, 4) yxyx
        if proposals is not None:
            with tf.control_dependencies(_check_proposals(proposals, num_proposals, count)):
                proposals = tf.identity(proposals)
            scaled_proposals = proposals * factors
        largest = tf.reduce_max(resized, axis=0)

        def centred_input(index, height, width):
            image = centred_image(image_at(pixels, sizes, index, 3), normalization)
            image = tf.image.resize(image, resized[index], antialias=False)
            return pad_to(image, height, width)

        def run_detect(images, rows):
            """`detect` on `images`, the batch rows `rows` (a slice or an index list)."""
            if proposals is None:
                return detect(
                    model,
                    images,
                    image_shape=tf.gather(resized, rows),
                    scale=tf.gather(scale, rows),
                    **detect_kwargs,
                )
            return detect(
                model,
                images,
                tf.gather(scaled_proposals, rows),
                image_shape=tf.gather(resized, rows),
                num_proposals=tf.gather(num_proposals, rows),
                **detect_kwargs,
            )

        def batched():
            images = tf.map_fn(
                lambda i: centred_input(i, largest[0], largest[1]),
                tf.range(count),
                fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32),
            )
            images = finish_normalization(images, normalization)
            out = run_detect(images, tf.range(count))
            return out["boxes"], out["scores"], out["classes"], out["num_detections"]

        def one_image(index):
            image = centred_input(index, resized[index, 0], resized[index, 1])
            out = run_detect(finish_normalization(image[None], normalization), index[None])
            return out["boxes"][0], out["scores"][0], out["classes"][0], out["num_detections"][0]

        def per_image():
            return tf.map_fn(
                one_image,
                tf.range(count),
                fn_output_signature=detection_specs(max_detections),
            )

        boxes, scores, classes, num = run_batch(resized, batch_mode, batched, per_image)
        return {
            "detection_boxes": boxes / factors,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": num,
        }

    if proposing:

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serving_default(image_bytes):
            return run(image_bytes, None, None)

        @tf.function(input_signature=list(PROPOSER_TENSOR_SIGNATURE))
        def serving_tensor(images, image_shape, scale):
            outputs = model([images, image_shape, scale], training=False)
            return {
                key: tf.cast(outputs[key], tf.int32 if key == "num_proposals" else tf.float32)
                for key in FASTER_RCNN_OUTPUTS
            }

    else:

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="image_bytes"),
                tf.TensorSpec([None, None, 4], tf.float32, name="proposals"),
                tf.TensorSpec([None], tf.int32, name="num_proposals"),
            ]
        )
        def serving_default(image_bytes, proposals, num_proposals):
            return run(image_bytes, proposals, num_proposals)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
                tf.TensorSpec([None, None, 4], tf.float32, name="rois"),
            ]
        )
        def serving_tensor(images, rois):
            cls_score, bbox_pred = model([images, rois], training=False)
            return {
                "cls_score": tf.cast(cls_score, tf.float32),
                "bbox_pred": tf.cast(bbox_pred, tf.float32),
            }

    return {
        "serving_default": serving_default.get_concrete_function(),
        "serving_tensor": serving_tensor.get_concrete_function(),
    }
