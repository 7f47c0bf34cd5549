"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015), on the VGG16 trunk.

Architecture (layer names follow the paper's Caffe models):

- `conv1_1` ... `pool5`: the VGG16 convolutions (`keras_dense.apps.vgg.vgg16_trunk`).
- `fc6` (7x7 conv, 4096 filters, ReLU) + `drop6`, `fc7` (1x1 conv, 4096, ReLU) + `drop7`:
  VGG16's fully connected layers turned into convolutions.
- `score_fr`: 1x1 conv to `num_classes` class scores at stride 32.
- FCN-32s: `upscore`, a fixed (non-trainable) x32 bilinear `Conv2DTranspose`, then `score`
  crops it to the input.
- FCN-16s: `upscore2` (learned x2 `Conv2DTranspose`, bilinear-initialised) cropped to the pool4
  grid (`upscore2c`), plus `score_pool4` (1x1 conv on pool4, zero-initialised as in the paper)
  gives `fuse_pool4`; `upscore16` (fixed x16 bilinear) and the crop `score`.
- FCN-8s: as FCN-16s, then `upscore_pool4` (learned x2) cropped to the pool3 grid
  (`upscore_pool4c`), plus `score_pool3` (zero-initialised) gives `fuse_pool3`; `upscore8`
  (fixed x8 bilinear) and the crop `score`.

Padding and alignment (what we do instead of Caffe's 100-pixel padding). The Caffe models pad
`conv1_1` by 100 pixels so that `fc6`'s 7x7 "valid" convolution always has room, and then crop
the upsampled scores at offsets worked out from that padding (19 for FCN-32s, 31 for FCN-8s).
We pad nothing at the input. Every VGG16 convolution uses "same" padding, the poolings round
up (as Caffe's do, `padding="same"`), and `fc6` uses "same" padding: its 7x7 window is
zero-padded by 3 cells at the stride-32 level. This keeps every feature grid half-pixel aligned
with the image (cell `i` of the stride-`s` grid is centred on pixel `s * i + (s - 1) / 2`), so
each upsampling by `f` is followed by a crop at the fixed offset `f // 2`, which turns the
bilinear transposed convolution into bilinear resizing with the half-pixel convention
(`keras_dense.layers.upsampling`). The learned x2 upsamplings are cropped to the size of the
pool4 / pool3 grids (`ceil(H / 16)`, `ceil(H / 8)`) and the final one to the input, so the
output is exactly `(B, H, W, num_classes)` for every input size, odd or tiny (a 1x1 image
works). The price: for inputs smaller than 224 pixels, or near the borders, `fc6` sees zeros
where Caffe's network sees VGG16 features of a zero-padded image. The weights are unchanged
(`fc6` is still a 7x7x512x4096 kernel), and the network costs no computation on padding.

Skip layers are zero-initialised (the paper's staged training); FCN-8s "at-once" scaling of
pool3/pool4 is not applied. Inputs are expected preprocessed as
`keras.applications.vgg16.preprocess_input` does ("caffe" mode) when using ImageNet weights.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_dense.apps.backbone_weights import (
    load_model_weights,
    resolve_source_model,
    transfer_weights,
)
from keras_dense.apps.vgg import VGG16_IMAGENET_NAMES, vgg16_trunk
from keras_dense.apps.with_crf import with_crf
from keras_dense.layers.resizing import CropToMatch
from keras_dense.layers.upsampling import bilinear_crop_offset, bilinear_upsampling

# Skip connections of each variant, from the coarsest to the finest.
FCN_SKIPS: dict[str, tuple[str, ...]] = {
    "fcn32s": (),
    "fcn16s": ("pool4",),
    "fcn8s": ("pool4", "pool3"),
}

# Name of the final (fixed) upsampling layer of each variant, as in the Caffe models.
_FINAL_UPSCORE = {"fcn32s": "upscore", "fcn16s": "upscore16", "fcn8s": "upscore8"}

# Our fc layer -> keras.applications.VGG16 Dense layer.
FCN_FC_IMAGENET_NAMES: dict[str, str] = {"fc6": "fc1", "fc7": "fc2"}


def _dense_to_conv(kernel_shape: tuple[int, int, int]):
    """Returns a transform reshaping `[dense_kernel, bias]` into a conv kernel and bias."""

    def transform(weights: list[np.ndarray]) -> list[np.ndarray]:
        kernel, bias = weights
        return [kernel.reshape(*kernel_shape, kernel.shape[-1]), bias]

    return transform


def load_vgg16_fcn_backbone(model: keras.Model, backbone_weights: str) -> list[str]:
    """Copies keras.applications VGG16 weights into an FCN's trunk and `fc6` / `fc7`.

    The convolutions are copied by name (`VGG16_IMAGENET_NAMES`); VGG16's `fc1` kernel
    `(25088, 4096)` becomes `fc6`'s `(7, 7, 512, 4096)` (row-major flattening of the 7x7x512
    `block5_pool` output, as Keras' `Flatten` does) and `fc2` becomes the 1x1 conv `fc7`.

    Args:
        model: An FCN built by this module.
        backbone_weights: `"imagenet"` or the path of a full `keras.applications.VGG16`
            (`include_top=True`) weight file.

    Returns:
        The names of the layers that received weights.
    """
    source = resolve_source_model(backbone_weights, keras.applications.VGG16)
    name_map = {**VGG16_IMAGENET_NAMES, **FCN_FC_IMAGENET_NAMES}
    transforms = {"fc6": _dense_to_conv((7, 7, 512)), "fc7": _dense_to_conv((1, 1, 4096))}
    loaded = transfer_weights(model, source, name_map, transforms)
    del source
    return loaded


def _check_arguments(num_classes, input_shape, backbone_weights, activation) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if input_shape is None or len(tuple(input_shape)) != 3 or input_shape[-1] is None:
        raise ValueError(
            f"input_shape must be (height, width, channels) with a known number of channels "
            f"(height and width may be None), got {input_shape!r}"
        )
    if backbone_weights is not None and backbone_weights != "imagenet":
        if not isinstance(backbone_weights, (str, os.PathLike)) or not os.path.exists(
            backbone_weights
        ):
            raise FileNotFoundError(
                f"backbone_weights={backbone_weights!r}: expected None, 'imagenet' or the path "
                "of an existing keras.applications.VGG16 (include_top=True) weight file"
            )
    if backbone_weights is not None and input_shape[-1] != 3:
        raise ValueError(
            f"backbone_weights={backbone_weights!r} needs 3 input channels, got "
            f"input_shape={tuple(input_shape)!r}"
        )
    if activation is not None:
        try:
            keras.activations.get(activation)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"activation must be None (logits) or a Keras activation such as 'softmax', "
                f"got {activation!r}"
            ) from error


def _fcn(
    variant: str,
    num_classes: int,
    input_shape: tuple[int | None, int | None, int],
    weights: str | None,
    backbone_weights: str | None,
    activation: str | None,
    name: str,
    dropout: float = 0.5,
    crf: bool = False,
) -> keras.Model:
    _check_arguments(num_classes, input_shape, backbone_weights, activation)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    features = vgg16_trunk(inputs)

    x = keras.layers.Conv2D(4096, 7, padding="same", activation="relu", name="fc6")(
        features["pool5"]
    )
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(4096, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    score = keras.layers.Conv2D(num_classes, 1, name="score_fr")(x)

    stride = 32
    for i, pool in enumerate(FCN_SKIPS[variant]):
        up_name = "upscore2" if i == 0 else f"upscore_{FCN_SKIPS[variant][i - 1]}"
        up = bilinear_upsampling(score, 2, num_classes, trainable=True, name=up_name)
        offset = bilinear_crop_offset(2)
        up = CropToMatch(offset=(offset, offset), name=f"{up_name}c")([up, features[pool]])
        skip = keras.layers.Conv2D(
            num_classes,
            1,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name=f"score_{pool}",
        )(features[pool])
        score = keras.layers.Add(name=f"fuse_{pool}")([up, skip])
        stride //= 2

    up = bilinear_upsampling(
        score, stride, num_classes, trainable=False, name=_FINAL_UPSCORE[variant]
    )
    offset = bilinear_crop_offset(stride)
    outputs = CropToMatch(offset=(offset, offset), name="score")([up, inputs])
    if activation is not None:
        act_name = f"score_{activation}" if isinstance(activation, str) else "score_activation"
        outputs = keras.layers.Activation(activation, name=act_name)(outputs)
    model = keras.Model(inputs, outputs, name=name)

    if backbone_weights is not None:
        load_vgg16_fcn_backbone(model, os.fspath(backbone_weights))
    if crf:
        model = with_crf(model, normalization="caffe")
    load_model_weights(model, weights)
    return model


def fcn32s(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "fcn32s",
    crf: bool = False,
) -> keras.Model:
    """Builds FCN-32s: VGG16, convolutional fc6/fc7, x32 bilinear upsampling of `score_fr`.

    Args:
        num_classes: Number of classes (21 for PASCAL VOC: 20 + background).
        input_shape: `(height, width, channels)`; height and width may be `None`. Any size
            works (see the module docstring for the alignment).
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        backbone_weights: `None`, `"imagenet"` (downloads keras.applications' VGG16) or the
            path of a `keras.applications.VGG16` (with top) weight file. Loads the
            convolutions and `fc6` / `fc7` (from VGG16's `fc1` / `fc2`).
        activation: `None` for logits, or a Keras activation applied over the classes
            (`"softmax"`).
        name: Model name.
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings;
            the input stays "caffe"-normalised and is de-normalised for the CRF). Call
            `with_crf` yourself for other settings.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An argument is invalid.
    """
    return _fcn(
        "fcn32s", num_classes, input_shape, weights, backbone_weights, activation, name, crf=crf
    )


def fcn16s(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "fcn16s",
    crf: bool = False,
) -> keras.Model:
    """Builds FCN-16s: FCN-32s plus the `score_pool4` skip fused at stride 16.

    Args:
        num_classes: Number of classes (21 for PASCAL VOC: 20 + background).
        input_shape: `(height, width, channels)`; height and width may be `None`.
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        backbone_weights: `None`, `"imagenet"` or the path of a `keras.applications.VGG16`
            (with top) weight file.
        activation: `None` for logits, or a Keras activation such as `"softmax"`.
        name: Model name.
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings;
            the input stays "caffe"-normalised and is de-normalised for the CRF). Call
            `with_crf` yourself for other settings.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An argument is invalid.
    """
    return _fcn(
        "fcn16s", num_classes, input_shape, weights, backbone_weights, activation, name, crf=crf
    )


def fcn8s(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "fcn8s",
    crf: bool = False,
) -> keras.Model:
    """Builds FCN-8s: FCN-16s plus the `score_pool3` skip fused at stride 8.

    Args:
        num_classes: Number of classes (21 for PASCAL VOC: 20 + background).
        input_shape: `(height, width, channels)`; height and width may be `None`.
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        backbone_weights: `None`, `"imagenet"` or the path of a `keras.applications.VGG16`
            (with top) weight file.
        activation: `None` for logits, or a Keras activation such as `"softmax"`.
        name: Model name.
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings;
            the input stays "caffe"-normalised and is de-normalised for the CRF). Call
            `with_crf` yourself for other settings.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An argument is invalid.
    """
    return _fcn(
        "fcn8s", num_classes, input_shape, weights, backbone_weights, activation, name, crf=crf
    )
