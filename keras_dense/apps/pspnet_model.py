"""PSPNet (Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017).

Any registered backbone (`keras_dense.backbones`; the paper's is a dilated ResNet at output
stride 8) gives its deepest features; the pyramid pooling module
(`keras_dense.layers.pyramid_pooling.PyramidPooling`, layer `pyramid_pooling`) pools them into
`b x b` grids for each bin count (1, 2, 3, 6), reduces each to `1 / len(bins)` of the channels
(1x1 conv, BN, ReLU), upsamples them back and concatenates them with the features. A 3x3
convolution with 512 filters (BN, ReLU; `psp_conv`), dropout 0.1 (`psp_dropout`), a 1x1
classifier (`logits`) and bilinear upsampling to the input size (`upsample_logits`) follow.
The paper's auxiliary loss on the stride-8 stage-4 features (training only) is left out.

All sizes are read at run time, so the model takes any input size (odd sizes included) and
its output is always `(B, H, W, num_classes)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_dense.apps.builder import build_model, makes
from keras_dense.backbones.registry import get_backbone
from keras_dense.layers.aspp import BN_EPSILON
from keras_dense.layers.pyramid_pooling import PyramidPooling
from keras_dense.layers.resizing import ResizeToMatch

PSP_FILTERS = 512
PSP_DROPOUT = 0.1


@makes("segmentation")
def pspnet(
    num_classes: int = 21,
    backbone: str = "resnet50",
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    input_shape: tuple = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str | None = None,
    crf: bool | dict = False,
) -> keras.Model:
    """Builds PSPNet.

    Args:
        num_classes: Number of classes.
        backbone: A registered backbone (`keras_dense.backbones.backbone_names()`). Normalise
            inputs as the family expects (`get_backbone(backbone).normalization`).
        output_stride: The ratio of input size to the pooled features' size, one the
            backbone takes (8 in the paper: the dilated ResNet).
        bins: Grid sizes of the pyramid levels ((1, 2, 3, 6) in the paper); bins larger than
            the feature map are allowed (see `keras_dense.layers.pyramid_pooling`).
        input_shape: `(H, W, C)`; `None` sizes accept any input size.
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        backbone_weights: `None`, `"imagenet"` or the path of a weight file of the
            backbone's keras.applications network, loaded by layer name
            (`get_backbone(backbone).load_weights`).
        activation: `None` for logits, or an activation applied to the output (`"softmax"`).
        name: Model name; defaults to `pspnet_{backbone}`.
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings),
            fed with the input de-normalised from the backbone's normalisation.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` images to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An unknown backbone, an output stride it does not take, or bad `bins`.
    """
    family = get_backbone(backbone)
    family.check(output_stride, backbone_weights)
    PyramidPooling(bins=bins)  # checks `bins` before anything is built

    def graph(inputs, classes: int):
        features = family.apply(inputs, output_stride)[output_stride]
        x = PyramidPooling(bins=bins, name="pyramid_pooling")(features)
        x = keras.layers.Conv2D(PSP_FILTERS, 3, padding="same", use_bias=False, name="psp_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="psp_conv_bn")(x)
        x = keras.layers.ReLU(name="psp_conv_relu")(x)
        x = keras.layers.Dropout(PSP_DROPOUT, name="psp_dropout")(x)
        x = keras.layers.Conv2D(classes, 1, name="logits")(x)
        return ResizeToMatch(interpolation="bilinear", name="upsample_logits")([x, inputs])

    return build_model(
        graph,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name or f"pspnet_{backbone}",
        activation=activation,
        activation_prefix="logits",
        weights=weights,
        backbone_weights=backbone_weights,
        load_backbone=family.load_weights,
        backbone_source=family.weights_source or family.name,
        input_channels=family.input_channels,
        crf=crf,
        crf_normalization=family.normalization,
    )
