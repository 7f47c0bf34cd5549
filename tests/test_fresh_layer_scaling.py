"""Fresh layers on a pretrained trunk are scaled to their inputs (training.fresh_layer_scaling).

The reference is the rule written out in NumPy: each fresh Dense kernel, in call order, is
divided by the root mean square of the input it receives (after the earlier layers were
scaled), when that RMS is above 1.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_dense.training.fresh_layer_scaling import (
    batch_inputs,
    fresh_kernel_layers,
    scale_fresh_layers,
)

CLASSES = 5


def trunk_and_head(trunk_scale: float, seed: int = 0) -> keras.Model:
    """A 'pretrained' conv trunk with outputs of about `trunk_scale`, and a fresh fc head."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 3))
    trunk = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="trunk")(image)
    x = keras.layers.Flatten()(trunk)
    x = keras.layers.Dense(32, activation="relu", name="fc6")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc7")(x)
    model = keras.Model(image, keras.layers.Dense(CLASSES, name="score")(x))
    kernel, bias = model.get_layer("trunk").get_weights()
    model.get_layer("trunk").set_weights([kernel * trunk_scale, bias])
    return model


def images(count: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 8, 8, 3)).astype("float32")


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values.astype(np.float64)))))


def reference_factors(model: keras.Model, x: np.ndarray) -> dict[str, float]:
    """The rule in NumPy on the unscaled model's weights."""
    trunk = keras.Model(model.input, model.get_layer("trunk").output)
    features = np.asarray(trunk(x)).reshape(len(x), -1).astype(np.float64)
    factors = {}
    for name, relu in (("fc6", True), ("fc7", True), ("score", False)):
        kernel, bias = (w.astype(np.float64) for w in model.get_layer(name).get_weights())
        scale = rms(features)
        if scale > 1.0:
            factors[name] = 1.0 / scale
            kernel = kernel / scale
        features = features @ kernel + bias
        if relu:
            features = np.maximum(features, 0.0)
    return factors


def test_fresh_kernels_shrink_by_their_inputs_rms_in_call_order():
    model = trunk_and_head(trunk_scale=40.0)
    x = images()
    expected = reference_factors(model, x)
    before = {name: model.get_layer(name).get_weights()[0] for name in ("trunk", "fc6", "fc7")}
    factors = scale_fresh_layers(model, x, loaded=["trunk"])
    assert list(factors) == list(expected) and "fc6" in factors, (factors, expected)
    for name, factor in expected.items():
        assert factors[name] == pytest.approx(factor, rel=1e-4)
    np.testing.assert_array_equal(model.get_layer("trunk").get_weights()[0], before["trunk"])
    np.testing.assert_allclose(
        model.get_layer("fc6").get_weights()[0], before["fc6"] * expected["fc6"], rtol=1e-5
    )
    if "fc7" not in expected:
        np.testing.assert_array_equal(model.get_layer("fc7").get_weights()[0], before["fc7"])


def test_scaling_takes_a_saturated_head_back_to_the_class_prior():
    """Before: logits tens of units apart (cross-entropy far above log K). After: near it."""
    model = trunk_and_head(trunk_scale=40.0)
    x = images(32)
    labels = np.random.default_rng(2).integers(0, CLASSES, len(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    unscaled = float(loss(labels, model(x)))
    scale_fresh_layers(model, x, loaded=["trunk"])
    scaled = float(loss(labels, model(x)))
    assert unscaled > 5 * np.log(CLASSES), unscaled
    assert scaled < 1.5 * np.log(CLASSES), scaled


def test_a_trunk_at_unit_scale_and_a_model_from_scratch_are_left_alone():
    for loaded, trunk_scale in ((["trunk"], 0.01), ((), 40.0)):
        model = trunk_and_head(trunk_scale)
        weights = [w.copy() for w in model.get_weights()]
        assert scale_fresh_layers(model, images(), loaded=loaded) == {}
        for old, new in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(old, new)


def test_normalised_transposed_and_shared_layers():
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    trunk = keras.layers.Conv2D(8, 3, padding="same", name="trunk")(image)
    normed = keras.layers.Conv2D(8, 1, name="before_bn")(trunk)
    normed = keras.layers.BatchNormalization(name="bn")(normed)
    up = keras.layers.Conv2DTranspose(8, 2, strides=2, name="upsample")(trunk)
    shared = keras.layers.Conv2D(8, 1, name="shared")
    left = shared(trunk)
    right = shared(keras.layers.Rescaling(1000.0)(left))  # runs second: it reads the first
    pooled = keras.layers.GlobalAveragePooling2D()
    model = keras.Model(image, [normed, pooled(up), left, right])
    kernel, bias = model.get_layer("trunk").get_weights()
    model.get_layer("trunk").set_weights([kernel * 50.0, bias])
    x = images()
    shared_kernel = model.get_layer("shared").get_weights()[0]
    trunk_rms = rms(np.asarray(keras.Model(image, trunk)(x)))

    factors = scale_fresh_layers(model, x, loaded=["trunk"])

    assert set(factors) == {"shared"}, factors  # not before_bn (BN follows), not upsample
    # A shared layer is scaled once, by the input of its first call.
    assert factors["shared"] == pytest.approx(1.0 / trunk_rms, rel=1e-4)
    np.testing.assert_allclose(
        model.get_layer("shared").get_weights()[0], shared_kernel / trunk_rms, rtol=1e-5
    )


def test_layers_nested_in_a_loaded_layer_count_as_loaded():
    keras.utils.set_random_seed(0)
    inner_input = keras.Input((8, 8, 3))
    inner = keras.Model(
        inner_input, keras.layers.Conv2D(8, 3, name="inner_conv")(inner_input), name="backbone"
    )
    image = keras.Input((8, 8, 3))
    head = keras.layers.Conv2D(4, 1, name="head")(inner(image))
    model = keras.Model(image, head)
    names = [layer.name for layer in fresh_kernel_layers(model, ["backbone"])]
    assert names == ["head"]
    assert [layer.name for layer in fresh_kernel_layers(model, ["inner_conv"])] == ["head"]


def test_batch_inputs_takes_what_the_model_is_called_with():
    class Detector(keras.Model):
        def model_inputs(self, batch):
            return [batch["images"], batch["rois"]]

    image = keras.Input((4,))
    detector = Detector(image, image)
    batch = {"images": 1, "rois": 2, "boxes": 3}
    assert batch_inputs(detector, batch) == [1, 2]
    plain = keras.Model(image, image)
    assert batch_inputs(plain, ("x", "y")) == "x"
    assert batch_inputs(plain, "x") == "x"


def test_mixed_precision_scales_the_float32_kernel_and_zero_kernels_stay():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = trunk_and_head(trunk_scale=40.0)
        zeros = [np.zeros_like(w) for w in model.get_layer("score").get_weights()]
        model.get_layer("score").set_weights(zeros)  # e.g. FCN's zero-initialised scores
        before = model.get_layer("fc6").get_weights()[0]
        factors = scale_fresh_layers(model, images(), loaded=["trunk"])
    finally:
        keras.config.set_dtype_policy(previous)
    assert "fc6" in factors and "score" not in factors, factors
    after = model.get_layer("fc6").get_weights()[0]
    assert after.dtype == np.float32
    # float32 arithmetic, not a float16 round trip (which errs by ~1e-3 relative).
    np.testing.assert_allclose(after, before * np.float32(factors["fc6"]), rtol=1e-6)
