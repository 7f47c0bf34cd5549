"""The field checks of one detection record, read as a raw `tf.train.Example` feature map.

Each check returns `(field, reason)` pairs, the most basic first; an empty list means the
fields are usable. See `keras_dense.data.detection_records` for the rules as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_dense.data import schema
from keras_dense.data.detection_rules import COORD_TOLERANCE, DetectionRules

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


def values(feature_map, key: str) -> list:
    """The values of a present key (whose kind `kind_problems` checked), else []."""
    if key not in feature_map:
        return []
    kind = feature_map[key].WhichOneof("kind")
    return list(getattr(feature_map[key], kind).value) if kind else []


def kind_problems(feature_map) -> list[tuple[str, str]]:
    """Keys of another kind than the pipeline parses, and single-valued keys with more."""
    problems = []
    for key, (want, single) in _KINDS.items():
        if key not in feature_map:
            continue
        kind = feature_map[key].WhichOneof("kind")
        if kind is None:
            continue  # an empty feature: parsed as absent
        if kind != want:
            reason = f"holds {_KIND_NAMES[kind]} but {_KIND_NAMES[want]} was expected"
            problems.append((key, reason + _KIND_HINTS.get(key, "")))
        elif single and len(getattr(feature_map[key], kind).value) != 1:
            count = len(getattr(feature_map[key], kind).value)
            problems.append((key, f"holds {count} values, expected exactly one"))
    return problems


def coordinates(feature_map, prefix: str, what: str):
    """`(problems, (n, 4) array or None)` of a box or proposal coordinate group."""
    present = [c for c in schema.COORDS if values(feature_map, prefix + c)]
    if not present:
        return [], np.zeros((0, 4), np.float32)
    missing = [c for c in schema.COORDS if c not in present]
    if missing:
        reason = (
            f"missing, while {', '.join(prefix + c for c in present)} are present: {what} "
            "need all four coordinates (ymin, xmin, ymax, xmax)"
        )
        return [(prefix + missing[0], reason)], None
    lengths = {c: len(values(feature_map, prefix + c)) for c in schema.COORDS}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{c} {n}" for c, n in lengths.items())
        odd = min(lengths, key=lambda c: list(lengths.values()).count(lengths[c]))
        reason = (
            f"the coordinate lists differ in length ({listing}); expected one value per box in each"
        )
        return [(prefix + odd, reason)], None
    stacked = [np.asarray(values(feature_map, prefix + c), np.float64) for c in schema.COORDS]
    return [], np.stack(stacked, 1)


def _order_problems(boxes: np.ndarray, prefix: str, what: str, allow_empty: bool) -> list:
    """Inverted boxes (`ymin > ymax`, `xmin > xmax`), then (unless allowed) zero-area ones."""
    for flat in (False, True):
        if flat and allow_empty:
            break
        for lo, hi in ((0, 2), (1, 3)):
            low, high = boxes[:, lo], boxes[:, hi]
            bad = low == high if flat else low > high
            if not bad.any():
                continue
            row = int(np.argmax(bad))
            a, b = schema.COORDS[lo], schema.COORDS[hi]
            if flat:
                reason = (
                    f"{what} {row} has zero area ({a} = {b} = {low[row]:g}); expected {a} < {b}"
                )
                return [(prefix + b, reason)]
            reason = (
                f"{what} {row} is inverted: {a} {low[row]:g} > {b} {high[row]:g} (expected "
                f"{a} < {b}; the order is [ymin, xmin, ymax, xmax])"
            )
            return [(prefix + a, reason)]
    return []


def box_value_problems(
    boxes: np.ndarray, prefix: str, what: str, size: tuple | None, allow_empty: bool
) -> list[tuple[str, str]]:
    """Non-finite, pixel, out-of-range, inverted and (unless allowed) zero-area boxes."""
    if not len(boxes):
        return []
    finite = np.isfinite(boxes)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        reason = (
            f"{what} {row} has {schema.COORDS[col]} = {boxes[row, col]}: coordinates must be "
            "finite numbers in [0, 1]"
        )
        return [(prefix + schema.COORDS[col], reason)]
    high = boxes > 1 + COORD_TOLERANCE
    low = boxes < -COORD_TOLERANCE
    if high.any() and boxes.max() >= 2 and not low.any():
        shape = f", image {size[1]}x{size[0]}" if size else ""
        reason = (
            "coordinates must be normalised to [0, 1] (xmin / width, ymin / height, ...); this "
            f"record's look like pixels (largest {boxes.max():g}{shape})"
        )
        return [(prefix + "*", reason)]
    if high.any() or low.any():
        row, col = np.argwhere(high | low)[0]
        reason = (
            f"{what} {row} has {schema.COORDS[col]} = {boxes[row, col]:g}, outside [0, 1] "
            f"(normalised coordinates; at most {COORD_TOLERANCE:g} beyond is accepted)"
        )
        return [(prefix + schema.COORDS[col], reason)]
    return _order_problems(boxes, prefix, what, allow_empty)


def label_problems(feature_map, num_boxes: int, rules: DetectionRules) -> list:
    """Missing labels, labels outside [1, K], and flag or text lists of another length."""
    labels = np.asarray(values(feature_map, schema.LABEL), np.int64)
    if num_boxes and not len(labels):
        reason = (
            f"missing: the record has {num_boxes} boxes but no class labels; expected one "
            "1-based class id per box"
        )
        return [(schema.LABEL, reason)]
    if len(labels) != num_boxes:
        reason = (
            f"{len(labels)} labels for {num_boxes} boxes; expected one 1-based class id per box"
        )
        return [(schema.LABEL, reason)]
    if not num_boxes:
        return []
    low = labels < 1
    if low.any():
        row = int(np.argmax(low))
        reason = (
            f"box {row} has label {labels[row]}: labels are 1-based class ids (0 is "
            f"background), expected 1..{rules.num_classes or 'K'}"
        )
        return [(schema.LABEL, reason)]
    if rules.num_classes is not None and labels.max() > rules.num_classes:
        row = int(np.argmax(labels > rules.num_classes))
        reason = (
            f"box {row} has label {labels[row]} but the model has {rules.num_classes} object "
            f"classes (labels 1..{rules.num_classes}): the records use another class list"
        )
        return [(schema.LABEL, reason)]
    problems = []
    for key, what in (
        (schema.LABEL_TEXT, "class names"),
        (schema.DIFFICULT, "difficult flags"),
        (schema.IS_CROWD, "crowd flags"),
    ):
        count = len(values(feature_map, key))
        if count and count != num_boxes:
            problems.append(
                (key, f"{count} {what} for {num_boxes} boxes; expected one per box, or none")
            )
    return problems


def label_map_mismatch(feature_map, class_names: Sequence[str] | None) -> str | None:
    """The first box whose class text names another class than its label has, or None.

    Call after `label_problems` found none (one text per box, labels in range).
    """
    texts = values(feature_map, schema.LABEL_TEXT)
    labels = values(feature_map, schema.LABEL)
    if not class_names or len(texts) != len(labels):
        return None
    for row, (text, label) in enumerate(zip(texts, labels)):
        name = text.decode("utf-8", "replace")
        if not name.strip() or label > len(class_names):
            continue
        expected = class_names[label - 1]
        if name.strip().casefold() != expected.strip().casefold():
            return (
                f"box {row} has label {label} ({expected!r} in the class list) but class text "
                f"{name!r}"
            )
    return None


def flag_counts(feature_map, num_boxes: int) -> dict[str, int]:
    """How many boxes are difficult, crowd, and both (absent flags: none)."""
    flags = {}
    for name, key in (("difficult", schema.DIFFICULT), ("crowd", schema.IS_CROWD)):
        given = np.asarray(values(feature_map, key), bool)
        flags[name] = given if len(given) == num_boxes else np.zeros(num_boxes, bool)
    return {
        "difficult": int(flags["difficult"].sum()),
        "crowd": int(flags["crowd"].sum()),
        "difficult_crowd": int((flags["difficult"] & flags["crowd"]).sum()),
    }
