"""Checking detection and instance records, once, before training or evaluation starts.

Records written by other tools (Roboflow, CVAT, LabelImg exports, the Model Garden's scripts)
reach the detection pipeline as they are. In the graph a bad field either vanishes (a NaN or
inverted box matches no anchor, a label 0 is background) or fails mid-epoch with a multi-line
TensorFlow error that names no file. `check_records` reads every record once in Python, as a
raw `tf.train.Example` (so a feature of the wrong kind is seen as such), and names the shard,
the record index, its `image/source_id`, the field and what was expected.

What a record must satisfy (keys in `keras_dense.data.schema`):

- every key the pipeline parses has its kind (`image/encoded`, `image/format`,
  `image/source_id`, `image/object/class/text`, `image/object/mask`: bytes;
  `image/height`, `image/width`, `image/object/class/label`, `image/object/difficult`,
  `image/object/is_crowd`, `image/class/label`: int64; box and proposal coordinates: float),
  and the single-valued ones hold one value;
- `image/encoded` is present and is a complete JPEG or PNG (header and end marker; the
  pixels are not decoded); `image/height` / `image/width`, when given (non-zero), are the
  encoded image's size;
- the four box coordinate lists are all present or all absent and of equal length; each
  coordinate is finite and in [0, 1] (normalised: `xmin / width` ...); a coordinate at most
  `COORD_TOLERANCE` outside is accepted as it is (float32 rounding of `(x1 + 1) / width`
  gives 1.0000001); each box has `ymin < ymax` and `xmin < xmax` (inverted and zero-area
  boxes are refused);
- one label per box, each in `[1, num_classes]` (0 is background in the 1-based ids);
  `image/object/class/text`, `difficult` and `is_crowd`, when present, one per box (absent
  flags mean "not difficult", "not crowd"; absent texts are fine: labels are what is read);
  a class text must name the class its label has in the class list (case and surrounding
  spaces aside): another name means the record was written with another label map;
  `image/format` is not read (the bytes are sniffed);
- `image/object/mask`, when present: one PNG per box at the image's size (header and end
  marker checked, not the pixels); with `instance_masks` every record with boxes has them;
- proposals (when read): the same coordinate rules, except that zero-area proposals are
  accepted (the RoI sampler gives them IoU 0);
- limits of the pipeline: at most `max_boxes` boxes (crowd boxes not counted unless
  `keep_crowd`), at most `max_proposals` proposals, and an image that the Fast R-CNN resize
  (`min_size`, `max_size`) leaves at least `MIN_RESIZED_SIDE` pixels on its shorter side.

With `on_error="skip"` (recipe key `data.on_error`) bad training records are left out whole,
with a count and the first reasons printed: dropping only a bad box would leave its object
in the image unlabelled, to be learnt as background. Nothing is dropped silently.

A full check of a shard is remembered (per shard, its absolute path, size and modification
time, and the rules) in `$KERAS_DENSE_CACHE/validated`, next to the shard verification cache
of `keras_dense.data.tfrecord_files`, so a restart does not read the data again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_dense.data import schema
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import PNG_SIGNATURE, image_size_from_header, sniff_format
from keras_dense.data.tfrecord_files import cache_dir, is_remote, resolve_files

COORD_TOLERANCE = 1e-5
# The detectors' largest feature stride (VGG16 / ResNet conv4 / compact at 16): a shorter
# side below it leaves the backbone no feature row and the detector returns nothing.
MIN_RESIZED_SIDE = 16
# Record keys for the skip filter: Fingerprint64 of the serialized Example, as an int64.
KEY_BUCKETS = 2**63 - 1
CACHE_VERSION = 1
SHOWN_REASONS = 5

BYTES, FLOATS, INTS = "bytes_list", "float_list", "int64_list"
_KIND_NAMES = {BYTES: "bytes", FLOATS: "floats", INTS: "int64"}
# Keys read by the pipeline or the readers, with their kind; True: a single value.
_KINDS = {
    schema.IMAGE_ENCODED: (BYTES, True),
    schema.IMAGE_FORMAT: (BYTES, True),
    schema.IMAGE_HEIGHT: (INTS, True),
    schema.IMAGE_WIDTH: (INTS, True),
    schema.SOURCE_ID: (BYTES, True),
    schema.MASK_ENCODED: (BYTES, True),
    schema.LABEL: (INTS, False),
    schema.LABEL_TEXT: (BYTES, False),
    schema.DIFFICULT: (INTS, False),
    schema.IS_CROWD: (INTS, False),
    schema.IMAGE_LABEL: (INTS, False),
    schema.INSTANCE_MASK: (BYTES, False),
    **{schema.BOX_PREFIX + c: (FLOATS, False) for c in schema.COORDS},
    **{schema.PROPOSAL_PREFIX + c: (FLOATS, False) for c in schema.COORDS},
}
_KIND_HINTS = {
    schema.INSTANCE_MASK: " (the Object Detection API's dense float form is not read: store "
    "one single-channel PNG per box)",
    schema.LABEL: " (1-based class ids as integers)",
}


@dataclasses.dataclass(frozen=True)
class DetectionRules:
    """What the records must satisfy beyond their own consistency.

    Attributes:
        num_classes: Object classes K; labels must be in [1, K]. None: only >= 1.
        class_names: The object class names (label i is `class_names[i - 1]`); a record's
            `image/object/class/text` must name the same class (compared without case and
            surrounding spaces; empty texts are not compared). None: texts not compared.
        instance_masks: Every record with boxes needs one instance mask per box.
        proposals: Check the proposals' coordinates (they are read: Fast R-CNN, R-CNN).
        max_boxes: Most boxes per record (the pipeline's padded rows); None: no limit.
        max_proposals: Most proposals per record; None: no limit.
        keep_crowd: Crowd boxes count toward `max_boxes` (they are kept in the targets).
        min_size: With `max_size`, the Fast R-CNN resize whose result must keep
            `MIN_RESIZED_SIDE` pixels on the shorter side; None: not checked.
        max_size: Cap on the longer side of that resize.
    """

    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    instance_masks: bool = False
    proposals: bool = False
    max_boxes: int | None = None
    max_proposals: int | None = None
    keep_crowd: bool = False
    min_size: int | None = None
    max_size: int | None = None


@dataclasses.dataclass(frozen=True)
class RecordProblem:
    """One unusable record.

    Attributes:
        file: The shard.
        index: The record's 0-based position in the shard.
        source_id: Its `image/source_id` ("" when absent).
        field: The key at fault (e.g. `image/object/bbox/ymax`).
        reason: What is wrong and what was expected.
        key: Fingerprint of the serialized record (`record_key`), for the skip filter.
    """

    file: str
    index: int
    source_id: str
    field: str
    reason: str
    key: int

    @property
    def location(self) -> str:
        """`FILE record N (source_id 'x')`."""
        where = f"{self.file} record {self.index}"
        return f"{where} (source_id {self.source_id!r})" if self.source_id else where

    def describe(self) -> str:
        """One line naming the record, the field and the reason."""
        return f"{self.location}: {self.field}: {self.reason}"


@dataclasses.dataclass
class RecordsReport:
    """The outcome of `check_records` over a set of shards.

    Attributes:
        files: The shards, in order.
        records: Records read.
        boxes: Boxes over all good records.
        without_proposals: Shard -> number of records that have no proposals.
        problems: One entry per unusable record, in file and record order.
    """

    files: list[str]
    records: int = 0
    boxes: int = 0
    without_proposals: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[RecordProblem] = dataclasses.field(default_factory=list)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """`(height, width)` after the Fast R-CNN resize (as `fast_rcnn_scale` and the graph)."""
    h, w = np.float32(height), np.float32(width)
    scale = min(np.float32(min_size) / min(h, w), np.float32(max_size) / max(h, w))
    return int(np.round(h * scale)), int(np.round(w * scale))


def resize_problem(height: int, width: int, min_size: int, max_size: int) -> str | None:
    """Why an image is too elongated for the detector's resize, or None when it fits."""
    new_h, new_w = resized_size(height, width, min_size, max_size)
    if min(new_h, new_w) >= MIN_RESIZED_SIDE:
        return None
    return (
        f"the image is {width}x{height} (width x height): resized for the detector (shorter "
        f"side to min_size={min_size}, longer side at most max_size={max_size}) it would be "
        f"{new_w}x{new_h}, below the detector's minimum side of {MIN_RESIZED_SIDE} px (its "
        "feature stride), so nothing could be detected; crop or tile the image to an aspect "
        f"ratio of at most {max_size / MIN_RESIZED_SIDE:g}:1, or raise max_size"
    )


def record_key(serialized: tf.Tensor) -> tf.Tensor:
    """Fingerprint (int64) of serialized records, in the graph and in Python alike."""
    return tf.strings.to_hash_bucket_fast(serialized, KEY_BUCKETS)


def excluding(keys: Sequence[int]):
    """A `tf.data` filter predicate that is False for records whose `record_key` is in `keys`.

    A sorted constant and one `searchsorted` per record: no Python in the graph, O(log n).
    """
    table = tf.constant(sorted(set(int(k) for k in keys)), tf.int64)
    size = int(table.shape[0])

    def keep(serialized):
        key = record_key(serialized)
        position = tf.searchsorted(table, key[None])[0]
        found = tf.gather(table, tf.minimum(position, size - 1)) == key
        return tf.logical_not(found)

    return keep


# -- one record ---------------------------------------------------------------------------


def _values(feature_map, key: str) -> list:
    """The values of a present key of the expected kind (checked first), else []."""
    if key not in feature_map:
        return []
    kind = feature_map[key].WhichOneof("kind")
    return list(getattr(feature_map[key], kind).value) if kind else []


def _kind_problems(feature_map) -> list[tuple[str, str]]:
    problems = []
    for key, (want, single) in _KINDS.items():
        if key not in feature_map:
            continue
        kind = feature_map[key].WhichOneof("kind")
        if kind is None:
            continue  # an empty feature: parsed as absent
        if kind != want:
            problems.append(
                (
                    key,
                    f"holds {_KIND_NAMES[kind]} but {_KIND_NAMES[want]} was expected"
                    + _KIND_HINTS.get(key, ""),
                )
            )
        elif single and len(getattr(feature_map[key], kind).value) != 1:
            count = len(getattr(feature_map[key], kind).value)
            problems.append((key, f"holds {count} values, expected exactly one"))
    return problems


def _image_problems(data: bytes, what: str) -> tuple[str | None, tuple | None]:
    """`(reason, (height, width))` of encoded JPEG/PNG bytes; reason None when usable."""
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:8]
        return f"{what} is neither JPEG nor PNG (starts with {head!r})", None
    size = image_size_from_header(data)
    if size is None or min(size) < 1:
        return f"{what}: the {fmt.upper()} header cannot be read", None
    if fmt == "jpeg" and b"\xff\xd9" not in data[-64:]:
        return f"{what} is a truncated JPEG (the end-of-image marker is missing)", None
    if fmt == "png" and b"IEND" not in data[-32:]:
        return f"{what} is a truncated PNG (the IEND chunk is missing)", None
    return None, size


