"""Checking one serialized detection record (see `keras_dense.data.detection_records`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_dense.data import schema
from keras_dense.data.detection_rules import DetectionRules, resize_problem
from keras_dense.data.record_fields import (
    box_value_problems,
    coordinates,
    flag_counts,
    kind_problems,
    label_map_mismatch,
    label_problems,
    values,
)
from keras_dense.data.record_images import image_problem, mask_problems


def _image_problems(feature_map, rules: DetectionRules) -> tuple[list, tuple | None]:
    """`(problems, (height, width) or None)` of the encoded image and its stated size."""
    encoded = values(feature_map, schema.IMAGE_ENCODED)
    if not encoded:
        reason = "missing: every record needs its encoded image (JPEG or PNG bytes)"
        return [(schema.IMAGE_ENCODED, reason)], None
    reason, size = image_problem(encoded[0], "the image")
    if reason:
        return [(schema.IMAGE_ENCODED, reason)], None
    problems = []
    for key, axis, name in ((schema.IMAGE_HEIGHT, 0, "high"), (schema.IMAGE_WIDTH, 1, "wide")):
        given = values(feature_map, key)
        if given and given[0] and given[0] != size[axis]:
            reason = (
                f"{key} = {given[0]} but the encoded image is {size[axis]} px {name} (a rotated "
                "or resized export?): the normalised boxes may refer to another image; fix the "
                "record"
            )
            problems.append((key, reason))
    if rules.min_size is not None and rules.max_size is not None:
        reason = resize_problem(size[0], size[1], rules.min_size, rules.max_size)
        if reason:
            problems.append((schema.IMAGE_ENCODED, reason))
    return problems, size


def _proposal_problems(feature_map, size, rules: DetectionRules) -> tuple[list, int]:
    """`(problems, number of proposals)`; problems only when the proposals are read."""
    found, proposals = coordinates(feature_map, schema.PROPOSAL_PREFIX, "proposals")
    count = 0 if proposals is None else len(proposals)
    if not rules.proposals:
        return [], count
    if proposals is None:
        return found, count
    problems = box_value_problems(
        proposals, schema.PROPOSAL_PREFIX, "proposal", size, allow_empty=True
    )
    if rules.max_proposals is not None and count > rules.max_proposals:
        reason = (
            f"{count} proposals, more than data.max_proposals = {rules.max_proposals}; raise "
            "data.max_proposals"
        )
        problems.append((schema.PROPOSAL_PREFIX + "*", reason))
    return problems, count


def check_example(serialized: bytes, rules: DetectionRules) -> tuple[list, dict]:
    """Checks one serialized record.

    Args:
        serialized: The record's bytes.
        rules: What it must satisfy.

    Returns:
        `(problems, facts)`: problems as `(field, reason)` pairs, the first being the most
        basic; facts `{"source_id", "boxes", "proposals", "difficult", "crowd",
        "difficult_crowd", "label_map"}`: box and proposal counts, the boxes flagged
        difficult, crowd and both, and `label_map`, the first box whose class text names
        another class than the class list gives its label (None when all agree; not a
        problem of the record: a set written with another label map is refused as a whole).
    """
    facts = {
        "source_id": "",
        "boxes": 0,
        "proposals": 0,
        "difficult": 0,
        "crowd": 0,
        "difficult_crowd": 0,
        "label_map": None,
    }
    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError has no stable import
        return [("<record>", f"not a serialized tf.train.Example ({err})")], facts
    feature_map = example.features.feature
    problems = kind_problems(feature_map)
    source_id = values(feature_map, schema.SOURCE_ID)
    if len(source_id) == 1 and isinstance(source_id[0], bytes):
        facts["source_id"] = source_id[0].decode("utf-8", "replace")
    if problems:
        return problems, facts
    problems, size = _image_problems(feature_map, rules)
    found, boxes = coordinates(feature_map, schema.BOX_PREFIX, "boxes")
    problems += found
    if boxes is None:
        return problems, facts
    facts["boxes"] = len(boxes)
    problems += box_value_problems(boxes, schema.BOX_PREFIX, "box", size, allow_empty=False)
    labelled = label_problems(feature_map, len(boxes), rules)
    problems += labelled
    if not labelled:
        facts.update(flag_counts(feature_map, len(boxes)))
        facts["label_map"] = label_map_mismatch(feature_map, rules.class_names)
    problems += mask_problems(values(feature_map, schema.INSTANCE_MASK), len(boxes), size, rules)
    if rules.max_boxes is not None:
        crowd = np.asarray(values(feature_map, schema.IS_CROWD), bool)
        kept = len(boxes) if rules.keep_crowd or len(crowd) != len(boxes) else int((~crowd).sum())
        if kept > rules.max_boxes:
            reason = (
                f"{kept} boxes, more than data.max_boxes = {rules.max_boxes}; raise data.max_boxes"
            )
            problems.append((schema.BOX_PREFIX + "*", reason))
    found, facts["proposals"] = _proposal_problems(feature_map, size, rules)
    problems += found
    return problems, facts
