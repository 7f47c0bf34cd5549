"""DeepLabv3 and DeepLabv3+ (Chen et al., 2017 and ECCV 2018).

DeepLabv3: any registered backbone (`keras_dense.backbones`; ResNet, Xception, MobileNetV2
are atrous, so output stride 16 or 8 dilates them, 32 keeps the ImageNet topology) followed by
Atrous Spatial Pyramid Pooling (`keras_dense.layers.ASPP`, layer `aspp`), a 1x1 classifier
(`logits`) and bilinear upsampling to the input size.

DeepLabv3+ adds a decoder: the backbone's stride-4 features (`features[4]`) are projected to
48 channels (1x1 conv, BN, ReLU), the ASPP output is bilinearly upsampled to their size and
concatenated with them, and two 3x3 convs with 256 filters (BN, ReLU) refine the result. The
block's layers are named `decoder_*`, its last layer `decoder`.

All resizes read the target size at run time, so the model accepts any input size (odd sizes
included) and its output is always `(B, H, W, num_classes)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_dense.apps.builder import build_model, makes
from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.registry import get_backbone
from keras_dense.layers.aspp import ASPP, BN_EPSILON
from keras_dense.layers.resizing import ResizeToMatch

DEFAULT_ATROUS_RATES = {32: (3, 6, 9), 16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_FILTERS = 256
DECODER_FILTERS = 256
LOW_LEVEL_FILTERS = 48
ASPP_DROPOUT = 0.1


def _conv_bn_relu(x, filters: int, kernel_size: int, name: str, relu_name: str | None = None):
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=relu_name or f"{name}_relu")(x)


def deeplab_decoder(x, low_level):
    """The DeepLabv3+ decoder.

    Args:
        x: ASPP output (output stride 8 or more).
        low_level: Backbone features at output stride 4.

    Returns:
        The refined features at the size of `low_level`, 256 channels; the last layer is
        named `decoder`.
    """
    low_level = _conv_bn_relu(low_level, LOW_LEVEL_FILTERS, 1, "decoder_low_level")
    x = ResizeToMatch(interpolation="bilinear", name="decoder_upsample")([x, low_level])
    x = keras.layers.Concatenate(name="decoder_concat")([x, low_level])
    x = _conv_bn_relu(x, DECODER_FILTERS, 3, "decoder_conv1")
    return _conv_bn_relu(x, DECODER_FILTERS, 3, "decoder_conv2", relu_name="decoder")


def _check_arguments(
    family: Backbone, output_stride, atrous_rates, decoder, backbone_weights, multi_grid
) -> None:
    family.check(output_stride, backbone_weights, multi_grid=multi_grid)
    if atrous_rates is None and output_stride not in DEFAULT_ATROUS_RATES:
        raise ValueError(
            f"output_stride={output_stride!r} with atrous_rates=None: the default rates are "
            f"for output strides {sorted(DEFAULT_ATROUS_RATES)}; give atrous_rates"
        )
    if decoder and output_stride <= 4:
        raise ValueError(
            f"output_stride={output_stride!r} with decoder=True: the decoder adds stride-4 "
            "features to coarser ASPP features; use decoder=False"
        )
    if atrous_rates is not None and (
        len(atrous_rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in atrous_rates)
    ):
        raise ValueError(f"atrous_rates={atrous_rates!r}: expected None or three positive integers")
    if not isinstance(decoder, bool):
        raise ValueError(f"decoder={decoder!r}: expected True (DeepLabv3+) or False (DeepLabv3)")


@makes("segmentation")
def deeplab(
    num_classes: int = 21,
    backbone: str = "resnet50",
    output_stride: int = 16,
    atrous_rates: Sequence[int] | None = None,
    decoder: bool = True,
    input_shape: tuple = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    multi_grid: Sequence[int] | None = None,
    name: str | None = None,
    crf: bool | dict = False,
) -> keras.Model:
    """Builds DeepLabv3+ (or DeepLabv3 with `decoder=False`).

    Args:
        num_classes: Number of classes.
        backbone: A registered backbone (`keras_dense.backbones.backbone_names()`:
            `"resnet50"`, `"resnet101"`, `"xception"`, `"mobilenetv2"`, `"vgg16"`, ...).
            Normalise inputs as the family expects (`get_backbone(backbone).normalization`).
        output_stride: The ratio of input size to ASPP feature size, one the backbone takes
            (16 or 8 dilate the ImageNet networks, 32 keeps them as they are).
        atrous_rates: The three ASPP dilation rates; `None` means (3, 6, 9) at output stride
            32, (6, 12, 18) at 16 and (12, 24, 36) at 8.
        decoder: `True` for DeepLabv3+, `False` for DeepLabv3 (classifier on the ASPP output).
        input_shape: `(H, W, C)`; `None` sizes accept any input size.
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        backbone_weights: `None`, `"imagenet"` (downloads the keras.applications weights) or
            the path of a keras.applications weight file for `backbone`, loaded by layer name
            (`get_backbone(backbone).load_weights`).
        activation: `None` for logits, or an activation applied to the output (`"softmax"`).
        multi_grid: ResNet only (the family's option): multipliers of the last stage's
            dilation rate per block (DeepLabv3's multi-grid, e.g. `(1, 2, 4)`); `None` means
            `(1, 1, 1)`.
        name: Model name; defaults to `deeplabv3plus_{backbone}` (`deeplabv3_...`).
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings),
            fed with the input de-normalised from the backbone's normalisation ("caffe" for
            ResNet and VGG16, "tf" for Xception and MobileNetV2).

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` images to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An argument is out of range.
    """
    family = get_backbone(backbone)
    _check_arguments(family, output_stride, atrous_rates, decoder, backbone_weights, multi_grid)
    rates = tuple(atrous_rates) if atrous_rates is not None else DEFAULT_ATROUS_RATES[output_stride]
    if name is None:
        name = f"deeplabv3{'plus' if decoder else ''}_{backbone}"

    def graph(inputs, classes: int):
        return deeplab_graph(inputs, classes, backbone, output_stride, rates, decoder, multi_grid)

    return build_model(
        graph,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        activation=activation,
        activation_prefix="logits",
        weights=weights,
        backbone_weights=backbone_weights,
        backbone_family=family,
        crf=crf,
        crf_normalization=family.normalization,
    )


def deeplab_graph(
    inputs,
    num_classes: int,
    backbone: str,
    output_stride: int,
    atrous_rates: Sequence[int],
    decoder: bool,
    multi_grid: Sequence[int] | None = None,
):
    """DeepLabv3(+) from the image input to the upsampled logits (no activation).

    Args:
        inputs: The image input tensor `(B, H, W, 3)`.
        num_classes: Number of classes.
        backbone: The registered backbone (see `deeplab`).
        output_stride: One the backbone takes.
        atrous_rates: The three ASPP rates.
        decoder: Add the DeepLabv3+ decoder.
        multi_grid: ResNet multi-grid (see `deeplab`).

    Returns:
        The `upsample_logits` tensor `(B, H, W, num_classes)`.
    """
    features = get_backbone(backbone).apply(inputs, output_stride, multi_grid=multi_grid)
    x = ASPP(
        filters=ASPP_FILTERS, atrous_rates=tuple(atrous_rates), dropout=ASPP_DROPOUT, name="aspp"
    )(features[output_stride])
    if decoder:
        x = deeplab_decoder(x, features[4])
    x = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    return ResizeToMatch(interpolation="bilinear", name="upsample_logits")([x, inputs])
