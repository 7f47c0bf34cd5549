"""Decoding of segmentation records: image and mask with their checks, and crop windows.

A record's mask must exist, hold only the model's classes (or the ignore label) and have the
image's size; each failure is an InvalidArgumentError naming the record and its shard. A
training crop may decode only its window of a JPEG (`decode_window`), DCT-downscaled.
"""

from __future__ import annotations

import tensorflow as tf

from keras_dense.data.decode import JPEG_DCT_METHOD, decode_image, image_size, is_png
from keras_dense.data.schema import parse_serialized


def decode_mask(
    parsed: dict,
    filename: tf.Tensor,
    num_classes: int | None = None,
    ignore_label: int = 255,
) -> tf.Tensor:
    """The (H, W) uint8 class mask of a parsed record (`schema.parse_serialized`).

    Args:
        parsed: The parsed record.
        filename: The record's shard file (for error messages).
        num_classes: When given, labels are checked (`check_labels`).
        ignore_label: The ignore value.

    Returns:
        The mask; (when run) a record without a mask fails naming its source id and shard.
    """
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
    mask = decode_mask(parsed, filename, num_classes, ignore_label)
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
