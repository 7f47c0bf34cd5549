"""The background threshold of pseudo-labels, chosen on held-out images with true masks.

`keras_dense.localization.pseudo_label_masks` makes a pixel background where every labelled
class's map is below `T` times its peak. The best `T` depends on how peaked the maps are (GAP
maps are broad, max / log-sum-exp maps peaked), so it is chosen per model: on held-out
records that have true masks, the pseudo-masks for every `T` of a grid are scored by mean IoU
against the masks (background plus the classes, over the classes that occur, as
`keras_dense.evaluation.segmentation_scores`), and the best `T` is kept (the smallest on ties).

Without the CRF the grid is scored in one vectorised pass per image (every threshold at once);
with it each threshold runs the dense CRF on each image. `keras-dense tune-threshold` writes
the choice into the model card (`background_threshold`, `background_threshold_crf`), where
`keras-dense pseudo-label` finds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_dense.data.class_lists import check_classifier_classes
from keras_dense.data.classification_pipeline import evaluation_records, mask_offset
from keras_dense.localization import (
    check_classifier_records,
    class_maps,
    crf_pseudo_label_masks,
    normalised_class_maps,
    pseudo_label_probabilities,
)
from keras_dense.utils.card_fields import check_card_fields
from keras_dense.utils.normalization import normalize

# 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclasses.dataclass(frozen=True)
class ThresholdChoice:
    """The chosen background threshold and the curve it was chosen from.

    Attributes:
        threshold: The threshold with the highest mean IoU.
        mean_iou: Its mean IoU.
        mean_iou_by_threshold: `{threshold: mean IoU}` over the grid.
        images: Records scored.
        crf: Whether the pseudo-masks were refined by the dense CRF.
    """

    threshold: float
    mean_iou: float
    mean_iou_by_threshold: dict
    images: int
    crf: bool


def _check_grid(thresholds: Sequence[float]) -> np.ndarray:
    grid = np.asarray([float(t) for t in thresholds], np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any((grid < 0) | (grid > 1)):
        raise ValueError(f"thresholds: expected one or more values in [0, 1], got {thresholds!r}")
    return grid


def threshold_confusions(
    maps, labels, truth, thresholds: Sequence[float], ignore_label: int = 255
) -> np.ndarray:
    """Confusion matrices of the pseudo-masks of every threshold, in one pass.

    The pseudo-mask of threshold `T` is `pseudo_label_masks(maps, labels, T)`: the labelled
    class with the highest normalised map where that map is `>= T`, else background.

    Args:
        maps: `(B, H, W, C)` class maps.
        labels: `(B, C)` 0/1 image labels.
        truth: `(B, H, W)` true masks: 0 background, `c + 1` class `c`, `ignore_label` not
            counted.
        thresholds: The `T` values, each in [0, 1].
        ignore_label: The masks' ignore label.

    Returns:
        int64 `(len(thresholds), C + 1, C + 1)` confusion matrices (rows = truth).

    Raises:
        ValueError: Shapes disagree, or a threshold is outside [0, 1].
    """
    grid = _check_grid(thresholds)
    normalised, allowed = normalised_class_maps(maps, labels)
    truth = np.asarray(truth).astype(np.int64)
    if truth.shape != normalised.shape[:3]:
        raise ValueError(f"truth masks {truth.shape}: expected {normalised.shape[:3]}")
    k = normalised.shape[-1] + 1
    scores = np.where(allowed[:, None, None, :], normalised, -np.inf)
    best = scores.max(axis=-1)  # (B, H, W)
    winner = np.argmax(scores, axis=-1) + 1
    keep = (truth >= 0) & (truth < k) & (truth != ignore_label)
    best, winner, want = best[keep], winner[keep], truth[keep]  # (N,)
    predicted = np.where(best[None, :] >= grid[:, None], winner[None, :], 0)  # (T, N)
    index = np.arange(len(grid))[:, None] * k * k + want[None, :] * k + predicted
    counts = np.bincount(index.ravel(), minlength=len(grid) * k * k)
    return counts.reshape(len(grid), k, k).astype(np.int64)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes that occur (in the truth or the predictions); NaN if none."""
    cm = np.asarray(confusion, np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0])) if (union > 0).any() else np.nan


