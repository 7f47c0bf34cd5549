"""Serving signatures of a segmenter: encoded images in, class maps out.

`serving_default(image_bytes)`: (N,) JPEG/PNG bytes of any sizes. Inside the graph each image
is decoded, fed as `keras_dense.signatures.geometry` says (resized to a fixed input size, or
padded/mirrored to a size the model accepts), normalised as the model card says, and the
argmax of the scores is taken at the image's original size. Outputs:

- `classes`: (N, H, W) int32 class ids, H and W the largest image's size; pixels outside an
  image (padding) are -1.
- `image_sizes`: (N, 2) int32 `(height, width)` of each image.
- `mask_png_bytes`: (N,) PNG of each class map at its image's size (8-bit, 16-bit beyond 255
  classes).

`serving_tensor(images)`: (N, H, W, C) float32 images already normalised, fed to the model as
they are; output `scores`, the model's raw (N, H', W', K) output.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.signatures.batch_modes import run_batch
from keras_dense.signatures.geometry import InputGeometry
from keras_dense.signatures.image_bytes import (
    centred_image,
    decode_batch,
    encode_class_png,
    finish_normalization,
    image_at,
    mirror_pad,
    normalized_batch,
    pad_to,
)

PADDING_CLASS = -1


def _input_size(geometry: InputGeometry, output_size: tf.Tensor) -> tf.Tensor:
    """Tensor version of `InputGeometry.input_size`."""
    needed = tf.maximum(output_size + 2 * geometry.margin, geometry.minimum) - geometry.offset
    return geometry.offset + geometry.step * ((needed + geometry.step - 1) // geometry.step)


def _argmax(scores: tf.Tensor) -> tf.Tensor:
    return tf.argmax(scores, axis=-1, output_type=tf.int32)


def _mask_padding(classes: tf.Tensor, sizes: tf.Tensor) -> tf.Tensor:
    """Sets pixels of (N, H, W) `classes` outside each image's size to `PADDING_CLASS`."""
    shape = tf.shape(classes)
    rows = tf.range(shape[1])[None, :, None] < sizes[:, 0, None, None]
    cols = tf.range(shape[2])[None, None, :] < sizes[:, 1, None, None]
    return tf.where(tf.logical_and(rows, cols), classes, PADDING_CLASS)


def _classes_free_size(model, geometry, normalization, pixels, sizes, batch_mode):
    """Class maps of a model that takes images of (almost) any size."""
    count = tf.shape(sizes)[0]
    largest = tf.reduce_max(sizes, axis=0)
    channels = geometry.channels

    def batched():
        images = normalized_batch(
            pixels,
            sizes,
            _input_size(geometry, largest[0]),
            _input_size(geometry, largest[1]),
            channels,
            normalization,
            geometry.margin,
        )
        scores = model(images, training=False)[:, : largest[0], : largest[1]]
        return _mask_padding(_argmax(scores), sizes)

    def one_image(index):
        height, width = sizes[index, 0], sizes[index, 1]
        image = centred_image(image_at(pixels, sizes, index, channels), normalization)
        image = mirror_pad(image, geometry.margin)
        image = pad_to(image, _input_size(geometry, height), _input_size(geometry, width))
        scores = model(finish_normalization(image[None], normalization), training=False)
        classes = _argmax(scores[0, :height, :width])
        return pad_to(classes, largest[0], largest[1], PADDING_CLASS)

    def per_image():
        return tf.map_fn(
            one_image, tf.range(count), fn_output_signature=tf.TensorSpec([None, None], tf.int32)
        )

    return run_batch(sizes, batch_mode, batched, per_image)


def _classes_fixed_size(model, geometry, normalization, pixels, sizes):
    """Class maps of a fixed-input-size model: resize in, resize the scores back."""
    count = tf.shape(sizes)[0]
    largest = tf.reduce_max(sizes, axis=0)
    channels = geometry.channels

    def resized_image(index):
        image = image_at(pixels, sizes, index, channels)
        return tf.image.resize(centred_image(image, normalization), geometry.fixed_size)

    images = tf.map_fn(
        resized_image,
        tf.range(count),
        fn_output_signature=tf.TensorSpec([*geometry.fixed_size, channels], tf.float32),
    )
    scores = model(finish_normalization(images, normalization), training=False)
    scores = tf.cast(scores, tf.float32)

    def resized_classes(index):
        resized = tf.image.resize(scores[index], sizes[index], antialias=False)
        return pad_to(_argmax(resized), largest[0], largest[1], PADDING_CLASS)

    return tf.map_fn(
        resized_classes, tf.range(count), fn_output_signature=tf.TensorSpec([None, None], tf.int32)
    )


def segmentation_signatures(
    model: keras.Model,
    geometry: InputGeometry,
    normalization: str | None,
    batch_mode: str = "per_image",
    max_pixels: int | None = None,
    max_request_pixels: int | None = None,
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """Builds the `serving_default` and `serving_tensor` concrete functions of a segmenter.

    Args:
        model: The segmenter, `(B, H, W, C)` images to `(B, H', W', K)` scores.
        geometry: Its `segmenter_geometry`.
        normalization: The model card's normalisation mode.
        batch_mode: How mixed-size batches run (`keras_dense.signatures.batch_modes`).
        max_pixels: Largest accepted image (pixels); None for the default limit.
        max_request_pixels: Largest accepted request (pixels summed over its images), checked
            on the headers before any decode; None: no request limit.

    Returns:
        `{"serving_default": ..., "serving_tensor": ...}`.
    """
    decode_kwargs = {} if max_pixels is None else {"max_pixels": int(max_pixels)}
    if max_request_pixels is not None:
        decode_kwargs["max_request_pixels"] = int(max_request_pixels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels, sizes = decode_batch(image_bytes, geometry.channels, **decode_kwargs)
        if geometry.fixed_size is not None:
            classes = _classes_fixed_size(model, geometry, normalization, pixels, sizes)
        else:
            classes = _classes_free_size(model, geometry, normalization, pixels, sizes, batch_mode)
        pngs = tf.map_fn(
            lambda i: encode_class_png(classes[i, : sizes[i, 0], : sizes[i, 1]]),
            tf.range(tf.shape(sizes)[0]),
            fn_output_signature=tf.TensorSpec([], tf.string),
        )
        return {"classes": classes, "image_sizes": sizes, "mask_png_bytes": pngs}

    height, width = geometry.fixed_size or (None, None)
    image_spec = tf.TensorSpec([None, height, width, geometry.channels], tf.float32, "images")

    @tf.function(input_signature=[image_spec])
    def serving_tensor(images):
        return {"scores": tf.cast(model(images, training=False), tf.float32)}

    return {
        "serving_default": serving_default.get_concrete_function(),
        "serving_tensor": serving_tensor.get_concrete_function(),
    }
