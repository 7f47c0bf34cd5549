"""The named stages of the detection pipeline, shared by training and evaluation.

`keras_dense.data.detection_pipeline.detection_dataset` composes them:

- read: `keras_dense.data.record_stage.read_stage` (excluded records left out, shuffled when
  training), then per-element seeds;
- decode: `decode_stage` (the image at the Fast R-CNN scale, its boxes, flags, proposals and
  instance masks in pixels of the resized image; crowd boxes left out unless kept);
- augment (training): `flip_stage` (image, boxes, proposals and masks mirrored together);
- pad: `pad_stage` (the row counts checked, rows padded to fixed counts, the image normalised);
- batch: `batch_stage` (images zero-padded to the batch's largest).

Between the stages an example is a dict: `image` float32 (h, w, 3) unnormalised,
`image_shape` `(h, w)`, `scale`, `boxes` (n, 4) pixel yxyx, `labels` (n,), `difficult` (n,),
`proposals` (m, 4), `source_id`, and with instance masks `instance_masks` (n, h, w) uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from keras_dense.data.decode import decode_image
from keras_dense.data.detection_scale import fast_rcnn_scale
from keras_dense.data.schema import parse_serialized
from keras_dense.utils.normalization import normalize


@dataclass(frozen=True)
class DetectionTargets:
    """What an example holds and how many rows (see `detection_dataset`).

    Attributes:
        min_size: Target shorter side.
        max_size: Cap on the longer side.
        normalization: The normalisation mode.
        max_boxes: Rows of the box tensors.
        max_proposals: Rows of the proposal tensor (0: the records' proposals are not read).
        keep_crowd: Keep crowd boxes.
        instance_masks: Add the boxes' instance masks.
        max_instances: Rows of the mask tensor.
    """

    min_size: int
    max_size: int
    normalization: str | None
    max_boxes: int
    max_proposals: int
    keep_crowd: bool
    instance_masks: bool
    max_instances: int


def _pad_rows(values: tf.Tensor, rows: int) -> tf.Tensor:
    pad = rows - tf.shape(values)[0]
    paddings = [[0, pad]] + [[0, 0]] * (len(values.shape) - 1)
    return tf.ensure_shape(tf.pad(values, paddings), [rows, *values.shape[1:]])


def _flags_like(flags: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """`flags` when it has one entry per label, otherwise all False."""
    return tf.cond(
        tf.size(flags) == tf.size(labels), lambda: flags, lambda: tf.zeros_like(labels, tf.bool)
    )


def _resized_instance_masks(
    encoded: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    new_h: tf.Tensor,
    new_w: tf.Tensor,
    source_id: tf.Tensor,
) -> tf.Tensor:
    """(K, new_h, new_w) uint8 0/1 masks from K PNGs of (height, width).

    The masks are resized as the image is (bilinear, half-pixel centres) and cut at 0.5, so
    a pixel is in the resized mask when its centre is on the object's side of the edge. All K
    are resized in one call (twice as fast as one at a time in `benchmarks/instance_masks.py`),
    which holds K float32 masks at both sizes for a moment.
    """

    def decode(png):
        mask = tf.io.decode_png(png, channels=1)[..., 0]
        check = tf.debugging.Assert(
            tf.reduce_all(tf.shape(mask) == tf.stack([height, width])),
            [
                "an instance mask of record",
                source_id,
                "is",
                tf.shape(mask),
                "(height, width) but its image is",
                tf.stack([height, width]),
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(mask)

    def resize():
        masks = tf.map_fn(
            decode, encoded, fn_output_signature=tf.TensorSpec([None, None], tf.uint8)
        )
        masks = tf.cast(masks[..., None] > 0, tf.float32)
        resized = tf.image.resize(masks, [new_h, new_w], antialias=False)
        return tf.cast(resized[..., 0] >= 0.5, tf.uint8)

    masks = tf.cond(tf.size(encoded) > 0, resize, lambda: tf.zeros([0, new_h, new_w], tf.uint8))
    return tf.reshape(masks, [-1, new_h, new_w])


def _checked_instance_masks(parsed: dict, labels: tf.Tensor) -> tf.Tensor:
    """The record's encoded instance masks; (when run) fails unless there is one per box."""
    encoded = parsed["instance_mask_bytes"]
    check = tf.debugging.Assert(
        tf.size(encoded) == tf.size(labels),
        [
            "record",
            parsed["source_id"],
            "has",
            tf.size(encoded),
            "instance masks (image/object/mask) for",
            tf.size(labels),
            "boxes; instance_masks=True needs one mask per box",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def decode_stage(serialized: tf.Tensor, targets: DetectionTargets) -> dict:
    """One record as an example (see the module docstring) at the Fast R-CNN scale."""
    parsed = parse_serialized(serialized)
    image = decode_image(parsed["image_bytes"], 3)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    scale = fast_rcnn_scale(height, width, targets.min_size, targets.max_size)
    new_h = tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32)
    image = tf.image.resize(image, [new_h, new_w], antialias=False)
    size = tf.cast(tf.stack([new_h, new_w, new_h, new_w]), tf.float32)
    boxes, labels = parsed["boxes"], parsed["labels"]
    # Records from other tools may lack the per-box flags: default them to False.
    difficult = _flags_like(parsed["difficult"], labels)
    crowd = _flags_like(parsed["is_crowd"], labels)
    if targets.instance_masks:
        encoded = _checked_instance_masks(parsed, labels)
    if not targets.keep_crowd:
        keep = tf.logical_not(crowd)
        boxes = tf.boolean_mask(boxes, keep)
        labels = tf.boolean_mask(labels, keep)
        difficult = tf.boolean_mask(difficult, keep)
        if targets.instance_masks:
            encoded = tf.boolean_mask(encoded, keep)
    if targets.max_proposals == 0:  # Faster R-CNN: the records' proposals are not read
        proposals = tf.zeros([0, 4], tf.float32)
    else:
        proposals = parsed["proposals"] * size
    example = {
        "image": image,
        "image_shape": tf.stack([new_h, new_w]),
        "scale": scale,
        "boxes": boxes * size,
        "labels": labels,
        "difficult": difficult,
        "proposals": proposals,
        "source_id": parsed["source_id"],
    }
    if targets.instance_masks:
        example["instance_masks"] = _resized_instance_masks(
            encoded, height, width, new_h, new_w, parsed["source_id"]
        )
    return example


def flip_stage(example: dict, element_seed: tf.Tensor) -> dict:
    """The example mirrored left-right (image, boxes, proposals, masks) with probability 1/2."""
    do_flip = tf.random.stateless_uniform([], element_seed) < 0.5
    w = tf.cast(example["image_shape"][1], tf.float32)

    def mirror(b):
        return tf.stack([b[:, 0], w - b[:, 3], b[:, 2], w - b[:, 1]], axis=1)

    def flipped(key, function):
        return tf.cond(do_flip, lambda: function(example[key]), lambda: example[key])

    out = dict(example)
    out["image"] = tf.where(do_flip, example["image"][:, ::-1], example["image"])
    out["boxes"] = flipped("boxes", mirror)
    out["proposals"] = flipped("proposals", mirror)
    if "instance_masks" in example:
        out["instance_masks"] = flipped("instance_masks", lambda masks: masks[:, :, ::-1])
    return out


def _row_check(count: tf.Tensor, limit: int, message: str, source_id: tf.Tensor):
    """(When run) fails unless `count <= limit`, naming the record."""
    return tf.debugging.Assert(count <= limit, [message, limit, "in record", source_id, ":", count])


def pad_stage(example: dict, targets: DetectionTargets) -> dict:
    """The example with its rows checked and padded to fixed counts, its image normalised.

    Returns:
        `images`, `image_shape`, `scale`, `boxes`, `labels`, `difficult`, `num_boxes`,
        `proposals`, `num_proposals`, `source_id` (and `instance_masks`), as
        `detection_dataset` yields them per image.
    """
    source_id = example["source_id"]
    num_boxes = tf.shape(example["boxes"])[0]
    num_proposals = tf.shape(example["proposals"])[0]
    checks = [
        _row_check(num_boxes, targets.max_boxes, "more boxes than max_boxes =", source_id),
        _row_check(
            num_proposals, targets.max_proposals, "more proposals than max_proposals =", source_id
        ),
    ]
    if targets.instance_masks:
        checks.append(
            _row_check(
                num_boxes, targets.max_instances, "more boxes than max_instances =", source_id
            )
        )
    with tf.control_dependencies(checks):
        out = {
            "images": normalize(example["image"], targets.normalization),
            "image_shape": example["image_shape"],
            "scale": example["scale"],
            "boxes": _pad_rows(example["boxes"], targets.max_boxes),
            "labels": _pad_rows(example["labels"], targets.max_boxes),
            "difficult": _pad_rows(example["difficult"], targets.max_boxes),
            "num_boxes": num_boxes,
            "proposals": _pad_rows(example["proposals"], targets.max_proposals),
            "num_proposals": num_proposals,
            "source_id": source_id,
        }
        if targets.instance_masks:
            out["instance_masks"] = _pad_rows(example["instance_masks"], targets.max_instances)
        return out


def batch_stage(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batches of `pad_stage` elements, images zero-padded to the batch's largest."""
    return ds.padded_batch(batch_size, drop_remainder=drop_remainder)
