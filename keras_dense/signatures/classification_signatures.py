"""Serving signatures of a weakly supervised classifier (`keras_dense.apps.wsl_classifier`).

`serving_default(image_bytes)` returns `scores` (N, C) sigmoid probabilities, `logits` (N, C),
`class_maps` (N, H, W, C) at each image's size (bilinear, zero beyond an image in a batch of
mixed sizes) and `image_sizes` (N, 2); `serving_tensor(images)` returns the raw logits as
`scores`. Stock ops only.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.apps.wsl_classifier_model import CLASS_MAPS_LAYER, CLASS_WISE_LAYER
from keras_dense.signatures.image_bytes import (
    centred_image,
    decode_batch,
    finish_normalization,
    image_at,
    pad_to,
)


def maps_model(model: keras.Model) -> keras.Model:
    """`images -> [logits (B, C), class maps (B, h, w, C)]` of a `wsl_classifier`.

    Raises:
        ValueError: The model has no `class_maps` layer.
    """
    names = {layer.name for layer in model.layers}
    if CLASS_MAPS_LAYER not in names:
        raise ValueError(
            f"model {model.name!r} has no layer named {CLASS_MAPS_LAYER!r}: the classification "
            "task serves keras_dense.apps.wsl_classifier models"
        )
    layer = CLASS_WISE_LAYER if CLASS_WISE_LAYER in names else CLASS_MAPS_LAYER
    return keras.Model(model.inputs, [model.outputs[0], model.get_layer(layer).output])


def classification_signatures(
    model: keras.Model,
    normalization: str | None,
    max_pixels: int | None = None,
    max_request_pixels: int | None = None,
) -> dict:
    """`serving_default` (image bytes) and `serving_tensor` (images) of a classifier.

    Every image runs alone at its own size (the maps are resized bilinearly to it with
    `tf.image.resize`); stock ops only.

    Args:
        model: A `wsl_classifier`.
        normalization: The model card's normalisation mode.
        max_pixels: Largest accepted image (pixels); None for the default.
        max_request_pixels: Largest accepted request (pixels over its images); None: none.

    Returns:
        `{"serving_default": ..., "serving_tensor": ...}` concrete functions.
    """
    probe = maps_model(model)
    num_classes = int(model.outputs[0].shape[-1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels, sizes = decode_batch(image_bytes, 3, max_pixels, max_request_pixels)
        height, width = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])

        def one(index):
            image = centred_image(image_at(pixels, sizes, index, 3), normalization)
            logits, maps = probe(finish_normalization(image, normalization)[None], training=False)
            maps = tf.image.resize(tf.cast(maps, tf.float32), sizes[index], method="bilinear")
            return tf.cast(logits[0], tf.float32), pad_to(maps[0], height, width)

        logits, maps = tf.map_fn(
            one,
            tf.range(tf.shape(sizes)[0]),
            fn_output_signature=(
                tf.TensorSpec([num_classes], tf.float32),
                tf.TensorSpec([None, None, num_classes], tf.float32),
            ),
        )
        return {
            "scores": tf.sigmoid(logits),
            "logits": logits,
            "class_maps": maps,
            "image_sizes": sizes,
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, "images")])
    def serving_tensor(images):
        return {"scores": tf.cast(model(images, training=False), tf.float32)}

    return {
        "serving_default": serving_default.get_concrete_function(),
        "serving_tensor": serving_tensor.get_concrete_function(),
    }
