"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015), on the VGG16 trunk.

Architecture (layer names follow the paper's Caffe models):

- `conv1_1` ... `pool5`: the VGG16 convolutions (`keras_dense.backbones.vgg16.vgg16_trunk`).
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

import keras

from keras_dense.apps.builder import build_model, document, makes
from keras_dense.backbones.registry import get_backbone
from keras_dense.backbones.vgg16 import load_vgg16_weights, vgg16_trunk
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


def fcn_graph(inputs, num_classes: int, variant: str, dropout: float = 0.5, fc_filters: int = 4096):
    """The FCN network from the image input to the `score` logits (no activation).

    Args:
        inputs: The image input tensor `(B, H, W, C)`.
        num_classes: Number of classes.
        variant: `"fcn32s"`, `"fcn16s"` or `"fcn8s"`.
        dropout: Rate of `drop6` / `drop7`.
        fc_filters: Filters of `fc6` / `fc7` (VGG16's 4096, which their weights need).

    Returns:
        The `score` tensor `(B, H, W, num_classes)`.
    """
    features = vgg16_trunk(inputs)

    x = keras.layers.Conv2D(fc_filters, 7, padding="same", activation="relu", name="fc6")(
        features["pool5"]
    )
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_filters, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    score = keras.layers.Conv2D(num_classes, 1, name="score_fr")(x)

    # The skip fusion: x2 upsampling, crop to the pool grid, add the zero-initialised skip.
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
    return CropToMatch(offset=(offset, offset), name="score")([up, inputs])


# The backbones FCN takes: VGG16, by the paper (its named taps pool3 / pool4 and fc6 / fc7).
FCN_BACKBONES = ("vgg16",)
# The width of VGG16's fully connected layers, which FCN's fc6 / fc7 take over.
VGG16_FC_FILTERS = 4096


def _fcn(
    variant: str,
    *,
    backbone: str,
    num_classes,
    input_shape,
    weights,
    backbone_weights,
    activation,
    name,
    crf,
    fc_filters,
):
    family = get_backbone(backbone, allowed=FCN_BACKBONES)
    if isinstance(fc_filters, bool) or not isinstance(fc_filters, int) or fc_filters < 1:
        raise ValueError(f"fc_filters must be a positive integer, got {fc_filters!r}")
    vgg16_fc = fc_filters == VGG16_FC_FILTERS
    return build_model(
        lambda inputs, classes: fcn_graph(inputs, classes, variant, fc_filters=fc_filters),
        load_backbone=lambda model, source: load_vgg16_weights(model, source, fc=vgg16_fc),
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        activation=activation,
        weights=weights,
        backbone_weights=backbone_weights,
        backbone_family=family,
        crf=crf,
        crf_normalization=family.normalization,
    )


FCN_DOC = """Builds {title}: {summary}

    Args:
        num_classes: Number of classes (21 for PASCAL VOC: 20 + background).
        input_shape: `(height, width, channels)`; height and width may be `None`. Any size
            works (see the module docstring of `keras_dense.apps.fcn` for the alignment).
        {weights_doc}
        backbone_weights: `None`, `"imagenet"` (downloads keras.applications' VGG16) or the
            path of a `keras.applications.VGG16` weight file (with or without its top), or a
            `keras.Model` with its layer names. Loads the convolutions and `fc6` / `fc7` (from
            VGG16's `fc1` / `fc2`; the VGG16 family's `load_weights`,
            `keras_dense.backbones.vgg16.load_vgg16_weights`); without the top `fc6` / `fc7`
            start fresh, and the builder says so in one logged line.
        {activation_doc}
        {name_doc}
        {crf_doc}
        backbone: `"vgg16"`, the only backbone FCN takes (by the paper; from the registry,
            `keras_dense.backbones`).
        fc_filters: Filters of `fc6` / `fc7`: VGG16's 4096 (the paper), which
            `backbone_weights` fill from VGG16's `fc1` / `fc2`; any other width (1024, as
            DeepLab's) starts them fresh and loads the convolutions only.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` to `(B, H, W, num_classes)`.

    Raises:
        ValueError: An argument is invalid.
        FileNotFoundError: `weights` or `backbone_weights` is a missing file.
    """


@document(
    FCN_DOC,
    title="FCN-32s",
    summary="VGG16, convolutional fc6/fc7, x32 bilinear upsampling of `score_fr`.",
    crf_normalization='"caffe" mode',
)
@makes("segmentation")
def fcn32s(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "fcn32s",
    crf: bool | dict = False,
    backbone: str = "vgg16",
    fc_filters: int = VGG16_FC_FILTERS,
) -> keras.Model:
    return _fcn("fcn32s", **locals())  # the arguments above, by name


@document(
    FCN_DOC,
    title="FCN-16s",
    summary="FCN-32s plus the `score_pool4` skip fused at stride 16.",
    crf_normalization='"caffe" mode',
)
@makes("segmentation")
def fcn16s(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "fcn16s",
    crf: bool | dict = False,
    backbone: str = "vgg16",
    fc_filters: int = VGG16_FC_FILTERS,
) -> keras.Model:
    return _fcn("fcn16s", **locals())  # the arguments above, by name


@document(
    FCN_DOC,
    title="FCN-8s",
    summary="FCN-16s plus the `score_pool3` skip fused at stride 8.",
    crf_normalization='"caffe" mode',
)
@makes("segmentation")
def fcn8s(
    num_classes: int = 21,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | None = None,
    backbone_weights: str | None = None,
    activation: str | None = None,
    name: str = "fcn8s",
    crf: bool | dict = False,
    backbone: str = "vgg16",
    fc_filters: int = VGG16_FC_FILTERS,
) -> keras.Model:
    return _fcn("fcn8s", **locals())  # the arguments above, by name
