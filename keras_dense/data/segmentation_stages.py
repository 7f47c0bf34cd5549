"""The named stages of the segmentation pipeline, shared by its three modes.

`keras_dense.data.segmentation_pipeline.segmentation_dataset` composes them:

- read: `keras_dense.data.record_stage.read_stage` (then per-element seeds when training);
- decode: `decode_stage` (image and mask, checked), used by device training and evaluation;
  host training decodes inside `host_augment_stage` (only the crop's window of a JPEG);
- augment on the host: `host_augment_stage` (scale, crop, flip and colour in one resampling);
- augment on the device, preparation: `device_prepare_stage` (canvas padding and seeds for
  `keras_dense.data.device_augment.augment_batch`);
- evaluation: `evaluation_stage` (normalisation, padding up to the crop size);
- batch/pad: `batch_host`, `batch_device`, `batch_evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from keras_dense.data.augment import plan_crop, resample_window
from keras_dense.data.decode import decode_image, image_size, is_png
from keras_dense.data.device_augment import CANVAS_MULTIPLE, colour_affine, luma_weights
from keras_dense.data.records_dataset import AUTOTUNE
from keras_dense.data.schema import parse_serialized
from keras_dense.data.segmentation_decode import (
    check_same_size,
    decode_image_and_mask,
    decode_mask,
    decode_window,
)
from keras_dense.utils.normalization import finish, mean_pixel


@dataclass(frozen=True)
class Decoding:
    """How records are decoded, in every mode.

    Attributes:
        channels: Image channels to decode.
        num_classes: When given, mask labels outside `[0, num_classes)` other than
            `ignore_label` fail the record.
        ignore_label: The masks' ignore value (also their padding).
    """

    channels: int
    num_classes: int | None
    ignore_label: int


@dataclass(frozen=True)
class HostAugmentation:
    """The host training augmentation (see `segmentation_dataset`).

    Attributes:
        crop_size: `(height, width)` of the crops.
        scale_range: Random scale bounds.
        flip: Random horizontal flip.
        photometric: Random colour jitter.
        normalization: The normalisation mode.
        fast_decode: Decode only the crop's window of a JPEG, DCT-downscaled when possible.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    flip: bool
    photometric: bool
    normalization: str | None
    fast_decode: bool


def decode_stage(filename: tf.Tensor, serialized: tf.Tensor, decoding: Decoding):
    """The checked `(image uint8 (H, W, C), mask uint8 (H, W))` of one record."""
    image, mask, _ = decode_image_and_mask(
        serialized, decoding.channels, filename, decoding.num_classes, decoding.ignore_label
    )
    return image, mask


def pad_bottom_right(image: tf.Tensor, mask: tf.Tensor, pad_h, pad_w, ignore_label: int):
    """`image` padded with zeros and `mask` with `ignore_label`, below and to the right."""
    return (
        tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]]),
        tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label),
    )


def colour_map(
    window: tf.Tensor,
    element_seed: tf.Tensor,
    channels: int,
    photometric: bool,
    normalization: str | None,
):
    """The affine map of colour jitter (if any) followed by the normalisation.

    Contrast jitter pivots about the mean grey of the source pixels the crop covers (sampled
    from every 4th row and column of `window`).

    Returns:
        A function of `(..., C)` float32 pixels.
    """
    mean_grey = 0.0
    if photometric:
        sample = tf.cast(window[::4, ::4], tf.float32)
        luma = luma_weights(channels)
        mean_grey = tf.reduce_mean(tf.reshape(sample, [-1, channels]) @ tf.transpose(luma))
    matrix, offset = colour_affine(element_seed, mean_grey, channels, photometric, normalization)

    def apply(pixels):
        flat = tf.reshape(pixels, [-1, channels]) @ matrix + offset
        return tf.reshape(flat, tf.shape(pixels))

    return apply


