"""VGG16: the convolutional trunk shared by FCN, DeconvNet and Fast R-CNN, and its weights.

Layers are named as in the papers (`conv1_1` ... `conv5_3`, `pool1` ... `pool5`) so that
`model.summary()` reads like the papers' figures. `VGG16_IMAGENET_NAMES` maps those names to
the layer names of `keras.applications.VGG16`, and `VGG16_FC_NAMES` maps the papers' `fc6` /
`fc7` to VGG16's `fc1` / `fc2`; `load_vgg16_weights` (what `backbone_weights="imagenet"` does)
copies the ImageNet weights through both maps.

The registered family `"vgg16"` ("caffe" inputs) gives the features `{1: conv1_2, 2: conv2_2,
4: conv3_3, 8: conv4_3, 16: conv5_3, 32: pool5}` up to its output stride: 32 through pool5,
16 (the default: conv5_3, VGG16's last convolution) without pool5, 8 with pool4 removed and
conv5 dilated by 2 (DeepLab-LargeFOV), 4 with pool3 removed too (conv4 dilated by 2, conv5 by
4). Builders that need the named taps (FCN's pool3 / pool4, DeconvNet's pooling switches) call
`vgg16_trunk` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import keras
import numpy as np

from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.pretrained_weights import (
    LoadReport,
    open_weight_source,
    transfer_weights,
)
from keras_dense.backbones.registry import register_backbone

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

# Our fully connected (or convolutionalised) layer -> keras.applications.VGG16 Dense layer.
VGG16_FC_NAMES: dict[str, str] = {"fc6": "fc1", "fc7": "fc2"}


def default_pool(x, name: str):
    """2x2 max pooling with stride 2 that rounds the output size up, as Caffe does."""
    return keras.layers.MaxPooling2D(2, strides=2, padding="same", name=name)(x)


def vgg16_trunk(
    x,
    batch_norm: bool = False,
    pool: Callable | None = default_pool,
    first_padding: str = "same",
    skip_pools: tuple[int, ...] = (),
    dilations: Mapping[int, int] | None = None,
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
        skip_pools: Blocks (1-5) whose pooling is removed, DeepLab-LargeFOV style: every later
            convolution is dilated by 2 per removed pooling (so it sees what it saw with the
            pooling; the weights stay valid) and `pool{b}` is the unpooled input. `(4,)` puts
            `conv5_3` at stride 8, `(3, 4)` at stride 4.
        dilations: `{block: rate}`, a further dilation of the block's convolutions
            (multiplied with the one `skip_pools` gives), for a `pool` that keeps some
            poolings at stride 1: DeepLab-LargeFOV's `{5: 2}` after a stride-1 `pool4`.

    Returns:
        A dict with the output of every conv (`conv{b}_{i}`) and pool (`pool{b}`) layer.

    Raises:
        ValueError: `skip_pools` names a block outside 1-5.
    """
    if any(b not in range(1, len(VGG16_BLOCKS) + 1) for b in skip_pools):
        raise ValueError(f"skip_pools={tuple(skip_pools)!r}: expected block numbers in 1-5")
    dilations = dict(dilations or {})
    if any(b not in range(1, len(VGG16_BLOCKS) + 1) for b in dilations):
        raise ValueError(f"dilations={dilations!r}: expected block numbers in 1-5")
    outputs = {}
    rate = 1
    for b, block in enumerate(VGG16_BLOCKS, start=1):
        for i, filters in enumerate(block, start=1):
            name = f"conv{b}_{i}"
            padding = first_padding if (b, i) == (1, 1) else "same"
            x = keras.layers.Conv2D(
                filters,
                3,
                padding=padding,
                dilation_rate=rate * dilations.get(b, 1),
                activation=None if batch_norm else "relu",
                name=name,
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
                x = keras.layers.ReLU(name=f"{name}_relu")(x)
            outputs[name] = x
        if b in skip_pools:
            outputs[f"pool{b}"] = x
            rate *= 2
            continue
        result = pool(x, f"pool{b}")
        outputs[f"pool{b}"] = result
        x = result[0] if isinstance(result, (tuple, list)) else result
    return outputs


def dense_to_conv(kernel_shape: tuple[int, ...]):
    """Returns a transform reshaping `[dense_kernel, bias]` into a kernel of `kernel_shape`.

    `kernel_shape` is the target kernel's shape without its last (units) axis: `(7, 7, 512)`
    turns VGG16's `fc1` kernel `(25088, 4096)` into a 7x7 conv kernel `(7, 7, 512, 4096)`.
    Keras' `Flatten` of the 7x7x512 `block5_pool` map is row-major (y, x, channel), which is
    exactly the order of the conv kernel's first three axes. `(25088,)` keeps a Dense kernel.
    """

    def transform(weights: list[np.ndarray]) -> list[np.ndarray]:
        kernel, bias = weights
        if kernel.shape[0] != int(np.prod(kernel_shape)):
            return weights  # transfer_weights names the mismatch
        return [kernel.reshape(*kernel_shape, kernel.shape[-1]), bias]

    return transform


def load_vgg16_weights(model: keras.Model, backbone_weights, fc: bool = True) -> LoadReport:
    """Copies keras.applications VGG16 weights into a model built on `vgg16_trunk`.

    The 13 convolutions are copied by name (`VGG16_IMAGENET_NAMES`). With `fc=True`, VGG16's
    `fc1` / `fc2` go into the model's `fc6` / `fc7` (`VGG16_FC_NAMES`) where the model has
    them: as they are into Dense layers (Fast R-CNN), reshaped into the kernel of a
    convolution (FCN, DeconvNet: `fc6` is a 7x7x512 convolution, `fc7` a 1x1 one). A source
    without VGG16's top (no `fc1` / `fc2`, read from the layers it holds) leaves `fc6` /
    `fc7` fresh, and the report says so. Other layers (BatchNorm, heads) keep their
    initialisation.

    Args:
        model: The model; layers missing from it are skipped.
        backbone_weights: `"imagenet"`, the path of a `keras.applications.VGG16` weight file
            (with or without its top), or a `keras.Model` with VGG16's layer names (see
            `keras_dense.backbones.pretrained_weights`).
        fc: Also copy `fc6` / `fc7`.

    Returns:
        Which layers were loaded and which start fresh (iterates as the loaded names).

    Raises:
        ValueError: Naming the first layer whose weight shapes the source lacks or holds
            otherwise (a file of another network), with the expected and found shapes.
    """
    target_names = {layer.name for layer in model.layers}
    fc_layers = [name for name in VGG16_FC_NAMES if fc and name in target_names]
    source = open_weight_source(
        backbone_weights, keras.applications.VGG16, include_top=bool(fc_layers)
    )
    name_map = dict(VGG16_IMAGENET_NAMES)
    transforms = {}
    for ours in fc_layers:
        name_map[ours] = VGG16_FC_NAMES[ours]
        kernel_shape = tuple(model.get_layer(ours).kernel.shape)
        transforms[ours] = dense_to_conv(kernel_shape[:-1])
    return transfer_weights(
        model, source, name_map, transforms, optional=fc_layers, network="keras.applications.VGG16"
    )


def vgg16_features(x, output_stride: int = 16) -> dict[int, object]:
    """The VGG16 features of `x` (module docstring), up to `output_stride` (4 to 32)."""
    skip_pools = tuple(b for b in (3, 4, 5) if 2**b > output_stride)
    outputs = vgg16_trunk(x, skip_pools=skip_pools)
    features, stride = {}, 1
    for b, block in enumerate(VGG16_BLOCKS, start=1):
        features[stride] = outputs[f"conv{b}_{len(block)}"]
        if b not in skip_pools:
            stride *= 2
            features[stride] = outputs[f"pool{b}"]
    return features


VGG16 = register_backbone(
    Backbone(
        name="vgg16",
        features=vgg16_features,
        output_strides=(4, 8, 16, 32),
        default_output_stride=16,
        normalization="caffe",
        weights_source="keras.applications.VGG16",
        load_weights=load_vgg16_weights,
    )
)
