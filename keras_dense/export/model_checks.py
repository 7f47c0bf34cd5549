"""Checks and conversions applied to a model before export."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import keras
import numpy as np

from keras_dense.layers.roi_pooling import use_portable_roi_pooling

# Where the CRF-as-RNN layer's portable switch may live (first found is used).
_PORTABLE_CRF_MODULES = ("keras_dense.layers.crf_rnn", "keras_dense.crf")


class NonFiniteWeightsError(ValueError):
    """The model holds NaN or infinite weights; `weights` lists `(path, count)`."""

    def __init__(self, model_name: str, weights: list[tuple[str, int]]):
        self.weights = weights
        listed = ", ".join(f"{path} ({count} values)" for path, count in weights[:10])
        more = f" and {len(weights) - 10} more" if len(weights) > 10 else ""
        super().__init__(
            f"model {model_name!r} has non-finite (NaN or inf) weights, refusing to export: "
            f"{listed}{more}"
        )


def check_finite_weights(model: keras.Model) -> None:
    """Raises `NonFiniteWeightsError` naming each layer weight holding NaN or inf.

    Args:
        model: The model.
    """
    bad = []
    for variable in model.weights:
        values = np.asarray(variable.numpy())
        if not np.issubdtype(values.dtype, np.floating):
            continue
        count = int(values.size - np.count_nonzero(np.isfinite(values)))
        if count:
            bad.append((variable.path, count))
    if bad:
        raise NonFiniteWeightsError(model.name, bad)


def _all_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    for child in getattr(layer, "layers", ()):
        yield child
        yield from _all_layers(child)


def _has_crf_layer(model: keras.Model) -> bool:
    return any("crf" in type(layer).__name__.lower() for layer in _all_layers(model))


def portable_model(model: keras.Model) -> keras.Model:
    """Switches RoIPooling and CRF layers to their pure-TensorFlow implementations.

    RoIPooling layers go through `use_portable_roi_pooling`; CRF layers through
    `use_portable_crf(model)` of the CRF module when it is installed; a model without CRF
    layers is otherwise returned as it is.

    Args:
        model: The model.

    Returns:
        The model to export (the same object unless `use_portable_crf` returned a new one).
    """
    use_portable_roi_pooling(model)
    if not _has_crf_layer(model):
        return model
    for name in _PORTABLE_CRF_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        switch = getattr(module, "use_portable_crf", None)
        if switch is not None:
            result = switch(model)
            return result if isinstance(result, keras.Model) else model
    return model  # the op audit refuses the export if a custom op remains
