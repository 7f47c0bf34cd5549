"""The backbone contract: one trunk, named feature maps by stride.

A backbone family (VGG16, ResNet-50, MobileNetV2, ...) is described once by a `Backbone`
and registered by name (`keras_dense.backbones.registry`). Every builder with a trunk takes
`backbone=` and asks the family for its features; no builder knows a family by name.

The contract:

- `Backbone.features(x, output_stride, **options)` builds the trunk's layers on the image
  tensor `x` and returns `{stride: tensor}`: the last feature map at each stride the network
  reaches, `{4: C2, 8: C3, 16: C4, 32: C5}` for a classification network (VGG16 and the
  compact trunks also have 1 and 2). With `output_stride` smaller than the network's own,
  the later downsamplings are removed and the later convolutions dilated (DeepLab's atrous
  algorithm), so the deeper stages all sit at `output_stride` and the dict's largest key is
  `output_stride`. Layers keep the keras.applications names, so that pretrained weights load
  by name into any model built on them.
- `Backbone.model(...)` wraps those features as a functional `keras.Model` with a dict of
  outputs keyed `"stride_4"`, `"stride_8"`, ... (string keys: a `.keras` file turns int keys
  into strings).
- `Backbone.load_weights(model, backbone_weights)` copies `"imagenet"` (or a weight file of
  the keras.applications network, or a model with its layer names) into the backbone layers
  of `model`, by layer name, and reports which (`pretrained_weights.LoadReport`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import keras

from keras_dense.backbones.pretrained_weights import (
    LoadReport,
    attach_record,
    check_weights_argument,
    plain_argument,
)

FeatureFunction = Callable[..., dict[int, "keras.KerasTensor"]]
WeightLoader = Callable[[keras.Model, object], LoadReport]


def stride_key(stride: int) -> str:
    """The output name of the feature map at `stride` in a backbone model (`"stride_16"`)."""
    return f"stride_{int(stride)}"


def features_by_stride(outputs: Mapping[str, object]) -> dict[int, object]:
    """Turns a backbone model's outputs (`{"stride_16": ...}`) into `{16: ...}`."""
    result = {}
    for key, value in outputs.items():
        prefix, _, number = str(key).partition("_")
        if prefix != "stride" or not number.isdigit():
            raise ValueError(f"backbone output {key!r}: expected a name like 'stride_16'")
        result[int(number)] = value
    return dict(sorted(result.items()))


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A registered backbone family.

    Attributes:
        name: Registry name (`"resnet50"`).
        features: `features(x, output_stride, **options) -> {stride: tensor}`, building the
            trunk's layers on `x` (see the module docstring).
        output_strides: The output strides the family can be built at; the largest is the
            network's own, the smaller ones dilate (absent where the family cannot).
        default_output_stride: The stride used when a builder passes `output_stride=None`.
        normalization: The input normalisation the family's weights expect (a mode of
            `keras_dense.utils.normalization`: `"caffe"`, `"tf"`, `"torch"` or `None` for
            raw 0-255 RGB, for networks that normalise inside).
        weights_source: The pretrained network (`"keras.applications.ResNet50"`), or `None`
            for a family that is never pretrained.
        load_weights: `load_weights(model, backbone_weights) -> LoadReport` (which layers
            were loaded, `keras_dense.backbones.pretrained_weights`); `None`
            exactly when `weights_source` is `None`.
        options: Names of the family's own keyword options (`("multi_grid",)`).
        input_channels: Channels the family requires (3 for pretrained families), or `None`.
    """

    name: str
    features: FeatureFunction
    output_strides: tuple[int, ...]
    default_output_stride: int
    normalization: str | None
    weights_source: str | None = None
    load_weights: WeightLoader | None = None
    options: tuple[str, ...] = ()
    input_channels: int | None = 3

    def __post_init__(self):
        if self.default_output_stride not in self.output_strides:
            raise ValueError(
                f"backbone {self.name!r}: default_output_stride={self.default_output_stride} "
                f"is not one of output_strides={self.output_strides}"
            )
        if (self.weights_source is None) != (self.load_weights is None):
            raise ValueError(f"backbone {self.name!r}: weights_source and load_weights go together")

    @property
    def pretrained(self) -> bool:
        """Whether `backbone_weights` can be given for this family."""
        return self.load_weights is not None

    def check(self, output_stride: int | None = None, backbone_weights=None, **options) -> int:
        """Checks the arguments a builder passes for this family.

        Args:
            output_stride: `None` (the default stride) or one of `output_strides`.
            backbone_weights: `None`, `"imagenet"`, a weight file path (with or without the
                network's top) or a `keras.Model` with the keras.applications layer names.
            **options: The family's own options; an option given as `None` means its
                default and is accepted by every family.

        Returns:
            The output stride to build at.

        Raises:
            ValueError: A stride, option or `backbone_weights` the family does not take,
                named with what it takes.
            FileNotFoundError: `backbone_weights` is a path that does not exist.
        """
        stride = self.default_output_stride if output_stride is None else output_stride
        if isinstance(stride, bool) or stride not in self.output_strides:
            raise ValueError(
                f"output_stride={output_stride!r} for backbone={self.name!r}: expected one "
                f"of {list(self.output_strides)}"
            )
        unknown = sorted(k for k, v in options.items() if v is not None and k not in self.options)
        if unknown:
            takes = f"it takes {list(self.options)}" if self.options else "it takes no options"
            raise ValueError(
                f"{', '.join(unknown)} applies to other backbones, not to "
                f"backbone={self.name!r} ({takes})"
            )
        if backbone_weights is not None:
            if not self.pretrained:
                raise ValueError(
                    f"backbone_weights={backbone_weights!r}: backbone={self.name!r} has no "
                    "pretrained weights, it is never pretrained (train it from scratch with "
                    "backbone_weights=None)"
                )
            check_weights_argument(backbone_weights, self.weights_source)
        return stride

    def apply(self, x, output_stride: int | None = None, **options) -> dict[int, object]:
        """Builds the trunk on the tensor `x`; returns `{stride: feature map}`.

        Raises:
            ValueError: See `check`.
        """
        options = {key: value for key, value in options.items() if value is not None}
        stride = self.check(output_stride, **options)
        features = self.features(x, stride, **options)
        return dict(sorted(features.items()))

    def model(
        self,
        input_shape: tuple = (None, None, 3),
        output_stride: int | None = None,
        weights: str | None = None,
        name: str | None = None,
        **options,
    ) -> keras.Model:
        """The trunk as a functional model with outputs `{"stride_4": C2, ...}`.

        Args:
            input_shape: `(height, width, channels)`; sizes may be `None`.
            output_stride: See `check`.
            weights: `None`, `"imagenet"`, a weight file of `weights_source` or a model
                (see `check`).
            name: Model name (default `{name}_os{output_stride}`).
            **options: The family's own options.

        Returns:
            The model; its input is named `image`.
        """
        stride = self.check(output_stride, weights, **options)
        if self.input_channels is not None and input_shape[-1] != self.input_channels:
            raise ValueError(
                f"input_shape={tuple(input_shape)!r}: backbone={self.name!r} expects "
                f"{self.input_channels} channels"
            )
        image = keras.Input(shape=input_shape, name="image")
        features = self.apply(image, stride, **options)
        model = keras.Model(
            image,
            {stride_key(s): t for s, t in features.items()},
            name=name or f"{self.name}_os{stride}",
        )
        if weights is not None:
            attach_record(model, self.load_weights(model, plain_argument(weights)))
        return model
