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

With test-time augmentation (`tta`, `keras-dense export --tta flip --scales 0.75,1,1.25`),
`serving_default` runs every image alone at each scale (resized bilinearly to
`keras_dense.utils.tta.scaled_size`), and with flip also mirrored left-right; each softmax is
un-mirrored and resized back to the image's size, and `classes` is the argmax of their mean.
`serving_tensor` then also returns `probabilities`, that mean for each (normalised) image.
Models with a fixed input size take the flip only. Only stock TF ops are used (resize,
reverse, softmax).
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
from keras_dense.utils.tta import TestTimeAugmentation

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


def _scaled(size: tf.Tensor, scale: float) -> tf.Tensor:
    """Tensor version of `keras_dense.utils.tta.scaled_size`."""
    value = tf.floor(tf.cast(size, tf.float32) * tf.constant(scale, tf.float32) + 0.5)
    return tf.maximum(tf.cast(value, tf.int32), 1)


def _free_size_scores(model, geometry, image: tf.Tensor) -> tf.Tensor:
    """(h, w, K) float32 scores of one normalised (h, w, C) image of a free-size model."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    image = mirror_pad(image, geometry.margin)
    image = pad_to(image, _input_size(geometry, height), _input_size(geometry, width))
    scores = model(image[None], training=False)[0, :height, :width]
    return tf.cast(scores, tf.float32)


def tta_probabilities(model, geometry, image: tf.Tensor, tta: TestTimeAugmentation):
    """Softmax of one normalised (h, w, C) image averaged over the flips and scales of `tta`.

    The graph version of `keras_dense.prediction.inference.tta_probabilities`: each scaled
    (bilinear) and possibly mirrored copy is padded as `geometry` says, run, cropped, turned
    into probabilities, un-mirrored and resized back to (h, w).

    Args:
        model: A free-size segmenter (logits out).
        geometry: Its `segmenter_geometry` (not a fixed-size one).
        image: The normalised image.
        tta: The augmentations.

    Returns:
        (h, w, K) float32 probabilities.
    """
    size = tf.shape(image)[:2]
    total = None
    for scale in tta.scales:
        if scale == 1.0:
            scaled = image
        else:
            scaled_size = tf.stack([_scaled(size[0], scale), _scaled(size[1], scale)])
            scaled = tf.image.resize(image, scaled_size, method="bilinear")
        for flip in (False, True) if tta.flip else (False,):
            inputs = tf.reverse(scaled, [1]) if flip else scaled
            probs = tf.nn.softmax(_free_size_scores(model, geometry, inputs), axis=-1)
            if flip:
                probs = tf.reverse(probs, [1])
            if scale != 1.0:
                probs = tf.image.resize(probs, size, method="bilinear")
            total = probs if total is None else total + probs
    return total / float(tta.passes)


def _classes_tta(model, geometry, normalization, pixels, sizes, tta):
    """Class maps of a free-size model with test-time augmentation, one image at a time."""
    count = tf.shape(sizes)[0]
    largest = tf.reduce_max(sizes, axis=0)
    channels = geometry.channels

    def one_image(index):
        image = centred_image(image_at(pixels, sizes, index, channels), normalization)
        probs = tta_probabilities(model, geometry, finish_normalization(image, normalization), tta)
        return pad_to(_argmax(probs), largest[0], largest[1], PADDING_CLASS)

    return tf.map_fn(
        one_image, tf.range(count), fn_output_signature=tf.TensorSpec([None, None], tf.int32)
    )


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


def _classes_fixed_size(model, geometry, normalization, pixels, sizes, flip=False):
    """Class maps of a fixed-input-size model: resize in, resize the scores back.

    With `flip`, the softmax of the image and of its mirror (un-mirrored) are averaged.
    """
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
    if flip:
        mirrored = model(
            finish_normalization(tf.reverse(images, [2]), normalization), training=False
        )
        mirrored = tf.reverse(tf.cast(mirrored, tf.float32), [2])
        scores = tf.nn.softmax(scores, axis=-1) + tf.nn.softmax(mirrored, axis=-1)

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
    tta: TestTimeAugmentation | None = None,
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
        tta: Test-time augmentation (see the module docstring); None or disabled: none.

    Returns:
        `{"serving_default": ..., "serving_tensor": ...}`.

    Raises:
        ValueError: `tta` with scales for a fixed-input-size model, or with the "pad" batch
            mode (augmented images run one at a time).
    """
    tta = tta if tta is not None and tta.enabled else None
    if tta is not None and geometry.fixed_size is not None and tta.scales != (1.0,):
        raise ValueError(
            f"tta scales {list(tta.scales)}: a model with a fixed input size "
            f"{geometry.fixed_size} runs every image at that size; only the flip applies"
        )
    if tta is not None and geometry.fixed_size is None and batch_mode != "per_image":
        raise ValueError(
            f"batch_mode={batch_mode!r} with tta: test-time augmentation runs each image "
            "alone; use batch_mode='per_image'"
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels, sizes = decode_batch(image_bytes, geometry.channels, max_pixels, max_request_pixels)
        if geometry.fixed_size is not None:
            flip = tta is not None and tta.flip
            classes = _classes_fixed_size(model, geometry, normalization, pixels, sizes, flip)
        elif tta is not None:
            classes = _classes_tta(model, geometry, normalization, pixels, sizes, tta)
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
        outputs = {"scores": tf.cast(model(images, training=False), tf.float32)}
        if tta is not None and geometry.fixed_size is None:
            outputs["probabilities"] = tf.map_fn(
                lambda image: tta_probabilities(model, geometry, image, tta),
                images,
                fn_output_signature=tf.TensorSpec([None, None, None], tf.float32),
            )
        return outputs

    return {
        "serving_default": serving_default.get_concrete_function(),
        "serving_tensor": serving_tensor.get_concrete_function(),
    }
