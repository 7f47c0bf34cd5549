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

Detectors use a second form, `strided_compact_trunk` (family `"compact_strided"`): each stage
halves the resolution with a stride-2 3 x 3 conv followed by a second 3 x 3 conv (both with
batch norm and ReLU); stage `i` (0-based) has `width * min(2 ** i, 4)` channels and
`log2(stride)` stages give features at stride 8 or 16, the strides of the RPN anchors and RoI
pooling. It keeps no dilation, so its receptive field grows with the stride, as a detector's
should. Neither is a paper's network, and neither is ever pretrained; both are for small images
and CPU experiments. The registered families are `"compact"` ("tf" inputs, option `width`) and
`"compact_strided"` ("caffe", the detection pipelines' default; option `width`).
"""

from __future__ import annotations

import keras

from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.registry import register_backbone

COMPACT_OUTPUT_STRIDES = (1, 2, 4, 8)
COMPACT_DEFAULT_WIDTH = 32
# Width multiplier of each block; a pooling follows each block but the last.
COMPACT_BLOCK_WIDTHS = (1, 2, 4, 4)
COMPACT_CONVS_PER_BLOCK = 2


def _check_width(width, argument: str = "width") -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{argument}={width!r}: expected a positive int")


def check_compact_arguments(output_stride: int, width: int) -> None:
    """Raises ValueError for an output stride or width the compact backbone does not take."""
    if isinstance(output_stride, bool) or output_stride not in COMPACT_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride={output_stride!r} for backbone='compact': expected one of "
            f"{list(COMPACT_OUTPUT_STRIDES)}"
        )
    _check_width(width)


def compact_features(
    x, output_stride: int = 4, width: int = COMPACT_DEFAULT_WIDTH
) -> dict[int, object]:
    """The compact backbone's features: each block's output at its stride (`{1, 2, 4, 8}`).

    Args:
        x: Input tensor `(B, H, W, C)`, normalised (any mode: the first convolution is followed
            by batch normalisation).
        output_stride: 1, 2, 4 (default) or 8: the stride of the deepest features.
        width: Filters of the first block (`w`); the blocks have `w, 2w, 4w, 4w`.

    Returns:
        `{stride: the last block output at that stride}`; the deepest is
        `(B, ceil(H / s), ceil(W / s), 4 w)` at `s = output_stride`.

    Raises:
        ValueError: `output_stride` or `width` is invalid.
    """
    check_compact_arguments(output_stride, width)
    features = {}
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
        features[stride] = x
        if b == len(COMPACT_BLOCK_WIDTHS):
            break
        if stride < output_stride:
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"compact{b}_pool")(x)
            stride *= 2
        else:
            rate *= 2
    return features


def compact_backbone(x, output_stride: int = 4, width: int = COMPACT_DEFAULT_WIDTH):
    """The deepest features of `compact_features` (same arguments), at `output_stride`."""
    return compact_features(x, output_stride, width)[output_stride]


STRIDED_COMPACT_STRIDES = (8, 16)


def check_strided_compact_options(width: int, stride: int) -> None:
    """Raises ValueError naming `backbone_width` / `feature_stride` when either is bad."""
    _check_width(width, "backbone_width")
    if isinstance(stride, bool) or stride not in STRIDED_COMPACT_STRIDES:
        raise ValueError(
            f"feature_stride={stride!r}: expected one of {list(STRIDED_COMPACT_STRIDES)}"
        )


def strided_compact_features(x, output_stride: int = 16, width: int = 32) -> dict[int, object]:
    """The strided compact trunk's features: each stage's output, `{2: ..., 4: ..., ...}`.

    Args:
        x: Image tensor `(B, H, W, C)` (any normalization; the first batch norm rescales it).
        output_stride: 8 or 16: the stride of the deepest features.
        width: Channels of the first stage (32); later stages double it up to 4x.

    Returns:
        `{stride: features}`; stage `n` (1-based) gives `(B, ceil(H / 2**n), ceil(W / 2**n),
        width * min(2 ** (n - 1), 4))`.

    Raises:
        ValueError: Bad `width` or `output_stride`.
    """
    _check_width(width)
    if isinstance(output_stride, bool) or output_stride not in STRIDED_COMPACT_STRIDES:
        raise ValueError(
            f"output_stride={output_stride!r} for backbone='compact_strided': expected one of "
            f"{list(STRIDED_COMPACT_STRIDES)}"
        )
    features = {}
    for stage in range(output_stride.bit_length() - 1):
        filters = width * min(2**stage, 4)
        for conv, strides in (("down", 2), ("conv", 1)):
            prefix = f"compact{stage + 1}_{conv}"
            x = keras.layers.Conv2D(
                filters, 3, strides=strides, padding="same", use_bias=False, name=prefix
            )(x)
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        features[2 ** (stage + 1)] = x
    return features


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
        ValueError: Bad `width` (named `backbone_width`) or `stride` (`feature_stride`).
    """
    check_strided_compact_options(width, stride)
    return strided_compact_features(images, stride, width)[stride]


COMPACT = register_backbone(
    Backbone(
        name="compact",
        features=compact_features,
        output_strides=COMPACT_OUTPUT_STRIDES,
        default_output_stride=4,
        normalization="tf",
        options=("width",),
        input_channels=None,
    )
)
COMPACT_STRIDED = register_backbone(
    Backbone(
        name="compact_strided",
        features=strided_compact_features,
        output_strides=STRIDED_COMPACT_STRIDES,
        default_output_stride=16,
        normalization="caffe",
        options=("width",),
        input_channels=None,
    )
)
