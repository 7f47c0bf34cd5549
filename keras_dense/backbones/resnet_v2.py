"""ResNet-50 and ResNet-101 v2 (keras.applications.ResNet50V2 / ResNet101V2), atrous.

Rebuilt layer by layer with the keras.applications layer names, so that the ImageNet weights
load by name. ResNet v2 is pre-activation: each block starts with batch norm and ReLU
(`{block}_preact_bn` / `_preact_relu`), its output `{block}_out` is a plain sum, and the
network ends with `post_bn` / `post_relu`. A stage's stride sits in its LAST block (the 3x3
convolution, with a stride-2 1x1 max pooling on the identity shortcut); conv5 has no stride.

Features, the last map at each stride: `{4: conv2_block3_preact_relu, 8:
conv3_block4_preact_relu, 16: conv4_block6_preact_relu (conv4_block23_... for ResNet-101),
32: post_relu}` (the normalised, activated output of a stage's second-to-last block, which
feeds the stage's strided last block). At output stride 16 (or 8) the last block of conv4 (and
conv3) keeps its resolution and every later 3x3 convolution is dilated (`AtrousSchedule`):
sampled every 2 (or 4) pixels, the dense output equals the original network's exactly.
Inputs are "tf"-normalised ([-1, 1], `keras.applications.resnet_v2.preprocess_input`).

Option `multi_grid`: per-block multipliers of conv5's dilation rate, as for ResNet v1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras

from keras_dense.backbones.atrous_schedule import AtrousSchedule
from keras_dense.backbones.resnet import _check_multi_grid, register_resnet, resnet_stem

# Residual blocks per stage (conv2 to conv5).
RESNET_V2_BLOCKS = {"resnet50v2": (3, 4, 6, 3), "resnet101v2": (3, 4, 23, 3)}
_CONSTRUCTORS = {
    "resnet50v2": keras.applications.ResNet50V2,
    "resnet101v2": keras.applications.ResNet101V2,
}
_BN_EPSILON = 1.001e-5


def _block(x, filters: int, stride: int, rate: int, conv_shortcut: bool, name: str):
    """One pre-activation bottleneck; returns `(output, preactivation)`."""
    bn = keras.layers.BatchNormalization
    preact = bn(epsilon=_BN_EPSILON, name=f"{name}_preact_bn")(x)
    preact = keras.layers.Activation("relu", name=f"{name}_preact_relu")(preact)
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_0_conv")(preact)
    elif stride > 1:
        # Unnamed in keras.applications (no weights).
        shortcut = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    else:
        shortcut = x
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(preact)
    x = bn(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    # keras.applications pads 1 and convolves "valid"; dilated, the padding grows with the rate
    # so that the dense output keeps the input's size and the original's window placement.
    x = keras.layers.ZeroPadding2D(((rate, rate), (rate, rate)), name=f"{name}_2_pad")(x)
    x = keras.layers.Conv2D(
        filters, 3, strides=stride, dilation_rate=rate, use_bias=False, name=f"{name}_2_conv"
    )(x)
    x = bn(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    return keras.layers.Add(name=f"{name}_out")([shortcut, x]), preact


def _resnet_v2(
    x, blocks: Sequence[int], schedule: AtrousSchedule, multi_grid: Sequence[int]
) -> dict[int, object]:
    x = resnet_stem(x, schedule, preact=True)
    features = {}
    for stage, (filters, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks), start=2):
        for block in range(1, num_blocks + 1):
            strided = block == num_blocks and stage < 5
            before = schedule.stride
            stride, rate = schedule.downsample() if strided else (1, schedule.rate)
            if stage == 5:
                rate *= multi_grid[block - 1]
            x, preact = _block(
                x, filters, stride, rate, conv_shortcut=block == 1, name=f"conv{stage}_block{block}"
            )
            if strided:
                features[before] = preact
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name="post_bn")(x)
    features[schedule.stride] = keras.layers.Activation("relu", name="post_relu")(x)
    return features


def resnet_v2_features(
    x, output_stride: int = 32, multi_grid: Sequence[int] | None = None, *, depth: str
) -> dict[int, object]:
    """The ResNet v2 features `{4: ..., 8: ..., 16: ..., 32: post_relu}` of `x` (module doc).

    Args:
        x: Image tensor `(B, H, W, 3)`, "tf"-normalised.
        output_stride: 8, 16 or 32.
        multi_grid: conv5's per-block rate multipliers (`None`: all 1).
        depth: `"resnet50v2"` or `"resnet101v2"`.

    Returns:
        `{stride: the last feature map at that stride}`, up to `output_stride` (there
        `post_relu`).
    """
    blocks = RESNET_V2_BLOCKS[depth]
    grid = _check_multi_grid(multi_grid, blocks[3])
    return _resnet_v2(x, blocks, AtrousSchedule(output_stride), grid)


for _name, _constructor in _CONSTRUCTORS.items():
    register_resnet(_name, _constructor, functools.partial(resnet_v2_features, depth=_name), "tf")
