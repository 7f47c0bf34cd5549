"""One walk over a model's layers, nested models included."""

from __future__ import annotations

from collections.abc import Iterator

import keras


def iter_layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Yields every layer of `model` and, recursively, of the models nested in it.

    Uses only the public `layers` attribute (`keras.Model`, `keras.Sequential`): a nested model
    is yielded and then its own layers, depth first, in each model's `layers` order. A layer
    shared by several nested models is yielded once. `model` itself is not yielded.

    Args:
        model: A Keras model (any other layer yields nothing).

    Yields:
        The layers.
    """
    seen: set[int] = set()
    stack = list(reversed(getattr(model, "layers", ())))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(reversed(getattr(layer, "layers", ())))


def reset_compiled_functions(model: keras.Model) -> None:
    """Drops a model's traced train/test/predict functions, so a changed layer setting (an
    implementation switch) takes effect at the next call."""
    for attribute in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attribute):
            setattr(model, attribute, None)
