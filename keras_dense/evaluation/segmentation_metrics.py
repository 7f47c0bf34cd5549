"""Semantic segmentation scores from a confusion matrix (NumPy).

With `cm[t, p]` the number of pixels of true class `t` predicted as `p`:

- IoU of class c: `cm[c, c] / (sum_p cm[c, p] + sum_t cm[t, c] - cm[c, c])`;
- mean IoU: the mean over classes that occur (in the truth or the predictions);
- pixel accuracy: `trace(cm) / sum(cm)`;
- mean (class) accuracy: mean over classes present in the truth of `cm[c, c] / sum_p cm[c, p]`;
- frequency-weighted IoU: `sum_c freq_c * IoU_c` with `freq_c = sum_p cm[c, p] / sum(cm)`
  (Long et al., FCN, section 5).

Pixels labelled with the ignore label (or any label outside `[0, num_classes)`) are not
counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_label: int = 255
) -> np.ndarray:
    """Counts `(true, predicted)` pixel pairs.

    Args:
        labels: Integer class ids of any shape.
        predictions: Predicted class ids, same shape.
        num_classes: Number of classes.
        ignore_label: Label of pixels that are not counted.

    Returns:
        (num_classes, num_classes) int64 matrix, rows = truth, columns = prediction.

    Raises:
        ValueError: Shapes differ, or `num_classes` is not positive.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels {labels.shape} and predictions {predictions.shape}: expected equal shapes"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    labels = labels.astype(np.int64).ravel()
    predictions = predictions.astype(np.int64).ravel()
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    valid &= (predictions >= 0) & (predictions < num_classes)
    index = labels[valid] * num_classes + predictions[valid]
    counts = np.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def segmentation_scores(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU, mean IoU, pixel accuracy, mean accuracy and frequency-weighted IoU.

    Args:
        cm: (C, C) confusion matrix (rows = truth).
        class_names: Optional names of the C classes (default `class_<i>`).

    Returns:
        A JSON-ready dict: `mean_iou`, `pixel_accuracy`, `mean_accuracy`,
        `frequency_weighted_iou`, `per_class_iou` (name -> IoU, or None for a class that
        never occurs), `pixels` (counted pixels) and `num_classes`.

    Raises:
        ValueError: `cm` is not square or the names do not match it.
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm: expected a square matrix, got shape {cm.shape}")
    classes = cm.shape[0]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(classes)]
    if len(names) != classes:
        raise ValueError(f"class_names: {len(names)} names for a {classes}-class matrix")
    total = cm.sum()
    true_positives = np.diag(cm)
    truth = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = truth + predicted - true_positives
    present = union > 0
    iou = np.divide(true_positives, union, out=np.zeros(classes), where=present)
    in_truth = truth > 0
    accuracy = np.divide(true_positives, truth, out=np.zeros(classes), where=in_truth)
    frequency = truth / total if total else np.zeros(classes)

    def mean(values, mask):
        return float(values[mask].mean()) if mask.any() else float("nan")

    return {
        "num_classes": classes,
        "pixels": int(total),
        "mean_iou": mean(iou, present),
        "pixel_accuracy": float(true_positives.sum() / total) if total else float("nan"),
        "mean_accuracy": mean(accuracy, in_truth),
        "frequency_weighted_iou": float((frequency * iou).sum()) if total else float("nan"),
        "per_class_iou": {
            name: (float(iou[i]) if present[i] else None) for i, name in enumerate(names)
        },
    }
