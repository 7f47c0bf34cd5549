"""The tf.data input pipeline for semantic segmentation.

`segmentation_dataset` composes the stages of `keras_dense.data.segmentation_stages` (read,
decode, host augmentation or device preparation or evaluation, batch/pad); record decoding
is in `keras_dense.data.segmentation_decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import tensorflow as tf

from keras_dense.data.decode import image_size
from keras_dense.data.device_augment import check_augment_on
from keras_dense.data.record_stage import read_stage
from keras_dense.data.records_dataset import with_seeds
from keras_dense.data.schema import parse_serialized
from keras_dense.data.segmentation_decode import (  # noqa: F401 (the names this module had)
    check_labels,
    check_same_size,
    decode_image_and_mask,
    decode_window,
)
from keras_dense.data.segmentation_stages import (
    Decoding,
    HostAugmentation,
    batch_device,
    batch_evaluation,
    batch_host,
    device_prepare_stage,
    evaluation_stage,
    host_augment_stage,
    map_stage,
)
from keras_dense.data.tfrecord_files import resolve_files
from keras_dense.utils.normalization import check_mode


def _large_images(file_pattern: str | Sequence[str], crop_size: tuple[int, int]) -> bool:
    """Whether the first record's image has more than twice the pixels of the crop."""
    try:
        first = next(iter(tf.data.TFRecordDataset(resolve_files(file_pattern)[:1]).take(1)))
        height, width = image_size(parse_serialized(first)["image_bytes"]).numpy()
    except (StopIteration, tf.errors.OpError):
        return False
    return int(height) * int(width) > 2 * crop_size[0] * crop_size[1]


def _checked_crop_size(
    batch_size: int,
    crop_size: int | tuple[int, int] | None,
    training: bool,
    scale_range: tuple[float, float],
) -> tuple[int, int] | None:
    """`crop_size` as `(h, w)` (or None), after checking the arguments that shape batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    if training and crop_size is None:
        raise ValueError("crop_size is required when training=True (e.g. crop_size=512)")
    if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
        raise ValueError(f"scale_range={scale_range}: expected 0 < min <= max")
    return crop_size


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
    fast_decode: bool | None = None,
    num_classes: int | None = None,
    augment_on: str = "host",
) -> tf.data.Dataset:
    """Batches of `(images, masks)` for segmentation training or evaluation.

    Training (`training=True`): random scale in `scale_range`, random crop of `crop_size` with
    padding (image padded with the mean pixel, mask with `ignore_label`), horizontal flip and
    photometric jitter, all in one resampling (see `keras_dense.data.augment`). The crop is
    planned from the image header, so a JPEG is decoded only where the crop reads it
    (`tf.image.decode_and_crop_jpeg`), and at 1/2, 1/4 or 1/8 size in the DCT domain when the
    random scale is at most that (`fast_decode=True`). Contrast jitter is about the mean grey
    of the source pixels the crop covers.

    Every JPEG is decoded with the accurate integer DCT (`keras_dense.data.decode`), as in
    serving. A record whose image and mask sizes differ fails with an `InvalidArgumentError`
    naming its source id and shard file.

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
        verify: Check shards (framing, manifest checksums) before reading; each local shard
            is checked once, then remembered by path, size and modification time.
        fast_decode: Training: plan the crop from the JPEG header and decode only its window,
            DCT-downscaled when the scale allows. False decodes every image in full (the
            reference path; same pixels). None (default) decides from the first record:
            window decoding when its image has more than twice the crop's pixels (it costs
            about 10% more CPU on images near the crop size and saves on larger ones).

        num_classes: When given, a record whose mask holds labels outside
            `[0, num_classes)` other than `ignore_label` stops the pipeline with an
            InvalidArgumentError naming the record and its shard (such labels would be left
            out of the loss and the metrics without a word).
        augment_on: Training: `"host"` (default) augments here, in tf.data; `"device"` only
            decodes and yields `({"images": uint8 (B, H, W, C), "image_sizes": (B, 2),
            "seeds": (B, 2)}, masks uint8 (B, H, W))`, padded to the batch's largest image
            (rounded up to a multiple of 64; mask padding `ignore_label`), for
            `keras_dense.data.device_augment.augment_batch` at the start of the train step
            (same augmentations, same per-image seeds; `fast_decode` does not apply).

    Returns:
        A dataset of `(images float32 (B, H, W, C), masks int32 (B, H, W))` (see
        `augment_on` for the device stage's batches).

    Raises:
        ValueError: Bad arguments.
        keras_dense.data.BadInputError: No shard matches, or a shard is damaged (named).
    """
    check_mode(normalization)
    check_augment_on(augment_on)
    crop_size = _checked_crop_size(batch_size, crop_size, training, scale_range)
    if augment_on == "device":
        fast_decode = False
    if training and fast_decode is None:
        fast_decode = _large_images(file_pattern, crop_size)
    decoding = Decoding(channels, num_classes, ignore_label)
    ds = read_stage(
        file_pattern, training, shuffle_buffer, cache, deterministic, seed, verify, True
    )
    if training:
        ds = with_seeds(ds, seed)
    drop = (drop_remainder is None or drop_remainder) if training else bool(drop_remainder)
    if not training:
        stage = partial(
            evaluation_stage, decoding=decoding, normalization=normalization, min_size=crop_size
        )
        ds = batch_evaluation(map_stage(ds, stage, deterministic), batch_size, decoding, drop)
    elif augment_on == "device":
        stage = partial(device_prepare_stage, decoding=decoding)
        ds = batch_device(map_stage(ds, stage, deterministic), batch_size, decoding, drop)
    else:
        augmentation = HostAugmentation(
            crop_size, scale_range, flip, photometric, normalization, fast_decode
        )
        stage = partial(host_augment_stage, decoding=decoding, augmentation=augmentation)
        ds = batch_host(map_stage(ds, stage, deterministic), batch_size, drop)
    return ds.prefetch(tf.data.AUTOTUNE)