def pick_threshold(confusions: np.ndarray, thresholds: Sequence[float]) -> tuple[float, dict]:
    """`(best threshold, {threshold: mean IoU})`; the smallest threshold wins ties."""
    grid = _check_grid(thresholds)
    curve = {float(t): mean_iou(cm) for t, cm in zip(grid, confusions)}
    values = np.array([curve[float(t)] for t in grid])
    if np.all(np.isnan(values)):
        raise ValueError("no pixel was counted: the masks hold only ignored pixels")
    best = float(grid[int(np.nanargmax(values))])
    return best, curve


def choose_background_threshold(
    model: keras.Model,
    card: dict,
    pattern,
    thresholds: Sequence[float] = THRESHOLD_GRID,
    crf: bool = False,
    crf_parameters: dict | None = None,
    max_images: int | None = None,
    max_memory: int | None = None,
) -> ThresholdChoice:
    """Chooses a classifier's background threshold by pseudo-mask mean IoU on held-out data.

    Args:
        model: A `keras_dense.apps.wsl_classifier`.
        card: Its model card (`classes`, `normalization`, `ignore_label`).
        pattern: Held-out shards with true masks whose class list starts with "background"
            (mask id `c + 1` = the classifier's class `c`).
        thresholds: The grid (default 0.05, 0.10, ..., 0.95).
        crf: Score the CRF-refined pseudo-masks (`crf_pseudo_label_masks`) instead of the raw
            ones.
        crf_parameters: `dense_crf` keyword arguments (None: DeepLab's defaults).
        max_images: Score the first N records only.
        max_memory: Bytes one image's class maps may take (None: not checked).

    Returns:
        The `ThresholdChoice`.

    Raises:
        ValueError: The card's classes, ignore label or normalisation do not fit the model,
            or the shards have no background class id 0.
        keras_dense.data.BadInputError: The shards' class list differs from the card's, a
            record is unusable or has no mask (named), there are no records, or an image is
            over `max_memory`.
    """
    grid = _check_grid(thresholds)
    check_card_fields(card, int(model.outputs[0].shape[-1]))
    check_classifier_classes(pattern, card)
    if mask_offset(pattern) != 1:
        raise ValueError(
            f"--data {pattern}: choosing the background threshold needs masks whose class list "
            "starts with 'background' (mask id c + 1 = class c)"
        )
    num_classes = len(card["classes"])
    ignore_label = 255 if card.get("ignore_label") is None else int(card["ignore_label"])
    check_classifier_records(
        model, pattern, card["classes"], 1, ignore_label, max_memory, require_masks=True
    )
    k = num_classes + 1
    total = np.zeros((len(grid), k, k), np.int64)
    images = 0
    for image, labels, mask, _, _ in evaluation_records(pattern, num_classes, 1, ignore_label):
        if max_images is not None and images >= max_images:
            break
        if not mask.size:
            raise ValueError(f"--data {pattern}: record {images} has no mask")
        x = np.asarray(normalize(tf.constant(image[None]), card.get("normalization")))
        maps = class_maps(model, x)
        labels = labels[None]
        if not crf:
            total += threshold_confusions(maps, labels, mask[None], grid, ignore_label)
        else:
            truth = mask.astype(np.int64).ravel()
            keep = (truth < k) & (truth != ignore_label)
            for i, threshold in enumerate(grid):
                probabilities = pseudo_label_probabilities(maps, labels, float(threshold))
                pseudo = crf_pseudo_label_masks(
                    probabilities, image[None], labels, **(crf_parameters or {})
                )[0].astype(np.int64)
                index = truth[keep] * k + pseudo.ravel()[keep]
                total[i] += np.bincount(index, minlength=k * k).reshape(k, k)
        images += 1
    if not images:
        raise ValueError(f"--data {pattern}: no records")
    best, curve = pick_threshold(total, grid)
    return ThresholdChoice(best, curve[best], curve, images, bool(crf))
