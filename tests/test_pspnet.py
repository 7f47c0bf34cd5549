"""PSPNet (keras_dense.apps.pspnet) and its pyramid pooling layer."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_dense.apps import pspnet
from keras_dense.layers.pyramid_pooling import PyramidPooling, adaptive_average_pool2d

K = 3


def reference_adaptive_pool(x: np.ndarray, bins: int) -> np.ndarray:
    """Adaptive average pooling written from PyTorch's definition, with loops."""
    batch, height, width, channels = x.shape
    out = np.zeros((batch, bins, bins, channels), np.float64)
    for i in range(bins):
        top, bottom = math.floor(i * height / bins), math.ceil((i + 1) * height / bins)
        for j in range(bins):
            left, right = math.floor(j * width / bins), math.ceil((j + 1) * width / bins)
            out[:, i, j] = x[:, top:bottom, left:right].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("height, width", [(7, 9), (12, 12), (2, 5), (1, 1), (5, 3)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_pooling_matches_the_definition(height, width, bins):
    x = np.random.default_rng(height * 10 + width).normal(size=(2, height, width, 3))
    got = np.asarray(adaptive_average_pool2d(x.astype(np.float32), bins))
    np.testing.assert_allclose(got, reference_adaptive_pool(x, bins), atol=1e-5)


def test_adaptive_pooling_at_sizes_known_only_at_run_time():
    import tensorflow as tf

    pool = tf.function(
        lambda x: adaptive_average_pool2d(x, 6),
        input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)],
    )
    for shape in ((1, 4, 11, 2), (2, 13, 3, 2)):
        x = np.random.default_rng(0).normal(size=shape)
        np.testing.assert_allclose(
            pool(x.astype(np.float32)).numpy(), reference_adaptive_pool(x, 6), atol=1e-5
        )


def test_pyramid_pooling_layer_branches_are_the_pooled_upsampled_features():
    layer = PyramidPooling(bins=(1, 3), filters=2)
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 4)).astype(np.float32)
    y = np.asarray(layer(x))
    assert y.shape == (2, 5, 7, 4 + 2 * 2)
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
    # The 1-bin branch: relu(BN(conv(mean))) broadcast over the map (BN in inference: x / s).
    kernel = np.asarray(layer.convs[0].kernel)[0, 0]
    epsilon = layer.norms[0].epsilon
    want = np.maximum(x.mean(axis=(1, 2)) @ kernel / np.sqrt(1 + epsilon), 0)
    np.testing.assert_allclose(
        y[..., 4:6], np.broadcast_to(want[:, None, None], y[..., 4:6].shape), atol=1e-5
    )


def test_pyramid_pooling_default_filters_and_bad_arguments():
    assert PyramidPooling(bins=(1, 2, 3, 6)).compute_output_shape((None, 4, 4, 8)) == (
        None,
        4,
        4,
        16,
    )
    for bins in ((), (0, 2), (1.5,), 3, (True,)):
        with pytest.raises(ValueError, match="bins"):
            PyramidPooling(bins=bins)
    with pytest.raises(ValueError, match="filters"):
        PyramidPooling(filters=0)


def tiny_pspnet(**kwargs):
    return pspnet(K, backbone="compact", output_stride=4, bins=(1, 2, 3, 6), **kwargs)


@pytest.mark.parametrize("size", [(33, 47), (17, 21)])
def test_output_is_input_sized_for_odd_sizes(size):
    model = tiny_pspnet()
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (2, *size, K)
    names = {layer.name for layer in model.layers}
    assert {"pyramid_pooling", "psp_conv", "psp_dropout", "logits", "upsample_logits"} <= names


def test_layer_widths_follow_the_paper():
    model = tiny_pspnet()
    features = model.get_layer("pyramid_pooling").input.shape[-1]
    assert model.get_layer("pyramid_pooling").output.shape[-1] == features + 4 * (features // 4)
    assert model.get_layer("psp_conv").filters == 512
    assert model.get_layer("psp_dropout").rate == pytest.approx(0.1)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="output_stride"):
        pspnet(K, backbone="compact", output_stride=16)
    with pytest.raises(ValueError, match="backbone"):
        pspnet(K, backbone="nope")
    with pytest.raises(ValueError, match="bins"):
        pspnet(K, backbone="compact", output_stride=4, bins=())
    with pytest.raises(ValueError, match="never pretrained"):
        pspnet(K, backbone="compact", output_stride=4, backbone_weights="imagenet")


def _blocks(n=4, height=24, width=28):
    rng = np.random.default_rng(0)
    labels = np.zeros((n, height, width), np.int32)
    labels[:, height // 2 :, :] = 1
    labels[:, :, width // 2 :] += 1
    x = rng.normal(0, 0.3, (n, height, width, 3)).astype(np.float32)
    x += 2.0 * np.eye(3, dtype=np.float32)[labels]
    return x, labels


def test_a_short_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = tiny_pspnet()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _blocks()
    history = model.fit(x, y, epochs=8, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses


def test_keras_round_trip(tmp_path):
    model = tiny_pspnet(activation="softmax")
    x = np.random.default_rng(2).normal(size=(1, 19, 23, 3)).astype(np.float32)
    path = str(tmp_path / "pspnet.keras")
    model.save(path)
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    layer = loaded.get_layer("pyramid_pooling")
    assert isinstance(layer, PyramidPooling) and layer.bins == (1, 2, 3, 6)
