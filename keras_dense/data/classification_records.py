"""Checking the records a weakly supervised classifier reads, once, before it reads them.

The classification pipeline (`keras_dense.data.classification_pipeline`) takes a record's
image labels from its class mask, its boxes and its `image/class/label` ids. Records written
by other tools reach it as they are, and in the graph a bad field either vanishes (a box label
0 or -1, a 16-bit mask that decodes to 0, a 1-bit mask whose 1 decodes to 255, the ignore
label, a palette mask decoded as the grey levels of its colours) or fails with a multi-line
TensorFlow error that names no file. `check_classification_records` reads every record once,
as a raw `tf.train.Example`, and names the shard, the record, its `image/source_id`, the field
and what was expected:

- the image, boxes and box labels as for detection records
  (`keras_dense.data.record_check.check_example`): a whole JPEG or PNG, all four coordinate
  lists of one length, finite coordinates normalised to [0, 1], no inverted or zero-area box,
  one 1-based label per box in [1, C], class texts naming the labels' classes;
- the class mask (`image/segmentation/class/encoded`), when present: a whole 8-bit greyscale
  PNG at the image's size whose ids are background 0 (when the class list starts with
  "background": mask id `c + 1` is class `c`), a class id, or the ignore label;
- image labels (`image/class/label`): 1-based class ids in [1, C]; 0 means "no class" (a
  background image), which is accepted and counted (a 0-based label file would lose its
  first class there, so the count is printed);
- with `ClassificationRules.require_masks`, every record has a class mask.

A full check of a shard is remembered in `$KERAS_DENSE_CACHE/validated_classification`
(`keras_dense.utils.check_cache`) until the shard changes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_dense.data import schema
from keras_dense.data.detection_rules import DetectionRules
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import image_size_from_header
from keras_dense.data.mask_png import class_mask_problem
from keras_dense.data.record_check import check_example
from keras_dense.data.record_fields import values
from keras_dense.data.record_images import image_problem
from keras_dense.data.shard_checks import shard_records, shard_results
from keras_dense.data.tfrecord_files import resolve_files
from keras_dense.utils.check_cache import CheckCache

# Raised whenever what a shard's check accepts or remembers changes.
CACHE_VERSION = 2
_CACHE = CheckCache("validated_classification", CACHE_VERSION)


@dataclasses.dataclass(frozen=True)
class ClassificationRules:
    """What the records of a classifier must satisfy.

    Attributes:
        num_classes: The classifier's classes C.
        offset: Mask id of class 0 (1 when the class list starts with "background").
        ignore_label: The mask value that is not a class.
        class_names: The classes' names (box label `i` is `class_names[i - 1]`); None: class
            texts are not compared.
        require_masks: Every record must have a class mask (`keras-dense tune-threshold`).
    """

    num_classes: int
    offset: int = 1
    ignore_label: int = 255
    class_names: tuple[str, ...] | None = None
    require_masks: bool = False


@dataclasses.dataclass
class ClassificationReport:
    """The outcome of `check_classification_records`.

    Attributes:
        files: The shards, in order.
        records: Records read.
        problems: Unusable records.
        first_problem: `{"location", "field", "reason"}` of the first one, None when none.
        background_labels: Records whose `image/class/label` holds 0 (no class).
        labelled: Records labelled with a class (a mask id, a box or an image label).
        largest: `{"location", "height", "width"}` of the image with the most pixels.
    """

    files: list[str]
    records: int = 0
    problems: int = 0
    first_problem: dict | None = None
    background_labels: int = 0
    labelled: int = 0
    largest: dict | None = None


def _location(file: str, index: int, source_id: str) -> str:
    where = f"{file} record {index}"
    return f"{where} (source_id {source_id!r})" if source_id else where


def _mask_ids_expected(rules: ClassificationRules) -> str:
    last = rules.num_classes - 1 + rules.offset
    classes = f"0 (background) or a class id 1..{last}" if rules.offset else f"a class id 0..{last}"
    return f"{classes}, or the ignore label {rules.ignore_label}"


def _mask_problem(data: bytes, size: tuple | None, rules: ClassificationRules) -> tuple:
    """`(why the class mask cannot be read as class ids or None, whether it holds a class)`.

    Args:
        data: The `image/segmentation/class/encoded` bytes.
        size: The image's `(height, width)`, None when unknown.
        rules: The classes, mask offset and ignore label.
    """
    reason = class_mask_problem(data)  # not a PNG, or one TensorFlow reads as other ids
    if reason:
        return reason, False
    reason, mask_size = image_problem(data, "the class mask")
    if reason:
        return reason, False
    if size is not None and mask_size != size:
        return (
            f"the class mask is {mask_size[1]}x{mask_size[0]} but the image is "
            f"{size[1]}x{size[0]} (width x height)"
        ), False
    ids = np.unique(tf.io.decode_png(data, channels=1).numpy()).astype(np.int64)
    bad = ids[(ids >= rules.num_classes + rules.offset) & (ids != rules.ignore_label)]
    if bad.size:
        return (
            f"the class mask holds ids {bad.tolist()} outside the model's {rules.num_classes} "
            f"classes: expected {_mask_ids_expected(rules)} (the records use another class "
            "list or ignore label)"
        ), False
    return None, bool(((ids >= rules.offset) & (ids != rules.ignore_label)).any())


def _image_label_problem(labels: list, rules: ClassificationRules) -> str | None:
    bad = [v for v in labels if v < 0 or v > rules.num_classes]
    if not bad:
        return None
    return (
        f"image label {bad[0]}: image labels are 1-based class ids, expected "
        f"1..{rules.num_classes} (or 0 for an image of no class)"
    )


def check_classification_example(serialized: bytes, rules: ClassificationRules) -> tuple:
    """Checks one serialized record.

    Returns:
        `(problems, facts)`: problems as `(field, reason)` pairs, the first the most basic;
        facts `{"source_id", "size" ((height, width) or None), "background_label" (an
        image label 0), "labelled" (a label of a class: mask id, box or image label)}`.
    """
    detection_rules = DetectionRules(num_classes=rules.num_classes, class_names=rules.class_names)
    problems, found = check_example(serialized, detection_rules)
    facts = {
        "source_id": found["source_id"],
        "size": None,
        "background_label": False,
        "labelled": found["boxes"] > 0,
    }
    if found["label_map"]:
        reason = f"{found['label_map']}: the records were written with another label map"
        problems.append((schema.LABEL_TEXT, reason))
    if problems and problems[0][0] == "<record>":
        return problems, facts
    feature_map = tf.train.Example.FromString(serialized).features.feature
    encoded = values(feature_map, schema.IMAGE_ENCODED)
    if encoded and isinstance(encoded[0], bytes):
        facts["size"] = image_size_from_header(encoded[0])
    labels = values(feature_map, schema.IMAGE_LABEL)
    if all(isinstance(v, int) for v in labels):
        reason = _image_label_problem(labels, rules)
        if reason:
            problems.append((schema.IMAGE_LABEL, reason))
        facts["background_label"] = 0 in labels
        facts["labelled"] |= any(v > 0 for v in labels)
    masks = values(feature_map, schema.MASK_ENCODED)
    if masks and isinstance(masks[0], bytes) and masks[0]:
        reason, has_class = _mask_problem(masks[0], facts["size"], rules)
        if reason:
            problems.append((schema.MASK_ENCODED, reason))
        facts["labelled"] |= has_class
    elif rules.require_masks:
        reason = "missing: every record needs its true class mask to score pseudo-masks against"
        problems.append((schema.MASK_ENCODED, reason))
    return problems, facts


def _check_shard(path: str, rules: ClassificationRules) -> dict:
    """The JSON-serialisable check of one shard (what the report sums and the cache keeps)."""
    result = {
        "records": 0,
        "problems": 0,
        "first_problem": None,
        "background_labels": 0,
        "labelled": 0,
    }
    largest = None
    for index, serialized in shard_records(path):
        problems, facts = check_classification_example(serialized, rules)
        result["records"] += 1
        location = _location(path, index, facts["source_id"])
        if problems:
            result["problems"] += 1
            if result["first_problem"] is None:
                field, reason = problems[0]
                result["first_problem"] = {
                    "location": location,
                    "field": field,
                    "reason": reason,
                }
            continue
        result["background_labels"] += facts["background_label"]
        result["labelled"] += facts["labelled"]
        if facts["size"] is None:
            continue
        height, width = facts["size"]
        if largest is None or height * width > largest["height"] * largest["width"]:
            largest = {"location": location, "height": height, "width": width}
    return {**result, "largest": largest}


def check_classification_records(
    file_pattern: str | Sequence[str],
    rules: ClassificationRules,
    what: str = "--data",
    use_cache: bool = True,
) -> ClassificationReport:
    """Checks every record of the shards; refuses the first bad one and a set without records.

    Image labels 0 (no class) are accepted; their count is printed on stderr.

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        rules: What the records must satisfy.
        what: Where the shards come from (e.g. `--data PATTERN`), for the messages.
        use_cache: Use and update the per-shard cache of finished checks.

    Returns:
        The report.

    Raises:
        BadInputError: No shard matches, a shard is corrupt, a record is unusable (naming the
            shard, record, source_id and field, and how many others are), or there are no
            records.
    """
    files = resolve_files(file_pattern)
    report = ClassificationReport(files=files)

    def check(path: str) -> dict:
        return _check_shard(path, rules)

    params = dataclasses.asdict(rules)
    for _, result in shard_results(files, _CACHE, params, check, use_cache):
        report.records += result["records"]
        report.problems += result["problems"]
        report.background_labels += result["background_labels"]
        report.labelled += result["labelled"]
        if report.first_problem is None:
            report.first_problem = result["first_problem"]
        largest, shard_largest = report.largest, result["largest"]
        if shard_largest is not None and (
            largest is None
            or shard_largest["height"] * shard_largest["width"]
            > largest["height"] * largest["width"]
        ):
            report.largest = shard_largest
    if report.first_problem is not None:
        first = report.first_problem
        more = report.problems - 1
        others = f"; {more} more record(s) of {what} have problems" if more else ""
        raise BadInputError(first["location"], f"{first['field']}: {first['reason']}{others}")
    if not report.records:
        raise BadInputError(what, "the shards hold no records")
    if report.background_labels:
        print(
            f"{what}: {report.background_labels} of {report.records} records have "
            f"{schema.IMAGE_LABEL} 0, read as an image of no class (labels are 1-based class ids)",
            file=sys.stderr,
        )
    return report
