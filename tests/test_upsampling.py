"""Bilinear-initialised transposed convolution vs. independent bilinear references."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import BilinearUpsamplingInitializer, CropToMatch, bilinear_upsampling
from keras_dense.layers.upsampling import bilinear_crop_offset, bilinear_kernel_size
from tests.helpers import keras_roundtrip_in_subprocess


def numpy_bilinear_matrix(n: int, factor: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation matrix (length, n) of half-pixel bilinear upsampling by `factor`.

    Output sample `p` reads the input at coordinate `(p + 0.5) / factor - 0.5`. Also returns
    whether that coordinate lies inside `[0, n - 1]` (no extrapolation needed).
    """
    matrix = np.zeros((length, n))
    inside = np.zeros(length, dtype=bool)
    for p in range(length):
        src = (p + 0.5) / factor - 0.5
        inside[p] = 0.0 <= src <= n - 1
        src = min(max(src, 0.0), n - 1.0)  # clamp to the edge, as image resizers do
        lo = int(np.floor(src))
        hi = min(lo + 1, n - 1)
        weight = src - lo
        matrix[p, lo] += 1.0 - weight
        matrix[p, hi] += weight
    return matrix, inside


def numpy_bilinear_upsample(x: np.ndarray, factor: int, out_hw: tuple[int, int]):
    """Half-pixel bilinear upsampling of (B, H, W, C) by `factor`; returns (y, inside mask)."""
    rows, inside_rows = numpy_bilinear_matrix(x.shape[1], factor, out_hw[0])
    cols, inside_cols = numpy_bilinear_matrix(x.shape[2], factor, out_hw[1])
    y = np.einsum("ph,bhwc,qw->bpqc", rows, x.astype("float64"), cols)
    return y, np.outer(inside_rows, inside_cols)


def upsampling_model(factor: int, channels: int, trainable: bool = False) -> keras.Model:
    inputs = keras.Input((None, None, channels))
    return keras.Model(inputs, bilinear_upsampling(inputs, factor, channels, trainable, "up"))


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8, 16, 32])
def test_transposed_conv_cropped_at_half_factor_is_bilinear_resize(factor):
    rng = np.random.default_rng(factor)
    x = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    out = upsampling_model(factor, 3)(x).numpy()
    k = bilinear_kernel_size(factor)
    assert out.shape == (2, 4 * factor + k, 6 * factor + k, 3)

    offset = bilinear_crop_offset(factor)
    assert offset == factor // 2
    h, w = 5 * factor, 7 * factor
    cropped = out[:, offset : offset + h, offset : offset + w]

    reference, inside = numpy_bilinear_upsample(x, factor, (h, w))
    assert inside.sum() > 0.5 * h * w
    np.testing.assert_allclose(cropped[:, inside], reference[:, inside], atol=1e-5)
    # tf.image.resize (half-pixel centres) agrees on the same interior.
    resized = tf.image.resize(x, (h, w), method="bilinear").numpy()
    np.testing.assert_allclose(cropped[:, inside], resized[:, inside], atol=1e-5)
    # The interior is exactly f // 2 <= p <= n f - 1 - f // 2 on each axis.
    _, inside_rows = numpy_bilinear_matrix(5, factor, h)
    rows = np.arange(h)
    np.testing.assert_array_equal(inside_rows, (rows >= offset) & (rows <= h - 1 - offset))
    # ...and the align-corners convention does NOT match (the check can fail).
    corners = tf.compat.v1.image.resize(x, (h, w), method="bilinear", align_corners=True)
    assert np.abs(cropped[:, inside] - corners.numpy()[:, inside]).max() > 1e-2


def test_crop_to_match_gives_the_resize_for_a_non_multiple_target():
    """A factor-2 upsampling cropped to a 7-cell grid (what FCN does with odd sizes)."""
    inputs = keras.Input((None, None, 2))
    reference_input = keras.Input((None, None, 1))
    up = bilinear_upsampling(inputs, 2, 2, name="up")
    cropped = CropToMatch(offset=(1, 1))([up, reference_input])
    model = keras.Model([inputs, reference_input], cropped)
    x = np.random.default_rng(0).normal(size=(1, 4, 3, 2)).astype("float32")
    out = model([x, np.zeros((1, 7, 5, 1), "float32")]).numpy()
    assert out.shape == (1, 7, 5, 2)
    reference, inside = numpy_bilinear_upsample(x, 2, (7, 5))
    np.testing.assert_allclose(out[:, inside], reference[:, inside], atol=1e-5)


@pytest.mark.parametrize("factor", [2, 3, 8])
def test_initializer_is_per_channel_hat_function(factor):
    k = bilinear_kernel_size(factor)
    kernel = keras.ops.convert_to_numpy(BilinearUpsamplingInitializer()((k, k, 4, 4)))
    hat = np.interp(
        np.arange(k), [(k - 1) / 2 - factor, (k - 1) / 2, (k - 1) / 2 + factor], [0, 1, 0]
    )
    for a in range(4):
        for b in range(4):
            expected = np.outer(hat, hat) if a == b else np.zeros((k, k))
            np.testing.assert_allclose(kernel[:, :, a, b], expected, atol=1e-7)
    # Each input sample spreads unit mass over factor**2 outputs.
    np.testing.assert_allclose(kernel[:, :, 0, 0].sum(), factor**2, rtol=1e-6)


def test_trainable_flag_and_no_bias():
    fixed = upsampling_model(4, 3, trainable=False).get_layer("up")
    learned = upsampling_model(4, 3, trainable=True).get_layer("up")
    assert not fixed.use_bias and not learned.use_bias
    assert fixed.trainable_weights == [] and len(fixed.non_trainable_weights) == 1
    assert len(learned.trainable_weights) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        bilinear_kernel_size(0)
    with pytest.raises(ValueError, match="shape"):
        BilinearUpsamplingInitializer()((4, 4, 3, 2))
    with pytest.raises(ValueError, match="kernel size"):
        BilinearUpsamplingInitializer(factor=3)((4, 4, 2, 2))
    with pytest.raises(ValueError, match="filters"):
        bilinear_upsampling(keras.Input((None, None, 3)), 2, filters=5)


def test_initializer_config_round_trip():
    init = BilinearUpsamplingInitializer(factor=2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(init))
    assert isinstance(restored, BilinearUpsamplingInitializer) and restored.factor == 2


def test_keras_round_trip(tmp_path):
    model = upsampling_model(3, 2, trainable=True)
    x = np.random.default_rng(1).normal(size=(1, 6, 5, 2)).astype("float32")
    keras_roundtrip_in_subprocess(model, x, tmp_path)
