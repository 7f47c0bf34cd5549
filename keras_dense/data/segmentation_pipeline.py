"""The tf.data input pipeline for semantic segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data.augment import random_color_affine, scale_crop_flip
from keras_dense.data.records_dataset import AUTOTUNE, records_dataset, with_seeds
from keras_dense.data.schema import parse_serialized
from keras_dense.utils.normalization import check_mode, finish, mean_pixel


def decode_image_and_mask(serialized: tf.Tensor, channels: int = 3):
    """Parses a record and decodes its image (uint8, (H, W, C)) and mask (uint8, (H, W))."""
    parsed = parse_serialized(serialized)
    image = tf.io.decode_image(parsed["image_bytes"], channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    has_mask = tf.debugging.Assert(
        tf.strings.length(parsed["mask_bytes"]) > 0,
        [
            "record has no segmentation mask (image/segmentation/class/encoded); source_id:",
            parsed["source_id"],
        ],
    )
    with tf.control_dependencies([has_mask]):
        mask = tf.io.decode_png(parsed["mask_bytes"], channels=1)[:, :, 0]
    return image, mask, parsed["source_id"]


def segmentation_dataset(
    file_pattern: str | Sequence[str],
    batch_size: int,
    crop_size: int | tuple[int, int] | None = None,
    training: bool = False,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
    normalization: str | None = "caffe",
    ignore_label: int = 255,
    channels: int = 3,
    shuffle_buffer: int = 256,
    cache: bool | str = False,
    deterministic: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    verify: bool = True,
) -> tf.data.Dataset:
    """Batches of `(images, masks)` for segmentation training or evaluation.

    Training (`training=True`): random scale in `scale_range`, random crop of `crop_size` with
    padding (image padded with the mean pixel, mask with `ignore_label`), horizontal flip and
    photometric jitter, all in one resampling (see `keras_dense.data.augment`).

    Evaluation (`training=False`): no augmentation; images keep their size and are padded to
    the largest in the batch (mask padding = `ignore_label`), so no pixel is lost. With
    `crop_size` set, smaller images are first padded to at least that size (never cropped).

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        batch_size: Images per batch.
        crop_size: Training crop `(h, w)` or a single int; required when training.
        training: Augment and shuffle.
        scale_range: Random scale bounds.
        flip: Random horizontal flip.
        photometric: Random brightness, contrast, saturation and hue.
        normalization: `"caffe"`, `"torch"`, `"tf"` or None (see `keras_dense.utils.normalization`).
        ignore_label: Mask value for padding and unlabelled pixels.
        channels: Image channels to decode (3, or 1 for greyscale models).
        shuffle_buffer: Records in the shuffle buffer (training).
        cache: Cache serialized records in memory (True) or in a file (str).
        deterministic: Fix the element order of parallel stages.
        seed: Seed of shuffling and augmentation.
        drop_remainder: Drop a last partial batch (default: True when training).
        verify: Check shards (framing, manifest checksums) before reading.

    Returns:
        A dataset of `(images float32 (B, H, W, C), masks int32 (B, H, W))`.

    Raises:
        ValueError: Bad arguments.
        keras_dense.data.BadInputError: No shard matches, or a shard is damaged (named).
    """
    check_mode(normalization)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    if training and crop_size is None:
        raise ValueError("crop_size is required when training=True (e.g. crop_size=512)")
    if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
        raise ValueError(f"scale_range={scale_range}: expected 0 < min <= max")
    mean = tf.constant(mean_pixel(normalization, channels))
    ds = records_dataset(file_pattern, training, seed, deterministic, cache, verify)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = with_seeds(ds, seed)

        def train_map(serialized, element_seed):
            image, mask, _ = decode_image_and_mask(serialized, channels)
            # Resample the uint8 image directly; -1 marks padding (real pixels are >= 0).
            crop, mask = scale_crop_flip(
                image, mask, crop_size, scale_range, flip, ignore_label, element_seed, -1.0
            )
            valid = crop[..., :1] >= 0.0
            matrix, offset = colour_and_normalization(crop, valid, element_seed)
            pixels = tf.reshape(crop, [-1, channels]) @ matrix + offset
            # Zero the padding (a multiply is cheaper than a broadcasting tf.where here).
            out = tf.reshape(pixels, tf.shape(crop)) * tf.cast(valid, tf.float32)
            return tf.ensure_shape(out, [*crop_size, channels]), mask

        # Normalisation as an affine map: finish(x - mean) = x @ norm + norm_offset.
        norm = finish(tf.eye(channels), normalization)
        norm_offset = -tf.linalg.matvec(norm, mean, transpose_a=True)

        def colour_and_normalization(crop, valid, element_seed):
            """One affine map for colour jitter (if any) followed by the normalisation."""
            if not photometric:
                return norm, norm_offset
            weights = tf.cast(valid, tf.float32)
            luma = (
                tf.reduce_mean(crop, axis=-1, keepdims=True)
                if channels == 1
                else (crop @ tf.constant([[0.299], [0.587], [0.114]]))
            )
            mean_grey = tf.reduce_sum(luma * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
            if channels == 3:
                matrix, offset = random_color_affine(element_seed, mean_grey)
            else:
                matrix, offset = random_color_affine(
                    element_seed, mean_grey, saturation=(1, 1), hue=0.0
                )
                matrix, offset = matrix[:1, :1], offset[:1]
            return matrix @ norm, tf.linalg.matvec(norm, offset, transpose_a=True) + norm_offset

        ds = ds.map(train_map, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        ds = ds.batch(batch_size, drop_remainder=True if drop_remainder is None else drop_remainder)
    else:

        def eval_map(serialized):
            image, mask, _ = decode_image_and_mask(serialized, channels)
            image = finish(tf.cast(image, tf.float32) - mean, normalization)
            mask = tf.cast(mask, tf.int32)
            if crop_size is not None:
                pad_h = tf.maximum(crop_size[0] - tf.shape(image)[0], 0)
                pad_w = tf.maximum(crop_size[1] - tf.shape(image)[1], 0)
                image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
                mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
            return image, mask

        ds = ds.map(eval_map, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        ds = ds.padded_batch(
            batch_size,
            padded_shapes=([None, None, channels], [None, None]),
            padding_values=(0.0, ignore_label),
            drop_remainder=bool(drop_remainder),
        )
    return ds.prefetch(AUTOTUNE)
