"""Xception (keras.applications.Xception), atrous.

Rebuilt layer by layer with the keras.applications layer names, so that the ImageNet weights
load by name. keras.applications leaves the residual 1x1 convolutions and their batch norms
unnamed; here they are `block{2,3,4,13}_residual_conv` / `_residual_bn`, matched by order.
Features: the last map at each stride, `{4: block3_sepconv2_bn, 8: block4_sepconv2_bn,
16: block13_sepconv2_bn, 32: block14_sepconv2_act}` (a downsampling block's separable convs
run before its pooling). At output stride 16 (or 8) the last downsampling blocks keep their
resolution and the later separable convs dilate; the stride-1 max poolings are not dilated
(as DeepLab-v1's VGG), so the dense features are close to, not exactly, the original's.
Inputs are "tf"-normalised ([-1, 1]).
"""

from __future__ import annotations

import keras

from keras_dense.backbones.atrous_schedule import AtrousSchedule
from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.pretrained_weights import WeightSource, by_name_loader
from keras_dense.backbones.registry import register_backbone

XCEPTION_RESIDUAL_BLOCKS = (2, 3, 4, 13)


def _sepconv_bn(x, filters: int, rate: int, name: str, relu_name: str | None):
    if relu_name is not None:
        x = keras.layers.Activation("relu", name=relu_name)(x)
    x = keras.layers.SeparableConv2D(
        filters, 3, padding="same", dilation_rate=rate, use_bias=False, name=name
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _downsampling_block(
    x, block: int, filters: tuple[int, int], schedule: AtrousSchedule, first_relu: bool, features
):
    # The separable convs run before the pooling, at the rate before this block's stride.
    before = schedule.stride
    stride, rate = schedule.downsample()
    residual = keras.layers.Conv2D(
        filters[1],
        1,
        strides=stride,
        padding="same",
        use_bias=False,
        name=f"block{block}_residual_conv",
    )(x)
    residual = keras.layers.BatchNormalization(name=f"block{block}_residual_bn")(residual)
    p = f"block{block}"
    x = _sepconv_bn(
        x, filters[0], rate, f"{p}_sepconv1", f"{p}_sepconv1_act" if first_relu else None
    )
    x = _sepconv_bn(x, filters[1], rate, f"{p}_sepconv2", f"{p}_sepconv2_act")
    features[before] = x
    x = keras.layers.MaxPooling2D(3, strides=stride, padding="same", name=f"{p}_pool")(x)
    x = keras.layers.Add(name=f"{p}_add")([x, residual])
    features[schedule.stride] = x
    return x


def xception_features(x, output_stride: int = 32) -> dict[int, object]:
    """The Xception features of `x` (module docstring), up to `output_stride` (8, 16, 32)."""
    schedule = AtrousSchedule(output_stride)
    features = {}
    schedule.downsample()  # block1_conv1, stride 2
    x = keras.layers.Conv2D(32, 3, strides=2, use_bias=False, name="block1_conv1")(x)
    x = keras.layers.BatchNormalization(name="block1_conv1_bn")(x)
    x = keras.layers.Activation("relu", name="block1_conv1_act")(x)
    x = keras.layers.Conv2D(64, 3, use_bias=False, name="block1_conv2")(x)
    x = keras.layers.BatchNormalization(name="block1_conv2_bn")(x)
    x = keras.layers.Activation("relu", name="block1_conv2_act")(x)

    x = _downsampling_block(x, 2, (128, 128), schedule, False, features)
    x = _downsampling_block(x, 3, (256, 256), schedule, True, features)
    x = _downsampling_block(x, 4, (728, 728), schedule, True, features)

    for block in range(5, 13):
        residual = x
        p = f"block{block}"
        for i in (1, 2, 3):
            x = _sepconv_bn(x, 728, schedule.rate, f"{p}_sepconv{i}", f"{p}_sepconv{i}_act")
        x = keras.layers.Add(name=f"{p}_add")([x, residual])
        features[schedule.stride] = x

    x = _downsampling_block(x, 13, (728, 1024), schedule, True, features)
    x = _sepconv_bn(x, 1536, schedule.rate, "block14_sepconv1", None)
    x = keras.layers.Activation("relu", name="block14_sepconv1_act")(x)
    x = _sepconv_bn(x, 2048, schedule.rate, "block14_sepconv2", None)
    features[schedule.stride] = keras.layers.Activation("relu", name="block14_sepconv2_act")(x)
    return {stride: tensor for stride, tensor in features.items() if stride >= 4}


def residual_names(source: WeightSource) -> dict[str, str]:
    """Our residual conv / BN names -> the unnamed keras.applications layers, by order.

    keras.applications names every other Xception layer `block...`; of the unnamed ones, the
    residual convolutions hold one weight (no bias) and their batch norms four.
    """
    unnamed = [name for name in source.shapes if not name.startswith("block")]
    convs = [name for name in unnamed if len(source.shapes[name]) == 1]
    norms = [name for name in unnamed if len(source.shapes[name]) == 4]
    mapping = {}
    for block, conv, norm in zip(XCEPTION_RESIDUAL_BLOCKS, convs, norms):
        mapping[f"block{block}_residual_conv"] = conv
        mapping[f"block{block}_residual_bn"] = norm
    return mapping


XCEPTION = register_backbone(
    Backbone(
        name="xception",
        features=xception_features,
        output_strides=(8, 16, 32),
        default_output_stride=32,
        normalization="tf",
        weights_source="keras.applications.Xception",
        load_weights=by_name_loader(
            keras.applications.Xception, xception_features, 32, residual_names
        ),
    )
)
