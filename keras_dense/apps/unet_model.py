"""U-Net (Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015).

Architecture (Fig. 1 of the paper, `depth=5` levels, `filters=64`):

- Contracting path, level `l = 0 ... depth-1` with `filters * 2**l` channels: two 3x3
  convolutions with ReLU, then (except at the bottom) 2x2 max pooling with stride 2.
- Expansive path, level `l = depth-2 ... 0`: a 2x2 up-convolution (`Conv2DTranspose`, stride 2)
  with ReLU that halves the channels, concatenation with the cropped feature map of the
  contracting path at the same level, two 3x3 convolutions with ReLU.
- A final 1x1 convolution to `num_classes`, logits by default.
- `dropout > 0` adds dropout "at the end of the contracting path": after the last two levels
  of the contracting path (the level before the bottom, before its pooling and skip, and the
  bottom), as in the authors' released Caffe model.
- `batch_norm=True` (not in the paper) puts BatchNormalization between every convolution or
  up-convolution and its ReLU.

Layer names are those of the authors' released Caffe model, generated for any depth:
`conv_d0a-b`, `conv_d0b-c`, `pool_d0c-1a`, ..., `conv_d4b-c`, `dropout_d4c`,
`upconv_d4c_u3a`, `crop_d3c-d3cc`, `concat_d3cc_u3a-b`, `conv_u3b-c`, `conv_u3c-d`, ...,
`upconv_u1d_u0a`, ..., `conv_u0c-d`, `conv_u0d-score`.

Padding:

- `padding="valid"` is the paper's network: unpadded convolutions, so the output is smaller
  than the input (572 -> 388 for depth 5) and the skip connections are centre-cropped
  (`CropToMatch`). Every 2x2 pooling must see an even size, so only some input sizes are
  valid: use `unet_output_size` to check one and `unet_input_size` to find one. The output
  pixel `(i, j)` corresponds to the input pixel `(i + m, j + m)` with the margin
  `m = unet_margin(depth) = 3 * 2**depth - 4` (92 for depth 5). This is what
  `keras_dense.predict_tiled` (overlap-tile strategy) relies on.
- `padding="same"`: zero-padded convolutions, output size = input size. For sizes divisible
  by `2**(depth-1)` this is the usual "same" U-Net. Any other size works too: the poolings
  round up (`padding="same"`, as Caffe) and each up-convolution output, then one cell too
  large, is cropped at its top-left corner to the skip's size (the up-convolution of cell
  `i` covers pixels `2i` and `2i + 1`, so this crop keeps the grids aligned).

Encoder (`backbone="resnet50"`, `"mobilenetv2"`, ... any registered name of
`keras_dense.backbones`, as segmentation_models pairs any encoder with a U-Net decoder):

- The contracting path is the backbone, built at its own (largest) output stride with its
  keras.applications layer names, so `backbone_weights` load into it by name through the
  family's loader. Its features at strides 4, 8, 16 and 32 (those the family has: the compact
  trunk stops at 8) are the levels; finer ones (VGG16's and compact's 1 and 2) are not used.
- The expansive path starts at the deepest features (after `dropout`, layer
  `dropout_encoder`, when `dropout > 0`) and, for each shallower level at stride `s`,
  upsamples bilinearly to its size (`decoder{s}_upsample`, `ResizeToMatch`, so odd sizes
  work), concatenates it (`decoder{s}_concat`) and applies two 3x3 conv-BN-ReLU
  (`decoder{s}_conv1`, `decoder{s}_conv2`) with `filters * s / 4` channels (256, 128, 64 at
  strides 16, 8, 4 for `filters=64`). BN can be turned off with `batch_norm=False`.
- A 1x1 classifier (`logits`) and bilinear upsampling to the input size (`upsample_logits`):
  the output has the input's size for any input size. (The classifier comes first: a 1x1
  convolution and bilinear interpolation commute, and classifying first is cheaper.)
- Inputs are normalised as the family expects (`get_backbone(backbone).normalization`: "tf"
  for MobileNetV2, Xception and compact, "caffe" for ResNet and VGG16), and `crf=True`
  inverts that normalisation.
- The valid, unpadded network and its overlap-tile geometry (`unet_margin`, `padding="valid"`)
  belong to the plain U-Net only: with a backbone `padding="valid"` and `depth` are refused.
"""

