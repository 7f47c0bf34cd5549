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
