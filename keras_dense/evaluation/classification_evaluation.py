"""Evaluating a weakly supervised classifier (`keras_dense.apps.wsl_classifier`) on shards.

The report holds the multi-label mAP (the main number), the accuracy at 0.5, the pointing game
at 0 px and at a tolerance against the records' masks (else boxes), the centre-point baseline
and CorLoc (`boxes_from_maps` at `CORLOC_MAP_THRESHOLD` of the peak against the record's boxes,
or else the boxes of each class's connected mask regions). See
`keras_dense.tasks.classification` for the class-id conventions of the records.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf

from keras_dense.data.class_lists import check_classifier_classes
from keras_dense.data.classification_pipeline import evaluation_records, mask_offset
from keras_dense.data.errors import BadInputError
from keras_dense.evaluation.localization_metrics import (
    corloc,
    multilabel_average_precision,
    pointing_game,
)
from keras_dense.localization import (
    augmented_class_maps,
    boxes_from_maps,
    check_classifier_records,
    check_finite,
    points_from_maps,
)
from keras_dense.utils.card_fields import check_card_fields
from keras_dense.utils.normalization import normalize
from keras_dense.utils.tta import TestTimeAugmentation

# CAM's box threshold (fraction of the map's peak) for CorLoc.
CORLOC_MAP_THRESHOLD = 0.2


def mask_region_boxes(mask: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected regions of each class id in a mask (inclusive pixels).

    Args:
        mask: (H, W) class ids.
        ids: The ids whose regions are boxed.

    Returns:
        `(boxes (m, 4) yxyx, labels (m,) the id of each)`.
    """
    boxes, labels = [], []
    for class_id in ids:
        region = (mask == class_id).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        x, y, w, h = (stats[1:count, i] for i in range(4))
        boxes.append(np.stack([y, x, y + h - 1, x + w - 1], -1))
        labels.append(np.full(count - 1, class_id))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    return np.concatenate(boxes).astype(np.float64), np.concatenate(labels).astype(np.int64)


def _accumulate(total: dict | None, part: dict) -> dict:
    hits, counts = np.asarray(part["hits"]), np.asarray(part["counts"])
    if total is None:
        return {"hits": hits.copy(), "counts": counts.copy()}
    total["hits"] += hits
    total["counts"] += counts
    return total


def _rates(total: dict | None, names: list[str]) -> dict:
    if total is None:
        return {"accuracy": float("nan"), "mean_class_accuracy": float("nan"), "per_class": {}}
    hits, counts = total["hits"], total["counts"]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    present = counts > 0
    return {
        "accuracy": float(hits.sum() / counts.sum()) if counts.sum() else float("nan"),
        "mean_class_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class": {n: float(v) for n, v in zip(names, per_class)},
        "trials": int(counts.sum()),
    }