def host_augment_stage(
    record, element_seed: tf.Tensor, decoding: Decoding, augmentation: HostAugmentation
):
    """Decodes and augments one training record on the host.

    The crop is planned from the image's size (its header with `fast_decode`), then only
    what the crop reads is decoded and resampled (`keras_dense.data.augment`).

    Returns:
        `(image float32 (ch, cw, C), mask int32 (ch, cw))`.
    """
    filename, serialized = record
    channels, crop_size = decoding.channels, augmentation.crop_size
    parsed = parse_serialized(serialized)
    data = parsed["image_bytes"]
    mask = decode_mask(parsed, filename, decoding.num_classes, decoding.ignore_label)
    if augmentation.fast_decode:
        hw = image_size(data)
        max_ratio = tf.where(is_png(data), 1, 8)
    else:
        full = decode_image(data, channels)
        hw = tf.shape(full)[:2]
        max_ratio = 1
    mask = check_same_size(hw, mask, parsed["source_id"], filename)
    plan = plan_crop(
        hw[0],
        hw[1],
        crop_size,
        augmentation.scale_range,
        augmentation.flip,
        element_seed,
        max_ratio,
    )
    if augmentation.fast_decode:
        window = decode_window(data, plan.window(), plan.ratio, channels, hw)
    else:
        y, x = plan.y, plan.x
        window = full[y.start : y.start + y.rows, x.start : x.start + x.rows]
    colours = colour_map(
        window, element_seed, channels, augmentation.photometric, augmentation.normalization
    )
    return resample_window(window, mask, plan, crop_size, decoding.ignore_label, colours)


def device_prepare_stage(record, element_seed: tf.Tensor, decoding: Decoding):
    """Decodes one training record for `device_augment.augment_batch` (no augmentation).

    The image and mask are padded to a multiple of `CANVAS_MULTIPLE` (the batch then pads
    them to its largest).

    Returns:
        `({"images", "image_sizes", "seeds"}, mask uint8)`.
    """
    filename, serialized = record
    image, mask = decode_stage(filename, serialized, decoding)
    size = tf.shape(image)[:2]
    pad_h, pad_w = -size[0] % CANVAS_MULTIPLE, -size[1] % CANVAS_MULTIPLE
    image, mask = tf.cond(
        pad_h + pad_w > 0,
        lambda: pad_bottom_right(image, mask, pad_h, pad_w, decoding.ignore_label),
        lambda: (image, mask),
    )
    features = {"images": image, "image_sizes": size, "seeds": element_seed}
    return features, mask


def evaluation_stage(
    filename: tf.Tensor,
    serialized: tf.Tensor,
    decoding: Decoding,
    normalization: str | None,
    min_size: tuple[int, int] | None,
):
    """One evaluation record: normalised, padded up to `min_size` (never cropped).

    Returns:
        `(image float32 (H, W, C), mask int32 (H, W))`.
    """
    image, mask = decode_stage(filename, serialized, decoding)
    mean = tf.constant(mean_pixel(normalization, decoding.channels))
    image = finish(tf.cast(image, tf.float32) - mean, normalization)
    mask = tf.cast(mask, tf.int32)
    if min_size is not None:
        pad_h = tf.maximum(min_size[0] - tf.shape(image)[0], 0)
        pad_w = tf.maximum(min_size[1] - tf.shape(image)[1], 0)
        image, mask = pad_bottom_right(image, mask, pad_h, pad_w, decoding.ignore_label)
    return image, mask


def batch_host(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batches of host-augmented crops (all of the crop size)."""
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def batch_device(
    ds: tf.data.Dataset, batch_size: int, decoding: Decoding, drop_remainder: bool
) -> tf.data.Dataset:
    """Batches of `device_prepare_stage` elements, padded to the batch's largest canvas."""
    return ds.padded_batch(
        batch_size,
        padded_shapes=(
            {"images": [None, None, decoding.channels], "image_sizes": [2], "seeds": [2]},
            [None, None],
        ),
        padding_values=(
            {
                "images": tf.constant(0, tf.uint8),
                "image_sizes": 0,
                "seeds": tf.constant(0, tf.int64),
            },
            tf.constant(decoding.ignore_label, tf.uint8),
        ),
        drop_remainder=drop_remainder,
    )


def batch_evaluation(
    ds: tf.data.Dataset, batch_size: int, decoding: Decoding, drop_remainder: bool
) -> tf.data.Dataset:
    """Batches of `evaluation_stage` elements, padded to the batch's largest image."""
    return ds.padded_batch(
        batch_size,
        padded_shapes=([None, None, decoding.channels], [None, None]),
        padding_values=(0.0, decoding.ignore_label),
        drop_remainder=drop_remainder,
    )


def map_stage(ds: tf.data.Dataset, stage, deterministic: bool | None) -> tf.data.Dataset:
    """`ds.map(stage)` in parallel (`deterministic` fixes the order)."""
    return ds.map(stage, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
