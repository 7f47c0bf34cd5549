"""ASPP against NumPy / tf.nn.convolution references written from the DeepLabv3 paper."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import ASPP

CHANNELS = 6
FILTERS = 6
RATES = (2, 3, 5)


def _build(channels=CHANNELS, filters=FILTERS, rates=RATES, dropout=0.1) -> ASPP:
    layer = ASPP(filters=filters, atrous_rates=rates, dropout=dropout, name="aspp")
    layer.build((None, None, None, channels))
    return layer


def _randomize(layer: ASPP, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for conv in layer.convs:
        conv.kernel.assign(rng.normal(0, 0.5, conv.kernel.shape))
    for norm in layer.norms:
        norm.gamma.assign(rng.uniform(0.5, 1.5, norm.gamma.shape))
        norm.beta.assign(rng.normal(0, 0.3, norm.beta.shape))
        norm.moving_mean.assign(rng.normal(0, 0.3, norm.moving_mean.shape))
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, norm.moving_variance.shape))


def _isolate_branch(layer: ASPP, branch: int) -> None:
    """Identity batch norms and a projection that passes only `branch`'s channels through."""
    for norm in layer.norms:
        f = norm.gamma.shape[0]
        norm.gamma.assign(np.ones(f))
        norm.beta.assign(np.zeros(f))
        norm.moving_mean.assign(np.zeros(f))
        norm.moving_variance.assign(np.full(f, 1.0 - norm.epsilon))  # var + eps = 1
    projection = np.zeros((1, 1, 5 * FILTERS, FILTERS), np.float32)
    projection[0, 0, branch * FILTERS : (branch + 1) * FILTERS] = np.eye(FILTERS)
    layer.convs[5].kernel.assign(projection)


# ---------------------------------------------------------------------------------------
# NumPy reference (paper: five parallel branches, BN + ReLU each, concat, 1x1 projection)
# ---------------------------------------------------------------------------------------
def np_atrous_conv(x: np.ndarray, kernel: np.ndarray, rate: int) -> np.ndarray:
    """'same' atrous convolution y[i] = sum_k x[i + r k] w[k] with zeros outside the image."""
    k = kernel.shape[0]
    pad = rate * (k // 2)
    _, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
    for ki in range(k):
        for kj in range(k):
            patch = xp[:, ki * rate : ki * rate + h, kj * rate : kj * rate + w, :]
            out += patch @ kernel[ki, kj]
    return out


def np_bn_relu(x, norm) -> np.ndarray:
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in norm.get_weights())
    return np.maximum((x - mean) / np.sqrt(var + norm.epsilon) * gamma + beta, 0.0)


