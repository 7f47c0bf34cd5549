"""Copying pretrained weights into our models by layer name."""

from __future__ import annotations

import os
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


def load_model_weights(model: keras.Model, weights: str | None) -> None:
    """Loads a full-model weight file (the builders' `weights=` argument).

    Args:
        model: The freshly built model.
        weights: `None` (keep the initialisation) or a path to a `.weights.h5` file, or
            a `.keras` file whose weights are copied.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    if weights is None:
        return
    if not os.path.exists(weights):
        raise FileNotFoundError(
            f"weights={weights!r}: expected None or the path of an existing weight file"
        )
    if weights.endswith(".keras"):
        source = keras.models.load_model(weights, compile=False)
        model.set_weights(source.get_weights())
    else:
        model.load_weights(weights)
