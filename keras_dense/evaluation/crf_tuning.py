"""Tuning the dense-CRF post-processing of a segmenter by validation mean IoU.

The model is the expensive part, so each validation image's softmax is computed once and
kept; every parameter set then only runs `keras_dense.crf.dense_crf` on the kept
probabilities. The search is coarse to fine: the full coarse grid (plus DeepLab's defaults,
so the result is never worse than them on this set), then a finer grid around the best
point, with, for each parameter, the geometric midpoints to its coarse neighbours (a
parameter given one value stays fixed). Scores are the mean IoU of the confusion matrix
accumulated over all images (`keras_dense.evaluation.segmentation_metrics`).

Memory: the kept softmaxes take `4 * H * W * classes` bytes per image; `max_images` bounds it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from keras_dense.crf import dense_crf
from keras_dense.crf.parameter_ranges import PARAMETER_RANGES
from keras_dense.data.class_lists import check_card_classes
from keras_dense.data.tfrecord_files import count_records
from keras_dense.evaluation.evaluator import checked_examples
from keras_dense.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores
from keras_dense.prediction.inference import segment, softmax
from keras_dense.utils.progress import Progress

# The parameters searched and `dense_crf`'s defaults (DeepLab's).
TUNED_PARAMETERS = ("theta_alpha", "theta_beta", "bilateral_weight", "spatial_weight")
GRID_PARAMETERS = (*TUNED_PARAMETERS, "theta_gamma")
DEFAULT_PARAMETERS = {
    "theta_alpha": 80.0,
    "theta_beta": 13.0,
    "theta_gamma": 3.0,
    "bilateral_weight": 10.0,
    "spatial_weight": 3.0,
}
# Valid range of each parameter: `keras_dense.crf.parameter_ranges`.
DEFAULT_GRID = {
    "theta_alpha": (20.0, 40.0, 80.0, 140.0),
    "theta_beta": (3.0, 6.0, 13.0, 25.0),
    "bilateral_weight": (3.0, 6.0, 10.0),
    "spatial_weight": (1.0, 3.0),
}


@dataclasses.dataclass
class CrfTuning:
    """The result of `tune_crf`.

    Attributes:
        parameters: The best `dense_crf` keyword arguments (the grid's parameters plus
            `num_iterations`).
        mean_iou: Their mean IoU.
        baseline_mean_iou: Without CRF.
        default_mean_iou: With `dense_crf`'s defaults (and the same `num_iterations`).
        images: Validation images used.
        evaluated: Parameter sets scored (coarse and fine).
        scores: `(parameters, mean IoU)` of every set scored, in order.
    """

    parameters: dict
    mean_iou: float
    baseline_mean_iou: float
    default_mean_iou: float
    images: int
    evaluated: int
    scores: list = dataclasses.field(default_factory=list)


def parse_grid(items: list[str] | None) -> dict:
    """The search grid: `DEFAULT_GRID` with `KEY=V1,V2,...` items replacing its lists.

    Args:
        items: `--grid` values, e.g. `["theta_alpha=30,60,90", "spatial_weight=3"]`.

    Returns:
        `{parameter: sorted tuple of floats}`, each in its `PARAMETER_RANGES`.

    Raises:
        ValueError: Unknown parameter, or a value that is not a number in the parameter's
            valid range (the message names `--grid`, the entry and the range).
    """
    grid = dict(DEFAULT_GRID)
    for item in items or ():
        key, sep, values = str(item).partition("=")
        key = key.strip()
        if not sep or key not in GRID_PARAMETERS:
            raise ValueError(
                f"--grid {item!r}: expected KEY=V1,V2,... with KEY one of {GRID_PARAMETERS}"
            )
        try:
            numbers = tuple(sorted({float(v) for v in values.split(",") if v.strip()}))
        except ValueError:
            numbers = ()
        if not numbers:
            raise ValueError(f"--grid {item!r}: expected numbers after '='")
        grid[key] = numbers
    check_grid(grid)
    return grid


def check_grid(grid: dict) -> None:
    """Raises ValueError naming the first grid value outside its parameter's valid range.

    Args:
        grid: `{parameter: values}` with parameters of `GRID_PARAMETERS`.
    """
    for key, values in grid.items():
        low, high = PARAMETER_RANGES[key]
        for value in values:
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(
                    f"--grid {key}={value:g}: outside the valid range [{low:g}, {high:g}] of "
                    f"{key} (see keras_dense.evaluation.crf_tuning.PARAMETER_RANGES)"
                )


def _points(grid: dict) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def fine_grid(grid: dict, best: dict) -> dict:
    """For each parameter, `best` and the geometric midpoints to its coarse neighbours.

    At the ends of a coarse list the step to the one neighbour is mirrored; a parameter
    with one coarse value stays fixed. Values are clipped to `PARAMETER_RANGES`.
    """
    fine = {}
    for key, values in grid.items():
        value = best[key]
        values = sorted(set(values) | {value})  # the best may be a default off the grid
        if len(values) < 2:
            fine[key] = (value,)
            continue
        i = values.index(value)
        below = values[i - 1] if i > 0 else value * value / values[i + 1]
        above = values[i + 1] if i + 1 < len(values) else value * value / values[i - 1]
        low, high = PARAMETER_RANGES.get(key, (0.0, math.inf))
        points = (math.sqrt(below * value), value, math.sqrt(value * above))
        fine[key] = tuple(sorted({min(max(p, low), high) for p in points}))
    return fine


def _key(point: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 6)) for k, v in point.items()))


def crf_mean_iou(kept: list, card: dict, parameters: dict | None, bar=None) -> float:
    """Mean IoU over kept `(probabilities, image, mask)` triples, refined or (None) not."""
    classes = card["classes"]
    cm = np.zeros((len(classes), len(classes)), np.int64)
    for probabilities, image, mask in kept:
        if parameters is not None:
            probabilities = dense_crf(probabilities, image, **parameters)
        predicted = np.argmax(probabilities, axis=-1)
        cm += confusion_matrix(mask, predicted, len(classes), card["ignore_label"])
        if bar is not None:
            bar.update()
    return float(segmentation_scores(cm, classes)["mean_iou"])


def kept_softmaxes(
    model, card: dict, pattern: str, max_images: int | None = None, progress: bool = False
) -> list:
    """`(softmax, image, mask)` of the first `max_images` validation records (all: None)."""
    check_card_classes(pattern, card)
    total = count_records(pattern)
    total = total if max_images is None else min(total, max_images)
    bar = Progress(total, "predicting", progress)
    kept = []
    for _, example in checked_examples(card, pattern):
        if max_images is not None and len(kept) >= max_images:
            break
        scores = segment(model, example["image"], card)
        if scores.shape[-1] != len(card["classes"]):
            raise ValueError(
                f"the model predicts {scores.shape[-1]} classes, its card names "
                f"{len(card['classes'])}"
            )
        kept.append((softmax(scores), example["image"], example["mask"]))
        bar.update()
    bar.close()
    if not kept:
        raise ValueError(f"--data {pattern}: no records to tune on")
    return kept


def tune_crf(
    model,
    card: dict,
    pattern: str,
    grid: dict | None = None,
    max_images: int | None = None,
    num_iterations: int = 10,
    fine: bool = True,
    progress: bool = False,
) -> CrfTuning:
    """Coarse-to-fine search of the dense-CRF parameters by validation mean IoU.

    Args:
        model: The segmenter.
        card: Its model card.
        pattern: Glob pattern of validation TFRecord shards (with masks).
        grid: `{parameter: values}` (see `parse_grid`; default `DEFAULT_GRID`); parameters
            of `GRID_PARAMETERS` it leaves out keep `dense_crf`'s defaults.
        max_images: Use only the first records.
        num_iterations: Mean-field iterations of every CRF run.
        fine: Run the fine grid after the coarse one.
        progress: Progress bars on stderr (on a terminal only).

    Returns:
        The best parameters and the scores.

    Raises:
        ValueError: Bad grid values, or records that do not fit the card.
    """
    grid = {k: tuple(sorted(float(v) for v in vs)) for k, vs in (grid or DEFAULT_GRID).items()}
    unknown = set(grid) - set(GRID_PARAMETERS)
    if unknown:
        raise ValueError(f"--grid: unknown parameter(s) {sorted(unknown)}")
    check_grid(grid)
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images {max_images}: expected a positive integer")
    kept = kept_softmaxes(model, card, pattern, max_images, progress)
    fixed = {"num_iterations": int(num_iterations)}
    defaults = {k: DEFAULT_PARAMETERS[k] for k in grid}
    scored: dict[tuple, float] = {}
    order: list = []

    def score_all(points: list[dict], label: str) -> None:
        todo = [p for p in points if _key(p) not in scored]
        bar = Progress(len(todo) * len(kept), label, progress, "crf")
        for point in todo:
            scored[_key(point)] = crf_mean_iou(kept, card, {**point, **fixed}, bar)
            order.append((point, scored[_key(point)]))
        bar.close()

    baseline = crf_mean_iou(kept, card, None)
    score_all([defaults, *_points(grid)], "CRF coarse grid")
    best = max(order, key=lambda item: item[1])[0]  # first of the best: ties keep the earlier
    if fine:
        score_all(_points(fine_grid(grid, best)), "CRF fine grid")
        best = max(order, key=lambda item: item[1])[0]
    return CrfTuning(
        parameters={**{k: float(v) for k, v in best.items()}, **fixed},
        mean_iou=scored[_key(best)],
        baseline_mean_iou=baseline,
        default_mean_iou=scored[_key(defaults)],
        images=len(kept),
        evaluated=len(order),
        scores=[({**p, **fixed}, s) for p, s in order],
    )
