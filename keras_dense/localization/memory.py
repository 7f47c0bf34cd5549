"""The memory a classifier's scores and class maps take per image, and a budget's verdict."""

from __future__ import annotations

import keras

from keras_dense.signatures.memory_budget import (
    SAFETY_FACTOR,
    activation_bytes,
    serving_bytes_per_pixel,
)
from keras_dense.utils.tta import TestTimeAugmentation


def class_map_bytes_per_pixel(model: keras.Model, tta: TestTimeAugmentation | None = None) -> float:
    """Memory per image pixel of a classifier's scores and class maps at the image size.

    The model's activations grow with the image (measured on symbolic inputs, as the export
    measures them: `keras_dense.signatures.memory_budget.activation_bytes` at two sizes);
    besides them the image (uint8 and float32), the maps at the image size, their sum over
    the test-time passes and the pseudo-label arrays are held, all times `SAFETY_FACTOR`.
    Test-time passes run one after the other, so the largest scale `s` sets the peak
    (`s ** 2` times the pixels).

    Args:
        model: A `keras_dense.apps.wsl_classifier` (3-channel input).
        tta: The test-time scales (None: the plain image).

    Returns:
        Bytes per input pixel.
    """
    sizes = (64, 128)
    used = [activation_bytes(model, size, size, 3) for size in sizes]
    slope = (used[1] - used[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
    num_classes = int(model.outputs[0].shape[-1])
    per_pixel = SAFETY_FACTOR * (slope + serving_bytes_per_pixel(3, 0) + 4 * 4 * num_classes)
    if tta is not None and tta.enabled:
        per_pixel *= max(1.0, max(tta.scales) ** 2)
    return float(per_pixel)


def _memory_text(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def class_map_memory_problem(
    model: keras.Model,
    height: int,
    width: int,
    max_memory: int,
    tta: TestTimeAugmentation | None = None,
) -> str | None:
    """Why an image is too large for a memory budget (`class_map_bytes_per_pixel`), or None.

    A classifier's maps cannot be computed tile by tile without changing them (the pooled
    scores that normalise them see the whole image), so an image over the budget is refused.

    Args:
        model: The classifier.
        height: The image height.
        width: The image width.
        max_memory: Bytes one image may take.
        tta: The test-time scales.
    """
    needed = height * width * class_map_bytes_per_pixel(model, tta)
    if needed <= max_memory:
        return None
    return (
        f"a {width}x{height} image needs about {_memory_text(needed)} for the classifier's "
        f"scores and class maps, above the --max-memory budget of {_memory_text(max_memory)}; "
        "raise --max-memory or downscale the image"
    )