def _coordinates(feature_map, prefix: str, what: str):
    """`(problems, (n, 4) array or None)` of a box or proposal coordinate group."""
    present = [c for c in schema.COORDS if _values(feature_map, prefix + c)]
    if not present:
        return [], np.zeros((0, 4), np.float32)
    missing = [c for c in schema.COORDS if c not in present]
    if missing:
        return [
            (
                prefix + missing[0],
                f"missing, while {', '.join(prefix + c for c in present)} are present: {what} "
                "need all four coordinates (ymin, xmin, ymax, xmax)",
            )
        ], None
    lengths = {c: len(_values(feature_map, prefix + c)) for c in schema.COORDS}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{c} {n}" for c, n in lengths.items())
        odd = min(lengths, key=lambda c: list(lengths.values()).count(lengths[c]))
        return [
            (
                prefix + odd,
                f"the coordinate lists differ in length ({listing}); expected one value per "
                f"box in each",
            )
        ], None
    values = np.stack(
        [np.asarray(_values(feature_map, prefix + c), np.float64) for c in schema.COORDS], 1
    )
    return [], values


def _box_value_problems(
    boxes: np.ndarray, prefix: str, what: str, size: tuple | None, allow_empty: bool
) -> list[tuple[str, str]]:
    """Non-finite, pixel, out-of-range, inverted and (unless allowed) zero-area boxes."""
    if not len(boxes):
        return []
    finite = np.isfinite(boxes)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        return [
            (
                prefix + schema.COORDS[col],
                f"{what} {row} has {schema.COORDS[col]} = {boxes[row, col]}: coordinates must "
                "be finite numbers in [0, 1]",
            )
        ]
    high = boxes > 1 + COORD_TOLERANCE
    low = boxes < -COORD_TOLERANCE
    if high.any() and boxes.max() >= 2 and not low.any():
        shape = f", image {size[1]}x{size[0]}" if size else ""
        return [
            (
                prefix + "*",
                "coordinates must be normalised to [0, 1] (xmin / width, ymin / height, ...); "
                f"this record's look like pixels (largest {boxes.max():g}{shape})",
            )
        ]
    if high.any() or low.any():
        row, col = np.argwhere(high | low)[0]
        return [
            (
                prefix + schema.COORDS[col],
                f"{what} {row} has {schema.COORDS[col]} = {boxes[row, col]:g}, outside [0, 1] "
                f"(normalised coordinates; at most {COORD_TOLERANCE:g} beyond is accepted)",
            )
        ]
    for lo, hi in ((0, 2), (1, 3)):
        inverted = boxes[:, lo] > boxes[:, hi]
        if inverted.any():
            row = int(np.argmax(inverted))
            a, b = schema.COORDS[lo], schema.COORDS[hi]
            return [
                (
                    prefix + a,
                    f"{what} {row} is inverted: {a} {boxes[row, lo]:g} > {b} {boxes[row, hi]:g} "
                    f"(expected {a} < {b}; the order is [ymin, xmin, ymax, xmax])",
                )
            ]
    if not allow_empty:
        for lo, hi in ((0, 2), (1, 3)):
            flat = boxes[:, lo] == boxes[:, hi]
            if flat.any():
                row = int(np.argmax(flat))
                a, b = schema.COORDS[lo], schema.COORDS[hi]
                return [
                    (
                        prefix + b,
                        f"{what} {row} has zero area ({a} = {b} = {boxes[row, lo]:g}); expected "
                        f"{a} < {b}",
                    )
                ]
    return []


