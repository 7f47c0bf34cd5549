"""The weakly supervised poolings against NumPy references (keras_dense.layers.wsl_pooling)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import ClassWisePooling2D, GlobalLSEPooling2D, WeldonPooling2D


def _maps(shape=(2, 5, 7, 3), seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32)


def _lse_reference(z: np.ndarray, r: float) -> np.ndarray:
    flat = z.astype(np.float64).reshape(z.shape[0], -1, z.shape[-1])
    peak = flat.max(axis=1, keepdims=True)
    return (peak[:, 0] + np.log(np.mean(np.exp(r * (flat - peak)), axis=1)) / r).astype(np.float64)


def _sorted_positions(z: np.ndarray) -> np.ndarray:
    """(B, H, W, C) -> (B, C, N) sorted ascending."""
    flat = z.astype(np.float64).reshape(z.shape[0], -1, z.shape[-1]).transpose(0, 2, 1)
    return np.sort(flat, axis=-1)


# ------------------------------------------------------------------------------------- LSE


@pytest.mark.parametrize("r", [0.5, 5.0, 20.0])
def test_lse_matches_numpy(r):
    z = _maps(scale=2.0)
    got = np.asarray(GlobalLSEPooling2D(r=r)(z))
    np.testing.assert_allclose(got, _lse_reference(z, r), rtol=1e-5, atol=1e-5)


def test_lse_limits_are_mean_and_max():
    z = _maps(scale=3.0)
    flat = z.reshape(z.shape[0], -1, z.shape[-1]).astype(np.float64)
    small = np.asarray(GlobalLSEPooling2D(r=1e-4)(z))
    large = np.asarray(GlobalLSEPooling2D(r=1e3)(z))
    np.testing.assert_allclose(small, flat.mean(axis=1), atol=1e-3)
    np.testing.assert_allclose(large, flat.max(axis=1), atol=1e-2)
    # and the mean is not the max here, so the two checks can fail
    assert np.min(flat.max(axis=1) - flat.mean(axis=1)) > 1.0


def test_lse_is_between_mean_and_max_and_increases_with_r():
    z = _maps(scale=2.0, seed=3)
    flat = z.reshape(z.shape[0], -1, z.shape[-1])
    values = [np.asarray(GlobalLSEPooling2D(r=r)(z)) for r in (0.1, 1.0, 10.0)]
    for v in values:
        assert np.all(v >= flat.mean(axis=1) - 1e-5) and np.all(v <= flat.max(axis=1) + 1e-5)
    assert np.all(values[0] < values[1]) and np.all(values[1] < values[2])


def test_lse_does_not_overflow():
    z = _maps(scale=1.0) + 100.0
    got = np.asarray(GlobalLSEPooling2D(r=100.0)(z))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _lse_reference(z, 100.0), rtol=1e-5)


def test_trainable_r_is_a_positive_weight_with_a_gradient():
    layer = GlobalLSEPooling2D(r=3.0, trainable_r=True)
    z = tf.constant(_maps(scale=2.0))
    with tf.GradientTape() as tape:
        y = layer(z)
        loss = tf.reduce_sum(y)
    assert len(layer.trainable_weights) == 1
    assert layer.current_r == pytest.approx(3.0, rel=1e-5)
    np.testing.assert_allclose(np.asarray(y), _lse_reference(z.numpy(), 3.0), rtol=1e-5, atol=1e-5)
    (grad,) = tape.gradient(loss, layer.trainable_weights)
    assert float(grad) > 0  # LSE increases with r
    layer.rho.assign(-30.0)  # far negative rho: r stays positive (close to the mean)
    assert layer.current_r > 0
    flat = z.numpy().reshape(2, -1, 3)
    np.testing.assert_allclose(np.asarray(layer(z)), flat.mean(axis=1), atol=1e-3)
    assert not GlobalLSEPooling2D(r=3.0).weights


@pytest.mark.parametrize("r", [0, -1.0, math.inf, "5", True])
def test_lse_rejects_bad_r(r):
    with pytest.raises(ValueError, match="r must be"):
        GlobalLSEPooling2D(r=r)


# ---------------------------------------------------------------------------------- WELDON


@pytest.mark.parametrize(
    ("k_max", "k_min", "alpha", "n_max", "n_min"),
    [
        (1, 0, 1.0, 1, 0),
        (3, 3, 1.0, 3, 3),
        (4, 2, 0.7, 4, 2),
        (0.1, 0.25, 0.5, 4, 9),  # N = 35: ceil(3.5) = 4, ceil(8.75) = 9
        (0.001, 0, 1.0, 1, 0),  # at least one position
        (100, 50, 1.0, 35, 35),  # counts clipped to N
    ],
)
def test_weldon_matches_numpy(k_max, k_min, alpha, n_max, n_min):
    z = _maps()
    ranked = _sorted_positions(z)
    want = ranked[..., -n_max:].mean(axis=-1)
    if n_min:
        want = want + alpha * ranked[..., :n_min].mean(axis=-1)
    got = np.asarray(WeldonPooling2D(k_max=k_max, k_min=k_min, alpha=alpha)(z))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weldon_fractions_follow_a_dynamic_input_size():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, WeldonPooling2D(k_max=0.3, k_min=0.3, alpha=0.5)(inputs))
    predict = tf.function(model, reduce_retracing=True)
    for height, width in ((3, 4), (6, 7)):
        z = _maps((1, height, width, 2), seed=height)
        count = math.ceil(0.3 * height * width)
        ranked = _sorted_positions(z)
        want = ranked[..., -count:].mean(-1) + 0.5 * ranked[..., :count].mean(-1)
        got = predict(tf.constant(z)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weldon_max_only_is_global_max_pooling():
    z = _maps(seed=5)
    np.testing.assert_allclose(
        np.asarray(WeldonPooling2D()(z)), np.asarray(keras.layers.GlobalMaxPooling2D()(z))
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k_max": 0}, "k_max"),
        ({"k_max": 1.0}, "k_max"),
        ({"k_max": True}, "k_max"),
        ({"k_min": -1}, "k_min"),
        ({"k_min": 1.5}, "k_min"),
        ({"alpha": math.nan}, "alpha"),
    ],
)
def test_weldon_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WeldonPooling2D(**kwargs)


# ------------------------------------------------------------------------------ class-wise


def test_class_wise_pooling_is_class_major():
    z = _maps((2, 3, 4, 6))
    got = np.asarray(ClassWisePooling2D(maps_per_class=3)(z))
    want = np.stack([z[..., 0:3].mean(-1), z[..., 3:6].mean(-1)], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.shape == (2, 3, 4, 2)


def test_class_wise_pooling_checks_the_channels():
    with pytest.raises(ValueError, match="divisible by 4"):
        ClassWisePooling2D(maps_per_class=4)(_maps((1, 3, 3, 6)))
    with pytest.raises(ValueError, match="maps_per_class"):
        ClassWisePooling2D(maps_per_class=0)


# ------------------------------------------------------------------------- wsl_classifier


def _pool_reference(maps: np.ndarray, pooling: str, maps_per_class: int) -> np.ndarray:
    """Image logits from the `class_maps` output, in NumPy."""
    b, h, w, cm = maps.shape
    maps = maps.reshape(b, h, w, cm // maps_per_class, maps_per_class).mean(-1)
    ranked = _sorted_positions(maps)
    if pooling == "gap":
        return ranked.mean(-1)
    if pooling == "max":
        return ranked[..., -1]
    if pooling == "lse":
        return _lse_reference(maps, 5.0)
    alpha = 1.0 if pooling == "weldon" else 0.7
    return ranked[..., -1] + alpha * ranked[..., 0]


@pytest.mark.parametrize(
    ("pooling", "maps_per_class"),
    [("gap", 1), ("max", 1), ("lse", 1), ("weldon", 1), ("wildcat", 1), ("wildcat", 3), ("gap", 2)],
)
def test_wsl_classifier_pools_its_class_maps(pooling, maps_per_class):
    from keras_dense import apps

    model = apps.wsl_classifier(num_classes=3, pooling=pooling, maps_per_class=maps_per_class)
    assert model.name == f"wsl_vgg16_{pooling}"
    probe = keras.Model(model.inputs, [model.get_layer("class_maps").output, model.output])
    images = np.random.default_rng(0).normal(0, 50, (2, 64, 48, 3)).astype(np.float32)
    maps, logits = (np.asarray(t) for t in probe(images))
    assert maps.shape == (2, 4, 3, 3 * maps_per_class)  # stride 16
    assert logits.shape == (2, 3)
    want = _pool_reference(maps, pooling, maps_per_class)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    has_class_wise = any(isinstance(layer, ClassWisePooling2D) for layer in model.layers)
    assert has_class_wise == (maps_per_class > 1 or pooling == "wildcat")


@pytest.mark.parametrize(("backbone", "channels"), [("resnet50", 2048), ("mobilenetv2", 320)])
def test_wsl_classifier_backbones_run_at_any_size(backbone, channels):
    from keras_dense import apps

    model = apps.wsl_classifier(num_classes=2, backbone=backbone, pooling="lse")
    assert model.get_layer("class_maps").input.shape[-1] == channels
    for height, width in ((32, 32), (64, 40)):
        logits = model(np.zeros((1, height, width, 3), np.float32))
        assert tuple(logits.shape) == (1, 2)
    probe = keras.Model(model.inputs, model.get_layer("class_maps").output)
    assert tuple(probe(np.zeros((1, 64, 64, 3), np.float32)).shape) == (1, 2, 2, 2)  # stride 32


def test_wsl_classifier_loads_backbone_weights_from_a_file(tmp_path):
    from keras_dense import apps

    source = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    path = tmp_path / "mobilenetv2.weights.h5"
    source.save_weights(path)
    model = apps.wsl_classifier(num_classes=2, backbone="mobilenetv2", backbone_weights=str(path))
    for name in ("Conv1", "block_16_project", "block_16_project_BN"):
        for mine, theirs in zip(
            model.get_layer(name).get_weights(), source.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "alexnet"}, "backbone"),
        ({"pooling": "mean"}, "pooling"),
        ({"maps_per_class": 0}, "maps_per_class"),
        ({"pooling": "gap", "pooling_kwargs": {"r": 2.0}}, "pooling_kwargs"),
        ({"pooling": "lse", "pooling_kwargs": {"k": 2}}, "pooling_kwargs"),
        ({"pooling": "lse", "pooling_kwargs": {"r": -1.0}}, "r must be"),
        ({"input_shape": (None, None, 1)}, "input_shape"),
    ],
)
def test_wsl_classifier_checks_its_arguments(kwargs, match):
    from keras_dense import apps

    with pytest.raises(ValueError, match=match):
        apps.wsl_classifier(num_classes=2, **kwargs)
