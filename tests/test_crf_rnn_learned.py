"""CrfRnn with learned pairwise filters (Jampani et al. 2016) and loose mean field."""

from __future__ import annotations

import lattice_reference
import numpy as np
import pytest
import tensorflow as tf

import keras_dense
from keras_dense.crf.mean_field import kernel_features
from keras_dense.layers import CrfRnn, set_crf_iterations
from keras_dense.ops import lattice_stencil

THETAS = {"theta_alpha": 4.0, "theta_beta": 20.0, "theta_gamma": 2.0}


def _inputs(batch=2, height=9, width=7, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (batch, height, width, classes)).astype(np.float32)
    image = np.repeat(np.repeat(rng.uniform(0, 255, (batch, 3, 3, 3)), 3, 1), 3, 2)
    image = image[:, :height, :width] + rng.normal(0, 4, (batch, height, width, 3))
    return logits, image.clip(0, 255).astype(np.float32)


def _layer(classes=3, seed=1, **kwargs):
    """A built CrfRnn whose class matrices are random (the same for every seed-equal call)."""
    layer = CrfRnn(classes, implementation="tf", **THETAS, **kwargs)
    layer.build([(None, None, None, classes), (None, None, None, 3)])
    rng = np.random.default_rng(seed)
    for weight in layer.weights[:3]:
        matrix = rng.normal(0, 1, (classes, classes)).astype(np.float32)
        weight.assign(np.broadcast_to(matrix, weight.shape))
    return layer


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("loose", [False, True])
def test_gaussian_initialised_separable_filters_are_the_gaussian_crf(radius, loose):
    logits, image = _inputs()
    gaussian = _layer(num_iterations=3)([logits, image]).numpy()
    learned = _layer(
        num_iterations=3,
        pairwise="learned",
        filter_form="separable",
        filter_radius=radius,
        loose=loose,
    )([logits, image]).numpy()
    np.testing.assert_allclose(learned, gaussian, rtol=1e-5, atol=1e-5)


def _numpy_learned_step(logits, image, layer):
    """One mean-field step with general learned filters, from `lattice_reference` alone."""
    features = [f.numpy().astype(np.float64) for f in kernel_features(image, **THETAS)]
    taps = [w.numpy().astype(np.float64) for w in layer.taps]
    compatibility = layer.compatibility.numpy()
    matrices = (layer.spatial_kernel_weights.numpy(), layer.bilateral_kernel_weights.numpy())
    out = []
    for b in range(logits.shape[0]):
        unary = logits[b].reshape(-1, logits.shape[-1]).astype(np.float64)
        q = np.exp(unary - unary.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        pairwise = 0.0
        for f, t, w in zip(features, taps, matrices):
            d = f.shape[-1]
            ones = np.ones((f.shape[1], 1))
            norm = lattice_reference.separable(
                f[b], ones, lattice_stencil.gaussian_separable_taps(d, 1).astype(np.float64)
            )
            filtered, _ = lattice_reference.convolve(f[b], q, t[:, None, None] * np.eye(3), 1)
            pairwise = pairwise + (filtered / norm) @ (compatibility @ w).T
        out.append((unary - pairwise).reshape(logits.shape[1:]))
    return np.stack(out)


def test_learned_general_step_equals_the_numpy_reference():
    logits, image = _inputs(batch=2, height=6, width=5)
    layer = _layer(num_iterations=1, pairwise="learned")
    rng = np.random.default_rng(5)
    for taps in layer.taps:  # away from the Gaussian start
        taps.assign(taps.numpy() + rng.normal(0, 0.1, taps.shape).astype(np.float32))
    expected = _numpy_learned_step(logits, image, layer)
    np.testing.assert_allclose(layer([logits, image]).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_steps_taps_and_match_finite_differences():
    logits, image = _inputs(batch=1)
    layer = _layer(num_iterations=2, pairwise="learned", loose=True)
    target = np.random.default_rng(6).normal(0, 1, logits.shape).astype(np.float32)

    def loss():
        return tf.reduce_sum(layer([logits, image]) * target)

    with tf.GradientTape() as tape:
        value = loss()
    spatial = tape.gradient(value, layer.taps[0]).numpy()
    assert spatial.shape == (2, 7)
    assert np.all(np.abs(spatial).max(axis=1) > 0)  # both steps have their own gradient
    eps = 1e-2
    for step, tap in [(0, 0), (1, 3)]:
        original = layer.taps[0].numpy()
        shifted = original.copy()
        shifted[step, tap] += eps
        layer.taps[0].assign(shifted)
        up = float(loss())
        shifted[step, tap] -= 2 * eps
        layer.taps[0].assign(shifted)
        down = float(loss())
        layer.taps[0].assign(original)
        np.testing.assert_allclose(spatial[step, tap], (up - down) / (2 * eps), rtol=2e-2)


def test_loose_steps_are_independent_and_their_count_is_fixed():
    logits, image = _inputs()
    layer = _layer(num_iterations=2, loose=True)
    assert [tuple(w.shape) for w in layer.weights] == [(2, 3, 3)] * 3
    before = layer([logits, image]).numpy()
    second = layer.compatibility.numpy()
    second[1] += 0.5
    layer.compatibility.assign(second)
    assert np.abs(layer([logits, image]).numpy() - before).max() > 1e-3
    with pytest.raises(ValueError, match="loose CrfRnn runs its 2 steps"):
        layer([logits, image], num_iterations=3)
    model = keras_dense.apps.with_crf(
        _segmenter(), normalization=None, loose=True, num_iterations=2
    )
    with pytest.raises(ValueError, match="is loose"):
        set_crf_iterations(model, 5)
    with pytest.raises(ValueError, match="num_iterations >= 1"):
        CrfRnn(3, loose=True, num_iterations=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pairwise": "bilateral"}, "pairwise must be one of"),
        ({"loose": "yes"}, "loose must be True or False"),
        ({"filter_form": "dense"}, "form must be one of"),
        ({"filter_radius": 3}, "radius must be 1 or 2"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrfRnn(3, **kwargs)


def _segmenter(classes=3):
    import keras

    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(classes, 3, padding="same")(inputs))


def test_builders_and_recipes_take_a_table_of_crf_arguments():
    model = keras_dense.apps.fcn32s(
        num_classes=3,
        input_shape=(32, 32, 3),
        crf={"pairwise": "learned", "loose": True, "num_iterations": 2},
    )
    crf = model.get_layer("crf_rnn")
    assert (crf.pairwise, crf.loose, crf.num_iterations) == ("learned", True, 2)
    with pytest.raises(ValueError, match=r"unknown CrfRnn argument\(s\) \['pairwse'\]"):
        keras_dense.apps.fcn32s(num_classes=3, input_shape=(32, 32, 3), crf={"pairwse": "x"})
    with pytest.raises(ValueError, match="crf must be True, False or a table"):
        keras_dense.apps.fcn32s(num_classes=3, input_shape=(32, 32, 3), crf="learned")