def evaluate_classification(
    model: keras.Model,
    card: dict,
    pattern,
    tolerance: float = 3.0,
    progress: bool = False,
    tta: TestTimeAugmentation | None = None,
    max_memory: int | None = None,
) -> dict:
    """mAP, accuracy at 0.5, pointing game (0 px and `tolerance`), centre baseline, CorLoc.

    Args:
        model: A `wsl_classifier`.
        card: Its model card (`classes`, `normalization`, `ignore_label`).
        pattern: Shards to evaluate on (full images, one at a time).
        tolerance: Pointing-game tolerance in pixels.
        progress: Unused (kept for the task interface).
        tta: Scales and flip over which the class maps of the pointing game and CorLoc are
            averaged (`keras_dense.localization.augmented_class_maps`); the scores (mAP) come
            from the plain image. None: the plain image only.
        max_memory: Bytes one image may take (`keras_dense.localization.
            class_map_bytes_per_pixel`); a larger one is refused, naming the record, before
            any is scored. None: not checked.

    Returns:
        The JSON-ready report.

    Raises:
        ValueError: The card's classes, ignore label or normalisation do not fit the model.
        keras_dense.data.BadInputError: The shards' class list differs from the card's, a
            record is unusable (named with its shard, source_id and field; see
            `keras_dense.data.classification_records`), there are no records, or an image is
            over `max_memory`.
    """
    check_card_fields(card, int(model.outputs[0].shape[-1]))
    check_classifier_classes(pattern, card)
    tta = tta or TestTimeAugmentation()
    names = list(card["classes"])
    num_classes = len(names)
    offset = mask_offset(pattern)
    ignore_label = 255 if card.get("ignore_label") is None else int(card["ignore_label"])
    records = check_classifier_records(model, pattern, names, offset, ignore_label, max_memory, tta)
    if not records.labelled:
        raise BadInputError(
            f"--data {pattern}",
            f"none of its {records.records} records is labelled with one of the model's classes "
            f"{names} (by a mask id, a box or image/class/label): the mAP is undefined",
        )
    normalization = card.get("normalization")
    scores, targets = [], []
    pointing = {"0": None, "tol": None, "centre_0": None, "centre_tol": None}
    found = None
    mask_ids = np.arange(num_classes) + offset
    box_ids = np.arange(num_classes) + 1
    for image, labels, mask, boxes, box_labels in evaluation_records(
        pattern, num_classes, offset, ignore_label
    ):
        x = np.asarray(normalize(tf.constant(image[None]), normalization))
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))[0]
        check_finite(logits, model, "scores")
        scores.append(logits)
        targets.append(labels)
        maps = augmented_class_maps(model, x, tta)
        points = points_from_maps(maps)
        height, width = image.shape[:2]
        centre = np.tile(np.array([[[height // 2, width // 2]]]), (1, num_classes, 1))
        if mask.size:
            truth, ids = mask[None], mask_ids
        else:
            truth, ids = [{"boxes": boxes, "labels": box_labels}], box_ids
        for key, guess, tol in (
            ("0", points, 0),
            ("tol", points, tolerance),
            ("centre_0", centre, 0),
            ("centre_tol", centre, tolerance),
        ):
            pointing[key] = _accumulate(pointing[key], pointing_game(guess, truth, tol, ids))
        if len(box_labels):
            gt = {"boxes": boxes, "labels": box_labels}
            gt_ids = box_ids
        elif mask.size:
            region_boxes, region_labels = mask_region_boxes(mask, mask_ids)
            gt, gt_ids = {"boxes": region_boxes, "labels": region_labels}, mask_ids
        else:
            continue
        predicted = boxes_from_maps(maps, CORLOC_MAP_THRESHOLD)
        found = _accumulate(found, corloc(predicted, [gt], class_ids=gt_ids))
    if not scores:
        raise ValueError(f"--data {pattern}: no records")
    scores, targets = np.stack(scores), np.stack(targets)
    ap = multilabel_average_precision(scores, targets)
    correct = (scores > 0) == (targets > 0.5)
    corloc_rates = _rates(found, names)
    return {
        "images": int(len(scores)),
        "map": ap["map"],
        "ap": {n: float(v) for n, v in zip(names, ap["ap"])},
        "ap_excluded": [names[c] for c in ap["excluded"]],
        "accuracy_at_0.5": float(correct.mean()),
        "pointing_tolerance": float(tolerance),
        "localization_tta": tta.to_json(),
        "pointing_0px": _rates(pointing["0"], names),
        "pointing": _rates(pointing["tol"], names),
        "centre_baseline_0px": _rates(pointing["centre_0"], names),
        "centre_baseline": _rates(pointing["centre_tol"], names),
        "corloc": {
            "corloc": corloc_rates["accuracy"],
            "mean_class_corloc": corloc_rates["mean_class_accuracy"],
            "per_class": corloc_rates["per_class"],
            "map_threshold": CORLOC_MAP_THRESHOLD,
        },
        "mask_offset": offset,
    }
