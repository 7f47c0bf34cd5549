"""The images a converted model is checked on, at the size it is converted or checked at.

Shared by the checked exports (`tflite_export`, `runtime_export`): the input size given, the
model's own or the card's training tile; real records resized to it, or generated images.
"""

from __future__ import annotations

import re

import cv2
import keras
import numpy as np

from keras_dense.data import read_examples
from keras_dense.prediction.inference import prepare_image


class ConversionCheckError(RuntimeError):
    """A converted model disagrees with the Keras model; nothing was written.

    Attributes:
        report: The check's numbers (`agreement`, `max_abs_diff`, `min_agreement`, ...).
    """

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def refuse_disagreement(
    error: type[ConversionCheckError],
    model_path: str,
    what: str,
    agreement: float,
    compared: int,
    max_abs_diff: float,
    minimum: float,
    report: dict,
) -> None:
    """Raises `error` when a converted model (`what`, e.g. "the ONNX model") outputs
    non-finite values or agrees with the Keras model on less than `minimum`."""
    if not np.isfinite(max_abs_diff):
        raise error(
            f"--model {model_path}: {what} outputs NaN or infinite values where the Keras "
            "model does not; nothing was written",
            report,
        )
    if not agreement >= minimum:
        raise error(
            f"--model {model_path}: {what} agrees with the Keras model on {agreement:.4%} of "
            f"{compared} predictions (max output difference {max_abs_diff:g}), below the "
            f"{minimum:.1%} required; nothing was written (--min-agreement lowers the bar)",
            report,
        )


def parse_input_size(text: str) -> tuple[int, int]:
    """`"H,W"` (or `"S"` for a square) as `(H, W)`.

    Raises:
        ValueError: Not one or two positive integers (the message names `--input-size`).
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:[,x]\s*(\d+)\s*)?", str(text))
    size = () if match is None else (int(match.group(1)), int(match.group(2) or match.group(1)))
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"--input-size {text!r}: expected H,W (two positive integers)")
    return size


def resolve_input_size(model: keras.Model, card: dict, input_size=None) -> tuple[int, int]:
    """The fixed input size of the conversion: given, the model's own, or the card's tile.

    Raises:
        ValueError: None of them is known, or the given size contradicts a fixed model input.
    """
    fixed = tuple(model.inputs[0].shape[1:3])
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        if None not in fixed and size != fixed:
            raise ValueError(f"--input-size {size}: the model's input is fixed at {fixed}")
        return size
    if None not in fixed:
        return tuple(int(v) for v in fixed)
    if card.get("input_size"):
        return tuple(int(v) for v in card["input_size"][:2])
    raise ValueError(
        "the conversion needs an input size and neither the model nor its card ('input_size', "
        "the training tile) has one: give --input-size H,W"
    )


def sample_images(card: dict, size, count: int, pattern: str | None = None, seed: int = 0):
    """Up to `count` normalised images at `size`: records of `pattern`, or generated ones.

    Records are resized (area averaging when shrinking, bilinear otherwise) to the input
    size; generated images are smooth random colour fields (blurred noise), so that the
    comparison sees edges and flat regions as in photographs.

    Args:
        card: The model card (normalisation, input channels).
        size: `(H, W)`.
        count: How many images.
        pattern: Glob pattern of TFRecord shards, or None.
        seed: Seed of the generated images.

    Returns:
        `(images (n, H, W, C) float32, source)`; `source` names where they came from.
    """
    height, width = size
    raw = []
    if pattern:
        for example in read_examples(pattern):
            if len(raw) == count:
                break
            image = example["image"]
            shrink = image.shape[0] * image.shape[1] > height * width
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            raw.append(cv2.resize(image, (width, height), interpolation=interpolation))
        source = pattern
    else:
        rng = np.random.default_rng(seed)
        for _ in range(count):
            noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
            blurred = cv2.GaussianBlur(noise, (0, 0), max(1.0, min(height, width) / 16))
            spread = max(float(np.ptp(blurred)), 1e-6)
            raw.append(((blurred - blurred.min()) / spread * 255).astype(np.uint8))
        source = "generated"
    if not raw:
        raise ValueError(f"--data {pattern}: the shards hold no records")
    return np.stack([prepare_image(image, card) for image in raw]), source
