"""DeepLab v1 (LargeFOV) and DeepLab v2 (ASPP-L) on VGG16.

DeepLab v1: Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with
Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015; its DeepLab-LargeFOV variant.
DeepLab v2: the same authors, "DeepLab: Semantic Image Segmentation with Deep Convolutional
Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017; its VGG16 ASPP-L variant.

Architecture (layer names follow the papers' Caffe models):

- `conv1_1` ... `conv5_3`: the 13 VGG16 convolutions (`keras_dense.backbones.vgg16`), so that
  `backbone_weights` loads them by name. The poolings are 3x3 max poolings: `pool1` ...
  `pool3` at stride 2, `pool4` and `pool5` at stride 1, all "same"-padded (they round odd
  sizes up, as Caffe's do); `conv5_1` ... `conv5_3` are dilated by 2 (they see what they saw
  behind a stride-2 `pool4`). The output stride is 8.
- v1 (LargeFOV): `pool5a`, the released model's 3x3 stride-1 average pooling (its border cells
  average the cells inside the map, where Caffe also counts the zero padding), then `fc6` (3x3
  convolution, 1024 filters, dilation 12, ReLU) + `drop6`, `fc7` (1x1, 1024, ReLU) + `drop7`
  and `fc8` (1x1 to the classes; Gaussian kernels, std 0.01, as released). 20.5 M parameters
  at 21 classes, as the paper's Table 2 says (VGG16's 4096-wide 7x7 `fc6` would be 134 M).
- v2 (ASPP-L): four such `fc6_i` - `fc7_i` - `fc8_i` branches on `pool5`, `fc6_i` dilated by
  6, 12, 18 and 24; `fc8` adds their class scores.
- `upsample_logits`: bilinear resizing of the stride-8 scores to the input size
  (`keras_dense.layers.ResizeToMatch`; any input size, odd sizes included).

`fc6` ... `fc8` start fresh: the papers initialise `fc6` / `fc7` by subsampling VGG16's fully
connected layers (4096 to 1024 filters, 7x7 to 3x3 kernels), which is not done here;
`backbone_weights` loads the 13 convolutions only (VGG16's no-top file suffices).
The dense CRF of the papers is a post-processing step (`keras-dense evaluate --crf`,
`keras_dense.crf.dense_crf`); `crf=True` appends the trainable CRF-as-RNN layer instead.
Inputs are "caffe"-normalised (`keras.applications.vgg16.preprocess_input`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras

from keras_dense.apps.builder import build_model, document, makes
from keras_dense.backbones.registry import get_backbone
from keras_dense.backbones.vgg16 import load_vgg16_weights, vgg16_trunk
from keras_dense.layers.dilated_convolution import DilatedConv2D
from keras_dense.layers.resizing import ResizeToMatch

# The papers' head: fc6 / fc7 width, fc6's kernel, dropout after fc6 and fc7.
FC_FILTERS = 1024
FC6_KERNEL = 3
DROPOUT = 0.5
LARGEFOV_RATE = 12
ASPP_L_RATES = (6, 12, 18, 24)
# The released models' `fc8` filler: Gaussian kernels with this standard deviation, zero bias.
FC8_STDDEV = 0.01

# Poolings that keep stride 1 (output stride 8) and the dilation of the blocks behind them.
_STRIDE_ONE_POOLS = ("pool4", "pool5")
_DILATIONS = {5: 2}


def largefov_pool(x, name: str):
    """DeepLab's 3x3 max pooling, "same"-padded: stride 2 up to `pool3`, then stride 1."""
    stride = 1 if name in _STRIDE_ONE_POOLS else 2
    return keras.layers.MaxPooling2D(3, strides=stride, padding="same", name=name)(x)


def fc_head(x, num_classes: int, rate: int, fc_filters: int, dropout: float, suffix: str = ""):
    """`fc6{suffix}` (3x3, dilated by `rate`) - `fc7{suffix}` (1x1) - `fc8{suffix}` (classes).

    Args:
        x: The stride-8 VGG16 features.
        num_classes: Filters of `fc8`.
        rate: Dilation of `fc6`.
        fc_filters: Filters of `fc6` and `fc7`.
        dropout: Rate of `drop6` / `drop7`.
        suffix: Appended to the layer names (`"_1"` for ASPP-L's first branch).

    Returns:
        The `fc8{suffix}` class scores.
    """
    x = DilatedConv2D(  # Conv2D's weights; the CPU runs its dilation 12 about 26x faster
        fc_filters,
        FC6_KERNEL,
        padding="same",
        dilation_rate=rate,
        activation="relu",
        name=f"fc6{suffix}",
    )(x)
    x = keras.layers.Dropout(dropout, name=f"drop6{suffix}")(x)
    x = keras.layers.Conv2D(fc_filters, 1, activation="relu", name=f"fc7{suffix}")(x)
    x = keras.layers.Dropout(dropout, name=f"drop7{suffix}")(x)
    return keras.layers.Conv2D(
        num_classes,
        1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=FC8_STDDEV),
        bias_initializer="zeros",
        name=f"fc8{suffix}",
    )(x)


