"""Atrous (dilated) versions of keras.applications backbones for DeepLab.

keras.applications networks always end at output stride 32. DeepLab's "atrous algorithm"
removes the stride of the last one or two downsampling stages and dilates every later
convolution by the stride that was removed, so that the network computes the same features
as the original one but densely: at output stride 16 (or 8) instead of 32. With the same
weights, the dilated network's output sampled every 2 (or 4) pixels equals the original's
output (exactly for ResNet and for MobileNetV2; Xception's stride-1 max poolings are not
dilated, as in DeepLab-v1's VGG).

Each topology below is rebuilt layer by layer with the layer names of keras.applications, so
the ImageNet weights load by name (`load_backbone_weights`). Xception's residual 1x1 convs and
their batch norms are unnamed in keras.applications; here they are named
`block{2,3,4,13}_residual_conv` / `_residual_bn` and matched by order.

Inputs must be preprocessed as the keras.applications network expects: `"caffe"` mode for
ResNet (`keras.applications.resnet.preprocess_input`), `"tf"` mode ([-1, 1]) for Xception and
MobileNetV2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import keras

from keras_dense.apps.backbone_weights import resolve_source_model, transfer_weights

# keras.applications constructor and number of residual blocks per stage (ResNet only).
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "xception": keras.applications.Xception,
    "mobilenetv2": keras.applications.MobileNetV2,
}
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
XCEPTION_RESIDUAL_BLOCKS = (2, 3, 4, 13)
OUTPUT_STRIDES = (8, 16, 32)


class AtrousSchedule:
    """Tracks the output stride and the dilation rate while a backbone is built.

    Args:
        output_stride: The wanted output stride (8, 16 or 32).
    """

    def __init__(self, output_stride: int):
        self.output_stride = output_stride
        self.stride = 1
        self.rate = 1

    def downsample(self, stride: int = 2) -> tuple[int, int]:
        """Called where the original network downsamples by `stride`.

        Returns:
            `(stride, rate)` for that layer: the original stride and rate 1 while the output
            stride is not reached; afterwards stride 1 and the current dilation rate, and the
            rate of all later layers is multiplied by `stride`.
        """
        if self.stride >= self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.stride *= stride
        return stride, self.rate


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r}: expected one of {sorted(BACKBONES)}")


# ----------------------------------------------------------------------------------------
# ResNet v1 (keras.applications.ResNet50 / ResNet101)
# ----------------------------------------------------------------------------------------
_RESNET_BN_EPSILON = 1.001e-5


def _resnet_block(x, filters: int, stride: int, rate: int, conv_shortcut: bool, name: str):
    bn = keras.layers.BatchNormalization
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = bn(epsilon=_RESNET_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = bn(epsilon=_RESNET_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=rate, name=f"{name}_2_conv")(
        x
    )
    x = bn(epsilon=_RESNET_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = bn(epsilon=_RESNET_BN_EPSILON, name=f"{name}_3_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _resnet(
    x,
    blocks: Sequence[int],
    schedule: AtrousSchedule,
    multi_grid: Sequence[int],
    last_stage: int = 5,
):
    schedule.downsample()  # conv1, stride 2
    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_RESNET_BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    schedule.downsample()  # pool1, stride 2
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    low_level = None
    for stage, (filters, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks), start=2):
        if stage > last_stage:
            break
        # The stride sits in the first 1x1 convs of a stage, so the stage's 3x3 convs all come
        # after the (removed) subsampling and all use the rate reached after it.
        stride = schedule.downsample()[0] if stage > 2 else 1
        grid = multi_grid if stage == 5 else (1,) * num_blocks
        for block in range(1, num_blocks + 1):
            x = _resnet_block(
                x,
                filters,
                stride=stride if block == 1 else 1,
                rate=schedule.rate * grid[block - 1],
                conv_shortcut=block == 1,
                name=f"conv{stage}_block{block}",
            )
        if stage == 2:
            low_level = x  # conv2_block3_out, output stride 4
    return x, low_level


# ----------------------------------------------------------------------------------------
# Xception (keras.applications.Xception)
# ----------------------------------------------------------------------------------------
def _sepconv_bn(x, filters: int, rate: int, name: str, relu_name: str | None):
    if relu_name is not None:
        x = keras.layers.Activation("relu", name=relu_name)(x)
    x = keras.layers.SeparableConv2D(
        filters, 3, padding="same", dilation_rate=rate, use_bias=False, name=name
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _xception_downsampling_block(
    x, block: int, filters: tuple[int, int], schedule: AtrousSchedule, first_relu: bool
):
    # The separable convs run before the pooling, at the rate before this block's stride.
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
    before_pool = x
    x = keras.layers.MaxPooling2D(3, strides=stride, padding="same", name=f"{p}_pool")(x)
    x = keras.layers.Add(name=f"{p}_add")([x, residual])
    return x, before_pool


def _xception(x, schedule: AtrousSchedule):
    schedule.downsample()  # block1_conv1, stride 2
    x = keras.layers.Conv2D(32, 3, strides=2, use_bias=False, name="block1_conv1")(x)
    x = keras.layers.BatchNormalization(name="block1_conv1_bn")(x)
    x = keras.layers.Activation("relu", name="block1_conv1_act")(x)
    x = keras.layers.Conv2D(64, 3, use_bias=False, name="block1_conv2")(x)
    x = keras.layers.BatchNormalization(name="block1_conv2_bn")(x)
    x = keras.layers.Activation("relu", name="block1_conv2_act")(x)

    x, _ = _xception_downsampling_block(x, 2, (128, 128), schedule, first_relu=False)
    # The last features before the stride-8 pooling: output stride 4, 256 channels.
    x, low_level = _xception_downsampling_block(x, 3, (256, 256), schedule, first_relu=True)
    x, _ = _xception_downsampling_block(x, 4, (728, 728), schedule, first_relu=True)

    for block in range(5, 13):
        residual = x
        p = f"block{block}"
        for i in (1, 2, 3):
            x = _sepconv_bn(x, 728, schedule.rate, f"{p}_sepconv{i}", f"{p}_sepconv{i}_act")
        x = keras.layers.Add(name=f"{p}_add")([x, residual])

    x, _ = _xception_downsampling_block(x, 13, (728, 1024), schedule, first_relu=True)
    x = _sepconv_bn(x, 1536, schedule.rate, "block14_sepconv1", None)
    x = keras.layers.Activation("relu", name="block14_sepconv1_act")(x)
    x = _sepconv_bn(x, 2048, schedule.rate, "block14_sepconv2", None)
    x = keras.layers.Activation("relu", name="block14_sepconv2_act")(x)
    return x, low_level


# ----------------------------------------------------------------------------------------
# MobileNetV2 (keras.applications.MobileNetV2, alpha=1)
# ----------------------------------------------------------------------------------------
# (output filters, stride, expansion) of the 17 inverted residual blocks.
_MOBILENETV2_BLOCKS = (
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


def _mobilenet_bn(name: str):
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
        x = _mobilenet_bn(f"{prefix}expand_BN")(x)
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
    x = _mobilenet_bn(f"{prefix}depthwise_BN")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _mobilenet_bn(f"{prefix}project_BN")(x)
    if in_channels == filters and stride == 1:
        x = keras.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def _mobilenetv2(x, schedule: AtrousSchedule):
    schedule.downsample()  # Conv1, stride 2
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    x = _mobilenet_bn("bn_Conv1")(x)
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(x)
    low_level = None
    for block_id, (filters, stride, expansion) in enumerate(_MOBILENETV2_BLOCKS):
        x = _inverted_res_block(x, filters, stride, expansion, block_id, schedule)
        if block_id == 2:
            low_level = x  # block_2_add, output stride 4, 24 channels
    # DeepLab uses the 320-channel block_16 output; the final 1280-channel `Conv_1` of the
    # classifier is left out.
    return x, low_level


# ----------------------------------------------------------------------------------------
# Public helpers
# ----------------------------------------------------------------------------------------
def atrous_backbone(
    inputs,
    backbone: str = "resnet50",
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
):
    """Applies an atrous backbone to `inputs`.

    Args:
        inputs: Image tensor `(B, H, W, 3)`, preprocessed for the keras.applications network.
        backbone: `"resnet50"`, `"resnet101"`, `"xception"` or `"mobilenetv2"`.
        output_stride: 8, 16 (dilated) or 32 (the unchanged keras.applications topology).
        multi_grid: ResNet only: per-block multipliers of the dilation rate in the last stage
            (DeepLabv3's multi-grid, e.g. `(1, 2, 4)`). `None` means `(1, 1, 1)`.

    Returns:
        `(features, low_level)`: the last features (output stride `output_stride`) and the
        stride-4 features used by the DeepLabv3+ decoder.
    """
    _check_backbone(backbone)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride={output_stride!r}: expected one of {OUTPUT_STRIDES}")
    if multi_grid is not None and not backbone.startswith("resnet"):
        raise ValueError(f"multi_grid={multi_grid!r}: only supported by the ResNet backbones")
    schedule = AtrousSchedule(output_stride)
    if backbone in RESNET_BLOCKS:
        blocks = RESNET_BLOCKS[backbone]
        grid = tuple(int(g) for g in multi_grid) if multi_grid is not None else (1,) * blocks[3]
        if len(grid) != blocks[3] or min(grid) < 1:
            raise ValueError(f"multi_grid={multi_grid!r}: expected {blocks[3]} positive integers")
        return _resnet(inputs, blocks, schedule, grid)
    if backbone == "xception":
        return _xception(inputs, schedule)
    return _mobilenetv2(inputs, schedule)


def resnet_trunk(inputs, backbone: str = "resnet50", last_stage: int = 4):
    """Applies a ResNet up to the end of stage `last_stage` (Faster R-CNN's conv4 features).

    The layers are those of `atrous_backbone` (keras.applications names, so that
    `load_backbone_weights` fills them); stage 4 ends at output stride 16.

    Args:
        inputs: Image tensor `(B, H, W, 3)`, "caffe"-preprocessed.
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
    schedule = AtrousSchedule(32)
    return _resnet(inputs, blocks, schedule, (1,) * blocks[3], last_stage)[0]


def atrous_backbone_model(
    backbone: str = "resnet50",
    output_stride: int = 16,
    input_shape: tuple = (None, None, 3),
    multi_grid: Sequence[int] | None = None,
) -> keras.Model:
    """The atrous backbone as a model with outputs `[low_level, features]`.

    Args:
        backbone: See `atrous_backbone`.
        output_stride: See `atrous_backbone`; 32 gives the keras.applications topology.
        input_shape: Input shape `(H, W, C)`.
        multi_grid: See `atrous_backbone`.

    Returns:
        A functional model named `{backbone}_os{output_stride}`.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    features, low_level = atrous_backbone(inputs, backbone, output_stride, multi_grid)
    return keras.Model(inputs, [low_level, features], name=f"{backbone}_os{output_stride}")


def _notop_factory(backbone: str) -> Callable[..., keras.Model]:
    """A `resolve_source_model` factory building the network without its classifier."""
    constructor = BACKBONES[backbone]

    def build(weights: str, include_top: bool = False) -> keras.Model:
        # The classifier is not used: prefer the smaller "notop" file; a weight file saved
        # from a full classifier is accepted too.
        try:
            return constructor(weights=weights, include_top=False, input_shape=(224, 224, 3))
        except ValueError:
            if weights == "imagenet":
                raise
            return constructor(weights=weights, include_top=True)

    build.__name__ = constructor.__name__
    return build


def backbone_name_map(target: keras.Model, source: keras.Model, backbone: str) -> dict[str, str]:
    """Maps the weighted layers of an atrous backbone to the keras.applications layers.

    Args:
        target: A model containing the atrous backbone layers (e.g. from
            `atrous_backbone_model`).
        source: The keras.applications network.
        backbone: The backbone name.

    Returns:
        `{target_layer_name: source_layer_name}` for every weighted target layer found in the
        source network.
    """
    source_names = {layer.name for layer in source.layers}
    mapping = {
        layer.name: layer.name
        for layer in target.layers
        if layer.weights and layer.name in source_names
    }
    if backbone == "xception":
        # keras.applications leaves the residual branches unnamed: match them by order.
        convs = [layer.name for layer in source.layers if type(layer) is keras.layers.Conv2D]
        convs = [n for n in convs if not n.startswith("block")]
        norms = [
            layer.name
            for layer in source.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            and not layer.name.startswith("block")
        ]
        for block, conv, norm in zip(XCEPTION_RESIDUAL_BLOCKS, convs, norms):
            mapping[f"block{block}_residual_conv"] = conv
            mapping[f"block{block}_residual_bn"] = norm
    return mapping


def load_backbone_weights(backbone_model: keras.Model, backbone: str, backbone_weights: str):
    """Copies keras.applications weights into an atrous backbone by layer name.

    Args:
        backbone_model: A model whose layers are exactly the backbone's (its layers may be
            shared with a larger model, which then receives the weights too).
        backbone: The backbone name.
        backbone_weights: `"imagenet"` or the path of a weight file of the keras.applications
            network (saved with or without its classifier).

    Returns:
        The names of the layers that received weights.

    Raises:
        ValueError: Some weighted backbone layer has no counterpart in the source network.
    """
    _check_backbone(backbone)
    source = resolve_source_model(backbone_weights, _notop_factory(backbone))
    mapping = backbone_name_map(backbone_model, source, backbone)
    missing = [layer.name for layer in backbone_model.layers if layer.weights]
    missing = [name for name in missing if name not in mapping]
    if missing:
        raise ValueError(
            f"backbone_weights={backbone_weights!r}: no weights for the {backbone} layers "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''} in {source.name}"
        )
    return transfer_weights(backbone_model, source, mapping)