def _label_problems(feature_map, num_boxes: int, rules: DetectionRules) -> list:
    labels = np.asarray(_values(feature_map, schema.LABEL), np.int64)
    if num_boxes and not len(labels):
        return [
            (
                schema.LABEL,
                f"missing: the record has {num_boxes} boxes but no class labels; expected one "
                "1-based class id per box",
            )
        ]
    if len(labels) != num_boxes:
        return [
            (
                schema.LABEL,
                f"{len(labels)} labels for {num_boxes} boxes; expected one 1-based class id per "
                "box",
            )
        ]
    if not num_boxes:
        return []
    low = labels < 1
    if low.any():
        row = int(np.argmax(low))
        return [
            (
                schema.LABEL,
                f"box {row} has label {labels[row]}: labels are 1-based class ids (0 is "
                f"background), expected 1..{rules.num_classes or 'K'}",
            )
        ]
    if rules.num_classes is not None and labels.max() > rules.num_classes:
        row = int(np.argmax(labels > rules.num_classes))
        return [
            (
                schema.LABEL,
                f"box {row} has label {labels[row]} but the model has {rules.num_classes} "
                f"object classes (labels 1..{rules.num_classes}): the records use another "
                "class list",
            )
        ]
    problems = []
    texts = _values(feature_map, schema.LABEL_TEXT)
    if rules.class_names and len(texts) == num_boxes:
        problems += _text_problems(texts, labels, rules.class_names)
    for key, what in (
        (schema.LABEL_TEXT, "class names"),
        (schema.DIFFICULT, "difficult flags"),
        (schema.IS_CROWD, "crowd flags"),
    ):
        count = len(_values(feature_map, key))
        if count and count != num_boxes:
            problems.append(
                (key, f"{count} {what} for {num_boxes} boxes; expected one per box, or none")
            )
    return problems


