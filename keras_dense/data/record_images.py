"""The encoded image and instance masks of one detection record, checked as the pipeline reads
them, so that no bad bytes reach the graph (where they fail mid-epoch, naming no record).

- The image is JPEG or PNG (sniffed; `image/format` is not read) with a readable header, whole
  (`image_structure`: every critical PNG chunk's CRC, a JPEG's markers up to its end), and,
  for JPEG, compressed data that TensorFlow's decoder reads: JPEG has no checksum, so the
  image is decoded at 1/8 scale, which runs the full decode's entropy decoding (where a
  corrupt body fails) at a third of its cost.
- Instance masks are one PNG per box at the image's size, whole. When the masks are read
  (`DetectionRules.instance_masks`) each must also hold its object as the pipeline decodes
  it (`tf.io.decode_png(..., channels=1)`, 8-bit): a 16-bit PNG, whose 0/1 values decode to
  0, and an empty mask (no non-zero pixel) are refused, naming the mask.
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf

from keras_dense.data import schema
from keras_dense.data.detection_rules import DetectionRules
from keras_dense.data.image_io import image_size_from_header, sniff_format
from keras_dense.data.image_structure import (
    PNG_SIGNATURE,
    PngHeader,
    png_header,
    png_image_data,
    structure_problem,
)

# The 1/8-scale decode that checks a JPEG's compressed data (libjpeg's scaled IDCT).
JPEG_CHECK_RATIO = 8
# Mask rows inflated at a time while looking for the object (the search stops at its first row).
MASK_ROWS_PER_STEP = 32


def _jpeg_decodes(data: bytes) -> bool:
    """Whether TensorFlow's JPEG decoder reads the bytes (as the pipeline: three channels)."""
    try:
        tf.io.decode_jpeg(data, channels=3, ratio=JPEG_CHECK_RATIO)
    except tf.errors.InvalidArgumentError:
        return False
    return True


def image_problem(data: bytes, what: str) -> tuple[str | None, tuple | None]:
    """`(reason, (height, width))` of encoded JPEG/PNG bytes; reason None when usable.

    Args:
        data: The encoded bytes.
        what: How the reason names them ("the image", "instance mask 2").
    """
    fmt = sniff_format(data)
    if fmt is None:
        return f"{what} is neither JPEG nor PNG (starts with {data[:8]!r})", None
    size = image_size_from_header(data)
    if size is None or min(size) < 1:
        return f"{what}: the {fmt.upper()} header cannot be read", None
    problem = structure_problem(data, fmt)
    if problem:
        return f"{what} is a {problem}", None
    if fmt == "jpeg" and not _jpeg_decodes(data):
        reason = (
            f"{what} is a corrupt JPEG: its header and end marker are intact but its compressed "
            "data cannot be decoded (TensorFlow: 'Invalid JPEG data')"
        )
        return reason, None
    return None, size


def _filtered_rows_nonzero(compressed: bytes, row: int, height: int) -> bool | None:
    """Whether inflated PNG rows of `row` bytes (filter type first) hold a non-zero byte.

    Inflated `MASK_ROWS_PER_STEP` rows at a time, stopping at the first non-zero one. None:
    the data does not inflate to `height` rows of valid filter types (the caller decodes).
    """
    inflater = zlib.decompressobj()
    pending, rows_left = compressed, height
    while rows_left:
        step = min(rows_left, MASK_ROWS_PER_STEP)
        try:
            raw = inflater.decompress(pending, step * row)
        except zlib.error:
            return None
        pending = inflater.unconsumed_tail
        if len(raw) != step * row:
            return None
        rows = np.frombuffer(raw, np.uint8).reshape(step, row)
        if (rows[:, 0] > 4).any():
            return None
        if rows[:, 1:].any():
            return True
        rows_left -= step
    return False


def _has_object_pixel(png: bytes, header: PngHeader) -> bool | None:
    """Whether a mask decodes (single-channel, as the pipeline) to any non-zero pixel.

    An 8-bit greyscale, non-interlaced PNG is read without unfiltering: PNG's row filters
    (None, Sub, Up, Average, Paeth) all map zero rows to zero bytes and back, so the image is
    all zero exactly when every filtered byte is. Other PNGs are decoded as the pipeline
    decodes them. None: the image data cannot be decoded.
    """
    if header.colour_type == 0 and header.bit_depth == 8 and header.interlace == 0:
        found = _filtered_rows_nonzero(png_image_data(png), header.width + 1, header.height)
        if found is not None:
            return found
    try:
        decoded = tf.io.decode_png(png, channels=1)
    except tf.errors.InvalidArgumentError:
        return None
    return bool(tf.reduce_any(decoded > 0))


def _mask_content_problem(png: bytes, k: int) -> str | None:
    """A mask the pipeline would read as empty (16-bit, or no object pixel), or None."""
    header = png_header(png)
    if header.bit_depth == 16:
        return (
            f"instance mask {k} is a 16-bit PNG: masks are read as 8-bit, which turns values "
            "below 256 into 0; store an 8-bit (or 1-bit) single-channel PNG, 0 background and "
            "non-zero the object"
        )
    found = _has_object_pixel(png, header)
    if found is None:
        return f"instance mask {k} is a corrupt PNG (its image data cannot be decoded)"
    if not found:
        return (
            f"instance mask {k} is empty (no non-zero pixel), so its box has no object to "
            "learn or score; fix the mask or remove the box"
        )
    return None


def mask_problems(masks: list, num_boxes: int, size, rules: DetectionRules) -> list:
    """`(field, reason)` of the first unusable instance mask of a record, or [].

    Args:
        masks: The record's `image/object/mask` values.
        num_boxes: Its number of boxes.
        size: The image's `(height, width)`, None when unknown.
        rules: `instance_masks`: masks are required, and read (their content is checked).
    """
    field = schema.INSTANCE_MASK
    if not masks:
        if rules.instance_masks and num_boxes:
            reason = (
                f"missing: the record has {num_boxes} boxes but no instance masks; instance "
                "segmentation needs one PNG mask per box"
            )
            return [(field, reason)]
        return []
    if len(masks) != num_boxes:
        reason = f"{len(masks)} instance masks for {num_boxes} boxes; expected one mask per box"
        return [(field, reason)]
    for k, png in enumerate(masks):
        if not png.startswith(PNG_SIGNATURE):
            reason = (
                f"instance mask {k} is not a PNG (starts with {png[:8]!r}); expected one "
                "single-channel PNG per box"
            )
            return [(field, reason)]
        reason, mask_size = image_problem(png, f"instance mask {k}")
        if reason:
            return [(field, reason)]
        if size is not None and mask_size != size:
            reason = (
                f"instance mask {k} is {mask_size[1]}x{mask_size[0]} but the image is "
                f"{size[1]}x{size[0]} (width x height)"
            )
            return [(field, reason)]
        reason = _mask_content_problem(png, k) if rules.instance_masks else None
        if reason:
            return [(field, reason)]
    return []
