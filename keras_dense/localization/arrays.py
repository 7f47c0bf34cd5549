"""The arrays localisation works on: batches of images and class maps, and their checks."""

from __future__ import annotations

import keras
import numpy as np


def as_images(images) -> np.ndarray:
    """`images` as a NumPy batch `(B, H, W, C)`.

    Raises:
        ValueError: The images are not a batch (naming the shape).
    """
    images = np.asarray(keras.ops.convert_to_numpy(images))
    if images.ndim != 4:
        raise ValueError(
            f"images must be a batch (batch, height, width, channels), got the shape {images.shape}"
        )
    return images


def as_maps(maps) -> np.ndarray:
    """`maps` as a NumPy batch `(B, H, W, C)` of class maps.

    Raises:
        ValueError: The maps are not `(batch, height, width, classes)` (naming the shape).
    """
    maps = np.asarray(keras.ops.convert_to_numpy(maps))
    if maps.ndim != 4:
        raise ValueError(
            f"maps must be (batch, height, width, classes), got the shape {maps.shape}"
        )
    return maps


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`(B, h, w, C)` maps (or images) resized bilinearly to `size`, as float32."""
    resized = keras.ops.image.resize(
        maps.astype(np.float32), size, interpolation="bilinear", data_format="channels_last"
    )
    return np.asarray(keras.ops.convert_to_numpy(resized), np.float32)


def check_finite(values: np.ndarray, model: keras.Model, what: str) -> None:
    """Refuses a model's outputs that are not finite (a diverged model's NaN weights).

    Read as they are, NaN scores still rank (an mAP comes out), NaN maps never claim a pixel
    and a NaN score is written into JSON as the invalid `NaN`.

    Raises:
        ValueError: Naming the model, what was computed and how many values are not finite.
    """
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(
            f"model {model.name!r}: {bad} of its {what} are not finite (NaN or inf): its "
            "weights are likely not finite (a diverged training); use another checkpoint"
        )


def single_input(model: keras.Model):
    """The model's input tensor when it has one (so that a probe takes a plain array)."""
    inputs = list(model.inputs)
    return inputs[0] if len(inputs) == 1 else inputs
