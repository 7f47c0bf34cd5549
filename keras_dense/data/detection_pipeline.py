"""The tf.data input pipeline for detection (Fast R-CNN style)."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data.decode import decode_image
from keras_dense.data.detection_rules import MIN_RESIZED_SIDE
from keras_dense.data.record_filter import excluding
from keras_dense.data.records_dataset import AUTOTUNE, records_dataset, with_seeds
from keras_dense.data.schema import parse_serialized
from keras_dense.utils.normalization import check_mode, normalize


def fast_rcnn_scale(height: tf.Tensor, width: tf.Tensor, min_size: int, max_size: int):
    """The resize factor: shorter side to `min_size`, longer side at most `max_size`.

    An image so elongated that the resize leaves its shorter side below `MIN_RESIZED_SIDE`
    pixels (an 8 x 4000 strip: the detector would see no feature row and return nothing) is
    an error naming its size and, for a batch, its positions; crop or tile such images.

    Args:
        height: Image height(s), a scalar or (N,) tensor.
        width: Image width(s), same shape.
        min_size: Target shorter side.
        max_size: Cap on the longer side.

    Returns:
        The factor(s), float32, shaped like `height`.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = min_size / tf.minimum(h, w)
    scale = tf.minimum(scale, max_size / tf.maximum(h, w))
    shorter = tf.round(tf.minimum(h, w) * scale)
    thin = tf.reshape(shorter < MIN_RESIZED_SIDE, [-1])
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(thin)),
        [
            "image(s) at batch position(s)",
            tf.where(thin)[:, 0],
            "of height",
            tf.boolean_mask(tf.reshape(h, [-1]), thin),
            "and width",
            tf.boolean_mask(tf.reshape(w, [-1]), thin),
            f"are too elongated for the detector: resized (shorter side to {min_size}, longer "
            f"side at most {max_size}) their shorter side falls below the minimum side of "
            f"{MIN_RESIZED_SIDE} px (the feature stride), so nothing could be detected; crop or "
            f"tile them to an aspect ratio of at most {max_size / MIN_RESIZED_SIDE:g}:1",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(scale)


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


def detection_dataset(
    file_pattern: str | Sequence[str],
    batch_size: int,
    training: bool = False,
    min_size: int = 600,
    max_size: int = 1000,
    flip: bool = True,
    normalization: str | None = "caffe",
    max_boxes: int = 100,
    max_proposals: int = 2000,
    keep_crowd: bool = False,
    shuffle_buffer: int = 64,
    cache: bool | str = False,
    deterministic: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    verify: bool = True,
    instance_masks: bool = False,
    max_instances: int | None = None,
    exclude: Sequence[int] = (),
) -> tf.data.Dataset:
    """Batches of images with padded boxes, labels and proposals.

    Each image is resized so its shorter side is `min_size` and its longer side at most
    `max_size` (the Fast R-CNN scale), then zero-padded (after normalisation, so padding is
    the mean pixel) at the bottom and right to the largest image of the batch. Boxes and
    proposals are converted to pixels of the resized image. Training flips images, boxes and
    proposals together. Crowd boxes are left out unless `keep_crowd`. Records without
    proposals give `num_proposals` 0 (two-stage detectors with an RPN need none).

    With `instance_masks`, each box's mask (`image/object/mask`) comes along at the resized,
    padded image size: resized like the image (bilinear, cut at 0.5), flipped with it, and
    dropped with its crowd box, so mask row i is the object of box row i.

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        batch_size: Images per batch.
        training: Shuffle and flip.
        min_size: Target shorter side.
        max_size: Cap on the longer side.
        flip: Random horizontal flip when training.
        normalization: `"caffe"` (VGG16), `"torch"`, `"tf"` or None.
        max_boxes: Rows of the padded box tensors; an image with more boxes is an error.
        max_proposals: Rows of the padded proposal tensor; more proposals are an error. 0
            leaves the records' proposals out (Faster R-CNN proposes its own): `proposals`
            is then (B, 0, 4) and `num_proposals` zeros.
        keep_crowd: Keep COCO crowd boxes in the targets.
        shuffle_buffer: Records in the shuffle buffer.
        cache: Cache serialized records in memory (True) or a file (str).
        deterministic: Fix the element order of parallel stages.
        seed: Seed of shuffling and flipping.
        drop_remainder: Drop a last partial batch (default: True when training).
        verify: Check shards before reading.
        instance_masks: Add `instance_masks`; a record whose boxes do not each have a mask
            (or whose masks differ in size from its image) is an error naming its source_id.
        max_instances: Rows of the padded mask tensor (default `max_boxes`; at most
            `max_boxes`); an image with more boxes is an error. Lower it to bound memory:
            a batch holds `B * max_instances * H * W` bytes of masks.
        exclude: Records to leave out, by `record_filter.record_key` (the bad records
            that `detection_records.leave_out` lists with `data.on_error = "skip"`).

    Returns:
        A dataset of dicts: `images` (B,H,W,3) float32, `image_shape` (B,2) int32, `scale`
        (B,), `boxes` (B,max_boxes,4) pixel yxyx, `labels` (B,max_boxes) int32 (0 = padding),
        `difficult` (B,max_boxes) bool, `num_boxes` (B,), `proposals` (B,max_proposals,4),
        `num_proposals` (B,), `source_id` (B,) string; with `instance_masks` also
        `instance_masks` (B, max_instances, H, W) uint8 0/1 (zero rows and zero padding
        beyond each image's boxes and size).
    """
    check_mode(normalization)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    if isinstance(max_proposals, bool) or not isinstance(max_proposals, int) or max_proposals < 0:
        raise ValueError(f"max_proposals={max_proposals!r}: expected an int >= 0")
    if min_size < 1 or max_size < min_size:
        raise ValueError(
            f"min_size={min_size}, max_size={max_size}: expected 1 <= min_size <= max_size"
        )
    if max_instances is None:
        max_instances = max_boxes
    if instance_masks and not 1 <= max_instances <= max_boxes:
        raise ValueError(
            f"max_instances={max_instances}: expected an integer in [1, max_boxes={max_boxes}]"
        )
    ds = records_dataset(file_pattern, training, seed, deterministic, cache, verify)
    if len(exclude):
        ds = ds.filter(excluding(exclude))
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = with_seeds(ds, seed)

    def prepare(serialized, element_seed):
        parsed = parse_serialized(serialized)
        image = decode_image(parsed["image_bytes"], 3)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        scale = fast_rcnn_scale(height, width, min_size, max_size)
        new_h = tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32)
        new_w = tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32)
        image = tf.image.resize(image, [new_h, new_w], antialias=False)
        size = tf.cast(tf.stack([new_h, new_w, new_h, new_w]), tf.float32)
        boxes, labels = parsed["boxes"], parsed["labels"]
        # Records from other tools may lack the per-box flags: default them to False.
        difficult = _flags_like(parsed["difficult"], labels)
        crowd = _flags_like(parsed["is_crowd"], labels)
        mask_checks = []
        if instance_masks:
            encoded = parsed["instance_mask_bytes"]
            mask_checks.append(
                tf.debugging.Assert(
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
            )
            with tf.control_dependencies(mask_checks):
                encoded = tf.identity(encoded)
        if not keep_crowd:
            keep = tf.logical_not(crowd)
            boxes = tf.boolean_mask(boxes, keep)
            labels = tf.boolean_mask(labels, keep)
            difficult = tf.boolean_mask(difficult, keep)
            if instance_masks:
                encoded = tf.boolean_mask(encoded, keep)
        if instance_masks:
            masks = _resized_instance_masks(
                encoded, height, width, new_h, new_w, parsed["source_id"]
            )
        boxes = boxes * size
        if max_proposals == 0:  # Faster R-CNN: the records' proposals are not read
            proposals = tf.zeros([0, 4], tf.float32)
        else:
            proposals = parsed["proposals"] * size
        if training and flip:
            do_flip = tf.random.stateless_uniform([], element_seed) < 0.5
            w = tf.cast(new_w, tf.float32)

            def mirror(b):
                return tf.stack([b[:, 0], w - b[:, 3], b[:, 2], w - b[:, 1]], axis=1)

            image = tf.where(do_flip, image[:, ::-1], image)
            boxes = tf.cond(do_flip, lambda: mirror(boxes), lambda: boxes)
            proposals = tf.cond(do_flip, lambda: mirror(proposals), lambda: proposals)
            if instance_masks:
                masks = tf.cond(do_flip, lambda: masks[:, :, ::-1], lambda: masks)
        num_boxes = tf.shape(boxes)[0]
        num_proposals = tf.shape(proposals)[0]
        checks = [
            tf.debugging.Assert(
                num_boxes <= max_boxes,
                [
                    "more boxes than max_boxes =",
                    max_boxes,
                    "in record",
                    parsed["source_id"],
                    ":",
                    num_boxes,
                ],
            ),
            tf.debugging.Assert(
                num_proposals <= max_proposals,
                [
                    "more proposals than max_proposals =",
                    max_proposals,
                    "in record",
                    parsed["source_id"],
                    ":",
                    num_proposals,
                ],
            ),
        ]
        if instance_masks:
            checks.append(
                tf.debugging.Assert(
                    num_boxes <= max_instances,
                    [
                        "more boxes than max_instances =",
                        max_instances,
                        "in record",
                        parsed["source_id"],
                        ":",
                        num_boxes,
                    ],
                )
            )
        with tf.control_dependencies(checks):
            out = {
                "images": normalize(image, normalization),
                "image_shape": tf.stack([new_h, new_w]),
                "scale": scale,
                "boxes": _pad_rows(boxes, max_boxes),
                "labels": _pad_rows(labels, max_boxes),
                "difficult": _pad_rows(difficult, max_boxes),
                "num_boxes": num_boxes,
                "proposals": _pad_rows(proposals, max_proposals),
                "num_proposals": num_proposals,
                "source_id": parsed["source_id"],
            }
            if instance_masks:
                out["instance_masks"] = _pad_rows(masks, max_instances)
            return out

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    drop = training if drop_remainder is None else drop_remainder
    ds = ds.padded_batch(batch_size, drop_remainder=drop)
    return ds.prefetch(AUTOTUNE)