def _text_problems(texts: list, labels: np.ndarray, class_names: Sequence[str]) -> list:
    """A class text that names another class than the class list gives its label."""
    for row, (text, label) in enumerate(zip(texts, labels)):
        name = text.decode("utf-8", "replace")
        if not name.strip() or label > len(class_names):
            continue
        expected = class_names[label - 1]
        if name.strip().casefold() != expected.strip().casefold():
            return [
                (
                    schema.LABEL_TEXT,
                    f"box {row} has label {label} ({expected!r} in the class list) but class "
                    f"text {name!r}: the record's label map differs from the class list "
                    f"{list(class_names)} (labels are what is read): fix data.classes, or "
                    "the records' labels",
                )
            ]
    return []


def _mask_problems(feature_map, num_boxes: int, size, rules: DetectionRules) -> list:
    masks = _values(feature_map, schema.INSTANCE_MASK)
    if not masks:
        if rules.instance_masks and num_boxes:
            return [
                (
                    schema.INSTANCE_MASK,
                    f"missing: the record has {num_boxes} boxes but no instance masks; "
                    "instance segmentation needs one PNG mask per box",
                )
            ]
        return []
    if len(masks) != num_boxes:
        return [
            (
                schema.INSTANCE_MASK,
                f"{len(masks)} instance masks for {num_boxes} boxes; expected one mask per box",
            )
        ]
    for k, png in enumerate(masks):
        if not png.startswith(PNG_SIGNATURE):
            return [
                (
                    schema.INSTANCE_MASK,
                    f"instance mask {k} is not a PNG (starts with {png[:8]!r}); expected one "
                    "single-channel PNG per box",
                )
            ]
        reason, mask_size = _image_problems(png, f"instance mask {k}")
        if reason:
            return [(schema.INSTANCE_MASK, reason)]
        if size is not None and mask_size != size:
            return [
                (
                    schema.INSTANCE_MASK,
                    f"instance mask {k} is {mask_size[1]}x{mask_size[0]} but the image is "
                    f"{size[1]}x{size[0]} (width x height)",
                )
            ]
    return []


