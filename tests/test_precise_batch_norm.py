"""Precise BatchNorm: the re-estimated statistics equal a NumPy average of batch moments."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.training.precise_batch_norm import PreciseBatchNorm, recalibrate_batch_norm


def _mlp(seed: int = 0, frozen_second: bool = False) -> keras.Model:
    """Dense -> BN -> ReLU -> Dense -> BN, with random weights and statistics."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(3, name="d2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(seed)
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        layer.gamma.assign(rng.uniform(0.5, 2, layer.gamma.shape))
        layer.beta.assign(rng.normal(size=layer.beta.shape))
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    model.get_layer("bn2").trainable = not frozen_second
    return model


def _numpy_moments(model: keras.Model, batches: list[np.ndarray]) -> dict[str, tuple]:
    """Average per-batch means and (biased) variances of each BN's input, in NumPy."""
    w1, b1 = (np.asarray(v) for v in model.get_layer("d1").weights)
    w2, b2 = (np.asarray(v) for v in model.get_layer("d2").weights)
    bn1 = model.get_layer("bn1")
    gamma, beta, eps = np.asarray(bn1.gamma), np.asarray(bn1.beta), bn1.epsilon
    moments = {"bn1": [], "bn2": []}
    for x in batches:
        h = x @ w1 + b1
        moments["bn1"].append((h.mean(0), h.var(0)))
        h = np.maximum(gamma * (h - h.mean(0)) / np.sqrt(h.var(0) + eps) + beta, 0)
        h = h @ w2 + b2
        moments["bn2"].append((h.mean(0), h.var(0)))
    return {k: tuple(np.mean([m[i] for m in v], 0) for i in (0, 1)) for k, v in moments.items()}


def test_recalibrated_statistics_are_the_average_of_the_batch_moments():
    model = _mlp()
    rng = np.random.default_rng(1)
    batches = [rng.normal(2.0, 3.0, (8, 5)).astype("float32") for _ in range(5)]
    labels = np.zeros((8, 3), "float32")
    expected = _numpy_moments(model, batches[:3])
    kernels = [np.asarray(w) for w in model.trainable_weights]
    used = recalibrate_batch_norm(model, iter([(b, labels) for b in batches]), steps=3)
    assert used == 3
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance, variance, rtol=1e-4, atol=1e-5)
        assert layer.momentum == 0.99  # restored
    for before, after in zip(kernels, model.trainable_weights):
        np.testing.assert_array_equal(before, after)  # nothing trainable moved


def test_frozen_batch_norm_keeps_its_statistics_and_a_short_data_set_is_counted():
    model = _mlp(frozen_second=True)
    frozen = model.get_layer("bn2")
    before = np.asarray(frozen.moving_mean), np.asarray(frozen.moving_variance)
    batches = [np.random.default_rng(i).normal(size=(4, 5)).astype("float32") for i in range(2)]
    assert recalibrate_batch_norm(model, batches, steps=10) == 2
    np.testing.assert_array_equal(frozen.moving_mean, before[0])
    np.testing.assert_array_equal(frozen.moving_variance, before[1])
    np.testing.assert_allclose(
        model.get_layer("bn1").moving_mean, _numpy_moments(model, batches)["bn1"][0], atol=1e-5
    )
    with pytest.raises(ValueError, match="precise BatchNorm steps = 0"):
        recalibrate_batch_norm(model, batches, steps=0)


def test_validation_during_fit_scores_with_the_recalibrated_statistics():
    """The callback runs before validation: `evaluate` then equals a fresh re-estimate."""
    model = _mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, (32, 5)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):  # after PreciseBatchNorm's
            seen["mean"] = np.asarray(self.model.get_layer("bn2").moving_mean)

    model.fit(
        train,
        epochs=1,
        validation_data=train,
        callbacks=[PreciseBatchNorm(train, steps=4), Record()],
        verbose=0,
    )
    np.testing.assert_allclose(
        seen["mean"],
        _numpy_moments(model, [b for b, _ in train.as_numpy_iterator()])["bn2"][0],
        atol=1e-5,
    )


def test_a_negative_step_count_in_a_recipe_is_named():
    from keras_dense.training.recipe import parse_recipe
    from keras_dense.utils.errors import RecipeError

    recipe = {
        "task": "segmentation",
        "model": {"builder": "unet"},
        "data": {"train": "shards/train-*.tfrecord"},
        "training": {"precise_bn_steps": -1},
    }
    with pytest.raises(RecipeError, match=r"training.precise_bn_steps.*expected >= 0"):
        parse_recipe(recipe)
