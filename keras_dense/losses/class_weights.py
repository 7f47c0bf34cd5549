"""Median-frequency class weights (Eigen and Fergus 2015, as used by SegNet)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def median_frequency_from_masks(
    masks: Iterable[np.ndarray], num_classes: int, ignore_label: int = 255
) -> tuple[list[float], list[int]]:
    """Median-frequency weights of a set of label masks.

    With `f_c = (pixels of class c) / (counted pixels of the images in which c is present)`,
    `weight_c = median(f) / f_c`, the median taken over the classes present anywhere. Pixels
    labelled `ignore_label` or outside `[0, num_classes)` are not counted. Classes never
    present get weight 0.

    Args:
        masks: (H, W) integer label masks (any sizes).
        num_classes: K.
        ignore_label: Label of pixels that do not count.

    Returns:
        `(weights (K floats), absent class ids)`.

    Raises:
        ValueError: No mask has a counted pixel.
    """
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for mask in masks:
        labels = np.asarray(mask).reshape(-1).astype(np.int64)
        labels = labels[(labels >= 0) & (labels < num_classes) & (labels != ignore_label)]
        counts = np.bincount(labels, minlength=num_classes)
        class_pixels += counts
        image_pixels += np.where(counts > 0, labels.size, 0)
    present = class_pixels > 0
    if not present.any():
        raise ValueError("median-frequency class weights: no mask has a counted pixel")
    freq = np.where(present, class_pixels / np.maximum(image_pixels, 1), 0.0)
    median = float(np.median(freq[present]))
    weights = np.where(present, median / np.where(present, freq, 1.0), 0.0)
    return [float(w) for w in weights], [int(c) for c in np.flatnonzero(~present)]


def median_frequency_weights(
    pattern: str, num_classes: int, ignore_label: int = 255
) -> tuple[list[float], list[int]]:
    """Median-frequency weights of the masks of the TFRecord shards matching `pattern`.

    Args:
        pattern: Glob pattern (or list) of segmentation shards (the training shards).
        num_classes: K.
        ignore_label: Label of pixels that do not count.

    Returns:
        `(weights, absent class ids)`, see `median_frequency_from_masks`.

    Raises:
        ValueError: A record has no mask, or no mask has a counted pixel.
    """
    from keras_dense.data import read_examples

    def masks():
        for example in read_examples(pattern):
            if "mask" not in example:
                raise ValueError(
                    f"median-frequency class weights: record {example.get('source_id')!r} of "
                    f"{pattern} has no segmentation mask"
                )
            yield example["mask"]

    return median_frequency_from_masks(masks(), num_classes, ignore_label)
