"""keras.applications networks used as they are (MobileNetV3, EfficientNetV2, ConvNeXt).

A family of this kind is a table: its keras.applications constructor and `{stride: layer
name}`. Its features are built by the constructor itself, `constructor(include_top=False,
weights=None, input_tensor=x, include_preprocessing=True)`: the layers are created on `x`
(of any height and width) with keras.applications' own names, and the feature maps are
read with `get_layer(name).output`. So `"imagenet"` (or a weight file of the
keras.applications network, with or without its classifier) loads by layer name
(`pretrained_weights.by_name_loader`); every weighted layer these features use has a fixed
name in keras.applications.

The tables (probed with each layer's output size on a 224x224 input) name each stage's last
block output at each stride, as timm's and torchvision's feature extractors do; the last
layers inside a strided block (its expansion) are left to that block. Where the no-top
network's output is the deepest feature but its layer is unnamed in keras.applications
(MobileNetV3's final hard-swish), the table says `NETWORK_OUTPUT`.

These families are not dilated: `output_strides` is `(32,)`. Their inputs are raw 0-255 RGB
(`normalization=None`): each network starts with its own preprocessing layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import keras

from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.pretrained_weights import by_name_loader
from keras_dense.backbones.registry import register_backbone

# A table entry meaning "the no-top network's own output".
NETWORK_OUTPUT = None


def applications_features(
    x,
    output_stride: int = 32,
    *,
    constructor: Callable[..., keras.Model],
    feature_layers: Mapping[int, str | None],
) -> dict[int, object]:
    """Builds `constructor`'s network on `x`; returns `{stride: feature map}`.

    Args:
        x: Image tensor `(B, H, W, 3)`, 0-255 RGB.
        output_stride: 32 (these families are not dilated; `Backbone.check` refuses others).
        constructor: The keras.applications constructor (`keras.applications.ConvNeXtTiny`).
        feature_layers: `{stride: layer name or NETWORK_OUTPUT}`.

    Returns:
        `{stride: the layer's output}`.
    """
    del output_stride  # always the network's own, 32
    network = constructor(
        include_top=False, weights=None, input_tensor=x, include_preprocessing=True
    )
    return {
        stride: network.output if layer is NETWORK_OUTPUT else network.get_layer(layer).output
        for stride, layer in feature_layers.items()
    }


def register_applications_family(
    name: str, constructor: Callable[..., keras.Model], feature_layers: Mapping[int, str | None]
) -> Backbone:
    """Registers the keras.applications network `constructor` as the family `name`.

    Args:
        name: Registry name (`"convnexttiny"`).
        constructor: The keras.applications constructor.
        feature_layers: `{stride: layer name or NETWORK_OUTPUT}` (module docstring).

    Returns:
        The registered `Backbone`.
    """
    features = functools.partial(
        applications_features, constructor=constructor, feature_layers=dict(feature_layers)
    )
    return register_backbone(
        Backbone(
            name=name,
            features=features,
            output_strides=(32,),
            default_output_stride=32,
            normalization=None,
            weights_source=f"keras.applications.{constructor.__name__}",
            load_weights=by_name_loader(constructor, features, 32),
        )
    )
