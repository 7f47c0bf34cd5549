"""A compact convolutional backbone for small images, trained from scratch.

ImageNet trunks reach their last features at stride 16 or 32: on a 64-px image VGG16's
`conv5_3` is a 4x4 map, too coarse to point within a few pixels, and they are far too large to
train from scratch on a CPU. This backbone is four blocks of two `3x3 conv -> BN -> ReLU`
layers (widths `w, 2w, 4w, 4w`), with a 2x2 max pooling (stride 2) after each of the first
three blocks: output stride 8 with every pooling. A smaller `output_stride` removes the last
poolings and dilates every later convolution by the stride removed (DeepLab's atrous
algorithm), so the receptive field stays about the same, 62-68 px at every output stride
(64 px at the default 4: pooling 3 removed, block 4 dilated by 2).

Layers are named `compact{b}_{i}_conv` / `_bn` / `_relu` and `compact{b}_pool`. Poolings are
`padding="same"`, so a feature cell `i` at stride `s` covers the input pixels `[s i, s i + s)`
and its centre is `s i + (s - 1) / 2`: the half-pixel convention of bilinear resizing, which
`keras_dense.localization.class_maps` relies on to upsample the maps in place.

Detectors use a second form, `strided_compact_trunk`: each stage halves the resolution with a
stride-2 3 x 3 conv followed by a second 3 x 3 conv (both with batch norm and ReLU); stage `i`
(0-based) has `width * min(2 ** i, 4)` channels and `log2(stride)` stages give features at
stride 8 or 16, the strides of the RPN anchors and RoI pooling. It keeps no dilation, so its
receptive field grows with the stride, as a detector's should. Neither is a paper's network, and
neither is ever pretrained; both are for small images and CPU experiments.
"""

from __future__ import annotations

import keras

COMPACT_OUTPUT_STRIDES = (1, 2, 4, 8)
COMPACT_DEFAULT_WIDTH = 32
# Width multiplier of each block; a pooling follows each block but the last.
COMPACT_BLOCK_WIDTHS = (1, 2, 4, 4)
COMPACT_CONVS_PER_BLOCK = 2


def check_compact_arguments(output_stride: int, width: int) -> None:
    """Raises ValueError for an output stride or width the compact backbone does not take."""
    if isinstance(output_stride, bool) or output_stride not in COMPACT_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride={output_stride!r} for backbone='compact': expected one of "
            f"{list(COMPACT_OUTPUT_STRIDES)}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")


def compact_backbone(x, output_stride: int = 4, width: int = COMPACT_DEFAULT_WIDTH):
    """Applies the compact backbone to `x`.

    Args:
        x: Input tensor `(B, H, W, C)`, normalised (any mode: the first convolution is followed
            by batch normalisation).
        output_stride: 1, 2, 4 (default) or 8: the stride of the output features.
        width: Filters of the first block (`w`); the blocks have `w, 2w, 4w, 4w`.

    Returns:
        The features `(B, ceil(H / s), ceil(W / s), 4 w)` at output stride `s`.

    Raises:
        ValueError: `output_stride` or `width` is invalid.
    """
    check_compact_arguments(output_stride, width)
    stride, rate = 1, 1
    for b, multiplier in enumerate(COMPACT_BLOCK_WIDTHS, start=1):
        for i in range(1, COMPACT_CONVS_PER_BLOCK + 1):
            name = f"compact{b}_{i}"
            x = keras.layers.Conv2D(
                width * multiplier,
                3,
                padding="same",
                dilation_rate=rate,
                use_bias=False,
                name=f"{name}_conv",
            )(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        if b == len(COMPACT_BLOCK_WIDTHS):
            break
        if stride < output_stride:
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"compact{b}_pool")(x)
            stride *= 2
        else:
            rate *= 2
    return x


STRIDED_COMPACT_STRIDES = (8, 16)


def check_strided_compact_options(width: int, stride: int) -> None:
    """Raises ValueError naming `backbone_width` / `feature_stride` when either is bad."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"backbone_width={width!r}: expected a positive int")
    if isinstance(stride, bool) or stride not in STRIDED_COMPACT_STRIDES:
        raise ValueError(
            f"feature_stride={stride!r}: expected one of {list(STRIDED_COMPACT_STRIDES)}"
        )


def strided_compact_trunk(images, width: int = 32, stride: int = 16):
    """Applies the detectors' strided compact trunk (module docstring) to an image tensor.

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
    check_strided_compact_options(width, stride)
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
