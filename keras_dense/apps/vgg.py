"""The VGG16 convolutional trunk shared by FCN, DeconvNet and Fast R-CNN.

Layers are named as in the papers (`conv1_1` ... `conv5_3`, `pool1` ... `pool5`) so that
`model.summary()` reads like the papers' figures. `VGG16_IMAGENET_NAMES` maps those names to
the layer names of `keras.applications.VGG16`, which is what `backbone_weights="imagenet"`
uses to copy the ImageNet weights.
"""

from __future__ import annotations

from typing import Callable

import keras

# Filters of each convolution, block by block.
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)

# Our layer name -> keras.applications.VGG16 layer name.
VGG16_IMAGENET_NAMES: dict[str, str] = {
    f"conv{b + 1}_{i + 1}": f"block{b + 1}_conv{i + 1}"
    for b, block in enumerate(VGG16_BLOCKS)
    for i in range(len(block))
}


def default_pool(x, name: str):
    """2x2 max pooling with stride 2 that rounds the output size up, as Caffe does."""
    return keras.layers.MaxPooling2D(2, strides=2, padding="same", name=name)(x)


def vgg16_trunk(
    x,
    batch_norm: bool = False,
    pool: Callable | None = default_pool,
    first_padding: str = "same",
) -> dict:
    """Applies the 13 VGG16 convolutions and 5 poolings to `x`.

    Args:
        x: Input tensor (B, H, W, 3), preprocessed as `keras.applications.vgg16` expects
            ("caffe" normalisation: BGR, mean-subtracted).
        batch_norm: Insert BatchNormalization after every convolution (DeconvNet's variant).
            BN layers are named `conv{b}_{i}_bn`.
        pool: Callable `(tensor, name) -> tensor` (or `-> (tensor, extra)`) used for the
            five poolings; its full result is stored under `pool{b}`.
        first_padding: Padding of `conv1_1` (`"same"` or `"valid"`).

    Returns:
        A dict with the output of every conv (`conv{b}_{i}`) and pool (`pool{b}`) layer.
    """
    outputs = {}
    for b, block in enumerate(VGG16_BLOCKS, start=1):
        for i, filters in enumerate(block, start=1):
            name = f"conv{b}_{i}"
            padding = first_padding if (b, i) == (1, 1) else "same"
            x = keras.layers.Conv2D(
                filters,
                3,
                padding=padding,
                activation=None if batch_norm else "relu",
                name=name,
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
                x = keras.layers.ReLU(name=f"{name}_relu")(x)
            outputs[name] = x
        result = pool(x, f"pool{b}")
        outputs[f"pool{b}"] = result
        x = result[0] if isinstance(result, (tuple, list)) else result
    return outputs
