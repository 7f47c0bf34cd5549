"""Checks and conversions applied to a model before export."""

from __future__ import annotations

import keras
import numpy as np

from keras_dense.layers.crf_rnn import use_portable_crf
from keras_dense.layers.roi_pooling import use_portable_roi_pooling


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


def portable_model(model: keras.Model) -> keras.Model:
    """Switches RoIPooling and CRF-as-RNN layers to their pure-TensorFlow implementations.

    The compiled custom ops are faster on a CPU, but TF Serving cannot load them; the op
    audit refuses any export in which one remains.

    Args:
        model: The model (changed in place).

    Returns:
        The model.
    """
    use_portable_roi_pooling(model)
    use_portable_crf(model)
    return model
