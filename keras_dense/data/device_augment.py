"""Training augmentation as a batched stage at the start of the train step (`augment_on="device"`).

With `segmentation_dataset(..., augment_on="device")` the host only parses and decodes: each
batch is `({"images": uint8 (B, H, W, C), "image_sizes": (B, 2), "seeds": (B, 2)}, masks
uint8 (B, H, W))`, images padded to the batch's largest (rounded up to `CANVAS_MULTIPLE`, so
that few distinct shapes reach a compiled step). `augment_batch` then draws, for every image,
the same random scale, crop, flip and colour jitter as the host path (`plan_crop` and
`random_color_affine` on the image's own seed) and samples all images at once with gathers:

- image: bilinear interpolation with half-pixel centres at the source position
  `(k + 0.5) / scale - 0.5` of scaled pixel k (edge pixels repeated), as
  `resample_window`'s resize of the window; then the colour map (jitter, normalisation);
- mask: the nearest source pixel of the same positions (`round`, as `_nearest`);
- padding: 0 in the image, `ignore_label` in the mask, below and right (left when mirrored).

For an image decoded in full (the host path with `fast_decode=False`) and the same seed, the
outputs equal the host pipeline's up to float rounding. On a GPU the stage costs little; on a
CPU it moves the work from the tf.data threads into the step.
"""

from __future__ import annotations

import tensorflow as tf

from keras_dense.data.augment import SCALE_STEP, plan_crop, random_color_affine
from keras_dense.utils.normalization import check_mode, finish, mean_pixel

AUGMENT_ON = ("host", "device")
# Device-stage canvases are padded to a multiple of this many pixels.
CANVAS_MULTIPLE = 64


def check_augment_on(value: str) -> str:
    """Returns `value` or raises ValueError unless it is one of `AUGMENT_ON`."""
    if value not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {value!r}")
    return value


def normalization_affine(channels: int, normalization: str | None):
    """`(matrix (C, C), offset (C,))` with `finish(x - mean) = x @ matrix + offset`."""
    mean = tf.constant(mean_pixel(normalization, channels))
    matrix = finish(tf.eye(channels), normalization)
    return matrix, -tf.linalg.matvec(matrix, mean, transpose_a=True)


def luma_weights(channels: int) -> tf.Tensor:
    """(1, C) weights of the mean grey that contrast jitter pivots about."""
    return tf.constant([[1.0 / channels] * channels if channels != 3 else [0.299, 0.587, 0.114]])


def colour_affine(
    seed: tf.Tensor,
    mean_grey: tf.Tensor,
    channels: int,
    photometric: bool,
    normalization: str | None,
):
    """The affine map of colour jitter (if `photometric`) followed by the normalisation.

    Args:
        seed: The image's shape-(2,) seed.
        mean_grey: Mean grey of the source pixels the crop covers (0-255).
        channels: 3 (RGB: brightness, contrast, saturation, hue) or 1 (brightness, contrast).
        photometric: Whether to jitter.
        normalization: The input normalisation mode.

    Returns:
        `(matrix (C, C), offset (C,))` acting on row vectors of 0-255 values.
    """
    norm, norm_offset = normalization_affine(channels, normalization)
    if not photometric:
        return norm, norm_offset
    if channels == 3:
        matrix, offset = random_color_affine(seed, mean_grey)
    else:
        matrix, offset = random_color_affine(seed, mean_grey, saturation=(1, 1), hue=0.0)
        matrix, offset = matrix[:1, :1], offset[:1]
    return matrix @ norm, tf.linalg.matvec(norm, offset, transpose_a=True) + norm_offset


class _Axis:
    """Sampling of one axis for a batch: (B, L) source indices, weights and validity."""

    def __init__(self, offset, count, steps, size, length: int, mirrored=None):
        j = tf.range(length)[None]
        t = j if mirrored is None else tf.where(mirrored[:, None], length - 1 - j, j)
        self.valid = t < count[:, None]
        k = offset[:, None] + t
        last = size[:, None] - 1
        position = (tf.cast(k, tf.float32) + 0.5) * (
            float(SCALE_STEP) / tf.cast(steps, tf.float32)
        )[:, None] - 0.5
        floor = tf.floor(position)
        self.lerp = position - floor
        low = tf.cast(floor, tf.int32)
        self.low = tf.clip_by_value(low, 0, last)
        self.high = tf.clip_by_value(low + 1, 0, last)
        nearest = (2 * k + 1) * SCALE_STEP // (2 * steps[:, None])
        self.nearest = tf.clip_by_value(nearest, 0, last)