def check_example(serialized: bytes, rules: DetectionRules) -> tuple[list, dict]:
    """Checks one serialized record.

    Args:
        serialized: The record's bytes.
        rules: What it must satisfy.

    Returns:
        `(problems, facts)`: problems as `(field, reason)` pairs, the first being the most
        basic; facts `{"source_id", "boxes", "proposals"}` (box and proposal counts).
    """
    facts = {"source_id": "", "boxes": 0, "proposals": 0}
    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError has no stable import
        return [("<record>", f"not a serialized tf.train.Example ({err})")], facts
    feature_map = example.features.feature
    problems = _kind_problems(feature_map)
    source_id = _values(feature_map, schema.SOURCE_ID)
    if len(source_id) == 1 and isinstance(source_id[0], bytes):
        facts["source_id"] = source_id[0].decode("utf-8", "replace")
    if problems:
        return problems, facts
    encoded = _values(feature_map, schema.IMAGE_ENCODED)
    size = None
    if not encoded:
        problems.append(
            (
                schema.IMAGE_ENCODED,
                "missing: every record needs its encoded image (JPEG or PNG bytes)",
            )
        )
    else:
        reason, size = _image_problems(encoded[0], "the image")
        if reason:
            problems.append((schema.IMAGE_ENCODED, reason))
    if size is not None:
        for key, axis, name in ((schema.IMAGE_HEIGHT, 0, "high"), (schema.IMAGE_WIDTH, 1, "wide")):
            given = _values(feature_map, key)
            if given and given[0] and given[0] != size[axis]:
                problems.append(
                    (
                        key,
                        f"{key} = {given[0]} but the encoded image is {size[axis]} px {name} "
                        "(a rotated or resized export?): the normalised boxes may refer to "
                        "another image; fix the record",
                    )
                )
        if rules.min_size is not None and rules.max_size is not None:
            reason = resize_problem(size[0], size[1], rules.min_size, rules.max_size)
            if reason:
                problems.append((schema.IMAGE_ENCODED, reason))
    found, boxes = _coordinates(feature_map, schema.BOX_PREFIX, "boxes")
    problems += found
    if boxes is None:
        return problems, facts
    facts["boxes"] = len(boxes)
    problems += _box_value_problems(boxes, schema.BOX_PREFIX, "box", size, allow_empty=False)
    problems += _label_problems(feature_map, len(boxes), rules)
    problems += _mask_problems(feature_map, len(boxes), size, rules)
    if rules.max_boxes is not None:
        crowd = np.asarray(_values(feature_map, schema.IS_CROWD), bool)
        kept = len(boxes) if rules.keep_crowd or len(crowd) != len(boxes) else int((~crowd).sum())
        if kept > rules.max_boxes:
            problems.append(
                (
                    schema.BOX_PREFIX + "*",
                    f"{kept} boxes, more than data.max_boxes = {rules.max_boxes}; raise "
                    "data.max_boxes",
                )
            )
    found, proposals = _coordinates(feature_map, schema.PROPOSAL_PREFIX, "proposals")
    if rules.proposals:
        problems += found
    if proposals is not None:
        facts["proposals"] = len(proposals)
        if rules.proposals:
            problems += _box_value_problems(
                proposals, schema.PROPOSAL_PREFIX, "proposal", size, allow_empty=True
            )
            if rules.max_proposals is not None and len(proposals) > rules.max_proposals:
                problems.append(
                    (
                        schema.PROPOSAL_PREFIX + "*",
                        f"{len(proposals)} proposals, more than data.max_proposals = "
                        f"{rules.max_proposals}; raise data.max_proposals",
                    )
                )
    return problems, facts


