"""R-CNN's region warping: each box, dilated for context, resampled to a fixed square.

R-CNN (Girshick et al., CVPR 2014, appendix A) turns every region proposal into a fixed-size
CNN input by warping it anisotropically to `crop_size x crop_size` (227 for AlexNet, 224 for
VGG16), after dilating the tight box "so that at the warped size there are exactly p pixels
of warped image context around the original box" (p = 16).

Geometry (boxes are `[ymin, xmin, ymax, xmax]` in pixels with inclusive ends, as in
`keras_dense.detection.boxes`; pixel `i` covers `[i - 0.5, i + 0.5]`):

1. the box spans `h = ymax - ymin + 1` pixels (at least 1) about its centre
   `cy = (ymin + ymax) / 2` (likewise `w`, `cx`);
2. the dilated box is `s = crop_size / (crop_size - 2 * context_padding)` times larger about
   the same centre, so that after the warp the original box fills the inner
   `crop_size - 2 * context_padding` pixels and `context_padding` pixels of context surround
   it on every side;
3. output pixel `(i, j)` is the bilinear sample of the image at the centre of cell `(i, j)` of
   a regular `crop_size x crop_size` grid over the dilated box:
   `y_i = cy - s * h / 2 + (i + 0.5) * s * h / crop_size` (likewise `x_j`);
4. samples outside the image (`y < 0`, `y > H - 1`, same for x) are 0. On images normalised
   by mean subtraction (the "caffe" mode of the pipelines) 0 is the mean pixel, which is what
   R-CNN pads with. The bilinear samples are not anti-aliased (R-CNN used Matlab's `imresize`,
   which smooths when shrinking); this changes little at 224 px and keeps the layer a single
   `tf.image.crop_and_resize` over all boxes of all images.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def context_boxes(rois: tf.Tensor, crop_size: int, context_padding: int) -> tf.Tensor:
    """The first and last sample positions of R-CNN's context warp, in image pixels.

    Args:
        rois: (..., 4) float boxes `[ymin, xmin, ymax, xmax]`, inclusive pixels.
        crop_size: Side of the warped square.
        context_padding: Context pixels on each side at the warped size.

    Returns:
        (..., 4) float32 `[y_first, x_first, y_last, x_last]`: the positions of the samples of
        output rows/columns 0 and `crop_size - 1` (step 3 of the module docstring).
    """
    rois = tf.cast(rois, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(rois, 4, axis=-1)
    scale = crop_size / (crop_size - 2.0 * context_padding)
    height = tf.maximum(ymax - ymin + 1.0, 1.0) * scale
    width = tf.maximum(xmax - xmin + 1.0, 1.0) * scale
    cy, cx = 0.5 * (ymin + ymax), 0.5 * (xmin + xmax)
    first, last = 0.5 / crop_size - 0.5, 0.5 - 0.5 / crop_size  # in units of the box size
    return tf.stack(
        [cy + first * height, cx + first * width, cy + last * height, cx + last * width], -1
    )


def context_warp(images, rois, crop_size: int, context_padding: int) -> tf.Tensor:
    """Dilates and warps every RoI of every image to `crop_size x crop_size` (one op call).

    Args:
        images: (B, H, W, C) images.
        rois: (B, R, 4) boxes `[ymin, xmin, ymax, xmax]` in pixels of `images` (inclusive).
        crop_size: Side of the warped square.
        context_padding: Context pixels on each side at the warped size.

    Returns:
        (B, R, crop_size, crop_size, C) float32 crops (0 outside the image).
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    count = tf.shape(rois)[1]
    positions = tf.reshape(context_boxes(rois, crop_size, context_padding), [-1, 4])
    # crop_and_resize puts the first and last samples at y1 * (H - 1) and y2 * (H - 1).
    extent = tf.cast(tf.maximum(tf.stack([height, width, height, width]) - 1, 1), tf.float32)
    boxes = positions / extent
    box_indices = tf.repeat(tf.range(batch), count)
    crops = tf.image.crop_and_resize(
        images, boxes, box_indices, (crop_size, crop_size), "bilinear", extrapolation_value=0.0
    )
    out_shape = tf.stack([batch, count, crop_size, crop_size, shape[3]])
    crops = tf.reshape(crops, out_shape)
    return tf.ensure_shape(crops, [None, None, crop_size, crop_size, images.shape[-1]])


@keras.saving.register_keras_serializable(package="keras_dense")
class ContextWarp(keras.layers.Layer):
    """R-CNN's warped region inputs: `[images, rois] -> (B, R, crop_size, crop_size, C)`.

    Each RoI is dilated so that `context_padding` pixels of context surround it at the warped
    size, then resampled bilinearly to a `crop_size` square regardless of its aspect ratio
    (see the module docstring). All RoIs of all images go through one batched
    `tf.image.crop_and_resize`. The RoIs are not autocast (pixel coordinates need float32);
    the crops come out in the layer's compute dtype. No gradient reaches the RoIs.

    Args:
        crop_size: Side of the warped square (224 for VGG16).
        context_padding: Context pixels on each side at the warped size (16, as R-CNN);
            `0 <= 2 * context_padding < crop_size`.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(self, crop_size: int = 224, context_padding: int = 16, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"crop_size={crop_size!r}: expected a positive int")
        if (
            isinstance(context_padding, bool)
            or not isinstance(context_padding, int)
            or not 0 <= 2 * context_padding < crop_size
        ):
            raise ValueError(
                f"context_padding={context_padding!r}: expected an int with "
                f"0 <= 2 * context_padding < crop_size = {crop_size}"
            )
        self.crop_size = crop_size
        self.context_padding = context_padding

    def call(self, inputs):
        images, rois = inputs
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        crops = context_warp(images, rois, self.crop_size, self.context_padding)
        return tf.cast(crops, self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        images_shape, rois_shape = input_shapes
        size = self.crop_size
        return (images_shape[0], rois_shape[1], size, size, images_shape[-1])

    def compute_output_spec(self, inputs):
        images, rois = inputs
        shape = self.compute_output_shape((images.shape, rois.shape))
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"crop_size": self.crop_size, "context_padding": self.context_padding})
        return config