def np_aspp(layer: ASPP, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    kernels = [np.asarray(conv.kernel, np.float64) for conv in layer.convs]
    rates = (1, *layer.atrous_rates)
    branches = [
        np_bn_relu(np_atrous_conv(x, kernels[i], rates[i]), layer.norms[i]) for i in range(4)
    ]
    pooled = x.mean(axis=(1, 2), keepdims=True) @ kernels[4][0, 0]
    pooled = np_bn_relu(pooled, layer.norms[4])
    branches.append(np.broadcast_to(pooled, x.shape[:3] + (layer.filters,)))
    concat = np.concatenate(branches, axis=-1)
    return np_bn_relu(concat @ kernels[5][0, 0], layer.norms[5])


@pytest.mark.parametrize("shape", [(2, 7, 9), (1, 12, 5), (1, 1, 1)])
def test_aspp_matches_numpy_reference(shape):
    layer = _build()
    _randomize(layer, seed=sum(shape))
    x = np.random.default_rng(1).normal(size=shape + (CHANNELS,)).astype(np.float32)
    got = np.asarray(layer(x, training=False))
    expected = np_aspp(layer, x)
    assert got.shape == shape + (FILTERS,)
    assert np.abs(expected).max() > 0.1  # the reference is not trivially zero
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("branch", [1, 2, 3])
def test_atrous_branch_matches_tf_nn_convolution(branch):
    layer = _build()
    _randomize(layer, seed=branch)
    _isolate_branch(layer, branch)
    rate = RATES[branch - 1]
    x = np.random.default_rng(2).normal(size=(2, 11, 8, CHANNELS)).astype(np.float32)
    kernel = np.asarray(layer.convs[branch].kernel)
    reference = tf.nn.convolution(x, kernel, padding="SAME", dilations=rate).numpy()
    got = np.asarray(layer(x, training=False))
    # Two ReLUs: the branch's and the projection's.
    np.testing.assert_allclose(got, np.maximum(reference, 0.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(5, 5), (6, 13), (1, 4)])
def test_image_pooling_branch_is_the_broadcast_global_mean(size):
    layer = _build()
    _isolate_branch(layer, branch=4)
    layer.convs[4].kernel.assign(np.eye(CHANNELS, FILTERS)[None, None].astype(np.float32))
    x = np.random.default_rng(3).normal(size=(3, *size, CHANNELS)).astype(np.float32)
    got = np.asarray(layer(x, training=False))
    mean = np.maximum(x.astype(np.float64).mean(axis=(1, 2)), 0.0)  # (B, C)
    expected = np.broadcast_to(mean[:, None, None, :], got.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_aspp_in_a_model_with_dynamic_size_and_dropout_only_in_training():
    inputs = keras.Input((None, None, CHANNELS))
    layer = ASPP(filters=FILTERS, atrous_rates=RATES, dropout=0.5, name="aspp")
    model = keras.Model(inputs, layer(inputs))
    assert model.output.shape == (None, None, None, FILTERS)
    _randomize(layer)
    x = np.random.default_rng(4).normal(size=(2, 16, 15, CHANNELS)).astype(np.float32)
    inference = np.asarray(model(x, training=False))
    np.testing.assert_allclose(inference, np_aspp(layer, x), rtol=1e-4, atol=1e-4)
    # Frozen batch norms use their moving statistics in training too: only dropout changes.
    for norm in layer.norms:
        norm.trainable = False
    keras.utils.set_random_seed(0)
    training = np.asarray(model(x, training=True))
    kept = training != 0
    np.testing.assert_allclose(training[kept], inference[kept] / 0.5, rtol=1e-5, atol=1e-5)
    dropped = np.mean(~kept[inference > 0])
    assert 0.35 < dropped < 0.65  # about half of the activations, dropout rate 0.5


def test_aspp_weights_and_config():
    layer = _build(channels=10, filters=8, rates=(3, 6, 9), dropout=0.2)
    # 1x1 + three 3x3 branches + pooling 1x1 + projection of the 5 * 8 channels; 4 BN vars each.
    expected = 10 * 8 + 3 * 9 * 10 * 8 + 10 * 8 + 5 * 8 * 8 + 6 * 4 * 8
    assert layer.count_params() == expected
    assert [conv.dilation_rate for conv in layer.convs[1:4]] == [(3, 3), (6, 6), (9, 9)]
    config = layer.get_config()
    clone = ASPP.from_config(config)
    assert clone.get_config() == config
    assert (clone.filters, clone.atrous_rates, clone.dropout) == (8, (3, 6, 9), 0.2)


def test_weight_file_layout_is_that_of_plain_conv2d_branches(tmp_path):
    """ASPP's weight files keep their layout: Keras 3 files address each branch by its class.

    A `.weights.h5` names the layers of a list by their snake-cased class (`conv2d`,
    `conv2d_1`, ...), so giving the atrous branches another class (e.g. `DilatedConv2D`, which
    would run them faster on a CPU) makes every DeepLabv3 weight file saved before unloadable.
    """
    h5py = pytest.importorskip("h5py")
    inputs = keras.Input((None, None, CHANNELS))
    model = keras.Model(inputs, ASPP(filters=FILTERS, atrous_rates=RATES, name="aspp")(inputs))
    model.save_weights(tmp_path / "aspp.weights.h5")
    groups = []
    with h5py.File(tmp_path / "aspp.weights.h5", "r") as weights:
        weights.visit(groups.append)
    branches = {g for g in groups if g.count("/") == 3 and g.startswith("layers/aspp/")}
    expected = set()
    for container, prefix in (("convs", "conv2d"), ("norms", "batch_normalization")):
        names = [prefix] + [f"{prefix}_{i}" for i in range(1, 6)]
        expected |= {f"layers/aspp/{container}/{name}" for name in names}
    assert branches - {"layers/aspp/projection_dropout/vars"} == expected, sorted(groups)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"filters": 0}, "filters"),
        ({"atrous_rates": (6, 12)}, "atrous_rates"),
        ({"atrous_rates": (6, 0, 18)}, "atrous_rates"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_aspp_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ASPP(**kwargs)