def deeplab_vgg_graph(
    inputs,
    num_classes: int,
    rates: Sequence[int] | None,
    fc_filters: int = FC_FILTERS,
    dropout: float = DROPOUT,
):
    """DeepLab v1 / v2 on VGG16 from the image input to the upsampled logits.

    Args:
        inputs: The image input tensor `(B, H, W, 3)`.
        num_classes: Number of classes.
        rates: `None` for LargeFOV (`pool5a` and one `fc6` at dilation 12), or ASPP-L's
            rates, one branch each.
        fc_filters: Filters of `fc6` / `fc7`.
        dropout: Rate of the dropouts after `fc6` / `fc7`.

    Returns:
        The `upsample_logits` tensor `(B, H, W, num_classes)`.
    """
    features = vgg16_trunk(inputs, pool=largefov_pool, dilations=_DILATIONS)
    x = features["pool5"]
    if rates is None:
        x = keras.layers.AveragePooling2D(3, strides=1, padding="same", name="pool5a")(x)
        scores = fc_head(x, num_classes, LARGEFOV_RATE, fc_filters, dropout)
    else:
        branches = [
            fc_head(x, num_classes, rate, fc_filters, dropout, suffix=f"_{i}")
            for i, rate in enumerate(rates, start=1)
        ]
        scores = keras.layers.Add(name="fc8")(branches) if len(branches) > 1 else branches[0]
    return ResizeToMatch(interpolation="bilinear", name="upsample_logits")([scores, inputs])


def load_deeplab_vgg_backbone(model: keras.Model, backbone_weights) -> Iterable[str]:
    """Copies the 13 VGG16 convolutions into the model; `fc6` ... `fc8` stay fresh.

    Args:
        model: A model built by `deeplab_v1` or `deeplab_v2`.
        backbone_weights: What `load_vgg16_weights` takes (`"imagenet"`, the path of a
            `keras.applications.VGG16` weight file, ...).

    Returns:
        What `load_vgg16_weights` returns: it iterates as the names of the loaded layers.
    """
    return load_vgg16_weights(model, backbone_weights, fc=False)


def _check_head(fc_filters, dropout) -> None:
    if isinstance(fc_filters, bool) or not isinstance(fc_filters, int) or fc_filters < 1:
        raise ValueError(f"fc_filters must be a positive integer, got {fc_filters!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")


def _check_rates(atrous_rates) -> tuple[int, ...]:
    rates = tuple(atrous_rates) if isinstance(atrous_rates, (list, tuple)) else ()
    if not rates or not all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates
    ):
        raise ValueError(
            f"atrous_rates={atrous_rates!r}: expected a non-empty list of positive integers "
            f"(ASPP-L: {list(ASPP_L_RATES)})"
        )
    return rates


def _build(rates, *, backbone, num_classes, input_shape, fc_filters, dropout, **kwargs):
    family = get_backbone(backbone, allowed=("vgg16",))
    _check_head(fc_filters, dropout)
    return build_model(
        lambda inputs, classes: deeplab_vgg_graph(inputs, classes, rates, fc_filters, dropout),
        num_classes=num_classes,
        input_shape=input_shape,
        activation_prefix="logits",
        backbone_family=family,
        load_backbone=load_deeplab_vgg_backbone,
        crf_normalization=family.normalization,
        **kwargs,
    )


DEEPLAB_VGG_DOC = """Builds {title}

    Args:
        num_classes: Number of classes (21 for PASCAL VOC: 20 + background).{rates_arg}
        input_shape: `(height, width, channels)`; height and width may be `None` (any size,
            odd sizes included: the output is always at the input size).
        {weights_doc}
        backbone_weights: `None`, `"imagenet"` (downloads keras.applications' VGG16) or the
            path of a `keras.applications.VGG16` weight file (the no-top one suffices):
            loads the 13 convolutions by name; `fc6` ... `fc8` start fresh.
        {activation_doc}
        {crf_doc}
        {name_doc}
        fc_filters: Filters of `fc6` / `fc7`: 1024 in the paper; smaller values give a
            lighter head.
        dropout: Rate of the dropouts after `fc6` and `fc7` (0.5 in the paper).
        backbone: `"vgg16"`, the only backbone it takes (by the paper; from the registry,
            `keras_dense.backbones`).

    Returns:
        A functional `keras.Model` mapping "caffe"-normalised `(B, H, W, 3)` images to
        `(B, H, W, num_classes)` (logits unless `activation` is given).

    Raises:
        ValueError: An argument is invalid.
        FileNotFoundError: `weights` or `backbone_weights` is a missing file.
    """


@document(
    DEEPLAB_VGG_DOC,
    title="DeepLab v1 LargeFOV: VGG16 at output stride 8 with a 3x3 `fc6` dilated by 12 "
    "(module docstring of `keras_dense.apps.deeplab_vgg_model`).",
    rates_arg="",
    crf_normalization='"caffe" mode',
)
@makes("segmentation")
def deeplab_v1(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    crf: bool | dict = False,
    name: str = "deeplab_v1_largefov",
    fc_filters: int = FC_FILTERS,
    dropout: float = DROPOUT,
    backbone: str = "vgg16",
) -> keras.Model:
    return _build(None, **locals())  # the arguments above, by name


@document(
    DEEPLAB_VGG_DOC,
    title="DeepLab v2 ASPP-L: VGG16 at output stride 8 with one `fc6`-`fc7`-`fc8` branch per "
    "atrous rate, summed (module docstring of `keras_dense.apps.deeplab_vgg_model`).",
    rates_arg="\n        atrous_rates: Dilations of the branches' `fc6` (ASPP-L: 6, 12, 18, 24).",
    crf_normalization='"caffe" mode',
)
@makes("segmentation")
def deeplab_v2(
    num_classes: int = 21,
    atrous_rates: Sequence[int] = ASPP_L_RATES,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    crf: bool | dict = False,
    name: str = "deeplab_v2_aspp_l",
    fc_filters: int = FC_FILTERS,
    dropout: float = DROPOUT,
    backbone: str = "vgg16",
) -> keras.Model:
    arguments = dict(locals())  # the arguments above, by name
    return _build(_check_rates(arguments.pop("atrous_rates")), **arguments)
