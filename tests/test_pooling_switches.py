"""MaxPoolingWithArgmax2D / MaxUnpooling2D against a NumPy reference written from the definition."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D

from helpers import keras_roundtrip_in_subprocess


def numpy_pool_with_switches(x: np.ndarray, pool: int = 2, stride: int = 2):
    """Max pooling with "same" padding (partial windows at the bottom/right border).

    Returns the pooled map and the flat per-image index (y * W + x) * C + c of the first
    maximum of each window in row-major order.
    """
    b, h, w, c = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    pooled = np.zeros((b, oh, ow, c), x.dtype)
    switches = np.zeros((b, oh, ow, c), np.int64)
    for n in range(b):
        for i in range(oh):
            for j in range(ow):
                for k in range(c):
                    best, best_pos = -np.inf, None
                    for y in range(i * stride, min(i * stride + pool, h)):
                        for xx in range(j * stride, min(j * stride + pool, w)):
                            if x[n, y, xx, k] > best:  # strict: the first maximum wins
                                best, best_pos = x[n, y, xx, k], (y * w + xx) * c + k
                    pooled[n, i, j, k] = best
                    switches[n, i, j, k] = best_pos
    return pooled, switches


def numpy_unpool(values: np.ndarray, switches: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Scatters values[b, i, j, k] to the flat position switches[b, i, j, k] of image b."""
    b, _, _, c = values.shape
    out = np.zeros((b, out_hw[0] * out_hw[1] * c), values.dtype)
    for n in range(b):
        for v, s in zip(values[n].ravel(), switches[n].ravel()):
            out[n, s] += v
    return out.reshape(b, out_hw[0], out_hw[1], c)


def _pool_unpool_model(shape=(None, None, 3)) -> keras.Model:
    inputs = keras.Input(shape)
    pooled, switches = MaxPoolingWithArgmax2D(name="pool")(inputs)
    values = keras.layers.Conv2D(3, 1, name="mix")(pooled)
    unpooled = MaxUnpooling2D(name="unpool")([values, switches, inputs])
    return keras.Model(inputs, unpooled)


@pytest.mark.parametrize("hw", [(8, 10), (7, 9), (1, 5)])
def test_pool_matches_numpy_reference(hw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *hw, 4)).astype(np.float32)
    pooled, switches = MaxPoolingWithArgmax2D()(x)
    ref_pooled, ref_switches = numpy_pool_with_switches(x)
    np.testing.assert_array_equal(np.asarray(pooled), ref_pooled)
    np.testing.assert_array_equal(np.asarray(switches), ref_switches)
    assert switches.dtype == tf.int64


def test_ties_pick_first_maximum_in_row_major_order():
    # Small integers give many ties inside the 2x2 windows.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=(2, 7, 9, 3)).astype(np.float32)
    _, switches = MaxPoolingWithArgmax2D()(x)
    _, ref_switches = numpy_pool_with_switches(x)
    np.testing.assert_array_equal(np.asarray(switches), ref_switches)


@pytest.mark.parametrize("hw", [(8, 10), (7, 9)])
def test_unpool_matches_numpy_scatter(hw):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, *hw, 5)).astype(np.float32)
    pooled, switches = MaxPoolingWithArgmax2D()(x)
    values = rng.normal(size=pooled.shape).astype(np.float32)
    got = MaxUnpooling2D()([values, switches, x])
    expected = numpy_unpool(values, np.asarray(switches), hw)
    assert tuple(got.shape) == x.shape
    np.testing.assert_array_equal(np.asarray(got), expected)
    # Unpooling the pooled map itself keeps exactly the maxima and zeros elsewhere.
    restored = np.asarray(MaxUnpooling2D()([pooled, switches, x]))
    is_max = restored != 0
    np.testing.assert_array_equal(restored[is_max], x[is_max])
    assert is_max.sum() == np.prod(pooled.shape)


def test_unpool_without_reference_doubles_even_sizes():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 8, 2)).astype(np.float32)
    pooled, switches = MaxPoolingWithArgmax2D()(x)
    got = MaxUnpooling2D()([pooled, switches])
    np.testing.assert_array_equal(
        np.asarray(got), numpy_unpool(np.asarray(pooled), np.asarray(switches), (6, 8))
    )


