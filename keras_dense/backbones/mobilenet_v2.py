"""MobileNetV2 (keras.applications.MobileNetV2, alpha=1), atrous.

Rebuilt layer by layer with the keras.applications layer names, so that the ImageNet weights
load by name. Features: the last block output at each stride, `{4: block_2_add,
8: block_5_add, 16: block_12_add, 32: block_16_project_BN}`; the 1280-channel `Conv_1` of the
classifier is left out (as DeepLab does). At output stride 16 (or 8) the last stride-2
depthwise convolutions keep the resolution and dilate instead, with the window placement of
keras.applications' asymmetric padding, so the dense output sampled every 2 (or 4) pixels
equals the original's. Inputs are "tf"-normalised ([-1, 1]).
"""

from __future__ import annotations

import keras

from keras_dense.backbones.atrous_schedule import AtrousSchedule
from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.pretrained_weights import by_name_loader
from keras_dense.backbones.registry import register_backbone

# (output filters, stride, expansion) of the 17 inverted residual blocks.
_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6),
    (24, 1, 6),
    (32, 2, 6),
    (32, 1, 6),
    (32, 1, 6),
    (64, 2, 6),
    (64, 1, 6),
    (64, 1, 6),
    (64, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (160, 2, 6),
    (160, 1, 6),
    (160, 1, 6),
    (320, 1, 6),
)


def _bn(name: str):
    return keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=name)


def _pad_top(size: int | None, rate: int) -> int:
    """Top (or left) zero padding keras.applications puts before a stride-2 3x3 conv.

    `imagenet_utils.correct_pad` pads (0, 1) for even or unknown sizes and (1, 1) for odd ones.
    `size` is the (dense) size seen here; with `rate` > 1 the original network saw
    `ceil(size / rate)` there (its static sizes halve rounding up).
    """
    if size is None:
        return 0
    return 1 if -(-size // rate) % 2 == 1 else 0


def _inverted_res_block(x, filters, stride, expansion, block_id, schedule: AtrousSchedule):
    inputs = x
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = keras.layers.Conv2D(
            expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand"
        )(x)
        x = _bn(f"{prefix}expand_BN")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)

    if stride == 2:
        new_stride, rate = schedule.downsample()
        top_h, top_w = _pad_top(x.shape[1], rate), _pad_top(x.shape[2], rate)
        if new_stride == 2:
            padding = ((top_h, 1), (top_w, 1))
        else:
            # Dense version: the same window placement as the original (`top` rows before the
            # centre), dilated by `rate`, output size unchanged.
            padding = ((top_h * rate, (2 - top_h) * rate), (top_w * rate, (2 - top_w) * rate))
        x = keras.layers.ZeroPadding2D(padding, name=f"{prefix}pad")(x)
        x = keras.layers.DepthwiseConv2D(
            3,
            strides=new_stride,
            dilation_rate=rate,
            use_bias=False,
            padding="valid",
            name=f"{prefix}depthwise",
        )(x)
    else:
        x = keras.layers.DepthwiseConv2D(
            3,
            dilation_rate=schedule.rate,
            use_bias=False,
            padding="same",
            name=f"{prefix}depthwise",
        )(x)
    x = _bn(f"{prefix}depthwise_BN")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _bn(f"{prefix}project_BN")(x)
    if in_channels == filters and stride == 1:
        x = keras.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def mobilenet_v2_features(x, output_stride: int = 32) -> dict[int, object]:
    """The MobileNetV2 features of `x` (module docstring), up to `output_stride` (8, 16, 32)."""
    schedule = AtrousSchedule(output_stride)
    schedule.downsample()  # Conv1, stride 2
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    x = _bn("bn_Conv1")(x)
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(x)
    features = {}
    for block_id, (filters, stride, expansion) in enumerate(_BLOCKS):
        x = _inverted_res_block(x, filters, stride, expansion, block_id, schedule)
        if schedule.stride >= 4:
            features[schedule.stride] = x
    return features


MOBILENET_V2 = register_backbone(
    Backbone(
        name="mobilenetv2",
        features=mobilenet_v2_features,
        output_strides=(8, 16, 32),
        default_output_stride=32,
        normalization="tf",
        weights_source="keras.applications.MobileNetV2",
        load_weights=by_name_loader(keras.applications.MobileNetV2, mobilenet_v2_features, 32),
    )
)