# -- shards -------------------------------------------------------------------------------


def _cache_path(path: str, rules: DetectionRules) -> str:
    root = os.path.dirname(cache_dir())
    name = json.dumps([os.path.abspath(path), dataclasses.asdict(rules)], sort_keys=True)
    return os.path.join(root, "validated", hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")


def _stat_key(path: str, rules: DetectionRules) -> dict:
    stat = os.stat(path)
    return {
        "version": CACHE_VERSION,
        "path": os.path.abspath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "rules": dataclasses.asdict(rules),
    }


def _load_cached(path: str, rules: DetectionRules, key: dict) -> dict | None:
    try:
        with open(_cache_path(path, rules)) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in key.items()):
        return None
    return entry


def _remember(path: str, rules: DetectionRules, key: dict, result: dict) -> None:
    """Writes the cache entry atomically; a cache that cannot be written is not an error."""
    target = _cache_path(path, rules)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({**key, **result}, f)
        os.replace(tmp, target)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass


def _check_shard(path: str, rules: DetectionRules) -> dict:
    """`{"records", "boxes", "without_proposals", "problems"}` of one shard."""
    records = boxes = without = 0
    problems: list[dict] = []
    bad: list[bytes] = []
    try:
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            found, facts = check_example(serialized, rules)
            if found:
                field, reason = found[0]
                problems.append(
                    {
                        "index": records,
                        "source_id": facts["source_id"],
                        "field": field,
                        "reason": reason,
                    }
                )
                bad.append(serialized)
            else:
                boxes += facts["boxes"]
                without += facts["proposals"] == 0
            records += 1
    except tf.errors.DataLossError as err:
        raise BadInputError(
            path,
            f"truncated or corrupt TFRecord after record {records} ({str(err).splitlines()[0]})",
        ) from None
    if bad:
        keys = record_key(tf.constant(bad)).numpy()
        for problem, key in zip(problems, keys):
            problem["key"] = int(key)
    return {"records": records, "boxes": boxes, "without_proposals": without, "problems": problems}


def check_records(
    file_pattern: str | Sequence[str], rules: DetectionRules, use_cache: bool = True
) -> RecordsReport:
    """Checks every record of the matching shards (see the module docstring).

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        rules: What the records must satisfy.
        use_cache: Use and update the per-shard cache of finished checks.

    Returns:
        The report; nothing is raised for bad records (see `refuse` and `leave_out`).

    Raises:
        BadInputError: No file matches, or a shard is truncated or corrupt.
    """
    files = resolve_files(file_pattern)
    report = RecordsReport(files=files)
    for path in files:
        cacheable = use_cache and not is_remote(path)
        key = _stat_key(path, rules) if cacheable else None
        result = _load_cached(path, rules, key) if cacheable else None
        if result is None:
            result = _check_shard(path, rules)
            if cacheable:
                _remember(path, rules, key, result)
        report.records += result["records"]
        report.boxes += result["boxes"]
        if result["without_proposals"]:
            report.without_proposals[path] = result["without_proposals"]
        report.problems += [RecordProblem(file=path, **p) for p in result["problems"]]
    return report


