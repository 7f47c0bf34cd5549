"""DeconvNet (Noh, Hong, Han, "Learning Deconvolution Network for Semantic Segmentation",
ICCV 2015).

Architecture (Table 1 of the paper; `-` in the paper's names is `_` here, as in the VGG trunk):

- Convolution network: the 13 VGG16 convolutions, each followed by BatchNormalization and
  ReLU (`conv1_1` ... `conv5_3`, with `conv{b}_{i}_bn` / `conv{b}_{i}_relu`), and five 2x2
  max poolings `pool1` ... `pool5` that keep their switches (`MaxPoolingWithArgmax2D`).
- `fc6`: 7x7 convolution with 4096 filters (7x7x512 -> 1x1x4096 at 224 px), `fc7`: 1x1
  convolution with 4096 filters, each with BN and ReLU.
- Deconvolution network, the mirror image: `deconv_fc6` (7x7 transposed convolution back to
  7x7x512), then for b = 5 ... 1 `unpool{b}` (puts the values back at `pool{b}`'s switches,
  zeros elsewhere) followed by 3x3 deconvolutions `deconv{b}_{i}` (BN + ReLU) whose filters
  mirror the encoder: 512, 512, 512 | 512, 512, 256 | 256, 256, 128 | 128, 64 | 64, 64.
- `score`: 1x1 convolution to `num_classes` (the paper's "output" layer), logits by default.

The paper's network has about 252 M parameters; with 21 classes this one has 251.84 M,
33 k of which are BatchNormalization moving statistics (see tests/test_deconvnet.py).

Input sizes. The poolings round odd sizes up (Caffe's ceil mode, `padding="same"`) and every
unpooling receives the pre-pooling map as its size reference, so odd sizes are restored
exactly and the output is always `(B, H, W, num_classes)`. With the paper's "valid" `fc6`
(`fc_padding="valid"`, the default) the stride-32 map must be at least 7x7, i.e.
`ceil(H / 32) >= 7` and `ceil(W / 32) >= 7` (H, W >= 193); `fc6` then yields
`(ceil(H/32) - 6)` cells per axis and the "valid" `deconv_fc6` grows them back, so any such
size works, not only 224. `fc_padding="same"` zero-pads `fc6` and `deconv_fc6` instead: the
same weights, any input size (even 1x1), but below 224 px `fc6` sees zeros around the map.

Inputs are expected preprocessed as `keras.applications.vgg16.preprocess_input` does
("caffe" mode) when using ImageNet weights.
"""

from __future__ import annotations

import keras

from keras_dense.apps.builder import build_model, makes
from keras_dense.backbones.pretrained_weights import LoadReport
from keras_dense.backbones.registry import get_backbone
from keras_dense.backbones.vgg16 import load_vgg16_weights, vgg16_trunk
from keras_dense.layers.pooling_switches import (
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    pooled_size,
)

# Filters of the deconvolutions after each unpooling, from unpool5 down to unpool1.
DECONV_BLOCKS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (5, (512, 512, 512)),
    (4, (512, 512, 256)),
    (3, (256, 256, 128)),
    (2, (128, 64)),
    (1, (64, 64)),
)

# Encoder layer whose output each unpooling restores (its spatial-size reference).
_UNPOOL_REFERENCE = {5: "conv5_3", 4: "conv4_3", 3: "conv3_3", 2: "conv2_2", 1: "conv1_2"}

# Width of the paper's fc6 / fc7 (= VGG16's fc1 / fc2).
PAPER_FC_FILTERS = 4096

FC_KERNEL = 7


def pool_with_switches(x, name: str):
    """The trunk's pooling: 2x2/2 max pooling rounding up, returning `[pooled, switches]`."""
    return MaxPoolingWithArgmax2D(2, strides=2, padding="same", name=name)(x)


