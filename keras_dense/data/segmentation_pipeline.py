"""The tf.data input pipeline for semantic segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data.augment import plan_crop, resample_window
from keras_dense.data.decode import JPEG_DCT_METHOD, decode_image, image_size, is_png
from keras_dense.data.device_augment import (
    CANVAS_MULTIPLE,
    check_augment_on,
    colour_affine,
    luma_weights,
)
from keras_dense.data.records_dataset import AUTOTUNE, records_dataset, with_seeds
from keras_dense.data.schema import parse_serialized
from keras_dense.data.tfrecord_files import resolve_files
from keras_dense.utils.normalization import check_mode, finish, mean_pixel


def _decode_mask(
    parsed: dict,
    filename: tf.Tensor,
    num_classes: int | None = None,
    ignore_label: int = 255,
) -> tf.Tensor:
    has_mask = tf.debugging.Assert(
        tf.strings.length(parsed["mask_bytes"]) > 0,
        [
            "record has no segmentation mask (image/segmentation/class/encoded); source_id:",
            parsed["source_id"],
            "shard:",
            filename,
        ],
    )
    with tf.control_dependencies([has_mask]):
        mask = tf.io.decode_png(parsed["mask_bytes"], channels=1)[:, :, 0]
    if num_classes is None:
        return mask
    return check_labels(mask, num_classes, ignore_label, parsed["source_id"], filename)


def check_labels(
    mask: tf.Tensor, num_classes: int, ignore_label: int, source_id: tf.Tensor, filename
) -> tf.Tensor:
    """Fails (InvalidArgumentError naming the record and shard) on labels outside the classes.

    A label >= `num_classes` that is not `ignore_label` would otherwise be dropped from the
    loss and the metrics without a word (the class lists of model and data disagree).

    Args:
        mask: (H, W) uint8 labels.
        num_classes: Valid labels are `[0, num_classes)`.
        ignore_label: The one other allowed value.
        source_id: The record's source id.
        filename: The record's shard file.

    Returns:
        `mask`, with the check as a control dependency.
    """
    labels = tf.cast(mask, tf.int32)
    outside = tf.logical_and(labels >= num_classes, labels != ignore_label)
    count = tf.reduce_sum(tf.cast(outside, tf.int32))
    check = tf.debugging.Assert(
        tf.equal(count, 0),
        [
            "mask labels outside [0, num_classes) that are not the ignore label in record",
            source_id,
            "of shard",
            filename,
            ": pixels",
            count,
            "largest label",
            tf.reduce_max(labels),
            "num_classes",
            num_classes,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(mask)


def check_same_size(
    image_hw: tf.Tensor, mask: tf.Tensor, source_id: tf.Tensor, filename: tf.Tensor
) -> tf.Tensor:
    """Fails (InvalidArgumentError naming the record and its shard) unless sizes agree.

    Args:
        image_hw: `(height, width)` of the image.
        mask: (H, W) mask.
        source_id: The record's source id.
        filename: The record's shard file.

    Returns:
        `mask`, with the check as a control dependency.
    """
    mask_hw = tf.shape(mask)[:2]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.cast(image_hw, tf.int32), mask_hw)),
        [
            "image and mask sizes differ (height, width) in record",
            source_id,
            "of shard",
            filename,
            ": image",
            image_hw,
            "mask",
            mask_hw,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(mask)


def decode_image_and_mask(
    serialized: tf.Tensor,
    channels: int = 3,
    filename: tf.Tensor | str = "<unknown shard>",
    num_classes: int | None = None,
    ignore_label: int = 255,
):
    """Parses a record and decodes its image (uint8, (H, W, C)) and mask (uint8, (H, W)).

    Args:
        serialized: The serialized Example.
        channels: Image channels to decode.
        filename: The record's shard file (for error messages).
        num_classes: When given, labels outside `[0, num_classes)` other than
            `ignore_label` fail the record (`check_labels`).
        ignore_label: The ignore value.

    Returns:
        `(image, mask, source_id)`.

    Raises:
        tf.errors.InvalidArgumentError: (when run) no mask, or image and mask sizes differ.
    """
    parsed = parse_serialized(serialized)
    image = decode_image(parsed["image_bytes"], channels)
    mask = _decode_mask(parsed, filename, num_classes, ignore_label)
    mask = check_same_size(tf.shape(image)[:2], mask, parsed["source_id"], filename)
    return image, mask, parsed["source_id"]


def decode_window(
    data: tf.Tensor,
    window: tf.Tensor,
    ratio: tf.Tensor,
    channels: int,
    size: tf.Tensor | None = None,
) -> tf.Tensor:
    """Decodes `window` (`[top, left, rows, cols]`) of an image, at 1/ratio for JPEG.

    A JPEG window of at most half the image is decoded alone
    (`tf.image.decode_and_crop_jpeg`: the entropy decoding still runs down to the window's
    last row, the rest of the work is saved); a larger one is cut from a full decode, which
    is then cheaper. Both give the same pixels.

    Args:
        data: PNG or JPEG bytes.
        window: The window in decoded pixels (`augment.CropPlan.window()`).
        ratio: DCT downscale factor (JPEG only; must be 1 for PNG).
        channels: Channels to decode.
        size: `(height, width)` of the image if known (else read from the header).

    Returns:
        (rows, cols, channels) uint8.
    """
    size = image_size(data) if size is None else size

    def cut(image):
        return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]

    def png():
        return cut(tf.io.decode_png(data, channels=channels))

    def jpeg(r: int, alone: bool):
        full_h = (size[0] + r - 1) // r
        full_w = (size[1] + r - 1) // r

        def crop():
            # libjpeg treats the edges of a crop like image edges when it upsamples the
            # chroma, so the pixels next to them differ (by a level or two) from a full
            # decode: decode one more pixel on every side (where there is one), cut it off.
            top = tf.maximum(window[0] - 1, 0)
            left = tf.maximum(window[1] - 1, 0)
            bottom = tf.minimum(window[0] + window[2] + 1, full_h)
            right = tf.minimum(window[1] + window[3] + 1, full_w)
            wider = tf.stack([top, left, bottom - top, right - left])
            image = tf.image.decode_and_crop_jpeg(
                data, wider, channels=channels, ratio=r, dct_method=JPEG_DCT_METHOD
            )
            dy, dx = window[0] - top, window[1] - left
            return image[dy : dy + window[2], dx : dx + window[3]]

        def full():
            return cut(
                tf.io.decode_jpeg(data, channels=channels, ratio=r, dct_method=JPEG_DCT_METHOD)
            )

        return crop if alone else full

    # One flat switch (nested conditionals cost more in tf.data): PNG, then per DCT ratio (an
    # attribute of the decode ops, so one branch each) the full decode and the window alone.
    ratios = (1, 2, 4, 8)
    level = tf.add_n([tf.cast(ratio >= r, tf.int32) for r in ratios[1:]])
    decoded_h = (size[0] + ratio - 1) // ratio
    decoded_w = (size[1] + ratio - 1) // ratio
    alone = tf.cast(2 * window[2] * window[3] <= decoded_h * decoded_w, tf.int32)
    branch = tf.where(is_png(data), 0, 1 + 2 * level + alone)
    branches = [png] + [jpeg(r, a) for r in ratios for a in (False, True)]
    image = tf.switch_case(branch, branches)
    image.set_shape([None, None, channels])
    return image


def _large_images(file_pattern: str | Sequence[str], crop_size: tuple[int, int]) -> bool:
    """Whether the first record's image has more than twice the pixels of the crop."""
    try:
        first = next(iter(tf.data.TFRecordDataset(resolve_files(file_pattern)[:1]).take(1)))
        height, width = image_size(parse_serialized(first)["image_bytes"]).numpy()
    except (StopIteration, tf.errors.OpError):
        return False
    return int(height) * int(width) > 2 * crop_size[0] * crop_size[1]


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
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    if training and crop_size is None:
        raise ValueError("crop_size is required when training=True (e.g. crop_size=512)")
    if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
        raise ValueError(f"scale_range={scale_range}: expected 0 < min <= max")
    mean = tf.constant(mean_pixel(normalization, channels))
    if augment_on == "device":
        fast_decode = False
    if training and fast_decode is None:
        fast_decode = _large_images(file_pattern, crop_size)
    ds = records_dataset(
        file_pattern, training, seed, deterministic, cache, verify, with_filenames=True
    )
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = with_seeds(ds, seed)

        luma = luma_weights(channels)

        def colour_map(window, element_seed):
            """The affine map of colour jitter (if any) followed by the normalisation."""
            mean_grey = 0.0
            if photometric:
                # Mean grey of the source pixels the crop covers, from every 4th row/column.
                sample = tf.cast(window[::4, ::4], tf.float32)
                mean_grey = tf.reduce_mean(tf.reshape(sample, [-1, channels]) @ tf.transpose(luma))
            matrix, offset = colour_affine(
                element_seed, mean_grey, channels, photometric, normalization
            )

            def apply(pixels):
                flat = tf.reshape(pixels, [-1, channels]) @ matrix + offset
                return tf.reshape(flat, tf.shape(pixels))

            return apply

        def train_map(record, element_seed):
            filename, serialized = record
            parsed = parse_serialized(serialized)
            data = parsed["image_bytes"]
            mask = _decode_mask(parsed, filename, num_classes, ignore_label)
            if fast_decode:
                hw = image_size(data)
                max_ratio = tf.where(is_png(data), 1, 8)
            else:
                full = decode_image(data, channels)
                hw = tf.shape(full)[:2]
                max_ratio = 1
            mask = check_same_size(hw, mask, parsed["source_id"], filename)
            plan = plan_crop(hw[0], hw[1], crop_size, scale_range, flip, element_seed, max_ratio)
            if fast_decode:
                window = decode_window(data, plan.window(), plan.ratio, channels, hw)
            else:
                y, x = plan.y, plan.x
                window = full[y.start : y.start + y.rows, x.start : x.start + x.rows]
            return resample_window(
                window, mask, plan, crop_size, ignore_label, colour_map(window, element_seed)
            )

        def decode_map(record, element_seed):
            # augment_on="device": decode only; `device_augment.augment_batch` does the rest.
            filename, serialized = record
            image, mask, _ = decode_image_and_mask(
                serialized, channels, filename, num_classes, ignore_label
            )
            size = tf.shape(image)[:2]
            # Canvas: a multiple of CANVAS_MULTIPLE (padded_batch then pads to the largest).
            pad_h, pad_w = -size[0] % CANVAS_MULTIPLE, -size[1] % CANVAS_MULTIPLE
            image, mask = tf.cond(
                pad_h + pad_w > 0,
                lambda: (
                    tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]]),
                    tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label),
                ),
                lambda: (image, mask),
            )
            features = {"images": image, "image_sizes": size, "seeds": element_seed}
            return features, mask

        drop = True if drop_remainder is None else drop_remainder
        if augment_on == "device":
            ds = ds.map(decode_map, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
            ds = ds.padded_batch(
                batch_size,
                padded_shapes=(
                    {"images": [None, None, channels], "image_sizes": [2], "seeds": [2]},
                    [None, None],
                ),
                padding_values=(
                    {
                        "images": tf.constant(0, tf.uint8),
                        "image_sizes": 0,
                        "seeds": tf.constant(0, tf.int64),
                    },
                    tf.constant(ignore_label, tf.uint8),
                ),
                drop_remainder=drop,
            )
        else:
            ds = ds.map(train_map, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
            ds = ds.batch(batch_size, drop_remainder=drop)
    else:

        def eval_map(filename, serialized):
            image, mask, _ = decode_image_and_mask(
                serialized, channels, filename, num_classes, ignore_label
            )
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
