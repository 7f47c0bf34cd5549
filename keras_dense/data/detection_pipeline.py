"""The tf.data input pipeline for detection (Fast R-CNN style).

The stages it composes are in `keras_dense.data.detection_stages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import tensorflow as tf

from keras_dense.data.detection_scale import fast_rcnn_scale  # noqa: F401 (its old home)
from keras_dense.data.detection_stages import (
    DetectionTargets,
    batch_stage,
    decode_stage,
    flip_stage,
    pad_stage,
)
from keras_dense.data.record_stage import read_stage
from keras_dense.data.records_dataset import with_seeds
from keras_dense.utils.normalization import check_mode


def _prepare(serialized, element_seed, targets: DetectionTargets, flip: bool) -> dict:
    """One record through the decode, (training) flip and pad stages."""
    example = decode_stage(serialized, targets)
    if flip:
        example = flip_stage(example, element_seed)
    return pad_stage(example, targets)


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
    targets = DetectionTargets(
        min_size,
        max_size,
        normalization,
        max_boxes,
        max_proposals,
        keep_crowd,
        instance_masks,
        max_instances,
    )
    ds = read_stage(
        file_pattern, training, shuffle_buffer, cache, deterministic, seed, verify, exclude=exclude
    )
    ds = with_seeds(ds, seed)
    prepare = partial(_prepare, targets=targets, flip=training and flip)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    drop = training if drop_remainder is None else drop_remainder
    return batch_stage(ds, batch_size, drop).prefetch(tf.data.AUTOTUNE)
