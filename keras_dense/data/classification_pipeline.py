"""The tf.data pipeline of weakly supervised classification: image labels from any shards.

Image-level multi-label targets `(C,)` are derived from whatever a record holds: the classes
present in its mask, its box labels, and its `image/class/label` list (see
`keras_dense.tasks.classification` for the id conventions: class `c` is mask id
`c + offset`, box label `c + 1` and image label `c + 1`).
"""

from __future__ import annotations

import tensorflow as tf

from keras_dense.data.class_lists import shard_manifests
from keras_dense.data.decode import decode_image
from keras_dense.data.records_dataset import AUTOTUNE, records_dataset, with_seeds
from keras_dense.data.schema import parse_serialized
from keras_dense.utils.normalization import normalize


def mask_offset(pattern) -> int:
    """The mask id of class 0: 1 when the shards' class list starts with "background".

    Args:
        pattern: Shard pattern(s); shards without a manifest count as starting with
            background (the convention of every converter of this project).

    Returns:
        1 or 0.
    """
    manifests = shard_manifests(pattern)
    if not manifests:
        return 1
    starts = {(m.get("classes") or ["background"])[0] == "background" for m in manifests.values()}
    return 1 if True in starts else 0


def _multi_hot(ids: tf.Tensor, num_classes: int) -> tf.Tensor:
    """(C,) float32 with 1 at every 0-based id in `ids` (negative ids are left out)."""
    hot = tf.one_hot(ids, num_classes, dtype=tf.float32)
    return tf.reduce_max(tf.concat([hot, tf.zeros([1, num_classes])], 0), axis=0)


def record_labels(
    parsed: dict,
    mask: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    num_classes: int,
    offset: int,
    ignore_label: int,
    window: tf.Tensor | None = None,
) -> tf.Tensor:
    """The multi-hot image labels `(C,)` of one parsed record (see the module docstring).

    Args:
        parsed: `keras_dense.data.schema.parse_serialized` of the record.
        mask: (H, W) uint8 class ids, or a (0, 0) tensor for a record without a mask.
        height: Image height (for the normalised boxes).
        width: Image width.
        num_classes: `C`.
        offset: Mask id of class 0 (`mask_offset`).
        ignore_label: Mask value that is not a class.
        window: Optional int32 `(y, x, h, w)` crop: only mask pixels and boxes inside it
            count.

    Returns:
        float32 `(C,)` labels.
    """
    boxes = parsed["boxes"] * tf.cast(tf.stack([height, width, height, width]), tf.float32)
    if window is not None:
        y, x, h, w = window[0], window[1], window[2], window[3]
        mask = mask[y : y + h, x : x + w]
        win = tf.cast(tf.stack([y, x, y + h, x + w]), tf.float32)
        overlap_y = tf.minimum(boxes[:, 2], win[2]) - tf.maximum(boxes[:, 0], win[0])
        overlap_x = tf.minimum(boxes[:, 3], win[3]) - tf.maximum(boxes[:, 1], win[1])
        inside = tf.logical_and(overlap_y > 0, overlap_x > 0)
    else:
        inside = tf.ones_like(parsed["labels"], tf.bool)
    values = tf.unique(tf.reshape(tf.cast(mask, tf.int32), [-1]))[0]
    values = tf.boolean_mask(values, values != ignore_label)
    ids = tf.concat(
        [
            values - offset,
            tf.boolean_mask(parsed["labels"], inside[: tf.size(parsed["labels"])]) - 1,
            parsed["image_labels"] - 1,
        ],
        0,
    )
    check = tf.debugging.Assert(
        tf.reduce_all(ids < num_classes),
        [
            "record labels outside the model's classes (a class id >= the number of classes "
            "+ offset); source_id:",
            parsed["source_id"],
            "ids:",
            ids + 1,
        ],
    )
    with tf.control_dependencies([check]):
        return _multi_hot(ids, num_classes)


def decode_optional_mask(parsed: dict) -> tf.Tensor:
    """The (H, W) uint8 mask of a parsed record, or a (0, 0) tensor when it has none."""
    return tf.cond(
        tf.strings.length(parsed["mask_bytes"]) > 0,
        lambda: tf.io.decode_png(parsed["mask_bytes"], channels=1)[:, :, 0],
        lambda: tf.zeros([0, 0], tf.uint8),
    )