def test_valid_padding_and_overlapping_windows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, 11, 2)).astype(np.float32)
    layer = MaxPoolingWithArgmax2D(pool_size=3, strides=2, padding="valid")
    pooled, switches = layer(x)
    assert tuple(pooled.shape) == layer.compute_output_shape(x.shape)[0] == (2, 4, 5, 2)
    # Overlapping windows may share a switch: the unpooled values are then summed.
    values = rng.normal(size=pooled.shape).astype(np.float32)
    got = MaxUnpooling2D(pool_size=3, strides=2, padding="valid")([values, switches])
    expected = numpy_unpool(values, np.asarray(switches), (9, 11))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)


def test_gradient_is_upstream_weight_gathered_at_switches():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
    pooled, switches = MaxPoolingWithArgmax2D()(x)
    values = tf.Variable(rng.normal(size=pooled.shape).astype(np.float32))
    weight = rng.normal(size=x.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(weight * MaxUnpooling2D()([values, switches, x]))
    grad = tape.gradient(loss, values).numpy()
    switches = np.asarray(switches)
    expected = np.stack([weight[n].ravel()[switches[n]] for n in range(x.shape[0])])
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_gradient_flows_through_pool_and_unpool_in_a_model():
    rng = np.random.default_rng(6)
    x = tf.constant(rng.normal(size=(2, 7, 9, 3)).astype(np.float32))
    model = _pool_unpool_model()
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x) ** 2)
    grads = tape.gradient(loss, [x, *model.trainable_weights])
    assert all(g is not None for g in grads)
    # Only the maxima of the input receive a gradient.
    pooled, switches = MaxPoolingWithArgmax2D()(x)
    mask = np.asarray(MaxUnpooling2D()([tf.ones_like(pooled), switches, x])) != 0
    grad_x = grads[0].numpy()
    assert np.all(grad_x[~mask] == 0)
    assert np.count_nonzero(grad_x[mask]) > 0.9 * mask.sum()


def test_shapes_config_and_symbolic_dtypes():
    inputs = keras.Input((7, 9, 3))
    pooled, switches = MaxPoolingWithArgmax2D(name="p")(inputs)
    assert pooled.shape == (None, 4, 5, 3) and switches.dtype == "int64"
    unpooled = MaxUnpooling2D(name="u")([pooled, switches, inputs])
    assert unpooled.shape == (None, 7, 9, 3)
    assert MaxUnpooling2D()([pooled, switches]).shape == (None, 8, 10, 3)
    for layer in (MaxPoolingWithArgmax2D(3, 2, "valid"), MaxUnpooling2D(3, 2, "valid")):
        clone = layer.__class__.from_config(layer.get_config())
        assert (clone.pool_size, clone.strides, clone.padding) == ((3, 3), (2, 2), "valid")


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="padding"):
        MaxPoolingWithArgmax2D(padding="full")
    with pytest.raises(ValueError, match="pool_size"):
        MaxUnpooling2D(pool_size=0)


def test_keras_roundtrip_in_fresh_process(tmp_path):
    model = _pool_unpool_model()
    x = np.random.default_rng(7).normal(size=(2, 7, 9, 3)).astype(np.float32)
    keras_roundtrip_in_subprocess(model, x, tmp_path)


@pytest.mark.parametrize("padding, hw", [("same", (7, 10)), ("same", (8, 6)), ("valid", (9, 7))])
def test_xla_compiled_pooling_matches_the_argmax_op(padding, hw):
    # Small integers: many ties, which must resolve to the first maximum as the op does.
    rng = np.random.default_rng(3)
    x = tf.constant(rng.integers(0, 4, (2, *hw, 3)).astype(np.float32))
    layer = MaxPoolingWithArgmax2D(2, padding=padding)
    pooled, switches = tf.function(layer, jit_compile=True)(x)
    want_pooled, want_switches = tf.nn.max_pool_with_argmax(
        x, 2, 2, padding.upper(), output_dtype=tf.int64, include_batch_in_index=False
    )
    np.testing.assert_array_equal(pooled.numpy(), want_pooled.numpy())
    np.testing.assert_array_equal(switches.numpy(), want_switches.numpy())


def test_jit_compiled_model_predicts_as_eager():
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    pooled, switches = MaxPoolingWithArgmax2D()(features)
    decoded = keras.layers.Conv2D(4, 3, padding="same")(pooled)
    outputs = MaxUnpooling2D()([decoded, switches, features])
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(4).normal(size=(2, 15, 18, 3)).astype(np.float32)
    eager = model(x).numpy()
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, atol=1e-5)
    assert np.count_nonzero(eager) > 0
