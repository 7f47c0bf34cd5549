"""Argument checks and the optional output activation shared by the DeconvNet and U-Net builders."""

from __future__ import annotations

import numbers
import os

import keras


def check_num_classes(num_classes) -> int:
    """Returns `num_classes` as an int, or raises ValueError unless it is a positive integer."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def check_input_shape(input_shape) -> tuple:
    """Returns `input_shape` as a tuple `(height, width, channels)` or raises ValueError.

    Height and width may be `None`; the number of channels must be known.
    """
    if input_shape is None or len(tuple(input_shape)) != 3 or input_shape[-1] is None:
        raise ValueError(
            "input_shape must be (height, width, channels) with a known number of channels "
            f"(height and width may be None), got {input_shape!r}"
        )
    shape = tuple(None if d is None else int(d) for d in input_shape)
    if any(d is not None and d < 1 for d in shape):
        raise ValueError(f"input_shape must hold positive sizes, got {input_shape!r}")
    return shape


def check_activation(activation) -> None:
    """Raises ValueError unless `activation` is None or a Keras activation."""
    if activation is None:
        return
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "activation must be None (logits) or a Keras activation such as 'softmax', "
            f"got {activation!r}"
        ) from error


def check_backbone_weights(backbone_weights, input_shape: tuple, source: str) -> None:
    """Raises unless `backbone_weights` is None, "imagenet" or an existing file.

    Args:
        backbone_weights: The builder's `backbone_weights` argument.
        input_shape: The checked input shape (ImageNet weights need 3 channels).
        source: The keras.applications network the weights belong to, for messages.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: Not 3 input channels.
    """
    if backbone_weights is None:
        return
    if backbone_weights != "imagenet" and (
        not isinstance(backbone_weights, (str, os.PathLike)) or not os.path.exists(backbone_weights)
    ):
        raise FileNotFoundError(
            f"backbone_weights={backbone_weights!r}: expected None, 'imagenet' or the path of "
            f"an existing {source} weight file"
        )
    if input_shape[-1] != 3:
        raise ValueError(
            f"backbone_weights={backbone_weights!r} needs 3 input channels, got "
            f"input_shape={input_shape!r}"
        )


def apply_activation(outputs, activation, prefix: str = "score"):
    """Appends the output activation (named `{prefix}_{activation}`) unless it is None."""
    if activation is None:
        return outputs
    name = f"{prefix}_{activation}" if isinstance(activation, str) else f"{prefix}_activation"
    return keras.layers.Activation(activation, name=name)(outputs)
