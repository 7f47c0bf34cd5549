"""The one probe of a dense model's output size (`keras_dense.utils.output_probe`).

The expected sizes come from the layers' arithmetic (a valid 3x3 convolution loses 2 pixels,
a stride-2 pooling halves), not from the probe itself.
"""

from __future__ import annotations

import keras
import pytest

from keras_dense.utils.output_probe import accepted_output_size, model_output_size


def _model(*layers, channels=3):
    inputs = keras.Input((None, None, channels))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "layers, expected",
    [
        ((keras.layers.Conv2D(2, 3, padding="same"),), (32, 48)),
        ((keras.layers.Conv2D(2, 3), keras.layers.Conv2D(2, 3)), (28, 44)),
        ((keras.layers.MaxPooling2D(2), keras.layers.Conv2D(2, 1)), (16, 24)),
    ],
)
def test_output_size_follows_the_layers(layers, expected):
    model = _model(*layers)
    assert model_output_size(model, 32, 48, 3) == expected
    assert accepted_output_size(model, 32, 48, 3) == expected


def test_a_size_the_model_rejects_is_named_or_none():
    inputs = keras.Input((None, None, 1))
    pooled = keras.layers.UpSampling2D(2)(keras.layers.MaxPooling2D(2)(inputs))
    model = keras.Model(inputs, keras.layers.Add()([inputs, pooled]))
    assert model_output_size(model, 16, 16, 1) == (16, 16)
    with pytest.raises(ValueError, match=r"15x16 .*input"):
        model_output_size(model, 15, 16, 1)
    assert accepted_output_size(model, 15, 16, 1) is None


def test_an_output_that_is_not_a_map_is_refused():
    model = _model(keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D())
    with pytest.raises(ValueError, match=r"\(B, H, W, K\)"):
        model_output_size(model, 32, 48, 3)
    assert accepted_output_size(model, 32, 48, 3) is None


class _ShapeHidden(keras.layers.Layer):
    """Crops one row and column but declares unknown spatial sizes (as some custom ops do)."""

    def call(self, x):
        return x[:, 1:, 1:]

    def compute_output_spec(self, x):
        return keras.KerasTensor((x.shape[0], None, None, x.shape[-1]), x.dtype)


def test_unknown_sizes_are_run_only_when_asked():
    model = _model(_ShapeHidden())
    assert model_output_size(model, 32, 48, 3, run_if_unknown=True) == (31, 47)
    with pytest.raises(ValueError, match="unknown"):
        model_output_size(model, 32, 48, 3)
    assert accepted_output_size(model, 32, 48, 3) is None