def classification_dataset(
    file_pattern,
    batch_size: int,
    num_classes: int,
    crop_size=(224, 224),
    training: bool = False,
    normalization: str | None = "caffe",
    offset: int = 1,
    ignore_label: int = 255,
    min_scale: float = 0.5,
    flip: bool = True,
    shuffle_buffer: int = 256,
    cache: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """`(images (B, h, w, 3) float32, labels (B, C) float32)` batches from any shards.

    Reads segmentation, detection or image-label records (see the module docstring). With
    `training`, each image is a random resized crop (area fraction in `[min_scale ** 2, 1]`)
    with an optional flip, in one bilinear resampling; otherwise the full image is resized to
    `crop_size`.

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        batch_size: Images per batch.
        num_classes: `C`.
        crop_size: `(h, w)` of the batches.
        training: Shuffle, crop, flip and repeat nothing (the caller repeats).
        normalization: The backbone's input normalisation.
        offset: Mask id of class 0 (`mask_offset`).
        ignore_label: Mask value that is not a class.
        min_scale: Smallest crop side as a fraction of the image (0 < min_scale <= 1).
        flip: Random left-right flips when training.
        shuffle_buffer: Records in the shuffle buffer.
        cache: Cache the serialized records in memory.
        seed: Seed of shuffles and crops.

    Returns:
        The batched dataset.
    """
    crop = tf.constant(list(crop_size), tf.int32)
    ds = records_dataset(file_pattern, training, seed=seed, cache=cache)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = with_seeds(ds, seed)

    def example(serialized, pair_seed):
        parsed = parse_serialized(serialized)
        image = decode_image(parsed["image_bytes"], 3)
        mask = decode_optional_mask(parsed)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        if training:
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image),
                tf.zeros([1, 0, 4], tf.float32),
                seed=pair_seed,
                min_object_covered=0.0,
                aspect_ratio_range=(0.75, 1.33),
                area_range=(min_scale**2, 1.0),
                max_attempts=20,
                use_image_if_no_bounding_boxes=True,
            )
            window = tf.stack([begin[0], begin[1], size[0], size[1]])
            labels = record_labels(
                parsed, mask, height, width, num_classes, offset, ignore_label, window
            )
            scale = tf.cast(tf.stack([height - 1, width - 1]), tf.float32)
            scale = tf.maximum(scale, 1.0)
            top = tf.cast(begin[:2], tf.float32) / scale
            bottom = tf.cast(begin[:2] + size[:2] - 1, tf.float32) / scale
            box = tf.stack([top[0], top[1], bottom[0], bottom[1]])
            if flip:
                flipped = tf.random.stateless_uniform([], pair_seed + 1) < 0.5
                box = tf.where(flipped, tf.gather(box, [0, 3, 2, 1]), box)
            pixels = tf.image.crop_and_resize(
                tf.cast(image, tf.float32)[None], box[None], [0], crop, method="bilinear"
            )[0]
        else:
            labels = record_labels(parsed, mask, height, width, num_classes, offset, ignore_label)
            pixels = tf.image.resize(tf.cast(image, tf.float32), crop, method="bilinear")
        pixels = normalize(pixels, normalization)
        pixels.set_shape([*crop_size, 3])
        return pixels, labels

    ds = ds.map(example, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)


def evaluation_records(file_pattern, num_classes: int, offset: int, ignore_label: int):
    """Full-size records for evaluation: `(image uint8, labels, mask, boxes, box_labels)`.

    `mask` is (0, 0) for a record without one; `boxes` are (n, 4) pixel yxyx with inclusive
    ends (`[ymin * H, xmin * W, ymax * H - 1, xmax * W - 1]`), `box_labels` 1-based.

    Returns:
        A NumPy iterator over the records, in file order.
    """

    def example(serialized):
        parsed = parse_serialized(serialized)
        image = decode_image(parsed["image_bytes"], 3)
        mask = decode_optional_mask(parsed)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        labels = record_labels(parsed, mask, height, width, num_classes, offset, ignore_label)
        size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
        boxes = parsed["boxes"] * size - tf.constant([0.0, 0.0, 1.0, 1.0])
        return image, labels, mask, boxes, parsed["labels"]

    ds = records_dataset(file_pattern, False).map(example)
    return ds.as_numpy_iterator()
