"""U-Net: the paper's sizes and parameter count, valid/same padding, round trip."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_dense
from keras_dense.apps.unet_model import unet, unet_input_size, unet_margin, unet_output_size

# Fig. 1 of the paper: x-y size after each 3x3 convolution / 2x2 up-convolution.
PAPER_CONTRACTING_SIZES = [(570, 568), (282, 280), (138, 136), (66, 64), (30, 28)]
PAPER_EXPANSIVE_SIZES = [(56, 54, 52), (104, 102, 100), (200, 198, 196), (392, 390, 388)]


def paper_parameter_count(in_channels: int = 1, classes: int = 2, filters: int = 64) -> int:
    """Counts the weights of Fig. 1 layer by layer (kernel + bias)."""
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731
    widths = [filters * 2**i for i in range(5)]
    total, previous = 0, in_channels
    for width in widths:  # contracting path: two 3x3 convolutions per level
        total += conv(3, previous, width) + conv(3, width, width)
        previous = width
    for width in reversed(widths[:-1]):  # expansive path
        total += conv(2, previous, width)  # up-convolution halving the channels
        total += conv(3, 2 * width, width) + conv(3, width, width)  # after concatenation
        previous = width
    return total + conv(1, previous, classes)


def test_paper_network_sizes_and_parameter_count():
    model = unet()
    assert model.output_shape == (None, 388, 388, 2)
    assert model.count_params() == paper_parameter_count()
    assert abs(model.count_params() - 31.03e6) / 31.03e6 < 0.01
    for level, sizes in enumerate(PAPER_CONTRACTING_SIZES):
        for name, size in zip((f"conv_d{level}a-b", f"conv_d{level}b-c"), sizes):
            assert model.get_layer(name).output.shape[1:3] == (size, size), name
    for level, sizes in zip(range(3, -1, -1), PAPER_EXPANSIVE_SIZES):
        up = [layer for layer in model.layers if layer.name.endswith(f"_u{level}a")][0]
        names = (up.name, f"conv_u{level}b-c", f"conv_u{level}c-d")
        for name, size in zip(names, sizes):
            assert model.get_layer(name).output.shape[1:3] == (size, size), name
    # Up-convolutions: 2x2, stride 2, halving the channels.
    up = model.get_layer("upconv_d4c_u3a")
    assert isinstance(up, keras.layers.Conv2DTranspose)
    assert (up.kernel_size, up.strides, up.filters) == ((2, 2), (2, 2), 512)


def test_output_size_helpers_match_the_paper():
    assert unet_output_size(572) == 388
    assert unet_margin(5) == (572 - 388) // 2
    assert unet_input_size(388) == 572
    assert unet_input_size(389) == 572 + 16
    with pytest.raises(ValueError, match="odd size"):
        unet_output_size(570)
    with pytest.raises(ValueError, match="too small"):
        unet_output_size(40, depth=3)


@pytest.mark.parametrize("hw", [(76, 92), (44, 60)])
def test_valid_mode_runtime_output_size(hw):
    model = unet(2, (None, None, 1), filters=4, depth=3)
    out = model.predict(np.zeros((2, *hw, 1), np.float32), verbose=0)
    # Two unpadded 3x3 convolutions lose 4 pixels per level, at the level's scale (1, 2, 4 on
    # the contracting path, 2, 1 on the expansive path).
    lost = 4 * (1 + 2 + 4) + 4 * (2 + 1)
    assert out.shape == (2, hw[0] - lost, hw[1] - lost, 2)
    assert out.shape[1:3] == (unet_output_size(hw[0], 3), unet_output_size(hw[1], 3))


def test_valid_mode_rejects_invalid_static_sizes():
    with pytest.raises(ValueError, match="input_shape"):
        unet(input_shape=(570, 572, 1))


@pytest.mark.parametrize("hw", [(37, 50), (64, 48), (1, 1), (9, 17)])
def test_same_mode_output_matches_input_for_any_size(hw):
    model = unet(3, (None, None, 2), padding="same", filters=4, depth=4)
    out = model.predict(np.random.default_rng(0).normal(size=(2, *hw, 2)), verbose=0)
    assert out.shape == (2, *hw, 3)
    assert np.all(np.isfinite(out))


def test_same_mode_parameter_count_equals_valid_mode():
    model = unet(2, (None, None, 1), padding="same", filters=8)
    assert model.count_params() == paper_parameter_count(filters=8)


def test_dropout_at_the_end_of_the_contracting_path():
    model = unet(filters=2, dropout=0.5)
    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert names == ["dropout_d3c", "dropout_d4c"]
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in unet(filters=2).layers)


def test_batch_norm_and_softmax():
    model = unet(4, (None, None, 3), "same", 4, depth=3, batch_norm=True, activation="softmax")
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == 2 * 3 + 3 * 2  # every 3x3 convolution and up-convolution
    out = model.predict(np.random.default_rng(1).normal(size=(1, 20, 28, 3)), verbose=0)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="padding"):
        unet(padding="full")
    with pytest.raises(ValueError, match="depth"):
        unet(depth=0)
    with pytest.raises(ValueError, match="num_classes"):
        unet(num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        unet(dropout=1.5)


def test_exported_from_apps():
    assert keras_dense.apps.unet is unet
