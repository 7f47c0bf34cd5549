"""Input normalisations matching the backbones' `keras.applications` `preprocess_input`.

| mode | what it does | used by |
|---|---|---|
| `"caffe"` | RGB -> BGR, subtract the ImageNet BGR mean (0-255 scale) | VGG16, ResNet50/101 |
| `"torch"` | scale to [0, 1], subtract the ImageNet mean, divide by its std | DenseNet, ... |
| `"tf"` | scale to [-1, 1] | Xception, MobileNetV2 |
| `None` | raw 0-255 floats | models that normalise inside |

Every mode is split into a mean (subtracted first, on the 0-255 scale) and a final scaling.
The input pipelines subtract the mean before geometric augmentation, so that padded pixels,
which are 0, equal the mean pixel after normalisation (as in DeepLab).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MODES = ("caffe", "torch", "tf", None)
_IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)
_TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
_TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0


def check_mode(normalization: str | None) -> None:
    """Raises ValueError for an unknown normalisation name."""
    if normalization not in MODES:
        raise ValueError(f"normalization={normalization!r}: expected one of {MODES}")


def mean_pixel(normalization: str | None, channels: int = 3) -> np.ndarray:
    """The per-channel mean (RGB order, 0-255 scale) that the mode subtracts."""
    check_mode(normalization)
    mean = {
        "caffe": _IMAGENET_MEAN_RGB,
        "torch": _TORCH_MEAN_RGB,
        "tf": np.full(3, 127.5, np.float32),
        None: np.zeros(3, np.float32),
    }[normalization]
    return mean if channels == 3 else np.full(channels, mean.mean(), np.float32)


def finish(centred: tf.Tensor, normalization: str | None) -> tf.Tensor:
    """Applies the mode's scaling to an image from which `mean_pixel` was subtracted.

    Args:
        centred: (..., H, W, C) float32 image minus the mean pixel, 0-255 scale, RGB.
        normalization: The mode.

    Returns:
        The normalised image.
    """
    check_mode(normalization)
    channels = centred.shape[-1]
    if normalization == "caffe":
        # tf.reverse: strided slicing with a negative step is ~10x slower on CPU.
        return tf.reverse(centred, axis=[-1]) if channels == 3 else centred
    if normalization == "torch":
        std = _TORCH_STD_RGB if channels == 3 else np.full(channels, _TORCH_STD_RGB.mean())
        return centred / std
    if normalization == "tf":
        return centred / 127.5
    return centred


def normalize(image: tf.Tensor, normalization: str | None) -> tf.Tensor:
    """Normalises a 0-255 RGB image (any float or integer dtype) for a backbone.

    Args:
        image: (..., H, W, C) image.
        normalization: One of `MODES`.

    Returns:
        float32 normalised image.
    """
    image = tf.cast(image, tf.float32)
    return finish(image - mean_pixel(normalization, image.shape[-1]), normalization)