def augment_batch(
    features: dict,
    masks: tf.Tensor,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
    normalization: str | None = "caffe",
    ignore_label: int = 255,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, crop with padding, flip and colour jitter of a decoded batch, at once.

    Args:
        features: `{"images": (B, H, W, C) uint8 (padded), "image_sizes": (B, 2) int32 (each
            image's own height and width), "seeds": (B, 2) int64}` from
            `segmentation_dataset(..., augment_on="device")`.
        masks: (B, H, W) uint8 class ids (padded like the images).
        crop_size: `(height, width)` of the output.
        scale_range: `(min, max)` of the uniform random scale.
        flip: Random horizontal flip.
        photometric: Random brightness, contrast, saturation and hue.
        normalization: The input normalisation mode.
        ignore_label: Mask value of padded pixels.

    Returns:
        `(images (B, ch, cw, C) float32 normalised, 0 where padded; masks (B, ch, cw) int32,
        ignore_label where padded)`.
    """
    check_mode(normalization)
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    images = features["images"]
    sizes = tf.cast(features["image_sizes"], tf.int32)
    seeds = tf.cast(features["seeds"], tf.int64)
    channels = int(images.shape[-1])

    def plan(args):
        size, seed = args
        p = plan_crop(size[0], size[1], (crop_h, crop_w), scale_range, flip, seed)
        return tf.stack(
            [
                p.steps,
                tf.cast(p.do_flip, tf.int32),
                p.y.offset,
                p.y.count,
                p.y.start,
                p.y.rows,
                p.x.offset,
                p.x.count,
                p.x.start,
                p.x.rows,
            ]
        )

    plans = tf.map_fn(plan, (sizes, seeds), fn_output_signature=tf.int32)
    steps, mirrored = plans[:, 0], plans[:, 1] > 0
    y = _Axis(plans[:, 2], plans[:, 3], steps, sizes[:, 0], crop_h)
    x = _Axis(plans[:, 6], plans[:, 7], steps, sizes[:, 1], crop_w, mirrored)

    # Bilinear: rows first (two gathers), then columns; the interpolation in ResizeBilinear's
    # order (along x, then along y).
    def columns(rows):
        left = tf.cast(tf.gather(rows, x.low, axis=2, batch_dims=1), tf.float32)
        right = tf.cast(tf.gather(rows, x.high, axis=2, batch_dims=1), tf.float32)
        return left + (right - left) * x.lerp[:, None, :, None]

    top = columns(tf.gather(images, y.low, axis=1, batch_dims=1))
    bottom = columns(tf.gather(images, y.high, axis=1, batch_dims=1))
    pixels = top + (bottom - top) * y.lerp[:, :, None, None]

    # Colour: contrast pivots about the mean grey of the pixels the crop reads, from every
    # 4th row and column of its source window (as the host path). Windows start on multiples
    # of SCALE_STEP (a multiple of 4), so those are every 4th row and column of the canvas.
    def window_sample(start, rows, length):
        r = 4 * tf.range(length)[None] - start[:, None]
        return tf.cast((r >= 0) & (r < rows[:, None]), tf.float32)

    if photometric:
        sample = tf.cast(images[:, ::4, ::4], tf.float32)
        rows = window_sample(plans[:, 4], plans[:, 5], tf.shape(sample)[1])
        cols = window_sample(plans[:, 8], plans[:, 9], tf.shape(sample)[2])
        grey = tf.tensordot(sample, luma_weights(channels)[0], [[3], [0]])
        total = tf.einsum("bh,bhw,bw->b", rows, grey, cols)
        mean_grey = total / (tf.reduce_sum(rows, 1) * tf.reduce_sum(cols, 1))
    else:
        mean_grey = tf.zeros_like(sizes[:, 0], tf.float32)

    def colour(args):
        seed, grey = args
        return colour_affine(seed, grey, channels, photometric, normalization)

    matrices, offsets = tf.map_fn(
        colour, (seeds, mean_grey), fn_output_signature=(tf.float32, tf.float32)
    )
    pixels = tf.einsum("bhwc,bcd->bhwd", pixels, matrices) + offsets[:, None, None, :]
    valid = y.valid[:, :, None] & x.valid[:, None, :]
    out_images = tf.where(valid[..., None], pixels, 0.0)

    mask_rows = tf.gather(masks, y.nearest, axis=1, batch_dims=1)
    picked = tf.cast(tf.gather(mask_rows, x.nearest, axis=2, batch_dims=1), tf.int32)
    out_masks = tf.where(valid, picked, ignore_label)
    out_images = tf.ensure_shape(out_images, [None, crop_h, crop_w, channels])
    out_masks = tf.ensure_shape(out_masks, [None, crop_h, crop_w])
    return out_images, out_masks


def device_stage(
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
    normalization: str | None = "caffe",
    ignore_label: int = 255,
):
    """`augment_batch` with these settings, as a function of one `(features, masks)` batch."""

    def stage(batch):
        features, masks = batch
        return augment_batch(
            features, masks, crop_size, scale_range, flip, photometric, normalization, ignore_label
        )

    return stage
