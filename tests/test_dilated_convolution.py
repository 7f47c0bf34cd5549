"""`DilatedConv2D` against Keras' own dilated `Conv2D`: outputs, gradients, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import DilatedConv2D, dilated_convolution


def twin_layers(filters: int, kernel: int, rate: int, padding: str, in_channels: int):
    """A `Conv2D` and a `DilatedConv2D` of one configuration, holding the same weights."""
    kwargs = dict(padding=padding, dilation_rate=rate, activation="relu")
    reference = keras.layers.Conv2D(filters, kernel, **kwargs)
    layer = DilatedConv2D(filters, kernel, implementation="shifted_taps", **kwargs)
    shape = (None, None, None, in_channels)
    reference.build(shape)
    layer.build(shape)
    rng = np.random.default_rng(kernel * 100 + rate)
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    reference.set_weights(weights)
    layer.set_weights(weights)
    return reference, layer


@pytest.mark.parametrize(
    "size, kernel, rate, padding",
    [
        ((20, 20), 3, 12, "same"),  # DeepLab v1's fc6 on a 160 px crop
        ((9, 13), 3, 4, "same"),  # not square, every tap in range
        ((7, 7), 3, 12, "same"),  # only the centre tap sees the input: the others are left out
        ((10, 11), 2, 3, "same"),  # an even kernel: TensorFlow pads the smaller half first
        ((16, 15), 3, 2, "valid"),
        ((12, 12), (3, 1), (5, 1), "same"),  # one axis dilated
    ],
)
def test_outputs_and_gradients_equal_keras_conv2d(size, kernel, rate, padding):
    reference, layer = twin_layers(6, kernel, rate, padding, in_channels=5)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *size, 5)).astype("float32"))
    grads = []
    for conv in (reference, layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            weights = tf.sin(tf.reshape(tf.range(tf.size(y), dtype=y.dtype), tf.shape(y)) * 0.1)
            loss = tf.reduce_sum(y * weights)  # every output position weighs differently
        grads.append((y, *tape.gradient(loss, [x, *conv.trainable_weights])))
    for expected, got in zip(grads[0], grads[1]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_unknown_spatial_size_and_the_conv2d_path_for_strides():
    reference, layer = twin_layers(4, 3, 6, "same", in_channels=3)
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 3])])
    x = np.random.default_rng(1).normal(size=(1, 9, 14, 3)).astype("float32")
    np.testing.assert_allclose(traced(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-4)
    strided = DilatedConv2D(4, 3, strides=2, padding="same")
    assert not strided._uses_shifted_taps() and layer._uses_shifted_taps()


def test_saved_model_round_trip(tmp_path):
    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, DilatedConv2D(4, 3, padding="same", dilation_rate=4)(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[-1], DilatedConv2D)
    x = np.random.default_rng(2).normal(size=(1, 12, 12, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_valid_map_smaller_than_the_dilated_kernel_names_layer_and_sizes():
    reference, layer = twin_layers(4, 3, 4, "valid", in_channels=2)  # a 9 x 9 dilated kernel
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 2])])
    x = np.random.default_rng(3).normal(size=(1, 9, 11, 2)).astype("float32")  # just large enough
    np.testing.assert_allclose(traced(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{layer.name}.*9 x 9.*\[8 11\]"):
        traced(np.zeros((1, 8, 11, 2), "float32"))


def test_auto_takes_conv2d_path_where_a_gpu_is_visible(monkeypatch):
    layer = DilatedConv2D(4, 3, padding="same", dilation_rate=6)
    monkeypatch.setattr(dilated_convolution, "_gpu_visible", lambda: False)
    assert layer._uses_shifted_taps()
    monkeypatch.setattr(dilated_convolution, "_gpu_visible", lambda: True)
    assert not layer._uses_shifted_taps()
    forced = DilatedConv2D(4, 3, padding="same", dilation_rate=6, implementation="shifted_taps")
    assert forced._uses_shifted_taps()
    plain = DilatedConv2D(4, 3, padding="same", dilation_rate=6, implementation="conv2d")
    monkeypatch.setattr(dilated_convolution, "_gpu_visible", lambda: False)
    assert not plain._uses_shifted_taps()
    assert DilatedConv2D.from_config(forced.get_config()).implementation == "shifted_taps"
    with pytest.raises(ValueError, match=r"'fc6'.*implementation.*'cudnn'"):
        DilatedConv2D(4, 3, dilation_rate=2, implementation="cudnn", name="fc6")
