"""The output size of a dense model for one input size, probed symbolically.

Training crops (a valid-padding U-Net predicts the centre of its crop), tiling, serving
geometry and prediction all ask the same question: what `(height, width)` does the model's
(first) output have for a `(1, height, width, channels)` input? `model_output_size` answers it
without computing anything (`keras.Model.compute_output_spec`).
"""

from __future__ import annotations

import keras
import numpy as np


def model_output_size(
    model: keras.Model, height: int, width: int, channels: int, run_if_unknown: bool = False
) -> tuple[int, int]:
    """The `(height, width)` of the model's first output for one input of that size.

    Args:
        model: A model mapping `(B, H, W, C)` images to `(B, H', W', K)` maps.
        height: Input height.
        width: Input width.
        channels: Input channels.
        run_if_unknown: When the symbolic shape leaves the spatial sizes unknown, run the
            model once on zeros to measure them (else that is an error).

    Returns:
        `(H', W')` as Python ints.

    Raises:
        ValueError: The model rejects the input size, its output is not `(B, H, W, K)`, or
            its size is unknown (without `run_if_unknown`); the message names the model and
            the size.
    """
    what = f"model {model.name!r} for a {height}x{width} (height x width) input"
    try:
        spec = model.compute_output_spec(keras.KerasTensor((1, height, width, channels)))
        shape = tuple(keras.tree.flatten(spec)[0].shape)
        if len(shape) == 4 and None in shape[1:3] and run_if_unknown:
            zeros = np.zeros((1, height, width, channels), np.float32)
            shape = np.asarray(keras.tree.flatten(model.predict_on_batch(zeros))[0]).shape
    except Exception as error:  # any rejection (a concat of odd sizes, a too-small pooling)
        raise ValueError(f"{what}: the model does not accept this input ({error})") from error
    if len(shape) != 4:
        raise ValueError(f"{what}: expected a (B, H, W, K) output, got the shape {shape}")
    if shape[1] is None or shape[2] is None:
        raise ValueError(f"{what}: the output's size is unknown (shape {shape})")
    return int(shape[1]), int(shape[2])


def accepted_output_size(
    model: keras.Model, height: int, width: int, channels: int
) -> tuple[int, int] | None:
    """`model_output_size`, or None where it raises (a rejected size, or no map output)."""
    try:
        return model_output_size(model, height, width, channels)
    except ValueError:
        return None
