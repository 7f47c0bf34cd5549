"""Serving signatures of a Mask R-CNN model: encoded images in, instances out.

`serving_default(image_bytes)`: (N,) JPEG/PNG bytes of any sizes. Each image is decoded,
resized as in training (shorter side `min_size`, longer at most `max_size`,
`fast_rcnn_scale`), normalised and run through the model alone (one image at a time, so
that the pasted masks of one image never wait for the largest image of the request); the
model's in-graph detection step and mask branch give the detections, whose boxes are
mapped back to the original pixels and whose box-relative masks are pasted at the original
image size (`keras_dense.detection.paste_masks`, cut at 0.5). Outputs, with the Object
Detection API's names, padded to `max_detections` rows (zeros past `num_detections`):

- `detection_boxes` (N, D, 4) float32 yxyx pixels of the original image;
- `detection_scores` (N, D) float32;
- `detection_classes` (N, D) int32 (label = class index + 1, 0 in padding);
- `num_detections` (N,) int32;
- `detection_masks` (N, D, H, W) uint8 0/1 at the original size, H and W the largest
  height and width of the request (smaller images are padded with 0 at the bottom and
  right; `image_sizes` tells each image's size);
- `image_sizes` (N, 2) int32 (height, width).

`serving_tensor(images, image_shape, scale)`: normalised float images; outputs the model's
raw detection outputs (box-relative `detection_masks`), for checking an export.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.data.detection_pipeline import fast_rcnn_scale
from keras_dense.detection.mask_paste import paste_masks
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

TENSOR_OUTPUTS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
)


def instance_signatures(
    model: keras.Model,
    normalization: str | None,
    min_size: int = 800,
    max_size: int = 1333,
    max_pixels: int | None = None,
    max_request_pixels: int | None = None,
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """Builds the `serving_default` and `serving_tensor` concrete functions of Mask R-CNN.

    Args:
        model: A `keras_dense.apps.mask_rcnn` model (its detection thresholds and
            `max_detections` are those of its `DetectionLayer`, see
            `MaskRCNN.set_detection_options`).
        normalization: The model card's normalisation mode.
        min_size: Shorter side after resizing (the training scale).
        max_size: Cap on the longer side.
        max_pixels: Largest accepted image (pixels); None for the default limit.
        max_request_pixels: Largest accepted request (pixels over its images), checked on
            the headers before any decode; None: no request limit.

    Returns:
        `{"serving_default": ..., "serving_tensor": ...}`.

    Raises:
        ValueError: Bad sizes.
    """
    check_resize_sizes(min_size, max_size)
    max_detections = int(model.output["detection_boxes"].shape[1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels, sizes = decode_batch(image_bytes, 3, max_pixels, max_request_pixels)
        count = tf.shape(sizes)[0]
        size_f = tf.cast(sizes, tf.float32)
        scale = fast_rcnn_scale(size_f[:, 0], size_f[:, 1], min_size, max_size)
        resized = tf.cast(tf.round(size_f * scale[:, None]), tf.int32)
        factors = tf.cast(resized, tf.float32) / size_f  # (N, 2) y, x
        largest = tf.reduce_max(sizes, axis=0)

        def one_image(index):
            image = centred_image(image_at(pixels, sizes, index, 3), normalization)
            image = tf.image.resize(image, resized[index], antialias=False)
            x = finish_normalization(image[None], normalization)
            shape = tf.cast(resized[index][None], tf.float32)
            out = model([x, shape, scale[index][None]], training=False)
            boxes = out["detection_boxes"][0] / tf.tile(factors[index], [2])[None, :]
            pasted = paste_masks(out["detection_masks"][:1], boxes[None], sizes[index])[0]
            masks = tf.cast(pasted >= 0.5, tf.uint8)
            masks = tf.transpose(
                pad_to(tf.transpose(masks, [1, 2, 0]), largest[0], largest[1]), [2, 0, 1]
            )
            return (
                boxes,
                out["detection_scores"][0],
                tf.cast(out["detection_classes"][0], tf.int32),
                tf.cast(out["num_detections"][0], tf.int32),
                masks,
            )

        boxes, scores, classes, num, masks = tf.map_fn(
            one_image,
            tf.range(count),
            fn_output_signature=(
                *detection_specs(max_detections),
                tf.TensorSpec([max_detections, None, None], tf.uint8),
            ),
        )
        return {
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": num,
            "detection_masks": masks,
            "image_sizes": sizes,
        }

    @tf.function(input_signature=list(PROPOSER_TENSOR_SIGNATURE))
    def serving_tensor(images, image_shape, scale):
        out = model([images, image_shape, scale], training=False)
        return {key: out[key] for key in TENSOR_OUTPUTS}

    return {
        "serving_default": serving_default.get_concrete_function(),
        "serving_tensor": serving_tensor.get_concrete_function(),
    }