def refuse(report: RecordsReport, what: str, hint: str = "") -> None:
    """Raises for the first bad record, with the number of others.

    Args:
        report: From `check_records`.
        what: Where the shards come from (`data.train`, `--data PATTERN`), for the message.
        hint: Appended to the message (e.g. how to skip bad records).

    Raises:
        BadInputError: The report lists a problem.
    """
    if not report.problems:
        return
    first = report.problems[0]
    more = len(report.problems) - 1
    others = f"; {more} more record(s) of {what} have problems" if more else ""
    raise BadInputError(first.location, f"{first.field}: {first.reason}{others}{hint}")


def leave_out(report: RecordsReport, what: str) -> list[int]:
    """Prints how many bad records are left out and the first reasons; returns their keys.

    Args:
        report: From `check_records`.
        what: Where the shards come from, for the message.

    Returns:
        The `record_key` of every bad record (for `excluding`).

    Raises:
        BadInputError: Every record is bad.
    """
    if not report.problems:
        return []
    if len(report.problems) == report.records:
        refuse(report, what, f"; all {report.records} records are unusable")
    lines = [
        f"{what}: leaving out {len(report.problems)} of {report.records} records that cannot be "
        'used (data.on_error = "skip"), e.g.:'
    ]
    lines += [f"  {p.describe()}" for p in report.problems[:SHOWN_REASONS]]
    if len(report.problems) > SHOWN_REASONS:
        lines.append(f"  ... and {len(report.problems) - SHOWN_REASONS} more")
    print("\n".join(lines), file=sys.stderr)
    return [p.key for p in report.problems]


def refuse_empty(report: RecordsReport, what: str, purpose: str) -> None:
    """Refuses shards without records, or without a single box.

    Args:
        report: From `check_records`.
        what: Where the shards come from, for the message.
        purpose: What is impossible without boxes (e.g. "mAP is undefined").

    Raises:
        BadInputError: No record, or no box in any usable record.
    """
    if report.records == 0:
        raise BadInputError(what, f"the shards hold no records: {purpose}")
    if report.boxes == 0:
        usable = report.records - len(report.problems)
        raise BadInputError(
            what,
            f"none of its {usable} usable record(s) has a box (image/object/bbox/*): {purpose}",
        )


def check_evaluation_records(
    pattern: str,
    class_names: Sequence[str],
    min_size: int,
    max_size: int,
    instance_masks: bool = False,
    proposals: bool = False,
    flag: str = "--data",
) -> RecordsReport:
    """Checks the records an evaluation reads, refusing the first bad one and empty data.

    Labels outside the model's classes would add a phantom class with AP 0 to the mean, and
    records without any box leave the mAP undefined (NaN): both are refused, naming the
    record or the pattern.

    Args:
        pattern: The shards (`--data`).
        class_names: The model card's object classes (placeholder names `class_0`, ... of a
            card without classes are not compared with the records' class texts).
        min_size: The model card's resize (shorter side).
        max_size: The model card's cap on the longer side.
        instance_masks: Every record with boxes needs instance masks.
        proposals: The model reads the records' proposals (Fast R-CNN).
        flag: The option that named the shards, for the messages.

    Returns:
        The report (all records good).

    Raises:
        BadInputError: A bad record, no record, or no box at all.
    """
    placeholders = all(re.fullmatch(r"class_\d+", name) for name in class_names)
    rules = DetectionRules(
        num_classes=len(class_names),
        class_names=None if placeholders else tuple(class_names),
        instance_masks=instance_masks,
        proposals=proposals,
        min_size=min_size,
        max_size=max_size,
    )
    report = check_records(pattern, rules)
    refuse(report, f"{flag} {pattern}")
    refuse_empty(report, f"{flag} {pattern}", "mAP is undefined")
    return report
