"""The TFRecord schema: one `tf.train.Example` per image.

Keys follow the TF Model Garden and the TF Object Detection API, so records written by those
tools are read as they are:

| data | keys |
|---|---|
| image | `image/encoded`, `image/format`, `image/height`, `image/width`, `image/channels`, `image/source_id` |
| semantic mask | `image/segmentation/class/encoded` (single-channel PNG of class ids), `image/segmentation/class/format` |
| boxes | `image/object/bbox/{xmin,ymin,xmax,ymax}`, normalised to [0, 1] |
| box labels | `image/object/class/label` (1-based), `image/object/class/text`, `image/object/difficult`, `image/object/is_crowd` |
| instance masks | `image/object/mask`: one single-channel PNG per box, in box order, at the image's size (0 background, non-zero = the object; keras_dense writes 0/1) |
| proposals | `image/proposal/bbox/{xmin,ymin,xmax,ymax}`, normalised |
| image labels | `image/class/label`: the classes in the image (multi-label, 1-based like box labels, 0 = background) |

Boxes are normalised as the Object Detection API does it: `xmin / width`, `xmax / width`.
In memory boxes are `[ymin, xmin, ymax, xmax]` (TensorFlow's order). Coordinates are
continuous: a box holding pixel columns `x0..x1` spans `[x0 / width, (x1 + 1) / width]`, so
the box of an instance mask is `(ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)` divided by
`(height, width, height, width)` (the max is exclusive in pixel indices).

Instance masks are PNG-encoded, as the Object Detection API writes them (its other form, a
dense float list under the same key, is not read).
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
SOURCE_ID = "image/source_id"
MASK_ENCODED = "image/segmentation/class/encoded"
MASK_FORMAT = "image/segmentation/class/format"
BOX_PREFIX = "image/object/bbox/"
LABEL = "image/object/class/label"
LABEL_TEXT = "image/object/class/text"
DIFFICULT = "image/object/difficult"
IS_CROWD = "image/object/is_crowd"
PROPOSAL_PREFIX = "image/proposal/bbox/"
IMAGE_LABEL = "image/class/label"
INSTANCE_MASK = "image/object/mask"
COORDS = ("ymin", "xmin", "ymax", "xmax")


@dataclass
class Record:
    """Everything one Example holds, in memory.

    Attributes:
        source_id: The source file's stem.
        image_bytes: The encoded image (JPEG or PNG).
        image_format: `"jpeg"` or `"png"`.
        height: Image height in pixels.
        width: Image width in pixels.
        channels: Number of channels of the encoded image.
        mask_png: Single-channel PNG of class ids, or None.
        boxes: (n, 4) float32 normalised `[ymin, xmin, ymax, xmax]`, or None.
        labels: (n,) 1-based class ids.
        label_texts: (n,) class names.
        difficult: (n,) VOC difficult flags.
        is_crowd: (n,) COCO crowd flags.
        proposals: (m, 4) float32 normalised proposals, or None.
        rejected: Parts of the input left out with `on_error="skip"` (e.g. one bad box), as
            `{"input": ..., "reason": ...}`; listed in the manifest, not serialized.
        orientation: The EXIF orientation the converter applied to the source image (1 =
            none); listed in the manifest, not serialized.
        image_labels: (k,) 1-based ids of the classes in the image (`image/class/label`,
            image-level multi-label annotation), or None.
        instance_masks: (n,) single-channel PNGs of 0/1 (1 = the object's pixels), one per
            box in box order, each at the image's size; or None.
    """

    source_id: str
    image_bytes: bytes
    image_format: str
    height: int
    width: int
    channels: int = 3
    mask_png: bytes | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_texts: list[str] = field(default_factory=list)
    difficult: np.ndarray | None = None
    is_crowd: np.ndarray | None = None
    proposals: np.ndarray | None = None
    rejected: list[dict] = field(default_factory=list)
    orientation: int = 1
    image_labels: np.ndarray | None = None
    instance_masks: list[bytes] | None = None


def _bytes(values: list[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def _box_features(prefix: str, boxes: np.ndarray) -> dict[str, tf.train.Feature]:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return {prefix + name: _floats(boxes[:, i]) for i, name in enumerate(COORDS)}


def serialize_record(record: Record) -> bytes:
    """Encodes a `Record` as a serialized `tf.train.Example`.

    Args:
        record: The record.

    Returns:
        The serialized Example.

    Raises:
        ValueError: The record has instance masks but not one per box.
    """
    features = {
        IMAGE_ENCODED: _bytes([record.image_bytes]),
        IMAGE_FORMAT: _bytes([record.image_format.encode()]),
        IMAGE_HEIGHT: _ints([record.height]),
        IMAGE_WIDTH: _ints([record.width]),
        IMAGE_CHANNELS: _ints([record.channels]),
        SOURCE_ID: _bytes([record.source_id.encode()]),
    }
    if record.mask_png is not None:
        features[MASK_ENCODED] = _bytes([record.mask_png])
        features[MASK_FORMAT] = _bytes([b"png"])
    if record.boxes is not None:
        n = len(record.boxes)
        features.update(_box_features(BOX_PREFIX, record.boxes))
        features[LABEL] = _ints(record.labels if record.labels is not None else [])
        features[LABEL_TEXT] = _bytes([t.encode() for t in record.label_texts])
        difficult = record.difficult if record.difficult is not None else np.zeros(n)
        crowd = record.is_crowd if record.is_crowd is not None else np.zeros(n)
        features[DIFFICULT] = _ints(difficult)
        features[IS_CROWD] = _ints(crowd)
    if record.instance_masks is not None:
        num_boxes = 0 if record.boxes is None else len(record.boxes)
        if len(record.instance_masks) != num_boxes:
            raise ValueError(
                f"record {record.source_id!r}: {len(record.instance_masks)} instance masks "
                f"for {num_boxes} boxes; expected one mask per box"
            )
        features[INSTANCE_MASK] = _bytes(list(record.instance_masks))
    if record.image_labels is not None:
        features[IMAGE_LABEL] = _ints(record.image_labels)
    if record.proposals is not None:
        features.update(_box_features(PROPOSAL_PREFIX, record.proposals))
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # Map fields (the feature names) in sorted order: the same bytes in every process, whatever
    # its hash seed (the default order follows the map's hashing).
    return example.SerializeToString(deterministic=True)


def feature_spec() -> dict:
    """The `tf.io.parse_single_example` spec of every key; absent keys parse as empty."""
    spec = {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        MASK_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL: tf.io.VarLenFeature(tf.int64),
        DIFFICULT: tf.io.VarLenFeature(tf.int64),
        IS_CROWD: tf.io.VarLenFeature(tf.int64),
        IMAGE_LABEL: tf.io.VarLenFeature(tf.int64),
        INSTANCE_MASK: tf.io.VarLenFeature(tf.string),
    }
    for prefix in (BOX_PREFIX, PROPOSAL_PREFIX):
        for name in COORDS:
            spec[prefix + name] = tf.io.VarLenFeature(tf.float32)
    return spec


def parse_boxes(parsed: dict, prefix: str) -> tf.Tensor:
    """Stacks the four coordinate lists of a parsed Example into (n, 4) yxyx boxes."""
    return tf.stack([tf.sparse.to_dense(parsed[prefix + name]) for name in COORDS], axis=-1)


def parse_serialized(serialized: tf.Tensor) -> dict:
    """Parses one serialized Example into tensors (graph-friendly, no decoding).

    Args:
        serialized: A scalar string tensor.

    Returns:
        A dict with `image_bytes`, `mask_bytes` (empty string when absent), `source_id`,
        `boxes` (n,4) normalised yxyx, `labels` (n,) int32, `difficult` (n,) bool,
        `is_crowd` (n,) bool, `proposals` (m,4) and `image_labels` (k,) int32 (the
        1-based `image/class/label` ids; empty when absent) and `instance_mask_bytes` (k,)
        string, the PNG of each box's instance mask (empty when absent).
    """
    parsed = tf.io.parse_single_example(serialized, feature_spec())
    return {
        "image_bytes": parsed[IMAGE_ENCODED],
        "mask_bytes": parsed[MASK_ENCODED],
        "source_id": parsed[SOURCE_ID],
        "boxes": parse_boxes(parsed, BOX_PREFIX),
        "labels": tf.cast(tf.sparse.to_dense(parsed[LABEL]), tf.int32),
        "difficult": tf.cast(tf.sparse.to_dense(parsed[DIFFICULT]), tf.bool),
        "is_crowd": tf.cast(tf.sparse.to_dense(parsed[IS_CROWD]), tf.bool),
        "proposals": parse_boxes(parsed, PROPOSAL_PREFIX),
        "image_labels": tf.cast(tf.sparse.to_dense(parsed[IMAGE_LABEL]), tf.int32),
        "instance_mask_bytes": tf.sparse.to_dense(parsed[INSTANCE_MASK], default_value=""),
    }