from __future__ import annotations

import keras

from keras_dense.apps.builder import build_model, makes
from keras_dense.backbones.registry import get_backbone
from keras_dense.layers.resizing import CropToMatch, ResizeToMatch

_CONVS_PER_LEVEL = 2
_KERNEL = 3
# The backbone strides whose features an encoder U-Net uses as levels.
ENCODER_STRIDES = (4, 8, 16, 32)
# The plain U-Net's defaults (the paper's network) for the arguments whose `None` default
# depends on `backbone`.
_PLAIN_DEFAULTS = {"input_shape": (572, 572, 1), "padding": "valid", "depth": 5}


def _check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer (5 in the paper), got {depth!r}")
    return depth


def unet_margin(depth: int = 5) -> int:
    """Pixels lost on each side by the valid U-Net: `(input - output) / 2`.

    Args:
        depth: Number of levels (5 in the paper).

    Returns:
        The margin, `3 * 2**depth - 4` (92 for the paper's network).
    """
    depth = _check_depth(depth)
    # Contracting level l loses 4 pixels at scale 2**l, expansive level l (< depth - 1) too.
    lost = sum(4 * 2**level for level in range(depth))
    lost += sum(4 * 2**level for level in range(depth - 1))
    return lost // 2


def unet_output_size(input_size: int, depth: int = 5) -> int:
    """Output size of the valid U-Net along one axis.

    Args:
        input_size: Input height or width.
        depth: Number of levels (5 in the paper).

    Returns:
        The output size (388 for the paper's 572).

    Raises:
        ValueError: `input_size` is not valid: a 2x2 pooling would see an odd size, or a
            feature map would vanish.
    """
    depth = _check_depth(depth)
    size = int(input_size)
    for level in range(depth):
        size -= 2 * _CONVS_PER_LEVEL
        if size < 1:
            raise ValueError(
                f"input_size={input_size}: too small for a valid U-Net of depth {depth} "
                f"(the contracting path vanishes at level {level}); the smallest valid size "
                f"is {unet_input_size(1, depth)}"
            )
        if level < depth - 1:
            if size % 2:
                raise ValueError(
                    f"input_size={input_size}: the pooling after level {level} would see the "
                    f"odd size {size}; valid sizes for depth {depth} are "
                    f"{_valid_sizes_hint(input_size, depth)}"
                )
            size //= 2
    for level in range(depth - 2, -1, -1):
        size = 2 * size - 2 * _CONVS_PER_LEVEL
        if size < 1:
            raise ValueError(
                f"input_size={input_size}: too small for a valid U-Net of depth {depth} (the "
                f"expansive path vanishes at level {level}); the smallest valid size is "
                f"{unet_input_size(1, depth)}"
            )
    return size


