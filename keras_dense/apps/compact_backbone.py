"""A compact conv-BN-ReLU trunk for detectors trained from scratch on small images.

Intended for CPU experiments and small images (the shapes set at 128 px), where VGG16 or
ResNet-50 from scratch learn far too slowly: each stage halves the resolution with a
stride-2 3 x 3 conv and adds a second 3 x 3 conv, both followed by batch norm and ReLU.
Stage `i` (0-based) has `width * min(2 ** i, 4)` channels; `log2(stride)` stages give
features at output stride 8 or 16. Not a paper's network, and never pretrained.
"""

from __future__ import annotations

import keras

COMPACT_STRIDES = (8, 16)


def check_compact_options(width: int, stride: int) -> None:
    """Raises ValueError naming `backbone_width` / `feature_stride` when either is bad."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"backbone_width={width!r}: expected a positive int")
    if isinstance(stride, bool) or stride not in COMPACT_STRIDES:
        raise ValueError(f"feature_stride={stride!r}: expected one of {list(COMPACT_STRIDES)}")


def compact_trunk(images, width: int = 32, stride: int = 16):
    """Applies the compact trunk (module docstring) to an image tensor.

    Args:
        images: Image tensor `(B, H, W, C)` (any normalization; the first batch norm
            rescales it).
        width: Channels of the first stage (32); later stages double it up to 4x.
        stride: Output stride, 8 or 16.

    Returns:
        The features `(B, ceil(H / stride), ceil(W / stride), width * min(2 ** (n - 1), 4))`,
        n = log2(stride).

    Raises:
        ValueError: Bad `width` or `stride`.
    """
    check_compact_options(width, stride)
    x = images
    for stage in range(stride.bit_length() - 1):
        filters = width * min(2**stage, 4)
        for conv, strides in (("down", 2), ("conv", 1)):
            prefix = f"compact{stage + 1}_{conv}"
            x = keras.layers.Conv2D(
                filters, 3, strides=strides, padding="same", use_bias=False, name=prefix
            )(x)
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    return x
