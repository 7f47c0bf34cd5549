"""The check of the records a classifier is about to read, and of their largest image."""

from __future__ import annotations

import keras

from keras_dense.data.classification_records import (
    ClassificationRules,
    check_classification_records,
)
from keras_dense.data.errors import BadInputError
from keras_dense.localization.memory import class_map_memory_problem
from keras_dense.utils.tta import TestTimeAugmentation


def check_classifier_records(
    model: keras.Model,
    pattern,
    classes,
    offset: int,
    ignore_label: int = 255,
    max_memory: int | None = None,
    tta: TestTimeAugmentation | None = None,
    require_masks: bool = False,
    what: str | None = None,
):
    """Checks the records a classifier is about to read, and their largest image's memory.

    Every record is checked once (`keras_dense.data.classification_records`), so that a bad
    field is named (shard, record, source_id, field) before the model runs instead of being
    dropped or failing in the graph; then the largest image must fit `max_memory`.

    Args:
        model: The classifier.
        pattern: The shards.
        classes: The classifier's class names (its card's; box class texts are compared with
            them), or their number (texts not compared).
        offset: Mask id of class 0 (`keras_dense.data.classification_pipeline.mask_offset`).
        ignore_label: The masks' ignore label.
        max_memory: Bytes one image may take (None: not checked).
        tta: The test-time scales the maps are computed at.
        require_masks: Every record must have a class mask.
        what: Where the shards come from, for the messages (default `--data PATTERN`).

    Returns:
        The `ClassificationReport`.

    Raises:
        keras_dense.data.BadInputError: A bad record, no records, or an image over the budget.
    """
    names = None if isinstance(classes, int) else tuple(classes)
    count = classes if names is None else len(names)
    rules = ClassificationRules(count, int(offset), int(ignore_label), names, require_masks)
    if what is None:
        what = f"--data {pattern if isinstance(pattern, str) else ', '.join(pattern)}"
    report = check_classification_records(pattern, rules, what)
    largest = report.largest
    if max_memory is not None and largest is not None:
        problem = class_map_memory_problem(
            model, largest["height"], largest["width"], max_memory, tta
        )
        if problem:
            raise BadInputError(largest["location"], problem)
    return report