def unet_input_size(min_output_size: int, depth: int = 5) -> int:
    """Smallest valid input size whose valid U-Net output is at least `min_output_size`.

    Valid sizes are `2**(depth-1) * k + 4 * (2**(depth-1) - 1)` (for depth 5: 16 k + 60,
    e.g. 572); the output is then the input minus `2 * unet_margin(depth)`.

    Args:
        min_output_size: Desired output size along one axis (>= 1).
        depth: Number of levels (5 in the paper).

    Returns:
        The input size.
    """
    depth = _check_depth(depth)
    if min_output_size < 1:
        raise ValueError(f"min_output_size must be >= 1, got {min_output_size!r}")
    step = 2 ** (depth - 1)
    offset = 4 * (step - 1)
    size = min_output_size + 2 * unet_margin(depth)
    return offset + step * -(-(size - offset) // step)


def _valid_sizes_hint(size: int, depth: int) -> str:
    step = 2 ** (depth - 1)
    offset = 4 * (step - 1)
    smallest = unet_input_size(1, depth)
    below = max(offset + step * ((size - offset) // step), smallest)
    return f"{step} k + {offset} from {smallest} on, e.g. {below} or {below + step}"


def _conv(
    x,
    filters: int,
    kernel: int,
    padding: str,
    batch_norm: bool,
    name: str,
    transpose: bool = False,
):
    """Convolution (stride 2 transposed convolution if `transpose`), optional BN, ReLU."""
    layer_cls = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    x = layer_cls(
        filters,
        kernel,
        strides=2 if transpose else 1,
        padding=padding,
        activation=None if batch_norm else "relu",
        kernel_initializer="he_normal",  # the paper's Gaussian with std sqrt(2 / N)
        name=name,
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _check_valid_input(input_shape: tuple, depth: int) -> None:
    for size in input_shape[:2]:
        if size is not None:
            try:
                unet_output_size(size, depth)
            except ValueError as error:
                message = f"input_shape={input_shape!r} with padding='valid': {error}"
                raise ValueError(message) from None


def _check_common(filters, dropout) -> None:
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"filters must be a positive integer, got {filters!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _check_encoder_arguments(backbone: str, padding, depth) -> None:
    if padding == "valid":
        raise ValueError(
            f"padding='valid' with backbone={backbone!r}: the valid (unpadded) U-Net and its "
            "overlap-tile geometry are the plain U-Net's (backbone=None); with an encoder the "
            "output has the input's size: use padding=None or 'same'"
        )
    if padding not in (None, "same"):
        raise ValueError(f"padding={padding!r} with backbone={backbone!r}: expected None or 'same'")
    if depth is not None:
        raise ValueError(
            f"depth={depth!r} with backbone={backbone!r}: depth is the plain U-Net's "
            "(backbone=None); an encoder's levels are its strides 4 to 32, use depth=None"
        )


@makes("segmentation")
def unet(
    num_classes: int = 2,
    input_shape: tuple[int | None, int | None, int] | None = None,
    padding: str | None = None,
    filters: int = 64,
    depth: int | None = None,
    batch_norm: bool | None = None,
    dropout: float = 0.0,
    weights: str | None = None,
    activation: str | None = None,
    name: str | None = None,
    crf: bool | dict = False,
    backbone: str | None = None,
    backbone_weights: str | None = None,
) -> keras.Model:
    """Builds U-Net: the paper's network, or a U-Net decoder on a registered backbone.

    Args:
        num_classes: Number of output classes (2 in the paper: cell / background).
        input_shape: `(height, width, channels)`; height and width may be `None`. With
            `padding="valid"` static sizes must be valid (see `unet_output_size`). `None`
            means `(572, 572, 1)` (the paper's tile) without a backbone and
            `(None, None, 3)` with one.
        padding: `"valid"` (the paper: output smaller than the input by
            `2 * unet_margin(depth)`) or `"same"` (output = input, any size). `None` means
            `"valid"` without a backbone; with a backbone the output always has the input's
            size and only `None` or `"same"` are accepted.
        filters: Channels of the first level, doubled at each level (64 in the paper). With a
            backbone: the channels of the stride-4 decoder stage, doubled at each coarser
            one (`filters * stride / 4`).
        depth: Number of levels including the bottom one (`None`: 5, the paper). Not with a
            backbone, whose strides set the levels.
        batch_norm: Add BatchNormalization before every ReLU (not in the paper). `None`
            means `False` without a backbone and `True` (conv-BN-ReLU decoder) with one.
        dropout: Dropout rate at the end of the contracting path (the paper uses dropout
            there, 0.5 in the released model); 0 adds no Dropout layers. With a backbone:
            one Dropout on the deepest features.
        weights: `None` or the path of a full-model weight file (`.weights.h5` or `.keras`).
        activation: `None` for logits, or a Keras activation such as `"softmax"`.
        name: Model name; `None` means `"unet"` (`"unet_{backbone}"` with a backbone).
        crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`, default CrfRnn settings)
            fed with the input de-normalised from the pipelines' default "caffe" mode
            (centre-cropped to the output with "valid" padding), or from the backbone's
            normalisation. Call `with_crf` yourself for another normalisation.
        backbone: `None` for the plain U-Net, or a registered backbone
            (`keras_dense.backbones.backbone_names()`) as the encoder (module docstring);
            normalise inputs as `get_backbone(backbone).normalization` says.
        backbone_weights: With a backbone: `None`, `"imagenet"` or the path of a weight file
            of the backbone's keras.applications network, loaded by layer name
            (`get_backbone(backbone).load_weights`).

    Returns:
        A functional `keras.Model`: `(B, H, W, C)` to `(B, H, W, num_classes)` with
        `padding="same"` or a backbone, to `(B, H - 2m, W - 2m, num_classes)` with
        `padding="valid"`, `m = unet_margin(depth)`.

    Raises:
        ValueError: An argument is invalid, or does not apply with (or without) a backbone.
    """
    _check_common(filters, dropout)
    if backbone is None:
        graph, options = _plain_unet(
            input_shape, padding, filters, depth, batch_norm, dropout, backbone_weights
        )
    else:
        graph, options = _encoder_unet(
            backbone, input_shape, padding, filters, depth, batch_norm, dropout, backbone_weights
        )
    if name is not None:
        options["name"] = name
    return build_model(
        graph, num_classes=num_classes, activation=activation, weights=weights, crf=crf, **options
    )


def _plain_unet(input_shape, padding, filters, depth, batch_norm, dropout, backbone_weights):
    """The paper's U-Net: `(graph, build_model options)` (arguments as `unet`'s)."""
    padding = _PLAIN_DEFAULTS["padding"] if padding is None else padding
    depth = _check_depth(_PLAIN_DEFAULTS["depth"] if depth is None else depth)
    batch_norm = bool(batch_norm)
    if backbone_weights is not None:
        raise ValueError(
            f"backbone_weights={backbone_weights!r} with backbone=None: the plain U-Net has no "
            "pretrained encoder; name a backbone (keras_dense.backbones.backbone_names())"
        )
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' (the paper) or 'same', got {padding!r}")

    def graph(inputs, classes: int):
        if padding == "valid":
            _check_valid_input(tuple(inputs.shape[1:]), depth)
        return unet_graph(inputs, classes, padding, filters, depth, batch_norm, dropout)

    options = {
        "input_shape": _PLAIN_DEFAULTS["input_shape"] if input_shape is None else input_shape,
        "name": "unet",
        "crf_normalization": "caffe",
    }
    return graph, options


def _encoder_unet(
    backbone, input_shape, padding, filters, depth, batch_norm, dropout, backbone_weights
):
    """U-Net on `backbone`: `(graph, build_model options)` (arguments as `unet`'s)."""
    family = get_backbone(backbone)
    _check_encoder_arguments(backbone, padding, depth)
    family.check(max(family.output_strides), backbone_weights)
    batch_norm = True if batch_norm is None else bool(batch_norm)

    def graph(inputs, classes: int):
        return unet_encoder_graph(inputs, classes, backbone, filters, batch_norm, dropout)

    options = {
        "input_shape": (None, None, 3) if input_shape is None else input_shape,
        "name": f"unet_{backbone}",
        "backbone_weights": backbone_weights,
        "load_backbone": family.load_weights,
        "backbone_source": family.weights_source or family.name,
        "input_channels": family.input_channels,
        "crf_normalization": family.normalization,
    }
    return graph, options


def unet_encoder_graph(
    inputs,
    num_classes: int,
    backbone: str,
    filters: int = 64,
    batch_norm: bool = True,
    dropout: float = 0.0,
):
    """The encoder U-Net from the image input to the upsampled logits (module docstring).

    Args:
        inputs: The image input tensor `(B, H, W, C)`.
        num_classes: Number of classes.
        backbone: The registered backbone, built at its largest output stride.
        filters: Channels of the stride-4 decoder stage (`filters * s / 4` at stride `s`).
        batch_norm: BatchNormalization before every decoder ReLU.
        dropout: Dropout rate on the deepest features.

    Returns:
        The `upsample_logits` tensor `(B, H, W, num_classes)`.
    """
    family = get_backbone(backbone)
    features = family.apply(inputs, max(family.output_strides))
    levels = sorted((s for s in features if s in ENCODER_STRIDES), reverse=True)
    levels = levels or [max(features)]
    x = features[levels[0]]
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout_encoder")(x)
    for stride in levels[1:]:
        skip = features[stride]
        width = max(filters * stride // 4, 1)
        up = ResizeToMatch(interpolation="bilinear", name=f"decoder{stride}_upsample")([x, skip])
        x = keras.layers.Concatenate(name=f"decoder{stride}_concat")([up, skip])
        x = _conv(x, width, _KERNEL, "same", batch_norm, f"decoder{stride}_conv1")
        x = _conv(x, width, _KERNEL, "same", batch_norm, f"decoder{stride}_conv2")
    x = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    return ResizeToMatch(interpolation="bilinear", name="upsample_logits")([x, inputs])


def unet_graph(
    inputs,
    num_classes: int,
    padding: str = "valid",
    filters: int = 64,
    depth: int = 5,
    batch_norm: bool = False,
    dropout: float = 0.0,
):
    """U-Net from the image input to the `conv_u0d-score` logits (no activation).

    Args:
        inputs: The image input tensor `(B, H, W, C)`.
        num_classes: Number of classes.
        padding: `"valid"` or `"same"` (see `unet`).
        filters: Channels of the first level.
        depth: Number of levels.
        batch_norm: BatchNormalization before every ReLU.
        dropout: Dropout rate at the end of the contracting path.

    Returns:
        The score tensor.
    """
    x = inputs
    skips = []
    for level in range(depth):
        width = filters * 2**level
        x = _conv(x, width, _KERNEL, padding, batch_norm, f"conv_d{level}a-b")
        x = _conv(x, width, _KERNEL, padding, batch_norm, f"conv_d{level}b-c")
        if dropout > 0 and level >= depth - 2:
            x = keras.layers.Dropout(dropout, name=f"dropout_d{level}c")(x)
        if level < depth - 1:
            skips.append(x)
            x = keras.layers.MaxPooling2D(
                2, strides=2, padding=padding, name=f"pool_d{level}c-{level + 1}a"
            )(x)

    source = f"d{depth - 1}c"
    for level in range(depth - 2, -1, -1):
        width = filters * 2**level
        up_name = f"upconv_{source}_u{level}a"
        up = _conv(x, width, 2, "valid", batch_norm, up_name, transpose=True)
        skip = skips[level]
        if padding == "valid":
            skip = CropToMatch(name=f"crop_d{level}c-d{level}cc")([skip, up])
        else:
            up = CropToMatch(offset=(0, 0), name=f"crop_u{level}a-d{level}c")([up, skip])
        x = keras.layers.Concatenate(name=f"concat_d{level}cc_u{level}a-b")([skip, up])
        x = _conv(x, width, _KERNEL, padding, batch_norm, f"conv_u{level}b-c")
        x = _conv(x, width, _KERNEL, padding, batch_norm, f"conv_u{level}c-d")
        source = f"u{level}d"

    return keras.layers.Conv2D(num_classes, 1, name="conv_u0d-score")(x)
