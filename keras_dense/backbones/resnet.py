"""ResNet-50 and ResNet-101 v1 (keras.applications.ResNet50 / ResNet101), atrous.

Rebuilt layer by layer with the keras.applications layer names, so that the ImageNet weights
load by name. Features: `{4: conv2, 8: conv3, 16: conv4, 32: conv5}` (each stage's last block
output, `conv{n}_block{k}_out`). At output stride 16 (or 8) conv5 (and conv4) lose their
stride and dilate their 3x3 convolutions instead (`AtrousSchedule`): sampled every 2 (or 4)
pixels, the dense output equals the original network's. Inputs are "caffe"-normalised
(`keras.applications.resnet.preprocess_input`).

Option `multi_grid`: per-block multipliers of conv5's dilation rate (DeepLabv3's multi-grid,
e.g. `(1, 2, 4)`); `None` means `(1, 1, 1)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import keras

from keras_dense.backbones.atrous_schedule import AtrousSchedule
from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.pretrained_weights import by_name_loader
from keras_dense.backbones.registry import register_backbone

# Residual blocks per stage (conv2 to conv5).
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_CONSTRUCTORS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
}
_BN_EPSILON = 1.001e-5


def _block(x, filters: int, stride: int, rate: int, conv_shortcut: bool, name: str):
    bn = keras.layers.BatchNormalization
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = bn(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = bn(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=rate, name=f"{name}_2_conv")(
        x
    )
    x = bn(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = bn(epsilon=_BN_EPSILON, name=f"{name}_3_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def resnet_stem(x, schedule: AtrousSchedule, preact: bool = False):
    """conv1 (7x7, stride 2) and pool1 (3x3 max, stride 2) with keras.applications' names.

    ResNet v1 normalises and activates conv1 (`conv1_bn`, `conv1_relu`); v2 (`preact=True`)
    leaves that to its first block's pre-activation.
    """
    schedule.downsample()  # conv1, stride 2
    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    if not preact:
        x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
        x = keras.layers.Activation("relu", name="conv1_relu")(x)
    schedule.downsample()  # pool1, stride 2
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def _resnet(
    x,
    blocks: Sequence[int],
    schedule: AtrousSchedule,
    multi_grid: Sequence[int],
    last_stage: int = 5,
) -> dict[int, object]:
    x = resnet_stem(x, schedule)
    features = {}
    for stage, (filters, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks), start=2):
        if stage > last_stage:
            break
        # The stride sits in the first 1x1 convs of a stage, so the stage's 3x3 convs all come
        # after the (removed) subsampling and all use the rate reached after it.
        stride = schedule.downsample()[0] if stage > 2 else 1
        grid = multi_grid if stage == 5 else (1,) * num_blocks
        for block in range(1, num_blocks + 1):
            x = _block(
                x,
                filters,
                stride=stride if block == 1 else 1,
                rate=schedule.rate * grid[block - 1],
                conv_shortcut=block == 1,
                name=f"conv{stage}_block{block}",
            )
        features[schedule.stride] = x  # a later stage at the same stride replaces it
    return features


def _check_multi_grid(multi_grid, num_blocks: int) -> tuple[int, ...]:
    if multi_grid is None:
        return (1,) * num_blocks
    try:
        grid = tuple(int(g) for g in multi_grid)
    except (TypeError, ValueError):
        grid = ()
    if len(grid) != num_blocks or min(grid) < 1:
        raise ValueError(f"multi_grid={multi_grid!r}: expected {num_blocks} positive integers")
    return grid


def resnet_features(
    x, output_stride: int = 32, multi_grid: Sequence[int] | None = None, *, depth: str
) -> dict[int, object]:
    """The ResNet features `{4: conv2, 8: conv3, 16: conv4, 32: conv5}` of `x` (module doc).

    Args:
        x: Image tensor `(B, H, W, 3)`, "caffe"-normalised.
        output_stride: 8, 16 or 32.
        multi_grid: conv5's per-block rate multipliers (`None`: all 1).
        depth: `"resnet50"` or `"resnet101"`.

    Returns:
        `{stride: the last stage output at that stride}`, up to `output_stride`.
    """
    blocks = RESNET_BLOCKS[depth]
    grid = _check_multi_grid(multi_grid, blocks[3])
    return _resnet(x, blocks, AtrousSchedule(output_stride), grid)


def resnet_trunk(inputs, backbone: str = "resnet50", last_stage: int = 4):
    """Applies a ResNet up to the end of stage `last_stage` (Faster R-CNN's conv4 features).

    Args:
        inputs: Image tensor `(B, H, W, 3)`, "caffe"-normalised.
        backbone: `"resnet50"` or `"resnet101"`.
        last_stage: The last stage built, 2 to 5 (`conv{last_stage}_block*`).

    Returns:
        The output of `conv{last_stage}`'s last block, at output stride `2 ** last_stage`.
    """
    if backbone not in RESNET_BLOCKS:
        raise ValueError(f"backbone={backbone!r}: expected one of {sorted(RESNET_BLOCKS)}")
    if last_stage not in (2, 3, 4, 5):
        raise ValueError(f"last_stage={last_stage!r}: expected 2, 3, 4 or 5")
    blocks = RESNET_BLOCKS[backbone]
    features = _resnet(inputs, blocks, AtrousSchedule(32), (1,) * blocks[3], last_stage)
    return features[2**last_stage]


def register_resnet(
    name: str, constructor: Callable[..., keras.Model], features, normalization: str
) -> Backbone:
    """Registers a ResNet rebuilt with keras.applications names (v1 here, v2 in `resnet_v2`).

    Args:
        name: Registry name (`"resnet50"`).
        constructor: The keras.applications constructor whose weights load by layer name.
        features: The family's `features(x, output_stride, multi_grid=None)`.
        normalization: The input normalisation of the pretrained weights.

    Returns:
        The registered `Backbone`: output strides 8, 16 and 32 (default 32), option
        `multi_grid`.
    """
    return register_backbone(
        Backbone(
            name=name,
            features=features,
            output_strides=(8, 16, 32),
            default_output_stride=32,
            normalization=normalization,
            weights_source=f"keras.applications.{constructor.__name__}",
            load_weights=by_name_loader(constructor, features, 32),
            options=("multi_grid",),
        )
    )


for _name, _constructor in _CONSTRUCTORS.items():
    register_resnet(_name, _constructor, functools.partial(resnet_features, depth=_name), "caffe")
