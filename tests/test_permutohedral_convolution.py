"""The `PermutohedralConvolution` layer (the harness covers config, saving and dtypes)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import PermutohedralConvolution
from keras_dense.ops import lattice_stencil, permutohedral, permutohedral_tf
from keras_dense.ops.lattice_convolution import lattice_convolve, lattice_neighbors


def _inputs(d: int, batch: int = 2, points: int = 40, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (batch, points, channels)).astype(np.float32)
    features = rng.normal(0.0, 4.0, (batch, points, d)).astype(np.float32)
    return values, features


def test_gaussian_separable_layer_is_the_gaussian_filter_of_the_scaled_features():
    values, features = _inputs(5)
    scale = np.array([0.5, 0.5, 0.2, 0.2, 0.2], np.float32)
    layer = PermutohedralConvolution(form="separable", feature_scale=scale.tolist())
    out = layer([values, features]).numpy()
    lattice = permutohedral_tf.build_lattice(features * scale)
    expected = permutohedral.filter_lattice(values, lattice, implementation="tf").numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_general_layer_starts_at_the_closest_stencil_times_identity():
    values, features = _inputs(2)
    layer = PermutohedralConvolution(filters=3, radius=2)
    out = layer([values, features]).numpy()
    stencil, dropped = lattice_stencil.gaussian_stencil(2, 2)
    assert dropped == pytest.approx(0.0, abs=1e-12)
    lattice = permutohedral_tf.build_lattice(features)
    expected = lattice_convolve(values, lattice_neighbors(features, lattice, 2), stencil)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_fit_recovers_a_known_general_filter():
    """Training the taps from the Gaussian start fits a target made by other taps."""
    values, features = _inputs(2, batch=4, points=60, channels=2, seed=1)
    rng = np.random.default_rng(2)
    target_taps = rng.normal(0.0, 0.5, (7, 2, 2)).astype(np.float32)
    lattice = permutohedral_tf.build_lattice(features)
    target = lattice_convolve(values, lattice_neighbors(features, lattice, 1), target_taps)
    inputs = [keras.Input((None, 2)), keras.Input((None, 2))]
    layer = PermutohedralConvolution(filters=2, trainable_scale=False, implementation="tf")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    start = model.evaluate([values, features], target.numpy(), verbose=0)
    distance = np.linalg.norm(layer.kernel.numpy() - target_taps)
    data = tf.data.Dataset.from_tensors(((values, features), target)).repeat()
    model.fit(data, epochs=1, steps_per_epoch=150, verbose=0)
    end = model.evaluate([values, features], target.numpy(), verbose=0)
    assert end < 0.01 * start
    # Taps seen by few lattice points are fitted loosely, but all move to the target.
    assert np.linalg.norm(layer.kernel.numpy() - target_taps) < 0.2 * distance


def test_feature_scale_learns_the_bandwidth():
    """A trainable scale moves towards the bandwidth that made the target."""
    values, features = _inputs(2, batch=4, points=80, channels=1, seed=3)
    true_scale = np.array([0.6, 0.6], np.float32)
    lattice = permutohedral_tf.build_lattice(features * true_scale)
    target = permutohedral.filter_lattice(values, lattice, implementation="tf").numpy()
    layer = PermutohedralConvolution(form="separable", feature_scale=0.4, implementation="tf")
    layer.build([(None, None, 1), (None, None, 2)])
    layer.kernel.trainable = False
    optimizer = keras.optimizers.Adam(0.01)
    losses = []
    for _ in range(40):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((layer([values, features]) - target) ** 2)
        gradient = tape.gradient(loss, [layer.scale])
        optimizer.apply_gradients(zip(gradient, [layer.scale]))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    scale = layer.scale.numpy()
    assert np.all(np.abs(scale - true_scale) < np.abs(0.4 - true_scale))


def test_mixed_precision_keeps_the_features_in_float32():
    """Pixel coordinates of a large image survive a bfloat16 policy (no input autocast)."""
    rng = np.random.default_rng(4)
    values = rng.normal(0.0, 1.0, (1, 50, 2)).astype(np.float32)
    positions = rng.uniform(600.0, 1200.0, (1, 50, 2)).astype(np.float32)
    kwargs = {"form": "separable", "feature_scale": 1.0 / 3.0, "implementation": "tf"}
    expected = PermutohedralConvolution(**kwargs)([values, positions]).numpy()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = PermutohedralConvolution(**kwargs)
        out = layer([values, positions])
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.dtype == tf.bfloat16 and layer.kernel.dtype == "float32"
    # Only the output's rounding to bfloat16 (8 bits of mantissa) remains.
    np.testing.assert_allclose(out.numpy().astype(np.float32), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"radius": 3}, "radius must be 1 or 2"),
        ({"form": "dense"}, "form must be one of"),
        ({"form": "separable", "filters": 4}, "shares its taps"),
        ({"filters": 0}, "filters must be a positive integer"),
        ({"feature_scale": [1.0, -1.0]}, "feature_scale must be positive"),
        ({"implementation": "cuda"}, "implementation must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PermutohedralConvolution(**kwargs)


def test_bad_inputs_are_named():
    values, features = _inputs(2)
    with pytest.raises(ValueError, match="feature_scale has 3 entries for 2 feature"):
        PermutohedralConvolution(feature_scale=[1.0, 1.0, 1.0])([values, features])
    with pytest.raises(ValueError, match="expects two inputs"):
        PermutohedralConvolution()(values)
    with pytest.raises(ValueError, match="must be 3-D"):
        PermutohedralConvolution()([values[0], features[0]])


def test_portable_switch_gives_the_same_output_and_gradients():
    """`use_portable_crf` moves the layer from the compiled ops to the twin, unchanged."""
    from keras_dense.layers import use_portable_crf
    from keras_dense.ops import loader

    if loader.find_compiler() is None and not loader.library_path().exists():
        pytest.skip("no C++ compiler to build the lattice ops (set $CXX or install g++)")
    values, features = _inputs(5)
    layer = PermutohedralConvolution(filters=4, implementation="custom_op")
    inputs = [keras.Input((40, 3)), keras.Input((40, 5))]
    model = keras.Model(inputs, layer(inputs))

    def run():
        with tf.GradientTape() as tape:
            out = model([values, features])
            loss = tf.reduce_sum(out**2)
        return [out, *tape.gradient(loss, model.trainable_weights)]

    compiled = run()
    use_portable_crf(model)
    assert layer.implementation == "tf"
    for got, want in zip(run(), compiled):
        want = want.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
