"""Checking detection and instance records, once, before training or evaluation starts.

Records written by other tools (Roboflow, CVAT, LabelImg exports, the Model Garden's scripts)
reach the detection pipeline as they are. In the graph a bad field either vanishes (a NaN or
inverted box matches no anchor, a label 0 is background) or fails mid-epoch with a multi-line
TensorFlow error that names no file. `check_records` reads every record once in Python, as a
raw `tf.train.Example` (so a feature of the wrong kind is seen as such), and names the shard,
the record index, its `image/source_id`, the field and what was expected.

What a record must satisfy (keys in `keras_dense.data.schema`; one record is checked by
`record_check.check_example`, its fields by `record_fields`, its bytes by `record_images`):

- every key the pipeline parses has its kind (`image/encoded`, `image/format`,
  `image/source_id`, `image/object/class/text`, `image/object/mask`: bytes;
  `image/height`, `image/width`, `image/object/class/label`, `image/object/difficult`,
  `image/object/is_crowd`, `image/class/label`: int64; box and proposal coordinates: float),
  and the single-valued ones hold one value;
- `image/encoded` is present and is a whole JPEG or PNG that the pipeline decodes: each
  critical PNG chunk's CRC, a JPEG's markers up to its end-of-image and its compressed data
  (decoded at 1/8 scale); bytes after the end are accepted, as decoders ignore them.
  `image/height` / `image/width`, when given (non-zero), are the encoded image's size;
- the four box coordinate lists are all present or all absent and of equal length; each
  coordinate is finite and in [0, 1] (normalised: `xmin / width` ...); a coordinate at most
  `COORD_TOLERANCE` outside is accepted as it is (float32 rounding of `(x1 + 1) / width`
  gives 1.0000001); each box has `ymin < ymax` and `xmin < xmax` (inverted and zero-area
  boxes are refused);
- one label per box, each in `[1, num_classes]` (0 is background in the 1-based ids);
  `image/object/class/text`, `difficult` and `is_crowd`, when present, one per box (absent
  flags mean "not difficult", "not crowd"; absent texts are fine: labels are what is read);
  `image/format` is not read (the bytes are sniffed);
- `image/object/mask`, when present: one whole PNG per box at the image's size; with
  `instance_masks` every record with boxes has them, and each holds its object as the
  pipeline decodes it (not 16-bit, not empty);
- proposals (when read): the same coordinate rules, except that zero-area proposals are
  accepted (the RoI sampler gives them IoU 0);
- limits of the pipeline: at most `max_boxes` boxes (crowd boxes not counted unless
  `keep_crowd`), at most `max_proposals` proposals, and an image that the Fast R-CNN resize
  (`min_size`, `max_size`) leaves at least `MIN_RESIZED_SIDE` pixels on its shorter side.

A class text that names another class than the class list gives its label (case and
surrounding spaces aside) means the shard was written with another label map: that is
reported once per shard, with the number of such records, and refused whatever
`data.on_error` says (leaving the records out would leave out the whole set).

With `on_error="skip"` (recipe key `data.on_error`) bad training records are left out whole,
with a count and the first reasons printed: dropping only a bad box would leave its object
in the image unlabelled, to be learnt as background. Nothing is dropped silently.
`refuse_empty` refuses a set without a box that counts: for training, boxes the pipeline or
the model leaves out (crowd, difficult) do not; for evaluation, unscored ones do not.

A full check of a shard is remembered (per shard, its absolute path, size and modification
time, and the rules) in `$KERAS_DENSE_CACHE/validated` (`utils.check_cache`), so a restart
does not read the data again.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data import schema
from keras_dense.data.detection_rules import (
    COORD_TOLERANCE,
    MIN_RESIZED_SIDE,
    DetectionRules,
    resize_problem,
    resized_size,
)
from keras_dense.data.errors import BadInputError
from keras_dense.data.record_check import check_example
from keras_dense.data.record_filter import excluding, record_key
from keras_dense.data.shard_checks import shard_records, shard_results
from keras_dense.data.tfrecord_files import resolve_files
from keras_dense.utils.check_cache import CheckCache

__all__ = [
    "COORD_TOLERANCE",
    "MIN_RESIZED_SIDE",
    "DetectionRules",
    "LabelMapMismatch",
    "RecordProblem",
    "RecordsReport",
    "check_evaluation_records",
    "check_example",
    "check_records",
    "excluding",
    "leave_out",
    "record_key",
    "refuse",
    "refuse_empty",
    "resize_problem",
    "resized_size",
]

# Raised whenever what a shard's check accepts or remembers changes.
CACHE_VERSION = 2
_CACHE = CheckCache("validated", CACHE_VERSION)
SHOWN_REASONS = 5
_FLAG_KEYS = {"difficult": schema.DIFFICULT, "crowd": schema.IS_CROWD}

TRAINING_LABEL_MAP_FIX = (
    "rename data.classes to the records' class names (in the order of their labels), or "
    'rewrite the records\' labels for data.classes (data.on_error = "skip" does not apply: '
    "it would leave out every such record)"
)
EVALUATION_LABEL_MAP_FIX = (
    "the model was trained on another class list: rewrite the records' labels for the "
    "model's classes"
)


def _location(file: str, index: int, source_id: str) -> str:
    where = f"{file} record {index}"
    return f"{where} (source_id {source_id!r})" if source_id else where


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
        return _location(self.file, self.index, self.source_id)

    def describe(self) -> str:
        """One line naming the record, the field and the reason."""
        return f"{self.location}: {self.field}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class LabelMapMismatch:
    """A shard whose class texts name other classes than the class list gives their labels.

    Attributes:
        file: The shard.
        index: The first such record's 0-based position.
        source_id: Its `image/source_id` ("" when absent).
        reason: Its first such box, label and text.
        records: How many of the shard's records have such a box.
        shard_records: The shard's records.
    """

    file: str
    index: int
    source_id: str
    reason: str
    records: int
    shard_records: int

    @property
    def location(self) -> str:
        """`FILE record N (source_id 'x')` of the first such record."""
        return _location(self.file, self.index, self.source_id)


@dataclasses.dataclass
class RecordsReport:
    """The outcome of `check_records` over a set of shards.

    Attributes:
        files: The shards, in order.
        records: Records read.
        boxes: Boxes over all good records.
        difficult_boxes: Those marked difficult (`image/object/difficult`).
        crowd_boxes: Those marked crowd (`image/object/is_crowd`).
        difficult_crowd_boxes: Those marked both.
        without_proposals: Shard -> number of records that have no proposals.
        problems: One entry per unusable record, in file and record order.
        label_maps: One entry per shard written with another label map, in file order.
    """

    files: list[str]
    records: int = 0
    boxes: int = 0
    difficult_boxes: int = 0
    crowd_boxes: int = 0
    difficult_crowd_boxes: int = 0
    without_proposals: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[RecordProblem] = dataclasses.field(default_factory=list)
    label_maps: list[LabelMapMismatch] = dataclasses.field(default_factory=list)

    def counted_boxes(self, difficult: bool = True, crowd: bool = True) -> int:
        """Boxes of the good records, counting difficult and crowd ones or not."""
        count = self.boxes
        if not difficult:
            count -= self.difficult_boxes
        if not crowd:
            count -= self.crowd_boxes
        if not difficult and not crowd:
            count += self.difficult_crowd_boxes
        return count


def _check_shard(path: str, rules: DetectionRules) -> dict:
    """The JSON-serialisable check of one shard (what `check_records` sums and caches)."""
    counts = dict.fromkeys(("records", "boxes", "difficult", "crowd", "difficult_crowd"), 0)
    without = 0
    problems: list[dict] = []
    bad: list[bytes] = []
    label_map = None
    for index, serialized in shard_records(path):
        found, facts = check_example(serialized, rules)
        counts["records"] += 1
        if found:
            field, reason = found[0]
            problem = {"index": index, "source_id": facts["source_id"], "field": field}
            problems.append({**problem, "reason": reason})
            bad.append(serialized)
            continue
        for name in ("boxes", "difficult", "crowd", "difficult_crowd"):
            counts[name] += facts[name]
        without += facts["proposals"] == 0
        if facts["label_map"]:
            if label_map is None:
                label_map = {"index": index, "source_id": facts["source_id"], "records": 0}
                label_map["reason"] = facts["label_map"]
            label_map["records"] += 1
    if bad:
        keys = record_key(tf.constant(bad)).numpy()
        for problem, key in zip(problems, keys):
            problem["key"] = int(key)
    return {**counts, "without_proposals": without, "problems": problems, "label_map": label_map}


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

    def check(path: str) -> dict:
        return _check_shard(path, rules)

    params = dataclasses.asdict(rules)
    for path, result in shard_results(files, _CACHE, params, check, use_cache):
        report.records += result["records"]
        report.boxes += result["boxes"]
        report.difficult_boxes += result["difficult"]
        report.crowd_boxes += result["crowd"]
        report.difficult_crowd_boxes += result["difficult_crowd"]
        if result["without_proposals"]:
            report.without_proposals[path] = result["without_proposals"]
        report.problems += [RecordProblem(file=path, **p) for p in result["problems"]]
        if result["label_map"]:
            mismatch = LabelMapMismatch(
                path, shard_records=result["records"], **result["label_map"]
            )
            report.label_maps.append(mismatch)
    return report


def _refuse_label_maps(report: RecordsReport, what: str, fix: str) -> None:
    """Raises for the first shard written with another label map, counting the others."""
    if not report.label_maps:
        return
    first = report.label_maps[0]
    others = len(report.label_maps) - 1
    also = f", and in {others} other shard(s) of {what}" if others else ""
    raise BadInputError(
        first.location,
        f"{schema.LABEL_TEXT}: {first.reason}: {first.records} of {first.shard_records} "
        f"records of this shard name classes so{also}; the records were written with another "
        f"label map than the class list: {fix}",
    )


def refuse(
    report: RecordsReport, what: str, hint: str = "", label_map_fix: str = TRAINING_LABEL_MAP_FIX
) -> None:
    """Raises for a shard of another label map, or the first bad record with the number of
    others.

    Args:
        report: From `check_records`.
        what: Where the shards come from (`data.train`, `--data PATTERN`), for the message.
        hint: Appended to the message of a bad record (e.g. how to skip bad records).
        label_map_fix: What to do about another label map, for the message.

    Raises:
        BadInputError: The report lists a label-map mismatch or a problem.
    """
    _refuse_label_maps(report, what, label_map_fix)
    if not report.problems:
        return
    first = report.problems[0]
    more = len(report.problems) - 1
    others = f"; {more} more record(s) of {what} have problems" if more else ""
    raise BadInputError(first.location, f"{first.field}: {first.reason}{others}{hint}")


def leave_out(
    report: RecordsReport, what: str, label_map_fix: str = TRAINING_LABEL_MAP_FIX
) -> list[int]:
    """Prints how many bad records are left out and the first reasons; returns their keys.

    Args:
        report: From `check_records`.
        what: Where the shards come from, for the message.
        label_map_fix: What to do about another label map, for the message.

    Returns:
        The `record_key` of every bad record (for `excluding`).

    Raises:
        BadInputError: A shard was written with another label map, or every record is bad.
    """
    _refuse_label_maps(report, what, label_map_fix)
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


def refuse_empty(
    report: RecordsReport, what: str, purpose: str, left_out: dict[str, str] | None = None
) -> None:
    """Refuses shards without records, or without a single box that counts.

    Args:
        report: From `check_records`.
        what: Where the shards come from, for the message.
        purpose: What is impossible without boxes (e.g. "mAP is undefined").
        left_out: `"difficult"` and / or `"crowd"`, mapped to why such boxes do not count
            (e.g. "VOC mAP does not score difficult boxes"); others count.

    Raises:
        BadInputError: No record, or no box that counts in any usable record.
    """
    if report.records == 0:
        raise BadInputError(what, f"the shards hold no records: {purpose}")
    usable = report.records - len(report.problems)
    if report.boxes == 0:
        raise BadInputError(
            what,
            f"none of its {usable} usable record(s) has a box (image/object/bbox/*): {purpose}",
        )
    left_out = left_out or {}
    counted = report.counted_boxes("difficult" not in left_out, "crowd" not in left_out)
    if counted:
        return
    flagged = {"difficult": report.difficult_boxes, "crowd": report.crowd_boxes}
    marks = [name for name in left_out if flagged[name]]
    keys = ", ".join(_FLAG_KEYS[name] for name in marks)
    why = "; ".join(left_out[name] for name in marks)
    raise BadInputError(
        what,
        f"its {usable} usable record(s) hold {report.boxes} box(es), all marked "
        f"{' or '.join(marks)} ({keys}): {why}: {purpose}",
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
    records without any scored box leave the mAP undefined (NaN): both are refused, naming
    the record or the pattern. Scored boxes: detection (VOC mAP) leaves difficult boxes out,
    instance segmentation (COCO, and VOC with crowd as difficult) crowd boxes.

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
        BadInputError: A bad record, another label map, no record, or no scored box.
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
    what = f"{flag} {pattern}"
    refuse(report, what, label_map_fix=EVALUATION_LABEL_MAP_FIX)
    if instance_masks:
        left_out = {"crowd": "crowd boxes are not scored (COCO ignores them, VOC as difficult)"}
    else:
        left_out = {"difficult": "VOC mAP does not score difficult boxes"}
    refuse_empty(report, what, "mAP is undefined", left_out)
    return report