def _conv_bn_relu(x, layer: keras.layers.Layer):
    name = layer.name
    x = layer(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def load_vgg16_deconvnet_backbone(model: keras.Model, backbone_weights) -> LoadReport:
    """Copies keras.applications VGG16 weights into DeconvNet's convolution network.

    The VGG16 family's loader (`load_vgg16_weights`), with `fc6` / `fc7` only when they have
    VGG16's size. The 13 convolutions are copied by name; BatchNormalization layers stay freshly
    initialised. When `fc6` / `fc7` have the paper's 4096 filters and the source has its
    fully connected top, VGG16's `fc1` / `fc2` are reshaped into them too (the paper
    initialises the whole convolution network from VGG16); a source without the top leaves
    them fresh.

    Args:
        model: A DeconvNet built by `deconvnet`.
        backbone_weights: `"imagenet"`, the path of a `keras.applications.VGG16` weight file
            or a `keras.Model` with VGG16's layer names.

    Returns:
        Which layers received weights and which start fresh.
    """
    fc = model.get_layer("fc6").filters == PAPER_FC_FILTERS
    return load_vgg16_weights(model, backbone_weights, fc=fc)


def _check_fc_padding(fc_padding: str, input_shape: tuple) -> None:
    if fc_padding not in ("valid", "same"):
        raise ValueError(f"fc_padding must be 'valid' (the paper) or 'same', got {fc_padding!r}")
    if fc_padding == "valid":
        for axis, size in zip(("height", "width"), input_shape[:2]):
            cells = size
            for _ in range(5):
                cells = pooled_size(cells, 2, 2, "same")
            if cells is not None and cells < FC_KERNEL:
                raise ValueError(
                    f"input_shape={input_shape!r}: with fc_padding='valid' the 7x7 fc6 needs a "
                    f"stride-32 map of at least 7x7, i.e. an input {axis} of at least 193 "
                    f"pixels (got {size}, map {cells}); use fc_padding='same' for smaller inputs"
                )


@makes("segmentation")
def deconvnet(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "deconvnet",
    fc_padding: str = "valid",
    fc_filters: int = PAPER_FC_FILTERS,
    crf: bool | dict = False,
    backbone: str = "vgg16",
) -> keras.Model:
    """Builds DeconvNet: VGG16 with BN, fc6/fc7, and the mirrored unpooling/deconvolution net.

    Args:
        num_classes: Number of classes (21 for PASCAL VOC: 20 + background).
        input_shape: `(height, width, channels)`; height and width may be `None`. With
            `fc_padding="valid"` each side must be at least 193 pixels (see the module
            docstring); odd sizes are fine.
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        backbone_weights: `None`, `"imagenet"` (downloads keras.applications' VGG16) or the
            path of a `keras.applications.VGG16` weight file (with or without its top), or a
            `keras.Model` with its layer names. Loads the 13 convolutions by name (BN stays
            fresh) and, with `fc_filters=4096`, `fc6` / `fc7` from VGG16's `fc1` / `fc2`
            (fresh, and said so, with a source without the top).
        activation: `None` for logits, or a Keras activation applied over the classes
            (`"softmax"`).
        name: Model name.
        fc_padding: `"valid"` (the paper: fc6 maps 7x7 to 1x1 and `deconv_fc6` back) or
            `"same"` (zero-padded fc6 / deconv_fc6: any input size).
        fc_filters: Filters of `fc6` and `fc7`; 4096 in the paper. Smaller values give a much
            lighter model (fc6 and deconv_fc6 alone hold 205 M of the 252 M parameters).
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings;
            the input stays "caffe"-normalised and is de-normalised for the CRF).
        backbone: `"vgg16"`, the only backbone DeconvNet takes (by the paper; from the
            registry, `keras_dense.backbones`).

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An argument is invalid, or the input is too small for a "valid" fc6.
        FileNotFoundError: `weights` or `backbone_weights` is a missing file.
    """
    family = get_backbone(backbone, allowed=("vgg16",))
    if isinstance(fc_filters, bool) or not isinstance(fc_filters, int) or fc_filters < 1:
        raise ValueError(f"fc_filters must be a positive integer, got {fc_filters!r}")

    def graph(inputs, classes: int):
        _check_fc_padding(fc_padding, tuple(inputs.shape[1:]))
        return deconvnet_graph(inputs, classes, fc_padding, fc_filters)

    return build_model(
        graph,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        activation=activation,
        weights=weights,
        backbone_weights=backbone_weights,
        backbone_family=family,
        load_backbone=load_vgg16_deconvnet_backbone,
        crf=crf,
        crf_normalization=family.normalization,
    )


def deconvnet_graph(inputs, num_classes: int, fc_padding: str, fc_filters: int):
    """DeconvNet from the image input to the `score` logits (no activation).

    Args:
        inputs: The image input tensor `(B, H, W, C)`.
        num_classes: Number of classes.
        fc_padding: Padding of `fc6` / `deconv_fc6`.
        fc_filters: Filters of `fc6` / `fc7`.

    Returns:
        The `score` tensor `(B, H, W, num_classes)`.
    """
    encoder = vgg16_trunk(inputs, batch_norm=True, pool=pool_with_switches)
    x, _ = encoder["pool5"]

    x = _conv_bn_relu(x, keras.layers.Conv2D(fc_filters, FC_KERNEL, padding=fc_padding, name="fc6"))
    x = _conv_bn_relu(x, keras.layers.Conv2D(fc_filters, 1, name="fc7"))
    x = _conv_bn_relu(
        x,
        keras.layers.Conv2DTranspose(512, FC_KERNEL, padding=fc_padding, name="deconv_fc6"),
    )

    for block, filters in DECONV_BLOCKS:
        _, switches = encoder[f"pool{block}"]
        reference = encoder[_UNPOOL_REFERENCE[block]]
        x = MaxUnpooling2D(2, strides=2, padding="same", name=f"unpool{block}")(
            [x, switches, reference]
        )
        for i, f in enumerate(filters, start=1):
            layer = keras.layers.Conv2DTranspose(f, 3, padding="same", name=f"deconv{block}_{i}")
            x = _conv_bn_relu(x, layer)

    return keras.layers.Conv2D(num_classes, 1, name="score")(x)
