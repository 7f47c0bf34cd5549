"""The fields every model card shares, checked against the model before it is used.

A card is often edited by hand (a class renamed, a list pasted as one string). Read as it is,
a bad field gives wrong results without an error: a string of class names is read letter by
letter, a list one name short labels the last score `class_2`, a name too many is never
reported. `check_card_fields` refuses such a card, naming the file and the key.
"""

from __future__ import annotations

from keras_dense.utils.normalization import MODES


def check_card_fields(
    card: dict, num_classes: int | None = None, source: str = "the model card"
) -> None:
    """Refuses a card whose class names, ignore label or normalisation cannot be right.

    Args:
        card: The model card.
        num_classes: The classes the model scores (for a classifier, its output channels):
            `classes` must name each once, in order. None: the count is not checked (a task
            whose first output is not its class scores).
        source: The card file, for the message.

    Raises:
        ValueError: Naming `source` and the key: `classes` is not a list of distinct non-empty
            names with one per class, `ignore_label` is not null or an integer in [0, 255], or
            `normalization` is not a known mode.
    """
    classes = card.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
        count = "" if num_classes is None else f" ({num_classes})"
        raise ValueError(
            f"{source}: key 'classes' = {classes!r}: expected a JSON list of class names "
            f"(non-empty strings), one per class the model scores{count}"
        )
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"{source}: key 'classes' names {len(classes)} classes but the model scores "
            f"{num_classes}: expected one name per class, in the order of the model's outputs"
        )
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(
            f"{source}: key 'classes' names {repeated} more than once: expected distinct names"
        )
    ignore_label = card.get("ignore_label")
    if ignore_label is not None and (
        isinstance(ignore_label, bool) or not isinstance(ignore_label, int)
    ):
        raise ValueError(
            f"{source}: key 'ignore_label' = {ignore_label!r}: expected an integer in [0, 255] "
            "or null"
        )
    if ignore_label is not None and not 0 <= ignore_label <= 255:
        raise ValueError(
            f"{source}: key 'ignore_label' = {ignore_label}: expected an integer in [0, 255] "
            "(a mask value) or null"
        )
    normalization = card.get("normalization")
    if normalization not in MODES:
        raise ValueError(
            f"{source}: key 'normalization' = {normalization!r}: expected one of "
            f"{list(MODES)} (null: no normalisation)"
        )
