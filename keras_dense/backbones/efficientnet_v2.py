"""EfficientNetV2 B0-B3 and S (keras.applications), as they are: not dilated.

Features (`applications_family`): the last block output of stages 2, 3 and 5 at strides 4, 8
and 16, and at 32 the no-top network's `top_activation` (its final 1x1 convolution).
Inputs are 0-255 RGB: the network normalises them itself (`include_preprocessing=True`).
"""

from __future__ import annotations

import keras

from keras_dense.backbones.applications_family import register_applications_family

# name: (constructor, last block of stages 2, 3 and 5).
_VARIANTS = {
    "efficientnetv2b0": (keras.applications.EfficientNetV2B0, "2b", "3b", "5e"),
    "efficientnetv2b1": (keras.applications.EfficientNetV2B1, "2c", "3c", "5f"),
    "efficientnetv2b2": (keras.applications.EfficientNetV2B2, "2c", "3c", "5f"),
    "efficientnetv2b3": (keras.applications.EfficientNetV2B3, "2c", "3c", "5g"),
    "efficientnetv2s": (keras.applications.EfficientNetV2S, "2d", "3d", "5i"),
}

for _name, (_constructor, *_blocks) in _VARIANTS.items():
    _layers = {s: f"block{b}_add" for s, b in zip((4, 8, 16), _blocks)}
    register_applications_family(_name, _constructor, {**_layers, 32: "top_activation"})
