"""Segmentation pseudo-labels from class maps and image-level labels (raw or CRF-refined)."""

from __future__ import annotations

import numpy as np

from keras_dense.crf import dense_crf
from keras_dense.localization.arrays import as_maps
from keras_dense.localization.card_keys import DEFAULT_BACKGROUND_THRESHOLD


def check_threshold(threshold: float) -> float:
    """`threshold` as a float in [0, 1].

    Raises:
        ValueError: It is a bool or outside [0, 1] (naming the value).
    """
    if isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"background threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


def normalised_class_maps(maps, labels) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled class's map divided by its image maximum, and which classes may claim.

    Args:
        maps: `(B, H, W, C)` class maps.
        labels: `(B, C)` 0/1 image labels.

    Returns:
        `(normalised (B, H, W, C) float32, allowed (B, C) bool)`: a class is allowed where the
        image is labelled with it and its map's peak is positive (else its map is unchanged).

    Raises:
        ValueError: The shapes disagree.
    """
    maps = as_maps(maps).astype(np.float32)
    labels = np.asarray(labels)
    if labels.shape != (maps.shape[0], maps.shape[-1]):
        raise ValueError(
            f"labels must be (images, classes) = {(maps.shape[0], maps.shape[-1])}, got "
            f"{labels.shape}"
        )
    peak = maps.max(axis=(1, 2))  # (B, C)
    allowed = (labels > 0) & (peak > 0)  # a class whose map never rises claims nothing
    scale = np.where(allowed, peak, 1.0)[:, None, None, :]
    return maps / scale, allowed


def pseudo_label_masks(maps, labels, threshold: float = DEFAULT_BACKGROUND_THRESHOLD):
    """Segmentation pseudo-labels from class maps and image-level labels.

    Only the classes an image is labelled with may claim pixels (the others are suppressed,
    as the adaptive bias of weakly supervised segmentation does). Each labelled class's map
    is divided by its maximum over the image; a pixel is background (0) where every labelled
    class is below `threshold` (also where the image has no labelled class, or the labelled
    classes' maps are never positive), else the labelled class with the highest normalised
    map, as id `c + 1`.

    Args:
        maps: `(B, H, W, C)` class maps (e.g. `class_maps(..., upsample=True)`).
        labels: `(B, C)` 0/1 image labels.
        threshold: The fraction of each class's peak below which it claims nothing, in
            [0, 1].

    Returns:
        uint8 `(B, H, W)` masks: 0 background, `c + 1` for class `c`.

    Raises:
        ValueError: Shapes disagree, or the threshold is outside [0, 1].
    """
    threshold = check_threshold(threshold)
    normalised, allowed = normalised_class_maps(maps, labels)
    scores = np.where(allowed[:, None, None, :], normalised, -np.inf)
    foreground = (scores >= threshold).any(axis=-1)
    return np.where(foreground, np.argmax(scores, axis=-1) + 1, 0).astype(np.uint8)


def pseudo_label_probabilities(maps, labels, threshold: float = DEFAULT_BACKGROUND_THRESHOLD):
    """Class probabilities `(B, H, W, 1 + C)` behind `pseudo_label_masks`, for a dense CRF.

    The unnormalised score of background is `threshold`; that of a labelled class its map
    over its peak, clipped to [0, 1]; absent classes score 0. Each pixel's scores are divided
    by their sum (a small epsilon keeps background and the labelled classes above zero), so
    the argmax is the pseudo-label (ties aside) and the CRF's unary is `-log` of these.

    Args:
        maps: `(B, H, W, C)` class maps.
        labels: `(B, C)` 0/1 image labels.
        threshold: The background score, in [0, 1].

    Returns:
        float32 probabilities summing to 1 over the last axis.
    """
    threshold = check_threshold(threshold)
    normalised, allowed = normalised_class_maps(maps, labels)
    eps = 1e-3
    classes = np.where(allowed[:, None, None, :], np.clip(normalised, 0.0, 1.0) + eps, 0.0)
    background = np.full(classes.shape[:-1] + (1,), threshold + eps, np.float32)
    scores = np.concatenate([background, classes], axis=-1)
    return (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32)


def crf_pseudo_label_masks(probabilities, images, labels, **crf_parameters) -> np.ndarray:
    """Pseudo-labels refined by `keras_dense.crf.dense_crf`, absent classes still suppressed.

    Args:
        probabilities: `(B, H, W, 1 + C)` from `pseudo_label_probabilities`.
        images: `(B, H, W, 3)` uint8 RGB images.
        labels: `(B, C)` 0/1 image labels.
        **crf_parameters: `dense_crf` keyword arguments (e.g. a model card's).

    Returns:
        uint8 `(B, H, W)` masks.
    """
    allowed = np.concatenate([np.ones((len(labels), 1), bool), np.asarray(labels) > 0], axis=-1)[
        :, None, None, :
    ]
    refined = np.stack(
        [dense_crf(p, image, **crf_parameters) for p, image in zip(probabilities, images)]
    )
    return np.argmax(np.where(allowed, refined, -1.0), axis=-1).astype(np.uint8)
