"""Weakly supervised classifiers: class maps pooled into image scores.

Trained with image-level labels only (multi-label, one sigmoid per class), these networks
still localise: their class maps light up where the class is (Oquab et al., CVPR 2015;
Zhou et al., CVPR 2016; Durand et al., CVPR 2016 and 2017). The architecture:

1. the deepest features of any registered backbone (`keras_dense.backbones`), at the
   family's default output stride (16 for VGG16's `conv5_3`, 32 for ResNet-50's
   `conv5_block3_out` and MobileNetV2's `block_16_project_BN`, 4 for the from-scratch
   `"compact"` backbone of `keras_dense.backbones.compact`); `output_stride` makes them
   denser: VGG16 at 8 (pool4 removed, conv5 dilated by 2) or 4 (pool3 too, conv4 dilated by 2
   and conv5 by 4, as DeepLab-LargeFOV), ResNet-50 / MobileNetV2 at 8 or 16 (atrous);
2. a 1x1 convolution `class_maps` to `num_classes * maps_per_class` maps `(B, h, w, C * M)`,
   class-major (see `keras_dense.layers.ClassWisePooling2D`);
3. with `maps_per_class > 1` (and always for `"wildcat"`), `class_wise_pool`
   (`ClassWisePooling2D`) averages each class's `M` maps to `(B, h, w, C)`;
4. the spatial pooling `image_logits` to image logits `(B, C)`: `"gap"` (global average,
   Zhou et al.), `"max"` (global max, Oquab et al.), `"lse"` (`GlobalLSEPooling2D`),
   `"weldon"` or `"wildcat"` (`WeldonPooling2D`).

`keras_dense.localization.class_maps` reads the maps back at input resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from keras_dense.apps.builder import build_model, document, makes
from keras_dense.backbones.registry import get_backbone
from keras_dense.layers.wsl_pooling import ClassWisePooling2D, GlobalLSEPooling2D, WeldonPooling2D

WSL_POOLINGS = ("gap", "max", "lse", "weldon", "wildcat")
# Default arguments of the pooling layer, per pooling (overridden by `pooling_kwargs`).
POOLING_DEFAULTS: dict[str, dict[str, Any]] = {
    "gap": {},
    "max": {},
    "lse": {"r": 5.0},
    "weldon": {"k_max": 1, "k_min": 1, "alpha": 1.0},
    "wildcat": {"k_max": 1, "k_min": 1, "alpha": 0.7},
}
CLASS_MAPS_LAYER = "class_maps"
CLASS_WISE_LAYER = "class_wise_pool"
LOGITS_LAYER = "image_logits"


def _spatial_pooling(pooling: str, options: Mapping[str, Any]) -> keras.layers.Layer:
    if pooling in ("gap", "max"):
        if options:
            raise ValueError(f"pooling={pooling!r} takes no pooling_kwargs, got {dict(options)}")
        layer_cls = (
            keras.layers.GlobalAveragePooling2D
            if pooling == "gap"
            else keras.layers.GlobalMaxPooling2D
        )
        return layer_cls(name=LOGITS_LAYER)
    layer_cls = GlobalLSEPooling2D if pooling == "lse" else WeldonPooling2D
    try:
        return layer_cls(**options, name=LOGITS_LAYER)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"pooling_kwargs={dict(options)!r} for pooling={pooling!r}: {error}"
        ) from None


def wsl_graph(
    inputs,
    num_classes: int,
    backbone: str,
    pooling: str,
    maps_per_class: int,
    pooling_kwargs: Mapping[str, Any] | None,
    output_stride: int | None,
    width: int | None,
):
    """The weakly supervised classifier from the image input to the image logits.

    The defaults of these options are `wsl_classifier`'s, which checks them.

    Args:
        inputs: The image input tensor `(B, H, W, 3)`.
        num_classes: Number of classes `C`.
        backbone: A registered backbone (`keras_dense.backbones.backbone_names()`).
        pooling: One of `WSL_POOLINGS`.
        maps_per_class: `M`, maps per class.
        pooling_kwargs: Arguments of the pooling layer, over `POOLING_DEFAULTS[pooling]`.
        output_stride: Stride of the class maps, one the backbone takes (None: the
            family's `default_output_stride`).
        width: The compact backbone's first-block width (its `width` option; None: 32).

    Returns:
        The `image_logits` tensor `(B, C)`.
    """
    options = {**POOLING_DEFAULTS[pooling], **dict(pooling_kwargs or {})}
    pool = _spatial_pooling(pooling, options)
    family = get_backbone(backbone)
    stride = family.check(output_stride)
    x = family.apply(inputs, stride, width=width)[stride]
    x = keras.layers.Conv2D(num_classes * maps_per_class, 1, name=CLASS_MAPS_LAYER)(x)
    if maps_per_class > 1 or pooling == "wildcat":
        x = ClassWisePooling2D(maps_per_class, name=CLASS_WISE_LAYER)(x)
    return pool(x)


def _check_options(pooling, maps_per_class, pooling_kwargs):
    if pooling not in WSL_POOLINGS:
        raise ValueError(f"pooling={pooling!r}: expected one of {list(WSL_POOLINGS)}")
    if (
        isinstance(maps_per_class, bool)
        or not isinstance(maps_per_class, int)
        or maps_per_class < 1
    ):
        raise ValueError(f"maps_per_class must be a positive int, got {maps_per_class!r}")
    if pooling_kwargs is not None and not isinstance(pooling_kwargs, Mapping):
        raise ValueError(f"pooling_kwargs must be None or a dict, got {pooling_kwargs!r}")


WSL_DOC = """Builds a weakly supervised classifier: backbone, 1x1 class maps, spatial pooling.

    The output is one logit per class, for multi-label training with a sigmoid cross-entropy
    on image-level labels; the class maps (layer `class_maps`) localise the classes (see
    `keras_dense.localization.class_maps`). Works at any input size.

    Args:
        num_classes: Number of classes (20 for PASCAL VOC's object classes).
        backbone: A registered backbone (`keras_dense.backbones.backbone_names()`), e.g.
            `"vgg16"` (VGG16's `conv5_3`, stride 16), `"resnet50"` or `"mobilenetv2"`
            (stride 32, keras.applications layer names), or `"compact"`
            (`keras_dense.backbones.compact`: 8 conv-BN-ReLU layers for small images
            trained from scratch, stride 4, no ImageNet weights). Preprocess the input in the
            family's normalisation (`get_backbone(backbone).normalization`): "caffe" for
            VGG16 and ResNet-50, "tf" for MobileNetV2 (and, by convention, the compact one).
        pooling: `"gap"` (global average, CAM), `"max"` (global max, Oquab et al.),
            `"lse"` (log-sum-exp, `GlobalLSEPooling2D`, r=5), `"weldon"` (`WeldonPooling2D`,
            k_max=k_min=1, alpha=1) or `"wildcat"` (`ClassWisePooling2D` then
            `WeldonPooling2D`, k_max=k_min=1, alpha=0.7).
        maps_per_class: `M` maps per class (WILDCAT's modalities); with `M > 1` the maps are
            averaged per class (`ClassWisePooling2D`, class-major channels) before the
            spatial pooling, whatever `pooling` is.
        pooling_kwargs: Arguments of the pooling layer that replace the defaults above, e.g.
            `{{"r": 10.0, "trainable_r": True}}` for "lse" or `{{"k_max": 0.2, "k_min": 0.2}}`
            for "weldon" / "wildcat".
        output_stride: Stride of the class maps (None: the backbone's default). VGG16: 16, 8
            (pool4 removed, conv5 dilated by 2) or 4 (pool3 and pool4 removed, conv4 dilated
            by 2, conv5 by 4; the ImageNet weights still apply) or 32 (pool5); ResNet-50 /
            MobileNetV2: 32, 16 or 8 (atrous); compact: 4, or 1, 2, 8; in general one of
            `get_backbone(backbone).output_strides`.
            Finer maps point more precisely on small images and cost more compute.
        width: The compact backbone's `width` option: its first-block filters (blocks
            `w, 2w, 4w, 4w`; None: 32). Other backbones refuse it.
        input_shape: `(height, width, 3)`; `None` sizes accept any input size.
        backbone_weights: `None`, `"imagenet"` (downloads the keras.applications weights) or
            the path of a keras.applications weight file of the backbone, loaded by name.
        {weights_doc}
        {activation_doc}
        {name_doc} Defaults to `wsl_{{backbone}}_{{pooling}}`.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, 3)` images to `(B, num_classes)` logits.

    Raises:
        ValueError: An argument is invalid.
        FileNotFoundError: `weights` or `backbone_weights` is a missing file.
    """


@document(WSL_DOC)
@makes("classification")
def wsl_classifier(
    num_classes: int = 20,
    backbone: str = "vgg16",
    pooling: str = "gap",
    maps_per_class: int = 1,
    pooling_kwargs: Mapping[str, Any] | None = None,
    output_stride: int | None = None,
    width: int | None = None,
    input_shape: tuple = (None, None, 3),
    backbone_weights: str | None = None,
    weights: str | None = None,
    activation: str | None = None,
    name: str | None = None,
) -> keras.Model:
    family = get_backbone(backbone)
    family.check(output_stride, backbone_weights, width=width)
    _check_options(pooling, maps_per_class, pooling_kwargs)
    if name is None:
        name = f"wsl_{backbone}_{pooling}"

    def graph(inputs, classes: int):
        return wsl_graph(
            inputs,
            classes,
            backbone,
            pooling,
            maps_per_class,
            pooling_kwargs,
            output_stride,
            width,
        )

    return build_model(
        graph,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        activation=activation,
        activation_prefix="image",
        weights=weights,
        backbone_weights=backbone_weights,
        backbone_family=family,
        input_channels=3,
    )
