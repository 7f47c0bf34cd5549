"""Copying pretrained keras.applications weights into our models by layer name.

A family built from keras.applications keeps its layer names, so its loader (`by_name_loader`)
builds the keras.applications network with the wanted weights and copies every backbone layer
of the target model from the source layer of the same name (`transfer_weights`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Callable

import keras
import numpy as np


def resolve_source_model(backbone_weights: str, factory: Callable[..., keras.Model]) -> keras.Model:
    """Builds the pretrained source network for `backbone_weights`.

    Args:
        backbone_weights: `"imagenet"` (downloads the keras.applications weights, needs the
            network the first time) or the path of a weight file for the network `factory`
            builds (`.weights.h5` or a Keras-2 style `.h5`).
        factory: A keras.applications constructor such as `keras.applications.VGG16`. It is
            called with `weights=` and `include_top=True`.

    Returns:
        The source model with its weights loaded.

    Raises:
        FileNotFoundError: `backbone_weights` is a path that does not exist.
    """
    if backbone_weights == "imagenet":
        return factory(weights="imagenet", include_top=True)
    if not os.path.exists(backbone_weights):
        raise FileNotFoundError(
            f"backbone_weights={backbone_weights!r}: expected 'imagenet', None or the path of "
            f"an existing weight file for {getattr(factory, '__name__', factory)}"
        )
    return factory(weights=backbone_weights, include_top=True)


def transfer_weights(
    target: keras.Model,
    source: keras.Model,
    name_map: dict[str, str],
    transforms: dict[str, Callable[[list[np.ndarray]], list[np.ndarray]]] | None = None,
) -> list[str]:
    """Copies weights from `source` layers into `target` layers.

    Args:
        target: Model receiving the weights.
        source: Model providing them.
        name_map: `{target_layer_name: source_layer_name}`. Target names missing from
            `target` are ignored (a builder may not have every layer).
        transforms: Optional `{target_layer_name: fn}` applied to the source weight list
            before assignment (e.g. reshaping a Dense kernel into a conv kernel).

    Returns:
        The names of the target layers that received weights.

    Raises:
        ValueError: A mapped layer's weight shapes do not match after the transform.
    """
    transforms = transforms or {}
    target_names = {layer.name for layer in target.layers}
    loaded = []
    for target_name, source_name in name_map.items():
        if target_name not in target_names:
            continue
        weights = source.get_layer(source_name).get_weights()
        if target_name in transforms:
            weights = transforms[target_name](weights)
        layer = target.get_layer(target_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ValueError(
                f"Cannot load {source.name}/{source_name} into layer {target_name!r}: "
                f"expected weight shapes {expected}, got {got}"
            )
        layer.set_weights(weights)
        loaded.append(target_name)
    return loaded


def notop_factory(constructor: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    """A `resolve_source_model` factory building `constructor`'s network without classifier.

    A backbone never uses the classifier: the smaller "notop" file is preferred, and a weight
    file saved from the full classifier is accepted too.
    """

    def build(weights: str, include_top: bool = False) -> keras.Model:
        try:
            return constructor(weights=weights, include_top=False, input_shape=(224, 224, 3))
        except ValueError:
            if weights == "imagenet":
                raise
            return constructor(weights=weights, include_top=True)

    build.__name__ = constructor.__name__
    return build


def weighted_layer_names(features: Callable[..., Mapping], output_stride: int) -> frozenset[str]:
    """The names of the weighted layers a family's `features` function builds.

    Builds the features once on a symbolic 3-channel input of unknown size.
    """
    image = keras.Input((None, None, 3))
    outputs = features(image, output_stride)
    model = keras.Model(image, list(outputs.values()))
    return frozenset(layer.name for layer in model.layers if layer.weights)


def by_name_loader(
    constructor: Callable[..., keras.Model],
    features: Callable[..., Mapping],
    output_stride: int,
    extra_names: Callable[[keras.Model], dict[str, str]] | None = None,
) -> Callable[[keras.Model, str], list[str]]:
    """A `Backbone.load_weights` for a family rebuilt with keras.applications layer names.

    Args:
        constructor: The keras.applications constructor (`keras.applications.ResNet50`).
        features: The family's `features(x, output_stride)`; the layers it builds at
            `output_stride` (the network's own) are the backbone layers.
        output_stride: The stride at which `features` builds every backbone layer.
        extra_names: `extra_names(source) -> {our name: source name}` for backbone layers
            named differently from the source (Xception's unnamed residual convolutions).

    Returns:
        `load(model, backbone_weights) -> loaded layer names`: copies `"imagenet"` or a
        weight file of the keras.applications network (with or without its classifier) into
        the backbone layers of `model`, which may hold other layers (heads) too.
    """
    backbone_layers = functools.cache(lambda: weighted_layer_names(features, output_stride))
    name = constructor.__name__

    def load(model: keras.Model, backbone_weights: str) -> list[str]:
        source = resolve_source_model(backbone_weights, notop_factory(constructor))
        source_names = {layer.name for layer in source.layers}
        ours = [
            layer.name
            for layer in model.layers
            if layer.weights and layer.name in backbone_layers()
        ]
        if not ours:
            raise ValueError(
                f"backbone_weights={backbone_weights!r}: the model has no {name} layers"
            )
        mapping = {n: n for n in ours if n in source_names}
        if extra_names is not None:
            mapping.update({k: v for k, v in extra_names(source).items() if k in ours})
        missing = [n for n in ours if n not in mapping]
        if missing:
            raise ValueError(
                f"backbone_weights={backbone_weights!r}: no weights for the {name} layers "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''} in {source.name}"
            )
        return transfer_weights(model, source, mapping)

    return load
